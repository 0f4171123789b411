"""Trial-pack sampling throughput: a pack's env runner vs raw gymnasium stepping, side by side.

    python bench/pack_sampling.py [--env HalfCheetah-v5] [--sizes 16,64,128] [--per-member 8]
                                  [--steps 20000] [--rounds 5] [--profile]

"raw" steps ``K*N`` gymnasium envs (``gym.make``) in a plain loop with uniform-random actions (no
policy, no noise wrapper). "pack" is RLlib's SingleAgentEnvRunner on a pack of ``K`` members x
``N`` envs (members alternate a reward-noise and a shift scenario, seeds 0..K-1): the scenario
wrapper, the per-member observation filter, the policy forward pass of RLlib's default PPO module
(hidden 64) batched over all ``K*N`` rows, the connectors, episode bookkeeping and per-member
metrics. Everything runs in this process on one CPU thread. Each round runs both, raw then pack
or pack then raw by turns, and its ratio (pack over raw) is taken within the round: on a machine
whose speed drifts (a shared cloud host), each ratio compares two measurements a few seconds
apart. The median of the rounds' ratios is the result; their range shows the noise. On MuJoCo
each round also runs the pack with its sub-envs stepped one at a time through gymnasium's
``SyncVectorEnv`` (as before the pack's columnar step, :class:`~adpo_ray.envs.mujoco_batch.MujocoBatch`),
and reports the columnar runner's speed over that ("columns / one at a time"). Per size,
the env runner's own timers say where a vector step's time goes;
``--profile`` adds a cProfile of the pack's sampling at 64 envs. The last line is
``ratio=<median of the rounds' pack / raw at 64 envs>``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCENARIOS = ("gaussian-high", "shift-high")


def raw_steps_per_s(env_name: str, num_envs: int, steps: int) -> float:
    import gymnasium as gym

    envs = [gym.make(env_name) for _ in range(num_envs)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
        env.action_space.seed(i)
    done = 0
    start = time.perf_counter()
    while done < steps:
        for env in envs:
            _, _, term, trunc, _ = env.step(env.action_space.sample())
            if term or trunc:
                env.reset()
        done += num_envs
    elapsed = time.perf_counter() - start
    for env in envs:
        env.close()
    return done / elapsed


def build_runner(env_name: str, num_members: int, per_member: int):
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    from adpo_ray.rllib.factory import build_algo_config
    from adpo_ray.rllib.packed import configure_pack
    from adpo_ray.spec import TrialSpec, parse_spec

    spec = parse_spec({
        "name": "bench", "environments": [env_name], "scenarios": list(SCENARIOS), "algorithms": ["ppo"],
        "budget": {"iterations": 1},
        "resources": {"num_env_runners": 0, "num_envs_per_env_runner": per_member},
    })
    knobs = [spec.knobs(TrialSpec(env_name, SCENARIOS[k % 2], "ppo", "none", 64, k)) for k in range(num_members)]
    config = build_algo_config(knobs[0]).evaluation(evaluation_interval=None)
    members = [{**kn.env_config, "seed": kn.trial.seed} for kn in knobs]
    return SingleAgentEnvRunner(config=configure_pack(config, members, per_member))


def pack_steps_per_s(runner, steps: int, columns: bool = True) -> float:
    """Env steps/s of ``runner``'s sampling; ``columns=False``: its MuJoCo sub-envs stepped one at a
    time by gymnasium's ``SyncVectorEnv`` instead of as columns."""
    vec = runner.env.unwrapped
    batch = vec.batch
    vec.batch = batch if columns else None
    try:  # each way keeps its own episode state: start from a reset
        return _steps_per_s(runner, steps, force_reset=True)
    finally:
        vec.batch = batch


