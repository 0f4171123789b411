"""A trial pack whose members start from a stored policy (``anchors.init``) is K solo trials
started from it: right after the start each member holds the checkpoint's policy and value
function, its anchor at that policy and its observation-filter statistics, exactly as its solo
trial started from the same checkpoint does; after an update on the same episodes each member's
parameters and anchor are its solo trial's. Real RLlib algorithms and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ray.rllib.core import COMPONENT_ENV_TO_MODULE_CONNECTOR, DEFAULT_MODULE_ID
from ray.rllib.utils.filter import RunningStat

from adpo_ray.rllib.factory import build_algo_config
from adpo_ray.rllib.init import (
    member_filter_state,
    observation_filter_state,
    policy_state,
    start_from_checkpoint,
    start_pack_from_checkpoints,
    start_pack_learner_from,
)
from adpo_ray.rllib.pack_factory import build_pack_config
from adpo_ray.rllib.packed import PackedMeanStdFilter

from ..helpers.packs import (
    BATCH,
    build,
    learner,
    max_diff,
    member_knobs,
    pack_states,
    sampling_episodes,
    solo_state,
    split,
    update,
)

pytestmark = pytest.mark.slow


def source_checkpoint(env: str, path) -> str:
    """A PPO algorithm of the members' network, after one training iteration, saved at ``path``."""
    (knobs,) = member_knobs(env, "ppo", ["none"])
    algo = build(build_algo_config(knobs), "device")
    try:
        algo.train()
        algo.save_to_path(str(path))
    finally:
        algo.stop()
    return str(path)


def filter_states(runner) -> list:
    """A pack env runner's filter state, one solo filter state per member."""
    (state,) = runner.get_state(components=COMPONENT_ENV_TO_MODULE_CONNECTOR)[COMPONENT_ENV_TO_MODULE_CONNECTOR].values()
    return PackedMeanStdFilter.member_states(state)


def solo_filter_state(runner) -> dict:
    return member_filter_state(runner.get_state(components=COMPONENT_ENV_TO_MODULE_CONNECTOR)[
        COMPONENT_ENV_TO_MODULE_CONNECTOR])


def stats(filter_state) -> RunningStat:
    return RunningStat.from_state(filter_state[None]["running_stats"][0])


CASES = [
    ("PreferenceBandit", ["fixed", "dynamic", "ema"], {"loss": "listwise"}),
    ("HalfCheetah-v5", ["kl_triggered", "fixed"], {"loss": "pairwise", "list_size": 4}),
]


