"""The preference bandit: a valid gymnasium env with clean evaluation and noisy training signal."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from adpo_ray.envs import BanditProblem, PreferenceBandit, winmass


def test_check_env():
    check_env(PreferenceBandit({"scenario": "gaussian-high"}), skip_render_check=True)


def test_one_step_episode_and_info():
    env = PreferenceBandit({"num_items": 5, "context_dim": 3, "scenario": "clean"})
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3,) and obs.dtype == np.float32
    _, reward, term, trunc, info = env.step(2)
    assert term and not trunc
    np.testing.assert_array_equal(info["utilities_noisy"], info["utilities"])
    assert reward == pytest.approx(float(info["utilities"][2]))
    assert info["best_item"] == int(np.argmax(info["utilities"]))


def test_same_problem_across_copies_and_unit_scale():
    a, b = BanditProblem(problem_seed=3), BanditProblem(problem_seed=3)
    x = np.random.default_rng(0).standard_normal((1000, 8))
    np.testing.assert_array_equal(a.utilities(x), b.utilities(x))
    u = a.utilities(x)
    assert 0.7 < u.std() < 1.3
    assert not np.array_equal(BanditProblem(problem_seed=4).utilities(x), u)
    # the best item varies with the context (a real contextual problem)
    assert len(np.unique(u.argmax(-1))) >= 4


def test_noise_only_on_training_signal():
    env = PreferenceBandit({"scenario": "flip-high"})
    flips = 0
    for seed in range(200):
        env.reset(seed=seed)
        _, r, *_, info = env.step(0)
        assert r == pytest.approx(float(info["utilities_noisy"][0]))
        assert np.allclose(info["utilities"], env.problem.utilities(env._x), atol=1e-6)
        flips += bool(np.allclose(info["utilities_noisy"], -info["utilities"]))
    assert 50 < flips < 90  # p = 0.35 of 200


def test_reproducible_with_seed():
    env = PreferenceBandit({"scenario": "heavy_tailed-high"})
    outs = []
    for _ in range(2):
        obs, _ = env.reset(seed=11)
        outs.append((obs, env.step(1)[4]["utilities_noisy"]))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def test_shift_moves_training_contexts_only():
    env = PreferenceBandit({"scenario": "shift-high"})
    xs = np.stack([env.reset(seed=s)[0] for s in range(500)])
    proj = xs @ env.problem.shift_direction
    assert abs(proj.mean() - 2.0) < 0.2
    assert abs(env.problem.eval_contexts(2000) @ env.problem.shift_direction).mean() < 1.0


def test_winmass_bounds():
    p = BanditProblem(num_items=6)
    uniform = winmass(p, lambda x: np.full((len(x), 6), 1 / 6))
    assert uniform == pytest.approx(1 / 6)
    oracle = winmass(p, lambda x: np.eye(6)[p.utilities(x).argmax(-1)])
    assert oracle == pytest.approx(1.0)
    with pytest.raises(ValueError, match="expected"):
        winmass(p, lambda x: np.ones((len(x), 3)))


def test_utilities_of_a_row_are_the_same_in_any_batch():
    p = BanditProblem(problem_seed=2)
    x = np.random.default_rng(1).standard_normal((257, 8)).astype(np.float32)
    whole = p.utilities(x)
    np.testing.assert_array_equal(np.stack([p.utilities(row) for row in x]), whole)
    np.testing.assert_array_equal(p.utilities(x[3:40]), whole[3:40])
    # the network itself: tanh(x W1 + b1) W2, standardised (to rounding of the sums' order)
    raw = np.tanh(x.astype(np.float64) @ p._w1 + p._b1) @ p._w2
    np.testing.assert_allclose(whole, (raw - p._mean) / p._std, rtol=0, atol=1e-12)


def test_eval_contexts_and_best_items_are_fixed_copies():
    p = BanditProblem(problem_seed=5)
    x = p.eval_contexts(300)
    np.testing.assert_array_equal(p.eval_best_items(300), p.utilities(x).argmax(-1))
    x[:] = 0  # a caller's copy: the next call is unchanged
    np.testing.assert_array_equal(p.eval_contexts(300), np.random.default_rng(5 + 1_000_003).standard_normal((300, 8)).astype(np.float32))


SCENARIOS = ["clean", "gaussian-high", "heavy_tailed-high", "flip-high", "shift-high"]


def test_step_many_is_each_env_stepped_alone():
    def envs():  # two problems, every noise type, each env seeded
        out = [PreferenceBandit({"scenario": s, "problem_seed": i % 2}) for i, s in enumerate(SCENARIOS * 3)]
        for i, env in enumerate(out):
            env.reset(seed=100 + i)
        return out

    together, alone = envs(), envs()
    actions = np.random.default_rng(0).integers(0, 8, len(together))
    for _ in range(3):  # steps and the resets between them go on from each other
        out = PreferenceBandit.step_many(together, actions)
        steps = [env.step(int(a)) for env, a in zip(alone, actions, strict=True)]
        np.testing.assert_array_equal(out.obs, np.stack([s[0] for s in steps]))
        np.testing.assert_array_equal(out.rewards, [s[1] for s in steps])
        np.testing.assert_array_equal(out.utilities_noisy.astype(np.float32), np.stack([s[4]["utilities_noisy"] for s in steps]))
        np.testing.assert_array_equal(out.utilities.astype(np.float32), np.stack([s[4]["utilities"] for s in steps]))
        np.testing.assert_array_equal(out.clean_return, [s[4]["clean_return"] for s in steps])
        np.testing.assert_array_equal(PreferenceBandit.reset_many(together), np.stack([env.reset()[0] for env in alone]))
    # control: the noisy scenarios did corrupt, the clean ones did not
    assert np.array_equal(out.utilities_noisy[0], out.utilities[0])
    assert not np.array_equal(out.utilities_noisy[1], out.utilities[1])


def test_step_many_refuses_bad_actions_by_range():
    envs = [PreferenceBandit({"num_items": 4}) for _ in range(2)]
    for env in envs:
        env.reset(seed=0)
    for bad in ([0, 4], [-1, 0], [0.5, 1.0], [0]):
        with pytest.raises(ValueError, match=r"actions must be 2 ints in \[0, 4\)"):
            PreferenceBandit.step_many(envs, np.asarray(bad))
    with pytest.raises(ValueError, match="every env must have 4 items"):
        PreferenceBandit.step_many([*envs, PreferenceBandit({"num_items": 5})], np.asarray([0, 0, 0]))
