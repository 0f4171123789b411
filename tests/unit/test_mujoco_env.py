"""Noise and shift on MuJoCo: the training signal changes as the scenario table says,
reproducibly; the clean reward stays available and evaluation envs are clean."""

import numpy as np
import pytest

from adpo_ray.core.noise import SEVERITY_TABLE
from adpo_ray.envs import REWARD_SCALE, make_env

ENVS = ["HalfCheetah-v5", "Hopper-v5"]


def rollout(env_name, scenario, seed=0, steps=300):
    """Rewards of a random rollout under ``scenario`` and, step for step, of a clean twin env fed
    the same seed and actions (reward noise does not touch the dynamics, so the twin's reward is
    the clean one)."""
    env = make_env({"env": env_name, "scenario": scenario})
    twin = make_env({"env": env_name, "scenario": "clean"})
    env.reset(seed=seed)
    twin.reset(seed=seed)
    act_rng = np.random.default_rng(123)
    noisy, clean = [], []
    for _ in range(steps):
        action = act_rng.uniform(-1, 1, env.action_space.shape)
        _, r, term, trunc, _ = env.step(action)
        _, c, *_ = twin.step(action)
        noisy.append(r)
        clean.append(c)
        if term or trunc:
            env.reset()
            twin.reset()
    return np.array(noisy), np.array(clean), env


@pytest.mark.parametrize("env_name", ENVS)
def test_clean_scenario_leaves_reward(env_name):
    noisy, clean, _ = rollout(env_name, "clean")
    np.testing.assert_array_equal(noisy, clean)


@pytest.mark.parametrize("env_name", ENVS)
@pytest.mark.parametrize("scenario", ["gaussian-high", "heavy_tailed-high", "flip-high"])
def test_reward_noise_reproducible_and_as_tabled(env_name, scenario):
    a, clean_a, _ = rollout(env_name, scenario, seed=5, steps=2000)
    b, clean_b, _ = rollout(env_name, scenario, seed=5, steps=2000)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(clean_a, clean_b)
    delta = a - clean_a
    scale = REWARD_SCALE[env_name]
    params = SEVERITY_TABLE[scenario.split("-")[0]]["high"]
    if scenario.startswith("gaussian"):
        assert abs(delta.std() / (scale * params["sigma"]) - 1) < 0.1
    elif scenario.startswith("heavy"):
        hit = delta != 0
        assert abs(hit.mean() - params["p"]) < 5 * np.sqrt(params["p"] * (1 - params["p"]) / len(a))
    else:
        flipped = (a != clean_a)
        np.testing.assert_allclose(a[flipped], -clean_a[flipped])
        assert abs(flipped.mean() - params["p"]) < 5 * np.sqrt(params["p"] * (1 - params["p"]) / len(a))


@pytest.mark.parametrize("env_name", ENVS)
def test_shift_rescales_dynamics_per_episode(env_name):
    env = make_env({"env": env_name, "scenario": "shift-high"})
    nominal_env = make_env({"env": env_name, "scenario": "clean"})
    nominal_env.reset(seed=0)
    nominal = nominal_env.unwrapped.model.body_mass.copy()
    rng_masses = []
    for seed in range(3):
        env.reset(seed=seed)
        rng_masses.append(env.unwrapped.model.body_mass.copy())
    r = SEVERITY_TABLE["shift"]["high"]["dynamics_range"]
    for m in rng_masses:
        ratio = m[nominal > 0] / nominal[nominal > 0]
        assert np.all((ratio >= 1 - r - 1e-9) & (ratio <= 1 + r + 1e-9))
        assert not np.allclose(ratio, 1.0)
    assert not np.allclose(rng_masses[0], rng_masses[1])
    # the reward itself is not corrupted by a shift scenario: the episode's rewards sum to its
    # clean return
    env.reset(seed=7)
    rewards, info = [], {}
    for _ in range(2000):
        _, r, term, trunc, info = env.step(np.zeros(env.action_space.shape))
        rewards.append(r)
        if term or trunc:
            break
    assert info["clean_return"] == pytest.approx(sum(rewards))
    # and the nominal env keeps its nominal masses
    nominal_env.reset()
    np.testing.assert_array_equal(nominal_env.unwrapped.model.body_mass, nominal)


@pytest.mark.parametrize("env_name", ENVS)
def test_clean_return_at_episode_end_and_actions_clipped(env_name):
    env = make_env({"env": env_name, "scenario": "flip-high"})
    twin = make_env({"env": env_name, "scenario": "clean"})
    env.reset(seed=0)
    twin.reset(seed=0)
    total_clean, info = 0.0, {}
    for _ in range(2000):
        _, _, term, trunc, info = env.step(np.full(env.action_space.shape, 5.0))  # clipped to 1
        total_clean += twin.step(np.ones(env.action_space.shape))[1]
        if term or trunc:
            break
    assert info["clean_return"] == pytest.approx(total_clean)
