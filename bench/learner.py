"""Learner update time: ADPO's and PPO's on the same batch, epochs and minibatch, side by side,
on CPU and (where there is one) on a CUDA GPU.

    python bench/learner.py [--device cpu|cuda|both] [--hidden 64] [--minibatch 64]
                            [--env HalfCheetah-v5] [--batch 2048] [--epochs 10] [--rounds 5]

Both learners are built by the grid's own factory with the same network (hidden-hidden),
optimiser and batch settings; one batch of episodes is sampled once, and each round times one
full `learner_group.update` (all epochs x minibatches, plus each algorithm's after-update hooks:
ADPO's anchor refresh) for ADPO and for PPO, alternating. Prints ms per minibatch for each
algorithm on each device (and the GPU over CPU ratio with both); the last line is
`ratio=<ADPO / PPO>` on the first device. Without CUDA it says so and runs on CPU only.
These figures feed the learner-device table of `adpo_ray/core/devices.py`.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(algorithm: str, env_name: str, batch: int, epochs: int, minibatch: int, hidden: int, device: str):
    from adpo_ray.rllib.factory import build_algo_config
    from adpo_ray.spec import TrialSpec, parse_spec

    spec = parse_spec({
        "name": "bench", "environments": [env_name], "scenarios": ["clean"], "algorithms": [algorithm],
        "budget": {"iterations": 1},
        "adpo": {"train_batch_size": batch, "num_epochs": epochs, "minibatch_size": minibatch},
        "hidden_sizes": [hidden],
        "resources": {"num_env_runners": 0, "num_envs_per_env_runner": 8,
                      "learner_device": "gpu" if device == "cuda" else "cpu"},
    })
    mode = "dynamic" if algorithm == "adpo" else "none"
    config = build_algo_config(spec.knobs(TrialSpec(env_name, "clean", algorithm, mode, hidden, 0)))
    config.evaluation(evaluation_interval=None)
    return config.build_algo()


def time_update(algo, episodes, epochs: int, minibatch: int) -> float:
    from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

    batch = copy.deepcopy(episodes)
    start = time.perf_counter()
    algo.learner_group.update(
        episodes=batch,
        timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: sum(len(e) for e in episodes)},
        num_epochs=epochs,
        minibatch_size=minibatch,
        shuffle_batch_per_epoch=True,
    )
    return time.perf_counter() - start


def measure(device: str, args, episodes) -> tuple[float, float]:
    """Median ms per minibatch of ADPO's and PPO's update on ``device``."""
    adpo = build("adpo", args.env, args.batch, args.epochs, args.minibatch, args.hidden, device)
    ppo = build("ppo", args.env, args.batch, args.epochs, args.minibatch, args.hidden, device)
    time_update(adpo, episodes, args.epochs, args.minibatch)  # warm-up both
    time_update(ppo, episodes, args.epochs, args.minibatch)
    a_times, p_times = [], []
    for i in range(args.rounds):
        a_times.append(time_update(adpo, episodes, args.epochs, args.minibatch))
        p_times.append(time_update(ppo, episodes, args.epochs, args.minibatch))
        print(f"{device} round {i}: adpo {a_times[-1]:.3f}s   ppo {p_times[-1]:.3f}s")
    adpo.stop()
    ppo.stop()
    minibatches = args.epochs * math.ceil(sum(len(e) for e in episodes) / args.minibatch)
    return (1000 * statistics.median(a_times) / minibatches, 1000 * statistics.median(p_times) / minibatches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "both"], default=None,
                        help="default: both where CUDA is available, else cpu")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--minibatch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    cuda = torch.cuda.is_available()
    wanted = args.device or ("both" if cuda else "cpu")
    devices = ["cpu", "cuda"] if wanted == "both" else [wanted]
    if "cuda" in devices and not cuda:
        print("CUDA is not available here: measuring on CPU only")
        devices = ["cpu"]
    torch.set_num_threads(1)
    ray.init(num_cpus=1, num_gpus=1 if cuda else 0, include_dashboard=False, log_to_driver=False)
    sampler = build("ppo", args.env, args.batch, args.epochs, args.minibatch, args.hidden, "cpu")
    episodes = sampler.env_runner.sample(num_timesteps=args.batch, explore=True)
    sampler.stop()
    ms = {device: measure(device, args, episodes) for device in devices}
    ray.shutdown()
    print(f"env={args.env} batch={args.batch} epochs={args.epochs} minibatch={args.minibatch} hidden={args.hidden}")
    for device, (a, p) in ms.items():
        print(f"device={device} adpo_ms_per_minibatch={a:.2f} ppo_ms_per_minibatch={p:.2f}")
    if len(ms) == 2:
        print(f"cuda_over_cpu adpo={ms['cuda'][0] / ms['cpu'][0]:.3f} ppo={ms['cuda'][1] / ms['cpu'][1]:.3f}")
    a, p = ms[devices[0]]
    print(f"ratio={a / p:.3f}")


if __name__ == "__main__":
    main()
