"""Distillation math and data, no Ray: Gaussian KL/log-prob against torch.distributions, candidate
rewards from a restored simulator state against a fresh env, the Parquet round trip."""

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from adpo_ray.core.distill import bc_loss, diag_gaussian_kl, diag_gaussian_logp, kd_loss
from adpo_ray.envs import make_env
from adpo_ray.envs.candidates import (
    COLUMNS,
    Signal,
    collect,
    probe,
    read_dataset,
    sim_state,
    write_dataset,
)
from adpo_ray.envs.mujoco import ObsNorm

ENVS = ["HalfCheetah-v5", "Hopper-v5"]


def test_diag_gaussian_kl_matches_torch(float64):
    g = torch.Generator().manual_seed(0)
    mp, lp, mq, lq = (torch.randn(5, 3, generator=g) for _ in range(4))
    expected = kl_divergence(Normal(mp, lp.exp()), Normal(mq, lq.exp())).sum(-1)
    torch.testing.assert_close(diag_gaussian_kl(mp, lp, mq, lq), expected)
    assert torch.all(diag_gaussian_kl(mp, lp, mp, lp).abs() < 1e-12)


def test_diag_gaussian_kl_by_hand(float64):
    # one dim: KL(N(1, 1) || N(0, 2^2)) = log 2 + (1 + 1) / 8 - 1/2
    kl = diag_gaussian_kl(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([np.log(2.0)]))
    assert kl.item() == pytest.approx(np.log(2) + 2 / 8 - 0.5, abs=1e-12)


def test_logp_kd_bc(float64):
    g = torch.Generator().manual_seed(1)
    x, m, ls = (torch.randn(4, 2, generator=g) for _ in range(3))
    torch.testing.assert_close(diag_gaussian_logp(x, m, ls), Normal(m, ls.exp()).log_prob(x).sum(-1))
    # KD is zero at the teacher and positive elsewhere; its gradient reaches only the student
    tm, tl = m.clone().requires_grad_(), ls.clone().requires_grad_()
    sm, sl = (m + 0.3).requires_grad_(), ls.clone().requires_grad_()
    assert kd_loss(m, ls, m, ls).item() == pytest.approx(0.0, abs=1e-12)
    loss = kd_loss(tm, tl, sm, sl)
    loss.backward()
    assert loss.item() > 0 and tm.grad is None and sm.grad is not None
    logp = torch.tensor([[-1.0, -3.0], [-2.0, -4.0]])
    assert bc_loss(logp).item() == pytest.approx(2.5)


@pytest.mark.parametrize("env_name", ENVS)
def test_candidate_reward_from_restored_state_equals_fresh_env(env_name):
    env = make_env({"env": env_name, "scenario": "clean"})
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(25):  # somewhere inside an episode
        env.step(rng.uniform(-1, 1, env.action_space.shape))
    qpos, qvel = sim_state(env)
    actions = rng.uniform(-1, 1, (4, *env.action_space.shape))
    probed = probe(env, actions)
    for action, reward in zip(actions, probed, strict=True):
        fresh = make_env({"env": env_name, "scenario": "clean"})
        fresh.reset(seed=99)
        fresh.unwrapped.set_state(qpos, qvel)
        _, expected, *_ = fresh.step(action)
        assert reward == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # probing leaves the episode's own state where it was
    after_q, after_v = sim_state(env)
    np.testing.assert_array_equal(after_q, qpos)
    np.testing.assert_array_equal(after_v, qvel)
    assert len(set(np.round(probed, 9))) == len(probed)  # different actions, different rewards


def _policy(obs):
    return np.full(3, 0.2), np.full(3, -0.5)  # a fixed Gaussian "teacher" (Hopper: 3 action dims)


def _norm():
    return ObsNorm(np.zeros(11), np.ones(11), 10.0)


def _collect(scenario, seed=0, n=60):
    return collect("Hopper-v5", scenario, _policy, _norm(), num_states=n, num_candidates=5, seed=seed,
                   heldout_fraction=0.25)


def test_collect_columns_reproducible_and_noisy():
    a, b = _collect("gaussian-high"), _collect("gaussian-high")
    assert set(a) == set(COLUMNS)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["actions"].shape == (60, 5, 3) and a["rewards"].shape == (60, 5) and a["obs"].shape == (60, 11)
    assert not np.allclose(a["rewards"], a["rewards_clean"])  # noise on the training signal
    clean = _collect("clean")
    np.testing.assert_array_equal(clean["rewards"], clean["rewards_clean"])
    flip = _collect("flip-high", n=200)
    flipped = np.all(flip["rewards"] == -flip["rewards_clean"], axis=1)
    kept = np.all(flip["rewards"] == flip["rewards_clean"], axis=1)
    assert np.all(flipped | kept) and flipped.any() and kept.any()  # a flip flips the whole list
    # the stored teacher log-probs are the teacher's
    t = torch.as_tensor
    expected = Normal(t(a["teacher_mean"])[:, None], t(a["teacher_log_std"]).exp()[:, None]).log_prob(t(a["actions"])).sum(-1)
    np.testing.assert_allclose(a["teacher_logp"], expected.numpy(), rtol=1e-5)
    assert 0 < a["heldout"].mean() < 0.6


