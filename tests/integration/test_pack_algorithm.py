"""A trial pack as ONE RLlib algorithm is K solo trials: with the same batch (the pack's sampled
episodes, split by member) and the same shuffles, one pack update leaves every member's
parameters, anchor and anchor schedule (``ppo_kl``: its KL coefficient beta) where its own solo
algorithm's update leaves them. Real
RLlib algorithms (pack: build_pack_config; solos: factory.build_algo_config), real sampling."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ray.rllib.algorithms.ppo.ppo import LEARNER_RESULTS_KL_KEY
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns

from adpo_ray.metrics import ANCHOR_KL, MEMBER_GROUP, PPO_KL_BETA, RLLIB_CURR_KL_COEFF, curate
from adpo_ray.rllib import _ray_private as rp
from adpo_ray.rllib.factory import build_algo_config
from adpo_ray.rllib.pack_factory import build_pack_config
from adpo_ray.rllib.packed import MEMBER
from adpo_ray.spec import TrialSpec, parse_spec

from ..helpers.packs import (
    BATCH,
    EMA_HOOK,
    KL_BETA,
    SEEDS,
    build,
    learner,
    max_diff,
    member_knobs,
    pack_states,
    solo_state,
    split,
    update,
)

pytestmark = pytest.mark.slow


def pack_and_solos(knobs, shuffle):
    return build(build_pack_config(knobs), shuffle), [build(build_algo_config(kn), shuffle) for kn in knobs]


CASES = [
    ("PreferenceBandit", "adpo", ["fixed", "dynamic", "ema"], {"loss": "listwise"}, "device"),
    ("PreferenceBandit", "adpo", ["kl_triggered", EMA_HOOK, "dynamic"], {"loss": "pairwise"}, "rllib"),
    ("PreferenceBandit", "adpo", ["dynamic", "kl_triggered", "fixed"], {"loss": "listwise", "list_source": "batch",
                                                                        "list_size": 8}, "device"),
    # ADPO's KL penalty to the anchor, each member's own coefficient (categorical and Gaussian)
    ("PreferenceBandit", "adpo", ["fixed", "dynamic", "ema"], {"loss": "listwise", "anchor_kl_coeff": 0.2}, "device"),
    ("PreferenceBandit", "dpo", ["fixed"] * 3, {}, "rllib"),
    ("PreferenceBandit", "ppo", ["none"] * 3, {}, "device"),
    ("PreferenceBandit", "ppo_kl", ["none"] * 3, {}, "rllib"),
    ("Hopper-v5", "ppo_kl", ["none"] * 3, {}, "device"),
    # Hopper's episodes end at different steps: the members' batches differ in size
    ("Hopper-v5", "adpo", ["ema", "kl_triggered", "fixed"], {"loss": "pairwise", "list_size": 4}, "device"),
    ("Hopper-v5", "adpo", ["fixed", "ema", "dynamic"], {"loss": "listwise", "list_size": 4, "anchor_kl_coeff": 0.2},
     "device"),
]


@pytest.mark.parametrize("env,algorithm,modes,adpo,shuffle", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[3].get('loss', '')}-{c[3].get('list_source', '')}-{c[4]}"
                              + ("-anchor_kl" if "anchor_kl_coeff" in c[3] else "") for c in CASES])
def test_pack_update_equals_each_members_solo_update(ray_local, env, algorithm, modes, adpo, shuffle):
    knobs = member_knobs(env, algorithm, modes, **adpo)
    pack, solos = pack_and_solos(knobs, shuffle)
    try:
        k = len(knobs)
        start = pack_states(pack)
        for m, solo in enumerate(solos):  # each member starts from its solo trial's initial weights
            want = solo_state(solo)
            assert all(torch.equal(start[m][n], want[n]) for n in want), m
        episodes = pack.env_runner.sample(num_timesteps=k * BATCH, explore=True)
        members = [split(episodes, m) for m in range(k)]
        # each member samples about its solo batch (autoreset steps are not counted)
        assert all(abs(sum(e.env_steps() for e in eps) - BATCH) <= 4 for eps in members)
        for seed in (1, 2):  # two updates: Adam's moments, step counts and the anchors carry over
            learner(pack).seed_shuffles([seed + 10 * m for m in range(k)])
            r_pack = update(pack, episodes, k * BATCH)
            r_solo = []
            for m, solo in enumerate(solos):
                np.random.seed(seed + 10 * m)
                torch.manual_seed(seed + 10 * m)
                # the solo's sampled lifetime steps: its episodes' steps, once per update so far
                r_solo.append(update(solo, members[m], seed * sum(e.env_steps() for e in members[m])))
        got = pack_states(pack)
        for m, solo in enumerate(solos):
            want = solo_state(solo)
            moved, diff = max_diff(want, start[m]), max_diff(got[m], want)
            assert moved > 1e-3, f"member {m}: the updates must move the parameters for the check to mean anything"
            assert diff < 1e-5, f"member {m}: pack and solo differ by {diff} (parameters moved {moved})"
            if algorithm == "ppo_kl":  # beta adapted after each update as the solo's, and logged so
                beta = float(learner(pack).knobs.kl_beta[m])
                assert beta == learner(solo).kl_beta(DEFAULT_MODULE_ID), m
                assert r_pack[MEMBER_GROUP][str(m)][RLLIB_CURR_KL_COEFF].peek() == beta
                assert r_solo[m][RLLIB_CURR_KL_COEFF].peek() == beta
                kl = r_pack[MEMBER_GROUP][str(m)][LEARNER_RESULTS_KL_KEY].peek()
                assert kl == pytest.approx(r_solo[m][LEARNER_RESULTS_KL_KEY].peek(), rel=1e-4), m
                if m < 2:  # the targets far from the KL: twice the same step
                    assert beta == pytest.approx(KL_BETA[m] * (4 if m == 0 else 0.25), rel=1e-6), m
            elif algorithm != "ppo":
                solo_schedule = learner(solo).anchor_schedule(DEFAULT_MODULE_ID).state_dict()
                pack_schedule = learner(pack).schedules[m].state_dict()
                assert pack_schedule.keys() == solo_schedule.keys()
                for key, value in solo_schedule.items():
                    assert pack_schedule[key] == pytest.approx(value, rel=1e-4, abs=1e-9, nan_ok=True), (m, key)
                kl = r_pack[MEMBER_GROUP][str(m)][ANCHOR_KL].peek()
                assert kl == pytest.approx(r_solo[m][ANCHOR_KL].peek(), rel=1e-4, abs=1e-9)
    finally:
        for algo in (pack, *solos):
            algo.stop()


def test_pack_rows_and_advantages_are_each_solo_trials(ray_local):
    """Sampling runs each row through its own member's policy, and the learner connector computes
    each member's GAE and standardises its advantages over its own rows, as its solo trial does."""
    knobs = member_knobs("PreferenceBandit", "adpo", ["dynamic"] * 3)
    pack, solos = pack_and_solos(knobs, "device")
    try:
        episodes = pack.env_runner.sample(num_timesteps=3 * BATCH, explore=True)

        def train_batch(algo, eps):
            lrn = learner(algo)
            batch = rp.learner_connector(lrn)(rl_module=lrn.module, batch={}, episodes=copy.deepcopy(eps),
                                              shared_data={}, metrics=None)
            return {c: v.numpy() for c, v in batch[DEFAULT_MODULE_ID].items() if isinstance(v, torch.Tensor)}

        # the env runner's batched forward pass gave row i to member i // N: every episode's
        # recorded policy outputs are its member's solo network's on its observation
        for m, solo in enumerate(solos):
            eps = split(episodes, m)
            obs = torch.as_tensor(np.stack([e.get_observations(0) for e in eps]))
            with torch.no_grad():
                want = learner(solo).module[DEFAULT_MODULE_ID].forward_inference({Columns.OBS: obs})
            recorded = np.stack([e.get_extra_model_outputs(Columns.ACTION_DIST_INPUTS, 0) for e in eps])
            np.testing.assert_allclose(recorded, want[Columns.ACTION_DIST_INPUTS].numpy(), rtol=0, atol=1e-6)

        got = train_batch(pack, episodes)
        stock_std = []
        for m, solo in enumerate(solos):
            want = train_batch(solo, split(episodes, m))
            rows = got[MEMBER] == m
            for column in (Columns.ADVANTAGES, Columns.VALUE_TARGETS):
                np.testing.assert_allclose(got[column][rows], want[column], rtol=0, atol=1e-5, err_msg=f"{m} {column}")
            stock_std.append(want[Columns.ADVANTAGES].std())
            assert got[Columns.ADVANTAGES][rows].std() == pytest.approx(1.0, abs=1e-3)
        raw = got[Columns.VALUE_TARGETS]  # members' returns differ in scale: batch-wide standardising would mix them
        assert len({round(float(raw[got[MEMBER] == m].mean()), 3) for m in range(3)}) == 3
    finally:
        for algo in (pack, *solos):
            algo.stop()


