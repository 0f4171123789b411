"""The clean evaluation of a MuJoCo policy: its mean action (or a sampled one) rolled out through
a frozen observation normalisation, scored by the episode's clean return. Teachers, distillation
students and ``adpo-ray evaluate`` are all measured by this one loop."""

from __future__ import annotations

import numpy as np
import torch
from ray.rllib.core.columns import Columns

from adpo_ray.envs.mujoco import make_mujoco
from adpo_ray.rllib.module import split_gaussian

#: Episode ``i`` of an evaluation resets with seed ``EVAL_SEED + i``, so that teachers, students
#: and ``adpo-ray evaluate`` are measured on the same episodes.
EVAL_SEED = 10_000


def policy_action(module, obs: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """The action of ``module`` (an RLModule with a diagonal-Gaussian head) at one observation
    ``obs`` ``(obs_dim,)``: its mean, plus ``exp(log_std) * N(0, 1)`` noise drawn from ``rng``
    when one is given; float32, shape ``(act_dim,)``."""
    device = next(module.parameters()).device
    with torch.no_grad():
        out = module.forward_inference({Columns.OBS: torch.as_tensor(obs[None], dtype=torch.float32, device=device)})
    mean, log_std = split_gaussian(out[Columns.ACTION_DIST_INPUTS])
    action = mean[0].cpu().numpy()
    if rng is not None:
        action = action + np.exp(log_std[0].cpu().numpy()) * rng.standard_normal(action.shape)
    return action.astype(np.float32)


def episode_returns(module, env_name: str, obs_norm: dict, episodes: int, seed: int = EVAL_SEED, *,
                    scenario: str = "clean", explore: bool = False, frames: list | None = None) -> list[float]:
    """The clean return (``info["clean_return"]``: noise never reaches the yardstick) of each of
    ``episodes`` episodes (reset seeds ``seed``, ``seed + 1``, ...) of ``env_name`` under
    ``scenario``, seen through the frozen ``obs_norm`` (an ``ObsNorm`` dict), acting by
    :func:`policy_action` (``explore``: sampled actions, the noise seeded by ``seed``).
    ``frames``: a list that receives every step's RGB frame."""
    env = make_mujoco(env_name, {"scenario": scenario, "obs_norm": obs_norm,
                                 "render_mode": "rgb_array" if frames is not None else None})
    rng = np.random.default_rng(seed) if explore else None
    returns = []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            done, info = False, {}
            while not done:
                obs, _, terminated, truncated, info = env.step(policy_action(module, obs, rng))
                if frames is not None:
                    frames.append(env.render())
                done = terminated or truncated
            returns.append(float(info["clean_return"]))
    finally:
        env.close()
    return returns


def evaluate_policy(module, env_name: str, obs_norm: dict, episodes: int, seed: int = EVAL_SEED,
                    explore: bool = False) -> float:
    """The mean clean return of :func:`episode_returns` on the clean env."""
    return float(np.mean(episode_returns(module, env_name, obs_norm, episodes, seed, explore=explore)))