def _steps_per_s(runner, steps: int, force_reset: bool = False) -> float:
    start = time.perf_counter()
    done = 0
    while done < steps:
        episodes = runner.sample(num_timesteps=min(4096, steps - done), explore=True,
                                 force_reset=force_reset and not done)
        runner.get_metrics()  # as the training loop does after every sample
        done += sum(len(e) for e in episodes)
    return done / (time.perf_counter() - start)


#: RLlib's own env runner timers (seconds per vector step), and what they time.
TIMERS = {"env_step_timer": "env step", "env_to_module_connector/connector_pipeline_timer": "env-to-module",
          "rlmodule_inference_timer": "policy forward", "module_to_env_connector/connector_pipeline_timer": "module-to-env"}


def breakdown(runner, steps: int) -> str:
    """Where one vector step's time goes, from the env runner's own timers (ms per vector step)."""
    runner.get_metrics()
    start = time.perf_counter()
    done = 0
    while done < steps:
        done += sum(len(e) for e in runner.sample(num_timesteps=min(4096, steps - done), explore=True))
    per_step = (time.perf_counter() - start) / (done / runner.num_envs)
    metrics = runner.get_metrics()
    parts = {}
    for path, name in TIMERS.items():
        value = metrics
        for key in path.split("/"):
            value = value[key]
        parts[name] = value.peek()
    parts["rest (episodes, unbatch, callbacks)"] = per_step - sum(parts.values())
    return ", ".join(f"{name} {1e3 * t:.2f} ms ({t / per_step:.0%})" for name, t in parts.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--sizes", default="16,64,128", help="K*N values (each a multiple of --per-member)")
    parser.add_argument("--per-member", type=int, default=8, help="N, envs per member")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    bad = [s for s in sizes if s % args.per_member]
    if bad:
        parser.error(f"--sizes {bad} are not multiples of --per-member {args.per_member}")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import torch

    torch.set_num_threads(1)
    results = {}
    for size in sizes:
        runner = build_runner(args.env, size // args.per_member, args.per_member)
        pack_steps_per_s(runner, 2_000)  # warm-up
        has_columns = runner.env.unwrapped.batch is not None
        arms = {"raw": partial(raw_steps_per_s, args.env, size, args.steps),
                "pack": partial(pack_steps_per_s, runner, args.steps)}
        if has_columns:
            arms["one at a time"] = partial(pack_steps_per_s, runner, args.steps, columns=False)
        measured: dict[str, list[float]] = {name: [] for name in arms}
        for i in range(args.rounds):
            names = list(arms)
            for name in names[i % len(names):] + names[:i % len(names)]:  # by turns: drift favours none
                measured[name].append(arms[name]())
            line = "   ".join(f"{name} {v[-1]:,.0f} steps/s" for name, v in measured.items())
            print(f"{size} envs round {i}: {line}   ratio {measured['pack'][-1] / measured['raw'][-1]:.3f}")
        raw, pack = measured["raw"], measured["pack"]
        if has_columns:
            gains = [p / o for p, o in zip(pack, measured["one at a time"], strict=True)]
            print(f"{size} envs: columns / one at a time {statistics.median(gains):.3f} "
                  f"(rounds {min(gains):.3f}-{max(gains):.3f})")
        print(f"{size} envs, per vector step: {breakdown(runner, args.steps)}")
        if args.profile and size == 64:
            profiler = cProfile.Profile()
            profiler.enable()
            pack_steps_per_s(runner, args.steps)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        runner.stop()
        results[size] = (raw, pack, [p / r for r, p in zip(raw, pack, strict=True)])
    for size, (raw, pack, ratios) in results.items():
        print(f"env={args.env} envs={size} ({size // args.per_member} members x {args.per_member}) "
              f"raw_median={statistics.median(raw):,.0f} pack_median={statistics.median(pack):,.0f} steps/s "
              f"ratio={statistics.median(ratios):.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f})")
    ref = 64 if 64 in results else sizes[-1]
    print(f"ratio={statistics.median(results[ref][2]):.3f}")


if __name__ == "__main__":
    main()