def test_collect_shift_changes_dynamics_not_reward_noise():
    clean, shift = _collect("clean", n=40), _collect("shift-high", n=40)
    np.testing.assert_array_equal(shift["rewards"], shift["rewards_clean"])  # no noise on the signal
    # same seeds and teacher: only the perturbed masses and friction can move the candidates' rewards
    np.testing.assert_array_equal(clean["actions"][0], shift["actions"][0])
    assert not np.allclose(clean["rewards_clean"], shift["rewards_clean"])


def test_dataset_round_trip(tmp_path):
    parts = [_collect("clean", seed=1, n=40), _collect("clean", seed=2, n=30)]
    write_dataset(tmp_path / "ds", parts, {"env": "Hopper-v5", "obs_norm": _norm().as_dict()})
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    back = read_dataset(tmp_path / "ds")
    assert set(back) == set(COLUMNS)
    for k in COLUMNS:
        np.testing.assert_array_equal(back[k], np.concatenate([parts[0][k], parts[1][k]]))
        assert back[k].dtype == parts[0][k].dtype
    assert len(back["obs"]) == 70 and back["heldout"].dtype == bool
    from adpo_ray.envs.candidates import dataset_metadata

    meta = dataset_metadata(tmp_path / "ds")
    assert meta["env"] == "Hopper-v5" and meta["shapes"]["actions"] == [5, 3]


def test_obs_norm_matches_rllib_filter():
    from ray.rllib.utils.filter import MeanStdFilter

    rng = np.random.default_rng(0)
    filt = MeanStdFilter((4,), clip=5.0)
    for x in rng.normal(3, 2, (50, 4)):
        filt(x)
    x = rng.normal(3, 2, 4)
    norm = ObsNorm(filt.running_stats.mean, filt.running_stats.std, 5.0)
    np.testing.assert_allclose(norm(x), filt(x, update=False), rtol=1e-5)


# -- candidate signals: the teacher's lookahead value and n-step returns -----------------------
def _at_some_state(env_name, seed=3, steps=8):
    env = make_env({"env": env_name, "scenario": "clean"})
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        env.step(rng.uniform(-0.5, 0.5, env.action_space.shape))
    return env, rng


def _teacher(env):
    """A deterministic stand-in teacher: a fixed linear-tanh policy and value on normalised obs."""
    o, a = env.observation_space.shape[0], env.action_space.shape[0]
    g = np.random.default_rng(11)
    w_pi, w_v = g.normal(size=(a, o)) * 0.3, g.normal(size=o)
    norm = ObsNorm(g.normal(size=o) * 0.1, 1.0 + g.random(o), 10.0)
    return (lambda x: (np.tanh(w_pi @ x), np.full(a, -0.5))), (lambda x: float(np.tanh(w_v @ x) * 50)), norm


def _fresh(env_name, qpos, qvel):
    fresh = make_env({"env": env_name, "scenario": "clean"})
    fresh.reset(seed=99)
    fresh.unwrapped.set_state(qpos, qvel)
    return fresh


@pytest.mark.parametrize("env_name", ENVS)
def test_q_lookahead_is_reward_plus_teacher_value_of_the_next_state(env_name):
    env, rng = _at_some_state(env_name)
    policy, value, norm = _teacher(env)
    qpos, qvel = sim_state(env)
    actions = rng.uniform(-1, 1, (4, *env.action_space.shape))
    got = probe(env, actions, Signal("q_lookahead", gamma=0.9, value=value, obs_norm=norm))
    bootstrapped = 0
    for action, q in zip(actions, got, strict=True):
        obs, reward, terminated, *_ = _fresh(env_name, qpos, qvel).step(action)
        expected = reward if terminated else reward + 0.9 * value(norm(obs))
        assert q == pytest.approx(expected, abs=1e-6)
        bootstrapped += not terminated and q != pytest.approx(reward, abs=1e-3)
    assert bootstrapped  # the lookahead term is really there
    after_q, after_v = sim_state(env)  # probing leaves the episode's state where it was
    np.testing.assert_array_equal(after_q, qpos)
    np.testing.assert_array_equal(after_v, qvel)


@pytest.mark.parametrize("env_name", ENVS)
def test_nstep_is_the_hand_rolled_return_and_one_step_is_the_reward(env_name):
    env, rng = _at_some_state(env_name, seed=5)
    policy, _, norm = _teacher(env)
    qpos, qvel = sim_state(env)
    actions = rng.uniform(-1, 1, (3, *env.action_space.shape))
    got = probe(env, actions, Signal("nstep", gamma=0.95, horizon=6, policy=policy, obs_norm=norm))
    for action, ret in zip(actions, got, strict=True):
        fresh = _fresh(env_name, qpos, qvel)
        obs, reward, terminated, *_ = fresh.step(action)
        expected, discount = reward, 1.0
        for _ in range(5):
            if terminated:
                break
            discount *= 0.95
            obs, reward, terminated, *_ = fresh.step(policy(norm(obs))[0])
            expected += discount * reward
        assert ret == pytest.approx(expected, abs=1e-6)
    one = probe(env, actions, Signal("nstep", gamma=0.95, horizon=1, policy=policy, obs_norm=norm))
    np.testing.assert_array_equal(one, probe(env, actions))  # n = 1: the one-step reward
    after_q, after_v = sim_state(env)
    np.testing.assert_array_equal(after_q, qpos)
    np.testing.assert_array_equal(after_v, qvel)


