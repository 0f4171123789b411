"""A trial pack sampled by RLlib's own SingleAgentEnvRunner: every episode and train-batch row
carries its member, row i of the module's batch is sub-env i, member k's episodes, observation
filter and episode metrics are exactly what member k's solo trial produces with the same actions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ray.rllib.core import COMPONENT_ENV_TO_MODULE_CONNECTOR, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.filter import RunningStat

from adpo_ray.metrics import CLEAN_RETURN_KEY, MEMBER_GROUP
from adpo_ray.rllib.packed import ENV_INDEX, MEMBER, PackedMeanStdFilter

from ..helpers.packed_env import SEEDS, N, pack_config, solo_config

SCENARIOS = ["gaussian-high", "shift-high"]


def runners(env_name: str, zero_weights: bool = False):
    """A pack runner and one solo runner per member, all with the pack module's weights (so a
    deterministic policy acts the same on the same observation). ``zero_weights`` keeps only the
    biases: a constant action, independent of the batch a row is computed in."""
    pack = SingleAgentEnvRunner(config=pack_config(env_name, SCENARIOS, SEEDS))
    if zero_weights:
        with torch.no_grad():
            for name, param in pack.module.named_parameters():
                if name.endswith("weight"):
                    param.zero_()
    solos = [SingleAgentEnvRunner(config=solo_config(env_name, s, seed)[0]) for s, seed in zip(SCENARIOS, SEEDS, strict=True)]
    for solo in solos:
        solo.set_state({COMPONENT_RL_MODULE: pack.module.get_state()})
    return pack, solos


def member_episodes(episodes, k: int):
    return [e for e in episodes if e.custom_data[MEMBER] == k]


def assert_same_episodes(got, want, outputs_atol: float = 0.0):
    """Same observations, actions, rewards, ends and model outputs; ``outputs_atol`` allows for
    float32 matmuls whose last bit depends on the batch size (K*N rows in the pack, N solo)."""
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.get_observations(), w.get_observations())
        np.testing.assert_array_equal(g.get_actions(), w.get_actions())
        np.testing.assert_array_equal(g.get_rewards(), w.get_rewards())
        assert (g.is_terminated, g.is_truncated) == (w.is_terminated, w.is_truncated)
        assert g.extra_model_outputs.keys() == w.extra_model_outputs.keys()
        for key in w.extra_model_outputs:  # what the learner reads: action logp, dist inputs
            np.testing.assert_allclose(g.get_extra_model_outputs(key), w.get_extra_model_outputs(key),
                                       rtol=0, atol=outputs_atol)


def test_bandit_pack_rows_members_and_metrics_match_solo_trials():
    pack, solos = runners("PreferenceBandit")
    steps = 20  # per sub-env: 40 episodes per member, inside the metrics' 100-episode window
    episodes = pack.sample(num_timesteps=steps * pack.num_envs, explore=False)
    assert len(episodes) == steps * pack.num_envs
    for e in episodes:  # the member RLlib's env_index gives, and the member's own sub-envs
        assert e.custom_data[MEMBER] == e.custom_data[ENV_INDEX] // N

    # row i of the module's batch is sub-env i: each action is the policy's on its own episode's obs
    obs = np.stack([e.get_observations(0) for e in episodes])
    out = pack.module.forward_inference({Columns.OBS: torch.as_tensor(obs)})
    greedy = out[Columns.ACTION_DIST_INPUTS].argmax(-1).numpy()
    np.testing.assert_array_equal(greedy, [e.get_actions(0) for e in episodes])

    pack_metrics = pack.get_metrics()[MEMBER_GROUP]
    for k, solo in enumerate(solos):
        solo_episodes = solo.sample(num_timesteps=steps * N, explore=False)
        assert_same_episodes(member_episodes(episodes, k), solo_episodes, outputs_atol=1e-6)
        solo_metrics = solo.get_metrics()
        for key in (CLEAN_RETURN_KEY, "episode_return_mean", "episode_len_mean"):
            assert pack_metrics[str(k)][key].peek() == solo_metrics[key].peek(), (k, key)
    noisy, clean = (pack_metrics["0"][key].peek() for key in ("episode_return_mean", CLEAN_RETURN_KEY))
    assert noisy != clean  # gaussian-high: the two returns are different numbers

    # the learner connector's member column lines up with the observations, row for row
    config = pack_config("PreferenceBandit", SCENARIOS, SEEDS)
    pipeline = config.build_learner_connector(pack.env.single_observation_space, pack.env.single_action_space)
    batch = pipeline(rl_module=pack.module, batch={}, episodes=episodes, explore=False, shared_data={})
    batch = batch.get(DEFAULT_MODULE_ID, batch)
    member = batch[MEMBER].numpy()
    assert member.dtype == np.int64 and member.shape == (len(batch[Columns.OBS]),)
    owner = {e.get_observations(0).tobytes(): e.custom_data[MEMBER] for e in episodes}
    np.testing.assert_array_equal(member, [owner[row.tobytes()] for row in batch[Columns.OBS].numpy()])
    assert set(member) == {0, 1}


def filter_state(runner) -> dict:
    (state,) = runner.get_state(components=COMPONENT_ENV_TO_MODULE_CONNECTOR)[COMPONENT_ENV_TO_MODULE_CONNECTOR].values()
    return state


def test_mujoco_pack_filter_and_metrics_are_each_solo_trials():
    pack, solos = runners("Hopper-v5", zero_weights=True)
    calls, steps = 4, 25  # episodes end (Hopper falls) and are cut across sample() calls
    pack_episodes = [pack.sample(num_timesteps=steps * pack.num_envs, explore=False) for _ in range(calls)]
    pack_metrics = pack.get_metrics()[MEMBER_GROUP]
    pack_state = filter_state(pack)
    solo_states = []
    for k, solo in enumerate(solos):
        # same actions, same raw observations: the solo filter normalises them exactly as member k's
        for episodes in pack_episodes:
            assert_same_episodes(member_episodes(episodes, k), solo.sample(num_timesteps=steps * N, explore=False))
        solo_states.append(filter_state(solo))
        np.testing.assert_equal(PackedMeanStdFilter.member_states(pack_state)[k], solo_states[k])
        solo_metrics = solo.get_metrics()
        assert solo_metrics["num_episodes"].peek() > 0
        for key in (CLEAN_RETURN_KEY, "episode_return_mean", "episode_len_mean"):
            assert pack_metrics[str(k)][key].peek() == solo_metrics[key].peek(), (k, key)
    means = [RunningStat.from_state(pack_state[k]["running_stats"][0]).mean for k in (0, 1)]
    assert not np.allclose(*means)  # the members' statistics are their own

    # checkpoint and restore, also from the solo trials' states, into a fresh pack runner
    fresh = SingleAgentEnvRunner(config=pack_config("Hopper-v5", SCENARIOS, SEEDS))
    fresh.set_state(pack.get_state(components=COMPONENT_ENV_TO_MODULE_CONNECTOR))
    np.testing.assert_equal(filter_state(fresh), pack_state)
    name = next(iter(pack.get_state()[COMPONENT_ENV_TO_MODULE_CONNECTOR]))
    fresh.set_state({COMPONENT_ENV_TO_MODULE_CONNECTOR: {name: PackedMeanStdFilter.pack_states(solo_states)}})
    np.testing.assert_equal(filter_state(fresh), pack_state)


@pytest.mark.parametrize("num_members", [0, True])
def test_packed_filter_rejects_a_bad_member_count(num_members):
    with pytest.raises(ValueError, match="num_members must be an int >= 1"):
        PackedMeanStdFilter(num_members=num_members)


def test_mujoco_pack_batched_pipelines_keep_rows_with_their_sub_envs():
    """The MuJoCo pack's batched pipelines hand row i to sub-env i: every stored action is the
    deterministic policy's output on that episode's own (filtered) observation."""
    pack = SingleAgentEnvRunner(config=pack_config("HalfCheetah-v5", SCENARIOS, SEEDS))
    episodes = pack.sample(num_timesteps=5 * pack.num_envs, explore=False)
    assert [e.custom_data[ENV_INDEX] for e in episodes] == list(range(pack.num_envs))
    obs = np.concatenate([e.get_observations(slice(0, len(e))) for e in episodes])
    with torch.no_grad():
        out = pack.module.forward_inference({Columns.OBS: torch.as_tensor(obs, dtype=torch.float32)})
    mean = out[Columns.ACTION_DIST_INPUTS].numpy()[:, :pack.env.single_action_space.shape[0]]
    actions = np.concatenate([e.get_actions() for e in episodes])
    np.testing.assert_allclose(actions, mean, rtol=0, atol=1e-6)
    assert np.ptp(actions, axis=0).min() > 1e-3  # actions differ across rows: a permutation would show
