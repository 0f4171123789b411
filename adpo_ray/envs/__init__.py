"""Environments: the preference bandit, the MuJoCo noise/shift wrapper (HalfCheetah-v5, Hopper-v5),
and the one env creator of the project (:func:`make_env`)."""

from typing import Any

import gymnasium as gym

from adpo_ray.envs.bandit import BanditProblem, PreferenceBandit, bandit_problem, winmass
from adpo_ray.envs.mujoco import REWARD_SCALE, NoisyMujoco, make_mujoco

#: Environments a spec may name. ``list_source`` says how ADPO builds its lists there.
ENVIRONMENTS: dict[str, dict[str, str]] = {
    "PreferenceBandit": {"kind": "bandit", "list_source": "actions"},
    "HalfCheetah-v5": {"kind": "mujoco", "list_source": "batch"},
    "Hopper-v5": {"kind": "mujoco", "list_source": "batch"},
}



def make_env(config: dict[str, Any]) -> gym.Env:
    """Build the env named ``config["env"]`` with the scenario ``config["scenario"]`` (training
    signal) and, for the bandit, its problem parameters. The single env creator of the project."""
    name = config.get("env", "PreferenceBandit")
    if name not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {name!r}; allowed: {', '.join(ENVIRONMENTS)}")
    if ENVIRONMENTS[name]["kind"] == "bandit":
        return PreferenceBandit(config)
    return make_mujoco(name, config)


__all__ = [
    "ENVIRONMENTS",
    "REWARD_SCALE",
    "BanditProblem",
    "NoisyMujoco",
    "PreferenceBandit",
    "bandit_problem",
    "make_env",
    "make_mujoco",
    "winmass",
]
