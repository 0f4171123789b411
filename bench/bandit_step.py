"""A bandit pack's env step: its sub-envs stepped together
(:meth:`~adpo_ray.envs.bandit.PreferenceBandit.step_many`, what ``BanditPackEnvRunner`` does)
against one ``reset()`` + ``step()`` per sub-env (what it did before), side by side.

    python bench/bandit_step.py [--envs 16 128] [--rounds 5]

Per count of sub-envs (a pack of 16 members x 8 envs is 128): sub-envs of the twelve scenarios in
turn, ``--rounds`` alternated rounds of 200 vector steps each way (reset, then step). Prints one
JSON line per count (microseconds per env step, medians over rounds), then
``ratio=<together / one at a time, at the largest count>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adpo_ray.core.noise import TWELVE  # noqa: E402
from adpo_ray.envs.bandit import PreferenceBandit  # noqa: E402

STEPS = 200


def one_at_a_time(envs, actions) -> None:
    for _ in range(STEPS):
        for env in envs:
            env.reset()
        for env, a in zip(envs, actions.tolist(), strict=True):
            env.step(a)


def together(envs, actions) -> None:
    for _ in range(STEPS):
        PreferenceBandit.reset_many(envs)
        PreferenceBandit.step_many(envs, actions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ratio = None
    for n in args.envs:
        envs = [PreferenceBandit({"scenario": TWELVE[i % len(TWELVE)].name}) for i in range(n)]
        for i, env in enumerate(envs):
            env.reset(seed=i)
        actions = np.random.default_rng(0).integers(0, envs[0].action_space.n, n)
        us = {"one_at_a_time": [], "together": []}
        for r in range(args.rounds):
            for name in (("one_at_a_time", "together") if r % 2 == 0 else ("together", "one_at_a_time")):
                t0 = time.perf_counter()
                (one_at_a_time if name == "one_at_a_time" else together)(envs, actions)
                us[name].append(1e6 * (time.perf_counter() - t0) / (STEPS * n))
        med = {k: round(statistics.median(v), 2) for k, v in us.items()}
        ratio = med["together"] / med["one_at_a_time"]
        print(json.dumps({"envs": n, "us_per_env_step": med, "ratio": round(ratio, 3)}), flush=True)
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