def test_signal_needs_its_teacher_parts():
    with pytest.raises(ValueError, match="q_lookahead needs the teacher's value"):
        Signal("q_lookahead")
    with pytest.raises(ValueError, match="nstep needs the teacher's policy"):
        Signal("nstep", horizon=3)
    with pytest.raises(ValueError, match="allowed: reward, q_lookahead, nstep"):
        Signal("return")


def test_collect_scores_candidates_with_the_signal_and_noise_applies_to_it():
    env = make_env({"env": "Hopper-v5", "scenario": "clean"})
    policy, value, norm = _teacher(env)
    kw = dict(num_states=30, num_candidates=4, seed=0, heldout_fraction=0.2)
    reward = collect("Hopper-v5", "clean", policy, norm, **kw)
    look = collect("Hopper-v5", "clean", policy, norm, signal="q_lookahead", gamma=0.9, value=value, **kw)
    noisy = collect("Hopper-v5", "gaussian-high", policy, norm, signal="q_lookahead", gamma=0.9, value=value, **kw)
    np.testing.assert_array_equal(look["actions"], reward["actions"])  # the same rollout and candidates
    assert not np.allclose(look["rewards_clean"], reward["rewards_clean"])
    # the first state is the same in both scenarios (noise draws come after its candidates)
    np.testing.assert_array_equal(noisy["rewards_clean"][0], look["rewards_clean"][0])
    assert not np.allclose(noisy["rewards"], noisy["rewards_clean"])  # the scenario's noise on the signal


def test_dataset_keys_differ_by_signal_and_its_knobs():
    from adpo_ray.spec import dataset_key, parse_spec

    base = {"name": "d", "environments": ["Hopper-v5"], "scenarios": ["clean"], "algorithms": ["adpo", "kd"],
            "budget": {"iterations": 2}, "distill": {"dataset": {"states": 100}}}

    def key(**dataset):
        spec = parse_spec({**base, "distill": {"dataset": {"states": 100, **dataset}}})
        return dataset_key(spec, "Hopper-v5", "clean")

    keys = {key(), key(signal="q_lookahead"), key(signal="nstep"), key(signal="nstep", horizon=5),
            key(signal="q_lookahead", gamma=0.9)}
    assert len(keys) == 5
    assert key(signal="q_lookahead", horizon=3) == key(signal="q_lookahead")  # horizon is nstep's
    assert key(gamma=0.5) == key()  # the one-step reward reads neither: its key is as before signals
    assert key() == "clean_100x8_" + _old_digest({"states": 100, "candidates": 8, "heldout_fraction": 0.1,
                                                   "chunks": 4, "seed": 0})


def _old_digest(fields):
    import hashlib
    import json

    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


def test_dry_run_shows_the_signals_cost(capsys, tmp_path):
    from adpo_ray.cli import main

    rc = main(["grid", "--config", "distill_check", "--dry-run", "--storage-path", str(tmp_path),
               "--set", "distill.dataset.signal=nstep", "--set", "distill.dataset.horizon=10"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "scored by nstep (1,600,000 simulator steps: candidates x 10 per state)" in " ".join(out.split())
    # students are priced at dataset states/s (they step no simulator while training), not env steps/s
    from adpo_ray.orchestration.planning import STUDENT_THROUGHPUT

    assert "dataset states/s per trial" in out and f"{STUDENT_THROUGHPUT['Hopper-v5']:,.0f}" in out


def test_dry_run_of_the_fair_online_check(capsys, tmp_path):
    """The fair online claim check validates and its dry run prints its size and its pretraining."""
    from adpo_ray.cli import main

    rc = main(["grid", "--config", "online_claim_check", "--dry-run", "--storage-path", str(tmp_path)])
    out = " ".join(capsys.readouterr().out.split())
    assert rc == 0
    assert "trials: 150 = 2 env(s) x 5 scenario(s) x 5 method(s) x 1 hidden size(s) x 3 seed(s)" in out
    assert "2 pretrained starting policies (PPO on the clean env, 300,000 env steps each" in out


def test_dry_run_of_the_bandit_paper_grid_names_its_pretraining_budget(capsys, tmp_path):
    """The bandit paper grid pretrains its reference for 30 iterations: the dry run says so."""
    from adpo_ray.cli import main

    rc = main(["grid", "--config", "bandit_paper", "--dry-run", "--storage-path", str(tmp_path),
               "--set", "seeds=[0]", "--set", "scenarios=[flip-high]"])  # a small plan: the same text
    out = " ".join(capsys.readouterr().out.split())
    assert rc == 0, out
    assert "env steps or 30 iterations, whichever comes first, each, one per env and hidden size" in out, out
