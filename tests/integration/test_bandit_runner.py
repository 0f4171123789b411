"""A bandit trial pack samples columns (``BanditPackEnvRunner``): the steps, outputs and per-member
metrics of RLlib's own env runner for the same envs and actions; a train batch equal to the one
RLlib's learner pipeline makes from those steps as episodes; and the same learner update. With
tests/integration/test_pack_algorithm.py (a pack update on episodes equals each member's solo
trial's), a member of a bandit pack updates as its solo trial."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ray.rllib.core import COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED, NUM_ENV_STEPS_SAMPLED_LIFETIME

from adpo_ray.metrics import CLEAN_RETURN_KEY, MEMBER_GROUP
from adpo_ray.rllib import _ray_private as rp
from adpo_ray.rllib.bandit_runner import BanditColumns, BanditPackEnvRunner
from adpo_ray.rllib.connectors import LIST_SIGNAL
from adpo_ray.rllib.pack_factory import build_pack_config
from adpo_ray.rllib.packed import MEMBER

from ..helpers.packed_env import SEEDS, N, pack_config
from ..helpers.packs import BATCH, build, learner, max_diff, member_knobs, pack_states, update

SCENARIOS = ["gaussian-high", "flip-high"]


def constant_policy(runner) -> None:
    """Keep only the biases: every member's greedy action is one item, whatever the context."""
    with torch.no_grad():
        for name, param in runner.module.named_parameters():
            if name.endswith("weight"):
                param.zero_()


# per sub-env and call: 40 episodes per member, inside the metrics' 100-episode window; 140,
# beyond it (the columnar runner logs only each window's last values)
@pytest.mark.parametrize("steps", [20, 70], ids=["inside-window", "beyond-window"])
def test_columns_are_rllibs_steps_outputs_and_metrics(steps):
    config = pack_config("PreferenceBandit", SCENARIOS, SEEDS)
    ref = SingleAgentEnvRunner(config=config)
    constant_policy(ref)
    fast = BanditPackEnvRunner(config=config)
    fast.set_state({COMPONENT_RL_MODULE: ref.module.get_state()})
    for call in range(2):  # the second call goes on from the first (autoreset streams, lifetime counts)
        episodes = ref.sample(num_timesteps=steps * ref.num_envs, explore=False)
        (cols,) = fast.sample(num_timesteps=steps * fast.num_envs, explore=False)
        assert isinstance(cols, BanditColumns) and len(cols) == len(episodes) == steps * 2 * N
        assert cols.env_steps() == len(cols)
        # row t * n_envs + i: step t of sub-env i, in the order RLlib's runner returns its episodes
        np.testing.assert_array_equal(cols.member, [e.custom_data[MEMBER] for e in episodes])
        np.testing.assert_array_equal(cols.obs, np.stack([e.get_observations(0) for e in episodes]))
        np.testing.assert_array_equal(cols.next_obs, np.stack([e.get_observations(1) for e in episodes]))
        np.testing.assert_array_equal(cols.actions, [e.get_actions(0) for e in episodes])
        np.testing.assert_array_equal(cols.rewards, np.asarray([e.get_rewards(0) for e in episodes], np.float32))
        np.testing.assert_array_equal(cols.terminated, [e.is_terminated for e in episodes])
        np.testing.assert_array_equal(cols.list_signal, np.stack([e.get_infos(1)["utilities_noisy"] for e in episodes]))
        for name, column in ((Columns.ACTION_LOGP, cols.action_logp), (Columns.ACTION_DIST_INPUTS, cols.action_dist_inputs)):
            want = np.stack([e.get_extra_model_outputs(name, 0) for e in episodes])
            np.testing.assert_allclose(column, want, rtol=0, atol=1e-6, err_msg=name)
        assert len(set(cols.actions.tolist())) <= 2 and len(np.unique(cols.obs, axis=0)) == len(cols)  # a real stream
        got, want = fast.get_metrics(), ref.get_metrics()
        assert got[NUM_ENV_STEPS_SAMPLED].peek() == want[NUM_ENV_STEPS_SAMPLED].peek() == len(cols)
        assert got[NUM_ENV_STEPS_SAMPLED_LIFETIME].peek() == want[NUM_ENV_STEPS_SAMPLED_LIFETIME].peek()
        for key in ("episode_return_mean", "episode_len_mean"):  # the pack's, over every member
            assert got[key].peek() == pytest.approx(want[key].peek(), rel=1e-6), (call, key)
        for k in ("0", "1"):
            for key in (CLEAN_RETURN_KEY, "episode_return_mean", "episode_len_mean", NUM_ENV_STEPS_SAMPLED_LIFETIME):
                assert got[MEMBER_GROUP][k][key].peek() == pytest.approx(want[MEMBER_GROUP][k][key].peek(), rel=1e-6), (call, k, key)
    assert got[MEMBER_GROUP]["0"]["episode_return_mean"].peek() != got[MEMBER_GROUP]["0"][CLEAN_RETURN_KEY].peek()
    for runner in (ref, fast):
        runner.stop()


