"""Whole training iterations of a MuJoCo trial pack, its sub-envs stepped as columns
(`adpo_ray.envs.mujoco_batch.MujocoBatch`, the default) against one at a time (gymnasium's
`SyncVectorEnv`, as before), side by side in one process.

    python bench/pack_columns.py [--config twelve_scenarios] [--env HalfCheetah-v5] [--hidden 64]
                                 [--members 16] [--iterations 6] [--set KEY=VALUE ...]

Two `PackTrainable`s of the same K trials (the preset's first ADPO trial's pack, as
`bench/throughput.py --packs` builds it) run in this process; one steps its training and
evaluation envs one sub-env at a time. After one warm-up iteration each, they train by turns,
one iteration each, which first alternating (`bench/throughput.py`'s `timed_by_turns`), so that a
drifting machine favours neither; each
iteration includes the spec's evaluation schedule. Prints each one's env steps/s and
`ratio=<columns / one at a time>` last. (That both ways step the same numbers is tested in
`tests/unit/test_mujoco_batch.py`; the two packs here share the process's global random state,
so their learners' shuffles differ.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import timed_by_turns  # noqa: E402 - after the path above


def one_at_a_time(trainable) -> None:
    """Step ``trainable``'s training and evaluation envs one sub-env at a time."""
    for runner in (trainable.algo.env_runner, trainable.algo.eval_env_runner):
        if runner is not None:
            runner.env.unwrapped.batch = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="twelve_scenarios")
    parser.add_argument("--env", default="HalfCheetah-v5", choices=["HalfCheetah-v5", "Hopper-v5"])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=6, help="timed iterations of each pack")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    from adpo_ray.cli import resolve_config
    from adpo_ray.orchestration.pack_trainable import PackTrainable
    from adpo_ray.spec import load_spec

    sets = [f"environments=[{args.env}]", f"hidden_sizes=[{args.hidden}]", "env_overrides={}",
            "algorithms=[adpo,ppo]", f"resources.pack={args.members}", *args.sets]
    spec = load_spec(resolve_config(args.config), sets)
    pack = next(p for p in spec.packs() if p[0].algorithm == "adpo")[:args.members]
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    torch.set_num_threads(1)  # as Ray gives a 1-CPU pack's actor
    config = {"spec": spec.model_dump(mode="json", by_alias=True), "trials": [t.as_dict() for t in pack]}

    def columns_on():
        trainable = PackTrainable(config)
        if trainable.algo.env_runner.env.unwrapped.batch is None:
            parser.error(f"{args.env}'s pack does not step as columns here")
        return trainable

    def columns_off():
        trainable = PackTrainable(config)
        one_at_a_time(trainable)
        return trainable

    # the first iteration of each (building, first sampling) is timed apart
    timed = timed_by_turns({"columns": columns_on, "one at a time": columns_off},
                           args.iterations + 1)
    rates = {name: rate for name, (_, rate) in timed.items()}
    print(json.dumps({"env": args.env, "hidden": args.hidden, "K": len(pack), "iterations": args.iterations,
                      **{f"{name} env steps/s": round(rate, 1) for name, rate in rates.items()}}), flush=True)
    ray.shutdown()
    print(f"ratio={rates['columns'] / rates['one at a time']:.3f}")


if __name__ == "__main__":
    main()
