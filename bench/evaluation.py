"""A MuJoCo evaluation's time with as many envs as episodes against the training env count, side by side.

    python bench/evaluation.py [--config twelve_scenarios] [--env HalfCheetah-v5] [--packs 1 16]
                               [--rounds 4]

For each size K (1: a solo trial), the preset's first K trials of one pack (hidden 64, sampling in
the trial's own process) are built twice: as the grid builds them (the evaluation env runner runs
``min(num_envs_per_env_runner, evaluation.episodes)`` envs per trial or member,
:func:`adpo_ray.rllib.factory.eval_envs`) and with the training env count
(``num_envs_per_env_runner``), as before that rule. Each trains one iteration (so the filter has
statistics), then the two evaluate in alternation, ``--rounds`` times each, torch on one thread.
Prints one JSON line per K with both times and ``ratio=<new / old total>`` for the last K.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(knobs: list, all_envs: bool):
    """The algorithm of ``knobs`` (one: a solo trial), its evaluation on ``all_envs`` training envs
    per member instead of the grid's count; one iteration trained."""

    from adpo_ray.rllib.factory import build_algo_config
    from adpo_ray.rllib.pack_factory import build_pack_config

    k, n = len(knobs), knobs[0].num_envs_per_env_runner
    config = build_algo_config(knobs[0]) if k == 1 else build_pack_config(knobs)
    if all_envs:
        env_config = dict(config.evaluation_config["env_config"])
        if k > 1:
            env_config["num_envs_per_member"] = n
        config.evaluation(evaluation_config={**config.evaluation_config, "env_config": env_config,
                                             "num_envs_per_env_runner": k * n})
    algo = config.build_algo()
    algo.train()
    return algo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="twelve_scenarios")
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--packs", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    import ray
    import torch

    from adpo_ray.cli import resolve_config
    from adpo_ray.spec import load_spec

    torch.set_num_threads(1)  # as Ray gives a 1-CPU trial actor
    spec = load_spec(resolve_config(args.config), [f"environments=[{args.env}]", "resources.num_env_runners=0", "anchors.init=null",
                                   "hidden_sizes=[64]", "algorithms=[adpo]", "env_overrides={}"])
    pack = max(spec.packs(), key=len)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ratio = None
    try:
        for k in args.packs:
            knobs = [spec.knobs(t) for t in pack[:k]]
            algos = {"new": build(knobs, all_envs=False), "old": build(knobs, all_envs=True)}
            times: dict[str, list[float]] = {"new": [], "old": []}
            for r in range(args.rounds):
                for label in ("new", "old") if r % 2 == 0 else ("old", "new"):
                    start = time.perf_counter()
                    algos[label].evaluate()
                    times[label].append(time.perf_counter() - start)
            for algo in algos.values():
                algo.stop()
            ratio = sum(times["new"]) / sum(times["old"])
            print(json.dumps({"env": args.env, "K": len(knobs), "envs_per_member": knobs[0].num_envs_per_env_runner,
                              "episodes": knobs[0].eval_episodes, "new_s": [round(t, 2) for t in times["new"]],
                              "old_s": [round(t, 2) for t in times["old"]], "ratio": round(ratio, 3)}), flush=True)
    finally:
        ray.shutdown()
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
