"""Env registration for RLlib: one registered name, the env chosen by ``env_config["env"]``."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from ray.tune.registry import register_env

from adpo_ray.envs import make_env
from adpo_ray.rllib._ray_private import registered_env_creator

ENV_NAME = "adpo_ray_env"


def register() -> str:
    """Register :func:`adpo_ray.envs.make_env` with Ray under :data:`ENV_NAME` (idempotent)."""
    register_env(ENV_NAME, make_env)
    return ENV_NAME


def env_action_space(env: Any, env_config: dict | None) -> gym.Space | None:
    """The action space of an RLlib ``env`` setting, building one env copy if needed."""
    if env is None:
        return None
    if isinstance(env, type) and issubclass(env, gym.Env):
        instance = env(env_config or {})
    elif isinstance(env, str) and (creator := registered_env_creator(env)) is not None:
        instance = creator(env_config or {})
    elif isinstance(env, str):
        instance = gym.make(env)
    else:
        return None
    try:
        return instance.action_space
    finally:
        instance.close()