def test_exploring_columns_sample_the_members_policies():
    """With exploration, each row's action is drawn from its member's own distribution: its
    logits are its member's network's on its context, and its logp is that action's."""
    knobs = member_knobs("PreferenceBandit", "adpo", ["dynamic"] * 3)
    config = build_pack_config(knobs)
    runner = BanditPackEnvRunner(config=config)
    (cols,) = runner.sample(num_timesteps=3 * BATCH, explore=True)
    module = runner.module
    with torch.no_grad():
        want = module.forward_inference({Columns.OBS: torch.from_numpy(cols.obs), MEMBER: torch.from_numpy(cols.member)})
    logits = want[Columns.ACTION_DIST_INPUTS].numpy()
    np.testing.assert_allclose(cols.action_dist_inputs, logits, rtol=0, atol=1e-6)
    logp = torch.log_softmax(torch.from_numpy(logits), -1).numpy()[np.arange(len(cols)), cols.actions]
    np.testing.assert_allclose(cols.action_logp, logp, rtol=0, atol=1e-5)
    assert len(set(cols.actions.tolist())) > 2  # sampled, not the greedy item
    assert np.bincount(cols.member).tolist() == [len(cols) // 3] * 3
    runner.stop()


def as_episodes(cols: BanditColumns, observation_space, action_space) -> list[SingleAgentEpisode]:
    """``cols``' steps as the one-step episodes RLlib's env runner returns."""
    out = []
    for r in range(len(cols)):
        e = SingleAgentEpisode(
            observations=[cols.obs[r], cols.next_obs[r]], actions=[cols.actions[r]], rewards=[float(cols.rewards[r])],
            infos=[{}, {"utilities_noisy": cols.list_signal[r]}], terminated=bool(cols.terminated[r]),
            extra_model_outputs={Columns.ACTION_LOGP: [cols.action_logp[r]],
                                 Columns.ACTION_DIST_INPUTS: [cols.action_dist_inputs[r]]},
            observation_space=observation_space, action_space=action_space, len_lookback_buffer=0)
        e.custom_data[MEMBER] = int(cols.member[r])
        out.append(e.to_numpy())
    return out


@pytest.mark.parametrize("algorithm,loss", [("adpo", "listwise"), ("ppo", None)])
def test_columns_make_rllibs_train_batch_and_update(ray_local, algorithm, loss):
    knobs = member_knobs("PreferenceBandit", algorithm, ["dynamic", "fixed", "ema"] if loss else ["none"] * 3,
                         **({"loss": loss} if loss else {}))
    fast, ref = build(build_pack_config(knobs), "device"), build(build_pack_config(knobs), "device")
    runner = BanditPackEnvRunner(config=fast.config)
    runner.set_state({COMPONENT_RL_MODULE: fast.env_runner.module.get_state()})
    try:
        (cols,) = runner.sample(num_timesteps=3 * BATCH, explore=True)
        episodes = as_episodes(cols, runner.env.single_observation_space, runner.env.single_action_space)
        lrn = learner(fast)
        got = {c: v.numpy() for c, v in lrn.columns_batch([cols])[DEFAULT_MODULE_ID].items()}
        pipeline = rp.learner_connector(lrn)(rl_module=lrn.module, batch={}, episodes=copy.deepcopy(episodes),
                                             shared_data={}, metrics=None)[DEFAULT_MODULE_ID]
        want = {c: v.numpy() for c, v in pipeline.items() if isinstance(v, torch.Tensor)}
        read = {Columns.OBS, Columns.ACTIONS, Columns.LOSS_MASK, Columns.ADVANTAGES, Columns.VALUE_TARGETS,
                Columns.ACTION_LOGP, Columns.ACTION_DIST_INPUTS, MEMBER} | ({LIST_SIGNAL} if loss else set())
        assert read <= set(got) <= set(want), (set(got), set(want))
        assert len(got[Columns.OBS]) == 2 * len(cols)  # each step and PPO's artificial, masked one
        for c in got:
            assert got[c].dtype == want[c].dtype, c
            np.testing.assert_allclose(got[c], want[c], rtol=0, atol=1e-6, err_msg=c)
        assert np.abs(got[Columns.ADVANTAGES]).max() > 0.1  # a real signal, not zeros

        # one update each, from the columns and from the episodes: the same parameters
        for algo in (fast, ref):
            learner(algo).seed_shuffles([7 + m for m in range(len(knobs))])
        start = pack_states(ref)
        assert all(max_diff(a, b) == 0 for a, b in zip(pack_states(fast), start, strict=True))
        update(fast, [cols], 3 * BATCH)
        update(ref, episodes, 3 * BATCH)
        for m, (a, b) in enumerate(zip(pack_states(fast), pack_states(ref), strict=True)):
            assert max_diff(b, start[m]) > 1e-3, m
            assert max_diff(a, b) < 1e-6, m
    finally:
        runner.stop()
        fast.stop()
        ref.stop()


def test_a_bandit_pack_samples_columns_and_trains(ray_local):
    """The pack's own algorithm: its env runner samples columns, ``train()`` reports each member's
    env steps, returns and clean returns, and the members learn."""
    knobs = member_knobs("PreferenceBandit", "adpo", ["dynamic", "fixed", "ema"], loss="listwise")
    algo = build_pack_config(knobs).build_algo()
    try:
        assert isinstance(algo.env_runner, BanditPackEnvRunner)
        start = pack_states(algo)
        for _ in range(2):
            result = algo.train()
        members = result["env_runners"][MEMBER_GROUP]
        per_member = knobs[0].train_batch_size
        for k in ("0", "1", "2"):
            assert members[k][NUM_ENV_STEPS_SAMPLED_LIFETIME] == 2 * per_member
            assert members[k]["episode_len_mean"] == 1.0
            assert np.isfinite(members[k]["episode_return_mean"]) and np.isfinite(members[k][CLEAN_RETURN_KEY])
        assert result["env_runners"][NUM_ENV_STEPS_SAMPLED_LIFETIME] == 2 * 3 * per_member
        assert all(max_diff(a, b) > 1e-3 for a, b in zip(pack_states(algo), start, strict=True))
    finally:
        algo.stop()
