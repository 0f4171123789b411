"""The columnar MuJoCo step of a trial pack gives, array for array and dtype for dtype, what
gymnasium's ``SyncVectorEnv`` gives stepping the same sub-envs one at a time: observations,
rewards (noise drawn from each sub-env's generator), terminations, truncations at the time limit,
next-step autoresets and every info key with its mask. Envs it cannot step fall back."""

from __future__ import annotations

from functools import partial

import gymnasium as gym
import numpy as np
import pytest

from adpo_ray.envs import NoisyMujoco, make_env
from adpo_ray.envs.mujoco_batch import MujocoBatch, batchable, construction_args
from adpo_ray.envs.packed import PackedVectorEnv

#: One member per kind of scenario (reward noise of each type, the dynamics shift, none).
SCENARIOS = ["clean", "gaussian-high", "heavy_tailed-high", "flip-high", "shift-high"]


def assert_same_step(got, want, where):
    for name, g, w in zip(("obs", "rewards", "terminated", "truncated"), got[:4], want[:4], strict=True):
        assert g.dtype == w.dtype, (where, name, g.dtype, w.dtype)
        np.testing.assert_array_equal(g, w, err_msg=f"{where}: {name}")
    assert got[4].keys() == want[4].keys(), (where, sorted(got[4]), sorted(want[4]))
    for key in got[4]:
        assert got[4][key].dtype == want[4][key].dtype, (where, key)
        np.testing.assert_array_equal(got[4][key], want[4][key], err_msg=f"{where}: info {key}")


@pytest.mark.parametrize(
    ("env_name", "per_member", "steps", "dtype"),
    [
        # past HalfCheetah's 1000-step time limit (truncation, clean_return, autoreset); the
        # float32 actions of RLlib's module
        ("HalfCheetah-v5", 1, 1003, np.float32),
        # Hopper ends its episodes early (unhealthy): many terminations and resets
        ("Hopper-v5", 2, 300, np.float64),
    ],
)
def test_batch_steps_as_sync_vector_env(env_name, per_member, steps, dtype):
    members = [{"env": env_name, "scenario": s, "seed": 10 + k} for k, s in enumerate(SCENARIOS)]
    pack = PackedVectorEnv(members, per_member)
    assert isinstance(pack.batch, MujocoBatch)
    sync = gym.vector.SyncVectorEnv(
        [partial(make_env, {"env": env_name, "scenario": s}) for s in SCENARIOS for _ in range(per_member)])
    obs, infos = pack.reset(seed=7)
    s_obs, s_infos = sync.reset(seed=pack.sub_env_seeds(7))
    np.testing.assert_array_equal(obs, s_obs)
    rng = np.random.default_rng(0)
    truncated = terminated = 0
    for t in range(steps):
        actions = rng.uniform(-1.2, 1.2, pack.action_space.shape).astype(dtype)  # some outside the box
        got, want = pack.step(actions), sync.step(actions)
        assert_same_step(got, want, f"step {t}")
        truncated += int(got[3].sum())
        terminated += int(got[2].sum())
    if env_name == "HalfCheetah-v5":
        assert truncated == len(SCENARIOS) * per_member  # every sub-env hit the time limit once
    else:
        assert terminated > len(SCENARIOS) * per_member  # several episodes per sub-env
    pack.close()
    sync.close()


def test_a_reset_mid_episode_starts_the_batch_afresh():
    """A seeded reset in the middle of episodes clears the time limit and the clean return, as
    the sub-envs' own wrappers do."""
    members = [{"env": "HalfCheetah-v5", "scenario": "gaussian-high", "seed": 1}]
    pack = PackedVectorEnv(members, 2)
    sync = gym.vector.SyncVectorEnv([partial(make_env, {"env": "HalfCheetah-v5", "scenario": "gaussian-high"})] * 2)
    rng = np.random.default_rng(1)
    for seed in (0, 5):
        pack.reset(seed=seed)
        sync.reset(seed=pack.sub_env_seeds(seed))
        for t in range(600):
            actions = rng.uniform(-1, 1, pack.action_space.shape).astype(np.float32)
            assert_same_step(pack.step(actions), sync.step(actions), f"seed {seed}, step {t}")


def test_envs_it_cannot_step_fall_back_to_gymnasium():
    """A frozen observation normalisation (an offline student's env) is not a chain the batch
    knows: such a pack steps one sub-env at a time; so does the bandit."""
    norm = {"mean": [0.0] * 17, "std": [1.0] * 17, "clip": 10.0}
    pack = PackedVectorEnv([{"env": "HalfCheetah-v5", "obs_norm": norm, "seed": 0}], 2)
    assert pack.batch is None and not batchable(pack.envs)
    assert PackedVectorEnv([{"env": "PreferenceBandit", "seed": 0}], 2).batch is None
    mixed = [make_env({"env": "HalfCheetah-v5"}), make_env({"env": "Hopper-v5"})]
    assert not batchable(mixed) and not batchable([])
    # a step that reads other weights than its pack-mates' (gym.make's keyword arguments)
    heavy = NoisyMujoco(gym.make("Hopper-v5", ctrl_cost_weight=0.5, disable_env_checker=True))
    assert construction_args(heavy.unwrapped)["ctrl_cost_weight"] == 0.5
    assert not batchable([make_env({"env": "Hopper-v5"}), heavy])
    assert batchable([make_env({"env": "Hopper-v5"}), make_env({"env": "Hopper-v5", "scenario": "flip-high"})])
    with pytest.raises(ValueError, match="MujocoBatch steps"):
        MujocoBatch(mixed)


def test_actions_of_the_wrong_shape_are_refused():
    pack = PackedVectorEnv([{"env": "Hopper-v5", "seed": 0}], 2)
    pack.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions must have shape \(2, 3\)"):
        pack.step(np.zeros((2, 4), dtype=np.float32))


def test_fast_states_are_clipped_and_judged_as_hopper_does():
    """Hopper clips velocities to +-10 in its observation and ends an episode whose state leaves
    the healthy range: start every sub-env fast (velocities of 20 and more) and compare."""
    members = [{"env": "Hopper-v5", "scenario": "gaussian-high", "seed": k} for k in range(2)]
    pack = PackedVectorEnv(members, 2)
    sync = gym.vector.SyncVectorEnv([partial(make_env, {"env": "Hopper-v5", "scenario": "gaussian-high"})] * 4)
    pack.reset(seed=3)
    sync.reset(seed=pack.sub_env_seeds(3))
    for i, (p, s) in enumerate(zip(pack.envs, sync.envs, strict=True)):
        qvel = np.linspace(-20 - 40 * i, 20 + 40 * i, p.unwrapped.model.nv)
        for env in (p.unwrapped, s.unwrapped):
            env.set_state(env.data.qpos.copy(), qvel)
    actions = np.zeros(pack.action_space.shape, dtype=np.float32)
    got, want = pack.step(actions), sync.step(actions)
    assert_same_step(got, want, "fast start")
    assert np.abs(got[0]).max() == 10.0 and got[2].any()  # clipped, and some ended unhealthy
