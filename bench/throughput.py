"""Env steps per second of one grid trial, per environment: the figure behind the wall-time
estimate of `run_grid.py --dry-run` (`THROUGHPUT` in adpo_ray/orchestration/planning.py).

    python bench/throughput.py [--config twelve_scenarios] [--iterations 11]

For each environment of the spec, its first ADPO trial runs through the grid's own trainable
(`GridTrainable`: RLlib's sampling, learner update and the spec's evaluation schedule) on an
embedded Ray with exactly the CPUs the trial asks for. The first iteration (building the
algorithm, first sampling) is timed apart; the rest gives env steps per second. Prints one line
per env and `ratio=<slowest / fastest env throughput>` last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="twelve_scenarios")
    parser.add_argument("--iterations", type=int, default=11)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from adpo_ray.cli import resolve_config
    from adpo_ray.orchestration.planning import plan_trials
    from adpo_ray.orchestration.trainable import GridTrainable
    from adpo_ray.spec import load_spec

    spec = load_spec(resolve_config(args.config))
    plans = plan_trials(spec)
    cpus = max(p.required.get("CPU", 1) for p in plans)
    ray.init(num_cpus=int(cpus), include_dashboard=False, log_to_driver=False)
    rates = {}
    for env in spec.environments:
        trial = next(p.trial for p in plans if p.trial.env == env and p.trial.algorithm == "adpo")
        config = {"spec": spec.model_dump(mode="json", by_alias=True), "trial": trial.as_dict()}
        start = time.perf_counter()
        trainable = GridTrainable(config)
        first = trainable.train()
        t0, s0 = time.perf_counter(), first["env_steps"]
        for _ in range(args.iterations - 1):
            last = trainable.train()
        elapsed = time.perf_counter() - t0
        rates[env] = (last["env_steps"] - s0) / elapsed
        trainable.stop()
        print(json.dumps({"env": env, "trial": trial.tag, "cpus": plans[0].required.get("CPU"),
                          "setup_and_first_iteration_s": round(t0 - start, 2),
                          "env_steps_per_s": round(rates[env], 1)}))
    ray.shutdown()
    print(f"ratio={min(rates.values()) / max(rates.values()):.3f}")


if __name__ == "__main__":
    main()