def test_a_perturbed_member_breaks_equality_and_only_its_own(ray_local):
    """The control: with member 1's lr changed in the pack only, member 1 no longer equals its
    solo, and members 0 and 2 still do (the members never mix)."""
    knobs = member_knobs("PreferenceBandit", "adpo", ["dynamic", "ema", "fixed"])
    pack, solos = pack_and_solos(knobs, "device")
    try:
        learner(pack).optimizer.lr[1] *= 2
        episodes = pack.env_runner.sample(num_timesteps=3 * BATCH, explore=True)
        learner(pack).seed_shuffles([1, 2, 3])
        update(pack, episodes, 3 * BATCH)
        for m, solo in enumerate(solos):
            np.random.seed(m + 1)
            torch.manual_seed(m + 1)
            update(solo, split(episodes, m), BATCH)
        got = pack_states(pack)
        diffs = [max_diff(got[m], solo_state(solo)) for m, solo in enumerate(solos)]
        assert diffs[1] > 1e-4 and diffs[0] < 1e-5 and diffs[2] < 1e-5, diffs
    finally:
        for algo in (pack, *solos):
            algo.stop()


def test_a_nan_in_one_members_batch_leaves_the_others_exactly(ray_local):
    knobs = member_knobs("PreferenceBandit", "ppo", ["none"] * 3)
    clean, poisoned = (build(build_pack_config(knobs), "device") for _ in range(2))
    try:
        episodes = clean.env_runner.sample(num_timesteps=3 * BATCH, explore=True)
        bad = copy.deepcopy(episodes)
        victim = split(bad, 1)[0]
        rewards = victim.rewards  # a bandit episode: one step, one reward (past the space's check)
        rewards.data[rewards.lookback] = float("nan")
        for algo, eps in ((clean, episodes), (poisoned, bad)):
            learner(algo).seed_shuffles([1, 2, 3])
            result = update(algo, eps, 3 * BATCH)
        a, b = pack_states(clean), pack_states(poisoned)
        for m in (0, 2):
            assert all(torch.equal(a[m][n], b[m][n]) for n in a[m]), m
        assert result[MEMBER_GROUP]["1"]["skipped_steps"].peek() > 0
        assert result[MEMBER_GROUP]["0"]["skipped_steps"].peek() == 0
    finally:
        clean.stop()
        poisoned.stop()


