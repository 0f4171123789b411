"""Sampling throughput: adpo-ray's env runner per core vs raw gymnasium stepping, side by side.

    python bench/sampling.py [--env HalfCheetah-v5] [--num-envs 32] [--steps 20000] [--rounds 3]

"raw" steps one gymnasium env in this process with uniform-random actions (no policy, no noise
wrapper). "ours" is the env runner of an ADPO trial built exactly as the grid builds it (scenario
wrapper, observation filter, policy forward pass, episode bookkeeping), with no remote env runners,
so everything runs on this one core. Rounds alternate raw / ours; medians are compared.
The last line is `ratio=<ours / raw>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def raw_steps_per_s(env_name: str, steps: int) -> float:
    import gymnasium as gym

    env = gym.make(env_name)
    env.reset(seed=0)
    env.action_space.seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - start)


def build_runner(env_name: str, num_envs: int, scenario: str):
    from adpo_ray.rllib.factory import build_algo_config
    from adpo_ray.spec import TrialSpec, parse_spec

    spec = parse_spec({
        "name": "bench", "environments": [env_name], "scenarios": [scenario], "budget": {"iterations": 1},
        "resources": {"num_env_runners": 0, "num_envs_per_env_runner": num_envs},
    })
    config = build_algo_config(spec.knobs(TrialSpec(env_name, scenario, "adpo", "dynamic", 64, 0)))
    config.evaluation(evaluation_interval=None)
    algo = config.build_algo()
    return algo, algo.env_runner


def ours_steps_per_s(runner, steps: int) -> float:
    start = time.perf_counter()
    done = 0
    while done < steps:
        episodes = runner.sample(num_timesteps=min(4096, steps - done), explore=True)
        runner.get_metrics()  # as the training loop does after every sample (reduces the stats)
        done += sum(len(e) for e in episodes)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenario", default="gaussian-high")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    torch.set_num_threads(1)  # one core: the policy's forward pass too
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    algo, runner = build_runner(args.env, args.num_envs, args.scenario)
    ours_steps_per_s(runner, 2_000)  # warm-up
    raw, ours = [], []
    for i in range(args.rounds):
        raw.append(raw_steps_per_s(args.env, args.steps))
        ours.append(ours_steps_per_s(runner, args.steps))
        print(f"round {i}: raw {raw[-1]:,.0f} steps/s   ours {ours[-1]:,.0f} steps/s "
              f"({args.num_envs} envs, one core)")
    algo.stop()
    ray.shutdown()
    r, o = statistics.median(raw), statistics.median(ours)
    print(f"env={args.env} num_envs={args.num_envs} raw_median={r:,.0f} ours_median={o:,.0f}")
    print(f"ratio={o / r:.3f}")


if __name__ == "__main__":
    main()
