"""Learner update time: ADPO's over PPO's on the same batch, epochs and minibatch, side by side.

    python bench/learner.py [--env HalfCheetah-v5] [--batch 2048] [--epochs 10] [--minibatch 64] [--rounds 5]

Both learners are built by the grid's own factory with the same network (64-64), optimiser and
batch settings; one batch of episodes is sampled once, and each round times one full
`learner_group.update` (all epochs x minibatches, plus each algorithm's after-update hooks:
ADPO's anchor refresh) for ADPO and for PPO, alternating. The last line is `ratio=<ADPO / PPO>`.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(algorithm: str, env_name: str, batch: int, epochs: int, minibatch: int):
    from adpo_ray.rllib.factory import build_algo_config
    from adpo_ray.spec import TrialSpec, parse_spec

    spec = parse_spec({
        "name": "bench", "environments": [env_name], "scenarios": ["clean"], "algorithms": [algorithm],
        "budget": {"iterations": 1},
        "adpo": {"train_batch_size": batch, "num_epochs": epochs, "minibatch_size": minibatch},
        "resources": {"num_env_runners": 0, "num_envs_per_env_runner": 8},
    })
    mode = "dynamic" if algorithm == "adpo" else "none"
    config = build_algo_config(spec.knobs(TrialSpec(env_name, "clean", algorithm, mode, 64, 0)))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--minibatch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    torch.set_num_threads(1)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    adpo = build("adpo", args.env, args.batch, args.epochs, args.minibatch)
    ppo = build("ppo", args.env, args.batch, args.epochs, args.minibatch)
    episodes = ppo.env_runner.sample(num_timesteps=args.batch, explore=True)
    time_update(adpo, episodes, args.epochs, args.minibatch)  # warm-up both
    time_update(ppo, episodes, args.epochs, args.minibatch)
    a_times, p_times = [], []
    for i in range(args.rounds):
        a_times.append(time_update(adpo, episodes, args.epochs, args.minibatch))
        p_times.append(time_update(ppo, episodes, args.epochs, args.minibatch))
        print(f"round {i}: adpo {a_times[-1]:.3f}s   ppo {p_times[-1]:.3f}s")
    adpo.stop()
    ppo.stop()
    ray.shutdown()
    a, p = statistics.median(a_times), statistics.median(p_times)
    print(f"env={args.env} batch={args.batch} epochs={args.epochs} minibatch={args.minibatch} "
          f"adpo_median={a:.3f}s ppo_median={p:.3f}s")
    print(f"ratio={a / p:.3f}")


if __name__ == "__main__":
    main()