def test_pack_checkpoint_round_trips_every_member(ray_local, tmp_path):
    """Save after a training iteration, restore into a fresh pack: parameters, anchors, Adam,
    schedules and shuffle generators come back exactly, and the next update is the same."""
    knobs = member_knobs("PreferenceBandit", "adpo", ["kl_triggered", "ema", "dynamic"])
    pack = build(build_pack_config(knobs), "device")
    fresh = build(build_pack_config(knobs), "device")
    try:
        pack.train()
        pack.save_to_path(str(tmp_path))
        fresh.restore_from_path(str(tmp_path))
        a, b = learner(pack), learner(fresh)
        assert a.pack_module.member_state_dicts()[0].keys() == b.pack_module.member_state_dicts()[0].keys()
        for x, y in zip(a.pack_module.member_state_dicts(), b.pack_module.member_state_dicts(), strict=True):
            assert all(torch.equal(x[n], y[n]) for n in x)
        for name in ("exp_avg", "exp_avg_sq", "steps"):
            assert torch.equal(getattr(a.optimizer, name), getattr(b.optimizer, name)), name
        assert int(a.optimizer.steps.min()) > 0
        np.testing.assert_equal([s.state_dict() for s in b.schedules], [s.state_dict() for s in a.schedules])
        assert sum(s.refreshes for s in a.schedules) > 0
        # the env runners got the restored weights (inference-only: no anchor)
        runner_state = fresh.env_runner.module.get_state()
        assert "anchor" not in runner_state
        np.testing.assert_array_equal(runner_state["theta"], a.pack_module.get_state()["theta"])
        episodes = pack.env_runner.sample(num_timesteps=3 * BATCH, explore=True)
        update(pack, episodes, 6 * BATCH)  # the shuffles continue from the restored generators
        update(fresh, episodes, 6 * BATCH)
        for x, y in zip(a.pack_module.member_state_dicts(), b.pack_module.member_state_dicts(), strict=True):
            assert all(torch.equal(x[n], y[n]) for n in x)
    finally:
        pack.stop()
        fresh.stop()


