"""Trial packs as one RLlib algorithm against solo trials: per-member env steps/s of whole training
iterations (``algo.train()``: sampling, learning and, on MuJoCo, each member's clean evaluation).

    python bench/pack.py [--ks 1 4 16] [--bandit-ks 1 4 16 64] [--hidden 64 256]
                         [--iterations 2] [--mujoco-batch 1024] [--bandit-batch 1024]
                         [--envs-per-member 1] [--no-parts]

Per env (PreferenceBandit, HalfCheetah-v5) and hidden size: a solo ADPO trial (the grid's
``build_algo_config``) and packs of K members (``build_pack_config``; the members differ in seed,
scenario and lr), all with ``num_env_runners: 0`` in this process on one torch thread, the env
kind's tuned knobs except the batch (``--*-batch`` env steps per member per iteration). Each
is built, trained one warm-up iteration, then timed over ``--iterations`` iterations; per-member
env steps/s is (the pack's env steps / K) / seconds. MuJoCo evaluates every iteration (the
spec's default ``evaluation.interval: 1``, 2 episodes per member), as a solo trial does.

Then, unless ``--no-parts``, the two parts' own ratios from the part benches (imported, not
copied): the stacked learner against K=16 solo learners (``bench/pack_learner.py``, ms per
member-minibatch, hidden 64) and the pack's env runner against raw gymnasium stepping at 64
HalfCheetah envs (``bench/pack_sampling.py``). Prints one JSON line, then
``ratio=<HalfCheetah hidden 64, K=16 per-member steps/s / solo steps/s>`` (K times it is the
pack's speed-up over running its K trials one after another).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ENVS = ("PreferenceBandit", "HalfCheetah-v5")
SCENARIOS = ("gaussian-high", "shift-high")


def member_knobs(env: str, k: int, hidden: int, batch: int, per_member: int) -> list:
    from adpo_ray.spec import TrialSpec, parse_spec

    spec = parse_spec({
        "name": "bench-pack", "environments": [env], "scenarios": list(SCENARIOS), "budget": {"iterations": 1000},
        "train": {"train_batch_size": batch},
        "resources": {"num_env_runners": 0, "num_envs_per_env_runner": per_member},
    })
    return [dataclasses.replace(spec.knobs(TrialSpec(env, SCENARIOS[m % 2], "adpo", "dynamic", hidden, m)),
                                lr=1e-3 * (1 + 0.1 * m)) for m in range(k)]


def steps_per_s(algo, iterations: int, members: int) -> float:
    """Per-member env steps/s over ``iterations`` training iterations, after one warm-up."""
    from adpo_ray.metrics import ENV_STEPS, curate

    before = curate(algo.train())[ENV_STEPS]
    start = time.perf_counter()
    for _ in range(iterations):
        after = curate(algo.train())[ENV_STEPS]
    return (after - before) / members / (time.perf_counter() - start)


def run_trials(args) -> list[dict]:
    from adpo_ray.rllib.factory import build_algo_config
    from adpo_ray.rllib.pack_factory import build_pack_config

    rows = []
    for env in ENVS:
        batch = args.bandit_batch if env == "PreferenceBandit" else args.mujoco_batch
        for hidden in args.hidden:
            knobs = member_knobs(env, 1, hidden, batch, args.envs_per_member)
            algo = build_algo_config(knobs[0]).build_algo()
            solo = steps_per_s(algo, args.iterations, 1)
            algo.stop()
            rows.append(dict(env=env, hidden=hidden, K=0, per_member_steps_per_s=round(solo, 1)))
            print(f"{env} h{hidden} solo: {solo:,.0f} steps/s", flush=True)
            for k in args.bandit_ks if env == "PreferenceBandit" else args.ks:
                algo = build_pack_config(member_knobs(env, k, hidden, batch, args.envs_per_member)).build_algo()
                per = steps_per_s(algo, args.iterations, k)
                algo.stop()
                rows.append(dict(env=env, hidden=hidden, K=k, per_member_steps_per_s=round(per, 1),
                                 over_solo=round(per / solo, 3), speedup=round(k * per / solo, 2)))
                print(f"{env} h{hidden} K={k}: {per:,.0f} steps/s per member, {per / solo:.3f} of solo, "
                      f"x{k * per / solo:.2f} the work", flush=True)
    return rows


def part_ratios() -> dict:
    """The learner's and the sampler's ratios, from the part benches' own functions."""
    from bench import pack_learner, pack_sampling

    ns = argparse.Namespace(minibatch=64, minibatches=20)
    stacked, solo = pack_learner.stacked_round(16, 64, ns), pack_learner.solo_round(16, 64, ns)
    learner = [(stacked(), solo()) for _ in range(3)]
    runner = pack_sampling.build_runner("HalfCheetah-v5", 8, 8)
    pack_sampling.pack_steps_per_s(runner, 2_000)  # warm-up
    sampling = [(pack_sampling.pack_steps_per_s(runner, 8_000), pack_sampling.raw_steps_per_s("HalfCheetah-v5", 64, 8_000))
                for _ in range(2)]
    runner.stop()
    return {
        "learner_k16_h64_stacked_over_solo_ms": round(statistics.median(a / b for a, b in learner), 3),
        "sampling_64_envs_pack_over_raw": round(statistics.median(a / b for a, b in sampling), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--bandit-ks", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations (after one warm-up)")
    parser.add_argument("--mujoco-batch", type=int, default=1024, help="env steps per member per iteration")
    parser.add_argument("--bandit-batch", type=int, default=1024)
    parser.add_argument("--envs-per-member", type=int, default=1, help="N (the spec default)")
    parser.add_argument("--no-parts", action="store_true", help="skip the learner and sampling part ratios")
    args = parser.parse_args()
    if 16 not in args.ks or 64 not in args.hidden:
        parser.error("--ks must include 16 and --hidden 64 (the ratio's row)")
    if args.iterations < 1:
        parser.error("--iterations must be >= 1")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    torch.set_num_threads(1)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        rows = run_trials(args)
    finally:
        ray.shutdown()
    parts = {} if args.no_parts else part_ratios()
    print(json.dumps({"unit": "env steps/s per member (whole training iterations)",
                      "threads": 1, "iterations": args.iterations, "rows": rows, "parts": parts}))
    ref = {(r["env"], r["hidden"], r["K"]): r for r in rows}
    print(f"ratio={ref[('HalfCheetah-v5', 64, 16)]['over_solo']:.3f}")


if __name__ == "__main__":
    main()
