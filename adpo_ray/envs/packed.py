"""A trial pack's env: K members' envs in one gymnasium vector env of ``K * N`` sub-envs.

Member ``k`` owns sub-envs ``k * N ... k * N + N - 1`` (sub-env ``i`` belongs to member ``i // N``).
Each member has its own env config (scenario, seed, ...); all members share the env and its
spaces. Member ``k``'s sub-env ``j`` is built and seeded as the solo trial's sub-env ``j`` is (RLlib
resets a solo trial's sync vector env with ``seed + worker_index``, and gymnasium gives sub-env
``j`` that seed ``+ j``), so a member's stream of observations, rewards, noise, infos and resets is
the solo trial's for the same seed and actions.

Stepping is gymnasium's ``SyncVectorEnv`` (synchronous, in one process, next-step autoreset, the
solo trial's vector env): only the seeds differ, one list of per-sub-env seeds from the one seed
RLlib's env runner resets with. HalfCheetah-v5 and Hopper-v5 sub-envs step as columns
(:class:`~adpo_ray.envs.mujoco_batch.MujocoBatch`), with the numbers ``SyncVectorEnv`` gives.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np

from adpo_ray.envs import ENVIRONMENTS, make_env

__all__ = ["PackedVectorEnv", "check_members", "make_packed_env"]


def check_members(members: Any, num_envs_per_member: Any) -> None:
    """Check a pack's ``members`` (non-empty list of env config dicts, each with an int ``seed``,
    all naming the same env) and ``num_envs_per_member`` (int >= 1).

    Raises:
        ValueError: naming the bad field (``members[k].seed``...) and what is allowed.
    """
    if not isinstance(members, (list, tuple)) or not members:
        raise ValueError(f"members must be a non-empty list of env configs (dicts), got {members!r}")
    for k, member in enumerate(members):
        if not isinstance(member, dict):
            raise ValueError(f"members[{k}] must be an env config dict, got {type(member).__name__}")
        seed = member.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"members[{k}].seed must be an int (the solo trial's seed), got {seed!r}")
    env = members[0].get("env", "PreferenceBandit")
    for k, member in enumerate(members):
        if member.get("env", "PreferenceBandit") != env:
            raise ValueError(
                f"members[{k}].env is {member.get('env')!r}; every member of a pack must use "
                f"members[0]'s env {env!r}"
            )
    if isinstance(num_envs_per_member, bool) or not isinstance(num_envs_per_member, (int, np.integer)) \
            or num_envs_per_member < 1:
        raise ValueError(f"num_envs_per_member must be an int >= 1, got {num_envs_per_member!r}")


class PackedVectorEnv(gym.vector.SyncVectorEnv):
    """``len(members) * num_envs_per_member`` sub-envs; sub-env ``i`` belongs to member ``i // N``.

    Args:
        members: one env config per member, as :func:`adpo_ray.envs.make_env` takes it, plus
            ``seed`` (int): the member's solo trial seed.
        num_envs_per_member: ``N``, the solo trial's envs per env runner.
        seed_base: the seed RLlib's env runner adds its worker offset to (the pack's
            ``config.seed``): ``reset(seed=s)`` seeds member ``k``'s sub-env ``j`` with
            ``members[k]["seed"] + (s - seed_base) + j``; ``reset(seed=None)`` seeds nothing.

    Observations are ``(K * N, *obs_shape)`` in the single env's dtype, rewards ``(K * N,)``
    float64, terminations/truncations ``(K * N,)`` bool, infos gymnasium's vector dict.

    Raises:
        ValueError: bad ``members`` / ``num_envs_per_member`` (naming the field), or members
            whose observation or action spaces differ.
    """

    def __init__(self, members: list[dict[str, Any]], num_envs_per_member: int, seed_base: int = 0):
        check_members(members, num_envs_per_member)
        self.members = [dict(m) for m in members]
        self.num_members = len(self.members)
        self.num_envs_per_member = int(num_envs_per_member)
        self.seed_base = int(seed_base)
        #: ``member_index[i]``: the member of sub-env ``i``, shape ``(K * N,)`` int64.
        self.member_index = np.repeat(np.arange(self.num_members, dtype=np.int64), self.num_envs_per_member)
        envs = [make_env(_env_config(m)) for m in self.members for _ in range(self.num_envs_per_member)]
        for i, env in enumerate(envs):  # before SyncVectorEnv's own check, to name the member
            if env.observation_space != envs[0].observation_space or env.action_space != envs[0].action_space:
                raise ValueError(
                    f"members[{i // self.num_envs_per_member}] has spaces {env.observation_space}, "
                    f"{env.action_space}; a pack needs members[0]'s {envs[0].observation_space}, "
                    f"{envs[0].action_space}"
                )
        super().__init__([partial(_built, env) for env in envs])
        #: the columnar step of MuJoCo sub-envs (None: gymnasium's one sub-env at a time)
        self.batch = None
        if ENVIRONMENTS[self.members[0].get("env", "PreferenceBandit")]["kind"] == "mujoco":
            from adpo_ray.envs.mujoco_batch import MujocoBatch, batchable

            if batchable(self.envs):
                self.batch = MujocoBatch(self.envs)

    def member_of(self, env_index: int) -> int:
        """The member (``0 .. K-1``) that sub-env ``env_index`` belongs to."""
        return int(self.member_index[env_index])

    def sub_env_seeds(self, seed: int | None) -> list[int | None]:
        """The seed each sub-env gets from ``reset(seed=seed)`` (length ``K * N``)."""
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"a pack is reset with one int seed (or None), got {seed!r}")
        offset = int(seed) - self.seed_base
        n = self.num_envs_per_member
        return [int(m["seed"]) + offset + j for m in self.members for j in range(n)]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        out = super().reset(seed=self.sub_env_seeds(seed), options=options)
        if self.batch is not None:
            self.batch.reset_state()
        return out

    def step(self, actions):
        if self.batch is None:
            return super().step(actions)
        return self.batch.step(actions)


def _built(env: gym.Env) -> gym.Env:
    return env


def _env_config(member: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in member.items() if k != "seed"}


def make_packed_env(config: dict[str, Any]) -> gym.Env | PackedVectorEnv:
    """The pack's env creator. ``config``: ``members`` (list of env configs with ``seed``),
    ``num_envs_per_member`` (N), ``seed_base`` (the pack's seed, default 0) and, from RLlib's
    ``vector_entry_point``, ``num_envs`` (must be ``K * N``): a :class:`PackedVectorEnv`. Without
    ``num_envs`` (a single env asked for its spaces): member 0's env, whose spaces every member
    shares.

    Raises:
        ValueError: bad keys (naming them), or ``num_envs`` other than ``K * N``.
    """
    members = config.get("members")
    per_member = config.get("num_envs_per_member")
    check_members(members, per_member)
    if "num_envs" not in config:
        return make_env(_env_config(members[0]))
    if config["num_envs"] != len(members) * per_member:
        raise ValueError(
            f"num_envs_per_env_runner is {config['num_envs']}; a pack of {len(members)} members x "
            f"num_envs_per_member {per_member} needs {len(members) * per_member}"
        )
    return PackedVectorEnv(members, per_member, seed_base=int(config.get("seed_base", 0)))
