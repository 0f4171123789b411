"""Env steps per second of one grid trial, per environment, and of trial packs at the preset's own
shape: the figures behind the wall-time estimate of `run_grid.py --dry-run` (`THROUGHPUT`,
`STARTUP_S` and `PACK_SPEEDUP` in adpo_ray/orchestration/planning.py).

    python bench/throughput.py [--config twelve_scenarios] [--iterations 11] [--packs 4 16]
                               [--set KEY=VALUE ...]

For each environment of the spec, its first ADPO trial runs through the grid's own trainable
(`GridTrainable`: RLlib's sampling, learner update and the spec's evaluation schedule) on an
embedded Ray with exactly the CPUs the trial asks for. The first iteration (building the
algorithm, first sampling) is timed apart; the rest gives env steps per second. With `--packs
K ...`, the first K trials of that trial's pack (`ExperimentSpec.packs`: same shape, members
differing in scenario, anchor and seed) run the same way as one `PackTrainable`; its per-member
env steps/s over the solo trial's, times K, is the pack's speed-up. The solo trial and the packs
train by turns, one iteration each (which first rotating), so that a machine whose speed drifts
within minutes slows them alike and the speed-ups compare iterations seconds apart. `--set` overrides the spec as
`run_grid.py --set` does (e.g. `--set 'hidden_sizes=[256]'`). Prints one JSON line per env (and
pack), and `ratio=<slowest / fastest env throughput>` last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed_by_turns(makes: dict[str, Any], iterations: int) -> dict[str, tuple[float, float]]:
    """``{name: (seconds from building the trainable to its first result, env steps/s of the
    rest)}`` for the trainables ``makes[name]()`` builds; after their first results they train by
    turns, one iteration each, the order rotating."""
    trainables, setup, last = {}, {}, {}
    for name, make in makes.items():
        start = time.perf_counter()
        trainables[name] = make()
        last[name] = trainables[name].train()
        setup[name] = time.perf_counter() - start
    seconds, steps = dict.fromkeys(makes, 0.0), dict.fromkeys(makes, 0)
    names = list(makes)
    for i in range(iterations - 1):
        for name in names[i % len(names):] + names[:i % len(names)]:
            start = time.perf_counter()
            result = trainables[name].train()
            seconds[name] += time.perf_counter() - start
            steps[name] += result["env_steps"] - last[name]["env_steps"]
            last[name] = result
    for trainable in trainables.values():
        trainable.stop()
    return {name: (setup[name], steps[name] / seconds[name]) for name in makes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="twelve_scenarios")
    parser.add_argument("--iterations", type=int, default=11)
    parser.add_argument("--packs", type=int, nargs="*", default=[], metavar="K", help="pack sizes to time too")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.iterations < 2:
        parser.error("--iterations must be >= 2 (the first is timed apart)")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    from adpo_ray.cli import resolve_config
    from adpo_ray.orchestration.pack_trainable import PackTrainable
    from adpo_ray.orchestration.planning import plan_trials
    from adpo_ray.orchestration.trainable import GridTrainable
    from adpo_ray.spec import load_spec

    spec = load_spec(resolve_config(args.config), args.sets)
    plans = plan_trials(spec.model_copy(update={"resources": spec.resources.model_copy(update={"pack": 1})}))
    cpus = max(p.required.get("CPU", 1) for p in plans)
    ray.init(num_cpus=int(cpus), include_dashboard=False, log_to_driver=False)
    # The trainables run in this process; torch's threads as Ray gives a trial's actor
    # (OMP_NUM_THREADS = its CPUs), not one per core: at hidden 256 a pack's update is arithmetic,
    # and two threads on a 2-core machine timed packs 20-40 % faster than a grid runs them.
    torch.set_num_threads(int(cpus))
    spec_dict = spec.model_dump(mode="json", by_alias=True)
    rates = {}
    for env in spec.environments:
        trial = next(p.trial for p in plans if p.trial.env == env and p.trial.algorithm == "adpo")
        makes = {"solo": partial(GridTrainable, {"spec": spec_dict, "trial": trial.as_dict()})}
        if args.packs:
            mates = next(p for p in spec.model_copy(update={"resources": spec.resources.model_copy(
                update={"pack": max(args.packs)})}).packs() if trial in p)
        for k in args.packs:
            if len(mates) < k:
                print(json.dumps({"env": env, "K": k, "skipped": f"its pack has {len(mates)} members"}))
                continue
            makes[k] = partial(PackTrainable, {"spec": spec_dict, "trials": [t.as_dict() for t in mates[:k]]})
        timings = timed_by_turns(makes, args.iterations)
        setup_s, rates[env] = timings.pop("solo")
        print(json.dumps({"env": env, "trial": trial.tag, "cpus": plans[0].required.get("CPU"),
                          "setup_and_first_iteration_s": round(setup_s, 2),
                          "env_steps_per_s": round(rates[env], 1)}), flush=True)
        for k, (setup_s, rate) in timings.items():
            per_member = rate / k
            print(json.dumps({"env": env, "K": k, "hidden": trial.hidden_size,
                              "setup_and_first_iteration_s": round(setup_s, 2),
                              "pack_env_steps_per_s": round(rate, 1), "per_member_env_steps_per_s": round(per_member, 1),
                              "speedup": round(per_member * k / rates[env], 2)}), flush=True)
    ray.shutdown()
    print(f"ratio={min(rates.values()) / max(rates.values()):.3f}")


if __name__ == "__main__":
    main()
