"""Learner update time: stock RLlib PPO, our PPO and our ADPO (the fused update path,
:mod:`adpo_ray.rllib.fused`) on the same batch, epochs and minibatch, side by side.

    python bench/learner.py [--device cpu|cuda] [--hidden 64 256] [--minibatch 64]
                            [--env HalfCheetah-v5] [--batch 2048] [--epochs 10] [--rounds 5]
                            [--rllib-adpo] [--compile]

All learners are built by the grid's own factory with the same network (hidden-hidden), optimiser
and batch settings; "stock" is RLlib's own ``PPOTorchLearner`` with its own update loop. One
batch of episodes is sampled once; each round times one full ``learner_group.update`` (all epochs
x minibatches plus the after-update hooks: ADPO's anchor refresh) of every learner, alternating.
Prints the median ms per minibatch of each learner at each hidden size, then the goal ratios:
``adpo_over_ppo`` (goal <= 1.05) at each size and ``ppo_over_stock`` (goal <= 0.5); the last line
is ``ratio=<our PPO / stock PPO>`` at the first hidden size. ``--rllib-adpo`` adds ADPO on RLlib's
loop (``resources.learner_update: rllib``), ``--compile`` our PPO and ADPO with the minibatch loss
compiled (``resources.learner_compile: true``; compiling happens in the warm-up). On CUDA these figures feed the learner-device table
of ``adpo_ray/spec/devices.py``.
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


def build(algorithm: str, env_name: str, batch: int, epochs: int, minibatch: int, hidden: int, device: str,
          path: str = "fused", compile: bool = False):
    from adpo_ray.rllib.factory import build_algo_config
    from adpo_ray.spec import TrialSpec, parse_spec

    spec = parse_spec({
        "name": "bench", "environments": [env_name], "scenarios": ["clean"], "algorithms": [algorithm],
        "budget": {"iterations": 1},
        "train": {"train_batch_size": batch, "num_epochs": epochs, "minibatch_size": minibatch},
        "hidden_sizes": [hidden],
        "resources": {"num_env_runners": 0, "num_envs_per_env_runner": 8,
                      "learner_device": "gpu" if device == "cuda" else "cpu",
                      "learner_update": "rllib" if path in ("rllib", "stock") else "fused",
                      "learner_compile": compile},
    })
    mode = "dynamic" if algorithm == "adpo" else "none"
    config = build_algo_config(spec.knobs(TrialSpec(env_name, "clean", algorithm, mode, hidden, 0)))
    config.evaluation(evaluation_interval=None)
    if path == "stock":
        from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner

        config.training(learner_class=PPOTorchLearner)
    return config.build_algo()


def time_update(algo, episodes, epochs: int, minibatch: int) -> float:
    from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

    batch = copy.deepcopy(episodes)  # the learner connector changes episodes in place
    start = time.perf_counter()
    algo.learner_group.update(
        episodes=batch,
        timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: sum(len(e) for e in episodes)},
        num_epochs=epochs,
        minibatch_size=minibatch,
        shuffle_batch_per_epoch=True,
    )
    return time.perf_counter() - start


LEARNERS = {"stock_ppo": ("ppo", "stock"), "ppo": ("ppo", "fused"), "adpo": ("adpo", "fused"),
            "adpo_rllib": ("adpo", "rllib"), "ppo_compiled": ("ppo", "fused", True),
            "adpo_compiled": ("adpo", "fused", True)}


def measure(device: str, hidden: int, names: list[str], args, episodes) -> dict[str, float]:
    """Median ms per minibatch of each learner's update on ``device``."""
    algos = {n: build(LEARNERS[n][0], args.env, args.batch, args.epochs, args.minibatch, hidden, device,
                      *LEARNERS[n][1:]) for n in names}
    for algo in algos.values():  # warm-up
        time_update(algo, episodes, args.epochs, args.minibatch)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(args.rounds):
        for n, algo in algos.items():
            times[n].append(time_update(algo, episodes, args.epochs, args.minibatch))
        print(f"{device} hidden {hidden} round {i}: " + "   ".join(f"{n} {t[-1]:.3f}s" for n, t in times.items()), flush=True)
    for algo in algos.values():
        algo.stop()
    minibatches = args.epochs * math.ceil(sum(len(e) for e in episodes) / args.minibatch)
    return {n: 1000 * statistics.median(t) / minibatches for n, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--minibatch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rllib-adpo", action="store_true", help="also time ADPO on RLlib's update loop")
    parser.add_argument("--compile", action="store_true",
                        help="also time our PPO and ADPO with resources.learner_compile (compiled in the warm-up)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here")
    torch.set_num_threads(1)
    ray.init(num_cpus=1, num_gpus=1 if args.device == "cuda" else 0, include_dashboard=False, log_to_driver=False)
    sampler = build("ppo", args.env, args.batch, args.epochs, args.minibatch, args.hidden[0], "cpu")
    episodes = sampler.env_runner.sample(num_timesteps=args.batch, explore=True)
    sampler.stop()
    names = ["stock_ppo", "ppo", "adpo"] + (["adpo_rllib"] if args.rllib_adpo else []) \
        + (["ppo_compiled", "adpo_compiled"] if args.compile else [])
    ms = {h: measure(args.device, h, names, args, episodes) for h in args.hidden}
    ray.shutdown()
    print(f"env={args.env} device={args.device} batch={args.batch} epochs={args.epochs} minibatch={args.minibatch}")
    for h, row in ms.items():
        print(f"hidden={h} " + " ".join(f"{n}_ms_per_minibatch={v:.2f}" for n, v in row.items()))
    for h, row in ms.items():
        print(f"hidden={h} adpo_over_ppo={row['adpo'] / row['ppo']:.3f} (goal <= 1.05) "
              f"ppo_over_stock={row['ppo'] / row['stock_ppo']:.3f} (goal <= 0.5)")
    first = ms[args.hidden[0]]
    print(f"ratio={first['ppo'] / first['stock_ppo']:.3f}")


if __name__ == "__main__":
    main()
