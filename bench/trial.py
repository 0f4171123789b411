"""One ADPO MuJoCo trial, end to end: the fused learner update against RLlib's, side by side.

    python bench/trial.py [--config mujoco_online] [--env HalfCheetah-v5] [--iterations 20]
                          [--mode dynamic] [--hidden 64] [--eval-interval 5]

Builds the trial exactly as the grid builds it from a preset (its ADPO knobs, batch, epochs,
minibatch, env runners, observation filter and evaluation; ``--eval-interval`` sets how often it
evaluates), once with ``resources.learner_update: fused`` and once with ``rllib``, and trains each
for ``--iterations`` iterations, alternating them iteration by iteration so that both see the
same machine load. Prints, for each path, env steps per second and the split of an iteration's
wall time into sample / learn / evaluate / other, timed around RLlib's own calls (sampling the
env runners, the learner group's update, ``Algorithm.evaluate``); the last line is
``ratio=<fused env steps/s / rllib env steps/s>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARTS = ("sample", "learn", "evaluate", "other")


def build(config_name: str, env: str, mode: str, hidden: int, eval_interval: int, path: str):
    from adpo_ray.rllib.factory import build_algo_config
    from adpo_ray.spec import TrialSpec, load_spec, parse_spec

    root = Path(__file__).resolve().parents[1]
    data = load_spec(root / "tune_configs" / f"{config_name}.yaml").model_dump(by_alias=True, exclude_none=True)
    data["resources"] = {**data.get("resources", {}), "learner_update": path}
    data["evaluation"] = {**data.get("evaluation", {}), "interval": eval_interval}
    spec = parse_spec(data)
    knobs = spec.knobs(TrialSpec(env, "clean", "adpo", mode, hidden, 0))
    return build_algo_config(knobs).build_algo()


class Clock:
    """Seconds spent inside the wrapped calls, per part, since the last :meth:`lap`."""

    def __init__(self) -> None:
        self.spent = dict.fromkeys(PARTS, 0.0)

    def wrap(self, part: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[part] += time.perf_counter() - start
        return timed

    def lap(self, wall: float) -> dict[str, float]:
        out = {**self.spent, "other": max(0.0, wall - sum(v for k, v in self.spent.items() if k != "other"))}
        self.spent = dict.fromkeys(PARTS, 0.0)
        return out


def instrument(algo, clock: Clock) -> None:
    """Time the three parts of PPO's (and so ADPO's) training iteration around RLlib's calls."""
    import ray.rllib.algorithms.ppo.ppo as ppo_module

    algo.learner_group.update = clock.wrap("learn", algo.learner_group.update)
    algo.evaluate = clock.wrap("evaluate", algo.evaluate)
    if not hasattr(ppo_module.synchronous_parallel_sample, "clocks"):  # one function for every algorithm
        original = ppo_module.synchronous_parallel_sample

        def dispatch(*args, worker_set=None, **kwargs):
            clock_ = dispatch.clocks.get(id(worker_set))
            fn = clock_.wrap("sample", original) if clock_ else original
            return fn(*args, worker_set=worker_set, **kwargs)

        dispatch.clocks = {}
        ppo_module.synchronous_parallel_sample = dispatch
    ppo_module.synchronous_parallel_sample.clocks[id(algo.env_runner_group)] = clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="mujoco_online")
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--mode", default="dynamic")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--eval-interval", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    algos = {p: build(args.config, args.env, args.mode, args.hidden, args.eval_interval, p) for p in ("fused", "rllib")}
    clocks = {p: Clock() for p in algos}
    for path, algo in algos.items():
        instrument(algo, clocks[path])
    totals = {p: dict.fromkeys(PARTS, 0.0) for p in algos}
    wall = dict.fromkeys(algos, 0.0)
    steps = dict.fromkeys(algos, 0)
    for i in range(args.iterations):
        for path, algo in algos.items():
            start = time.perf_counter()
            result = algo.train()
            took = time.perf_counter() - start
            wall[path] += took
            steps[path] = int(result["env_runners"]["num_env_steps_sampled_lifetime"])
            for part, seconds in clocks[path].lap(took).items():
                totals[path][part] += seconds
        print(f"iteration {i + 1}: " + "   ".join(f"{p} {steps[p]:,} steps in {wall[p]:.1f}s" for p in algos), flush=True)
    for algo in algos.values():
        algo.stop()
    ray.shutdown()
    print(f"config={args.config} env={args.env} adpo/{args.mode} hidden={args.hidden} "
          f"iterations={args.iterations} eval_interval={args.eval_interval}")
    rate = {p: steps[p] / wall[p] for p in algos}
    for path in algos:
        parts = "  ".join(f"{part}={totals[path][part] / args.iterations:.3f}s" for part in PARTS)
        print(f"path={path} env_steps_per_s={rate[path]:,.0f} per_iteration: {parts}")
    print(f"learn_fused_over_rllib={totals['fused']['learn'] / totals['rllib']['learn']:.3f}")
    print(f"ratio={rate['fused'] / rate['rllib']:.3f}")


if __name__ == "__main__":
    main()
