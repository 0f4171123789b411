"""Solo and trial-pack RLlib configs of a few env copies each, shared by the packed-env tests."""

from __future__ import annotations

from adpo_ray.rllib.factory import build_algo_config
from adpo_ray.rllib.packed import configure_pack
from adpo_ray.spec import TrialSpec, parse_spec

#: Env copies per trial (solo) and per member (pack).
N = 2
#: The members' seeds.
SEEDS = [3, 11]


def solo_config(env_name: str, scenario: str, seed: int, num_envs: int = N):
    """A solo trial's AlgorithmConfig, built as the grid builds it."""
    spec = parse_spec({"name": "pack", "environments": [env_name], "scenarios": [scenario], "seeds": [seed],
                       "budget": {"iterations": 1},
                       "resources": {"num_env_runners": 0, "num_envs_per_env_runner": num_envs}})
    knobs = spec.knobs(TrialSpec(env_name, scenario, "adpo", "dynamic", 16, seed))
    return build_algo_config(knobs).evaluation(evaluation_interval=None), knobs


def pack_config(env_name: str, scenarios: list[str], seeds: list[int], pack_seed: int = 100):
    """A pack's AlgorithmConfig: one member per (scenario, seed), each the env of its solo
    trial's config, ``N`` env copies each; the pack itself seeded with ``pack_seed``."""
    config, _ = solo_config(env_name, scenarios[0], pack_seed)
    members = [{**solo_config(env_name, s, seed)[1].env_config, "seed": seed} for s, seed in zip(scenarios, seeds, strict=True)]
    return configure_pack(config, members, N)