def test_ppo_kl_pack_checkpoint_continues_with_each_members_beta(ray_local, tmp_path):
    """A ppo_kl pack's betas are part of its learner's state: after a training iteration (each
    member's beta moved, logged as its solo trial's ``ppo_kl/beta``), a fresh pack restored from
    the checkpoint holds them, and the next update from there is the same in both."""
    from adpo_ray.orchestration.pack_trainable import member_result

    knobs = member_knobs("PreferenceBandit", "ppo_kl", ["none"] * 3)
    pack = build(build_pack_config(knobs), "device")
    fresh = build(build_pack_config(knobs), "device")
    try:
        raw = pack.train()
        a, b = learner(pack), learner(fresh)
        betas = a.knobs.kl_beta.tolist()
        assert betas[:2] == pytest.approx([2 * KL_BETA[0], KL_BETA[1] / 2], rel=1e-6)
        assert [curate(member_result(raw, m))[PPO_KL_BETA] for m in range(3)] == betas
        pack.save_to_path(str(tmp_path))
        assert b.knobs.kl_beta.tolist() == pytest.approx(KL_BETA, rel=1e-6)  # the control: not yet restored
        fresh.restore_from_path(str(tmp_path))
        assert b.knobs.kl_beta.tolist() == betas
        episodes = pack.env_runner.sample(num_timesteps=3 * BATCH, explore=True)
        update(pack, episodes, 6 * BATCH)
        update(fresh, episodes, 6 * BATCH)
        assert b.knobs.kl_beta.tolist() == a.knobs.kl_beta.tolist() != betas
        for x, y in zip(a.pack_module.member_state_dicts(), b.pack_module.member_state_dicts(), strict=True):
            assert all(torch.equal(x[n], y[n]) for n in x)
    finally:
        pack.stop()
        fresh.stop()


def test_mujoco_evaluation_is_each_members_solo_evaluation(ray_local):
    """Each member is evaluated on its own clean env with its own filter and policy: its
    evaluation return is its solo trial's, evaluation after evaluation (RLlib's window over the
    evaluation episodes included). HalfCheetah's episodes all last 1000 steps, so every member's
    episodes end in the pack's first sample, as the solo's do. The networks keep only their
    biases (each member's own): a constant action, the same bits whatever the batch it is
    computed in, so that 2,000 chaotic MuJoCo steps compare exactly."""
    from adpo_ray.metrics import EVAL_RETURN, curate
    from adpo_ray.orchestration.pack_trainable import member_result

    spec = parse_spec({"name": "pack-eval", "environments": ["HalfCheetah-v5"], "scenarios": ["clean", "shift-high"],
                       "budget": {"iterations": 1}, "evaluation": {"interval": 1, "episodes": 2},
                       "resources": {"num_envs_per_env_runner": 3}})
    knobs = [spec.knobs(TrialSpec("HalfCheetah-v5", s, "adpo", "dynamic", 16, seed))
             for s, seed in zip(("shift-high", "clean"), SEEDS[:2], strict=True)]
    pack = build_pack_config(knobs).build_algo()
    solos = [build_algo_config(kn).build_algo() for kn in knobs]
    try:
        module = learner(pack).pack_module
        with torch.no_grad():
            for (name, _), view in zip(module.net.layout, module.net.views(module.theta), strict=True):
                if name.endswith(".weight"):
                    view.zero_()
            for solo in solos:
                for name, param in learner(solo).module[DEFAULT_MODULE_ID].named_parameters():
                    if name.endswith("weight"):
                        param.zero_()
        for _ in range(2):
            got = pack.evaluate()
            for m, solo in enumerate(solos):
                want = curate({"evaluation": solo.evaluate()})[EVAL_RETURN]
                assert curate(member_result({"evaluation": got}, m))[EVAL_RETURN] == pytest.approx(want, rel=1e-9)
        returns = [curate(member_result({"evaluation": got}, m))[EVAL_RETURN] for m in range(2)]
        assert returns[0] != pytest.approx(returns[1], rel=1e-3)  # the members' own networks
        # an evaluation runs as many envs as episodes (not the 3 training envs) and normalises
        # by the training runner's statistics without learning from its own observations
        for algo, envs in ((pack, 2 * 2), *((solo, 2) for solo in solos)):
            training, evaluation = (g.local_env_runner for g in (algo.env_runner_group, algo.eval_env_runner_group))
            assert (training.num_envs, evaluation.num_envs) == (envs // 2 * 3, envs)
            (train_filter,), (eval_filter,) = ([c for c in rp.env_to_module(r).connectors if "Filter" in type(c).__name__]
                                               for r in (training, evaluation))
            assert not rp.updates_filter_stats(eval_filter)
            np.testing.assert_equal(eval_filter.get_state(), train_filter.get_state())
    finally:
        for algo in (pack, *solos):
            algo.stop()