@pytest.mark.parametrize("env,modes,adpo", CASES, ids=[c[0] for c in CASES])
def test_pack_members_start_from_a_checkpoint_as_their_solo_trials(ray_local, tmp_path, env, modes, adpo):
    src = source_checkpoint(env, tmp_path / "src")
    saved = {n: torch.as_tensor(v) for n, v in policy_state(src).items()}
    saved_filter = member_filter_state(observation_filter_state(src))
    assert (saved_filter is not None) == (env != "PreferenceBandit")  # MuJoCo's observations are filtered
    knobs = member_knobs(env, "adpo", modes, **adpo)
    k = len(knobs)
    pack = sampling_episodes(build_pack_config(knobs)).build_algo()  # MuJoCo's evaluation env runner included
    solos = [build(build_algo_config(kn), "device") for kn in knobs]
    try:
        fresh = pack_states(pack)
        assert all(max_diff({n: fresh[m][n] for n in saved}, saved) > 1e-3 for m in range(k))
        start_pack_from_checkpoints(pack, [src] * k)
        for solo in solos:
            start_from_checkpoint(solo, src)

        # right after the start: every member is the checkpoint's network, its anchor that policy
        start, module = pack_states(pack), learner(pack).pack_module
        for m, solo in enumerate(solos):
            assert all(torch.equal(start[m][n], saved[n]) for n in saved), m
            assert torch.equal(module.anchor[m], module.theta[m, :module.net.policy_size]), m
            want = solo_state(solo)  # the solo's anchor included
            assert start[m].keys() == want.keys() and all(torch.equal(start[m][n], want[n]) for n in want), m
        runners = [pack.env_runner]
        if pack.eval_env_runner_group is not None:
            runners.append(pack.eval_env_runner_group.local_env_runner)
        for runner in runners:  # the env runners act with the started members (no anchor there)
            assert torch.equal(runner.module.theta, module.theta)
        if saved_filter is not None:
            assert len(runners) == 2
            for runner in runners:
                np.testing.assert_equal(filter_states(runner), [saved_filter] * k)
            # the members' filters go on from the saved statistics as their solo trials' do:
            # deterministic actions, so that each member's observations are its solo trial's (up to
            # the float32 matmul's last bit, which differs between a batch of K*N rows and one of N)
            steps = 16
            pack.env_runner.sample(num_timesteps=steps * pack.env_runner.num_envs, explore=False)
            got = filter_states(pack.env_runner)
            for m, solo in enumerate(solos):
                solo.env_runner.sample(num_timesteps=steps * solo.env_runner.num_envs, explore=False)
                mine, theirs = stats(got[m]), stats(solo_filter_state(solo.env_runner))
                # each env's reset observation and its steps' on top of the saved ones
                assert mine.n == theirs.n == stats(saved_filter).n + (steps + 1) * solo.env_runner.num_envs
                np.testing.assert_allclose(mine.mean, theirs.mean, rtol=1e-5, atol=1e-6, err_msg=str(m))
                np.testing.assert_allclose(mine.std, theirs.std, rtol=1e-5, atol=1e-6, err_msg=str(m))
                assert np.abs(mine.mean - stats(saved_filter).mean).max() > 1e-3  # they moved

        # one update on the same episodes: each member's parameters and anchor are its solo's
        episodes = pack.env_runner.sample(num_timesteps=k * BATCH, explore=True)
        learner(pack).seed_shuffles([1 + 10 * m for m in range(k)])
        update(pack, episodes, k * BATCH)
        got = pack_states(pack)
        for m, solo in enumerate(solos):
            np.random.seed(1 + 10 * m)
            torch.manual_seed(1 + 10 * m)
            update(solo, split(episodes, m), sum(e.env_steps() for e in split(episodes, m)))
            want = solo_state(solo)
            moved, diff = max_diff(want, start[m]), max_diff(got[m], want)
            assert moved > 1e-3, f"member {m}: the update must move the parameters for the check to mean anything"
            assert diff < 1e-5, f"member {m}: pack and solo differ by {diff} (parameters moved {moved})"
    finally:
        for algo in (pack, *solos):
            algo.stop()


def test_a_checkpoint_that_does_not_fit_a_member_is_refused_naming_it(ray_local, tmp_path):
    src = source_checkpoint("PreferenceBandit", tmp_path / "src")
    saved = policy_state(src)
    pack = build(build_pack_config(member_knobs("PreferenceBandit", "adpo", ["fixed", "dynamic"])), "device")
    try:
        before = learner(pack).pack_module.theta.clone()
        bad = {**saved, "pi.net.mlp.0.weight": np.zeros((3, 3), np.float32)}
        with pytest.raises(ValueError, match=r"anchors.init: member 1: the checkpoint's network does not fit this "
                                             r"trial's .*pi.net.mlp.0.weight \(3, 3\) vs"):
            start_pack_learner_from(learner(pack), DEFAULT_MODULE_ID, [saved, bad])
        assert torch.equal(learner(pack).pack_module.theta, before)  # nothing written: every member checked first
        with pytest.raises(ValueError, match=r"need one checkpoint \(or None\) per member of the pack \(2\), got 3"):
            start_pack_from_checkpoints(pack, [src] * 3)
    finally:
        pack.stop()


def test_a_member_without_a_start_keeps_its_own(ray_local, tmp_path):
    """``None`` for a member: its fresh network and anchor stay, the others start from the checkpoint."""
    src = source_checkpoint("PreferenceBandit", tmp_path / "src")
    saved = {n: torch.as_tensor(v) for n, v in policy_state(src).items()}
    pack = build(build_pack_config(member_knobs("PreferenceBandit", "adpo", ["fixed", "dynamic"])), "device")
    try:
        fresh = pack_states(pack)
        start_pack_from_checkpoints(pack, [None, src])
        got = pack_states(pack)
        assert all(torch.equal(got[0][n], fresh[0][n]) for n in fresh[0])
        assert all(torch.equal(got[1][n], saved[n]) for n in saved)
        assert torch.equal(pack.env_runner.module.theta, learner(pack).pack_module.theta)
    finally:
        pack.stop()
