"""Where one learner update spends its time: stock RLlib PPO, our PPO and our ADPO (the fused
path) on CPU, at one hidden size, profiled with cProfile (Python functions, cumulative) and the
torch profiler (operators, self CPU time).

    python bench/profile_learner.py [--hidden 64] [--learner ppo|adpo|stock_ppo|adpo_rllib] [--top 25]

Builds the learners exactly as ``bench/learner.py`` does, warms up once, then profiles two full
updates of the chosen learner. The findings are summarised in ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.learner import LEARNERS, build, time_update  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--learner", choices=sorted(LEARNERS), default="adpo")
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--minibatch", type=int, default=64)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    torch.set_num_threads(1)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    algorithm, path = LEARNERS[args.learner]
    algo = build(algorithm, args.env, args.batch, args.epochs, args.minibatch, args.hidden, "cpu", path)
    episodes = algo.env_runner.sample(num_timesteps=args.batch, explore=True)
    time_update(algo, episodes, args.epochs, args.minibatch)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(2):
        time_update(algo, episodes, args.epochs, args.minibatch)
    profiler.disable()
    print(f"== cProfile: {args.learner}, hidden {args.hidden}, two updates (cumulative time) ==")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.top)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        time_update(algo, episodes, args.epochs, args.minibatch)
    print(f"== torch profiler: {args.learner}, hidden {args.hidden}, one update (self CPU time) ==")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    algo.stop()
    ray.shutdown()


if __name__ == "__main__":
    main()
