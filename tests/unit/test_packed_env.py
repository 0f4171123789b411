"""A trial pack's vector env: member k's slice of the pack is, step for step, the solo trial's
vector env (built as RLlib's env runner builds it) for the same seed and actions; the per-member
filter is one solo filter per member; bad pack configs fail early, naming the field."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from adpo_ray.envs.packed import PackedVectorEnv, make_packed_env
from adpo_ray.rllib import _ray_private as rp
from adpo_ray.rllib.connectors import BatchedMeanStdFilter
from adpo_ray.rllib.packed import MEMBER, PackedMeanStdFilter, configure_pack

from ..helpers.packed_env import SEEDS, N, pack_config, solo_config


def runner_env(config, worker_index: int = 0):
    """The vector env an env runner builds, and the seed it resets it with (``seed + worker_index``)."""
    runner = SingleAgentEnvRunner(config=config, worker_index=worker_index)
    return runner.env, config.seed + worker_index


def assert_same_infos(pack_infos, solo_infos):
    assert len(pack_infos) == len(solo_infos)
    for p, s in zip(pack_infos, solo_infos, strict=True):
        assert p.keys() == s.keys()
        for key in p:
            np.testing.assert_array_equal(p[key], s[key])


@pytest.mark.parametrize(
    ("env_name", "scenarios", "steps", "worker_index"),
    [
        ("PreferenceBandit", ["gaussian-high", "shift-high"], 60, 0),
        ("PreferenceBandit", ["flip-medium", "heavy_tailed-high"], 20, 2),  # a remote runner's offset
        # past HalfCheetah's 1000-step truncation: the autoreset redraws the shifted dynamics
        ("HalfCheetah-v5", ["gaussian-high", "shift-high"], 1003, 0),
        ("Hopper-v5", ["flip-high", "shift-high"], 200, 1),  # early terminations, columnar step
    ],
)
def test_member_stream_equals_solo_trials(env_name, scenarios, steps, worker_index):
    pack, pack_seed = runner_env(pack_config(env_name, scenarios, SEEDS), worker_index)
    solos = [runner_env(solo_config(env_name, s, seed)[0], worker_index) for s, seed in zip(scenarios, SEEDS, strict=True)]
    assert isinstance(pack.unwrapped, PackedVectorEnv) and pack.num_envs == len(SEEDS) * N
    obs, infos = pack.reset(seed=pack_seed)
    for k, (solo, solo_seed) in enumerate(solos):
        s_obs, s_infos = solo.reset(seed=solo_seed)
        np.testing.assert_array_equal(obs[k * N:(k + 1) * N], s_obs)
        assert_same_infos(infos[k * N:(k + 1) * N], s_infos)
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(steps):
        if env_name == "PreferenceBandit":
            actions = rng.integers(0, pack.single_action_space.n, pack.num_envs)
        else:
            actions = rng.uniform(-1, 1, pack.action_space.shape)
        result = pack.step(actions)
        for k, (solo, _) in enumerate(solos):
            rows = slice(k * N, (k + 1) * N)
            s_result = solo.step(actions[rows])
            for got, want in zip(result[:4], s_result[:4], strict=True):
                np.testing.assert_array_equal(got[rows], want)
            assert_same_infos(result[4][rows], s_result[4])
        ends += int(np.sum(result[2] | result[3]))
    assert ends > 0  # the streams went through resets
    pack.close()


def test_members_differ_where_their_scenarios_do():
    """The comparison above is not vacuous: the two members' sub-envs see different streams."""
    env = PackedVectorEnv([{"env": "PreferenceBandit", "scenario": "clean", "seed": 0},
                           {"env": "PreferenceBandit", "scenario": "shift-high", "seed": 0}], 2)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(env.member_index, [0, 0, 1, 1])
    assert not np.allclose(obs[0], obs[2])


def test_sub_env_seeds_follow_the_runner_offset():
    env = PackedVectorEnv([{"seed": 3}, {"seed": 11}], 2, seed_base=100)
    assert env.sub_env_seeds(100) == [3, 4, 11, 12]
    assert env.sub_env_seeds(102) == [5, 6, 13, 14]  # worker 2 adds 2, as for a solo trial
    assert env.sub_env_seeds(None) == [None] * 4


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"members": [], "num_envs_per_member": 2}, "members must be a non-empty list"),
        ({"members": [{"seed": 0}, "x"], "num_envs_per_member": 2}, r"members\[1\] must be an env config"),
        ({"members": [{"seed": 0}, {"scenario": "clean"}], "num_envs_per_member": 2}, r"members\[1\].seed must be an int"),
        ({"members": [{"seed": 0}, {"env": "Hopper-v5", "seed": 1}], "num_envs_per_member": 2},
         r"members\[1\].env is 'Hopper-v5'"),
        ({"members": [{"seed": 0}], "num_envs_per_member": 0}, "num_envs_per_member must be an int >= 1"),
        ({"members": [{"seed": 0}, {"seed": 1}], "num_envs_per_member": 2, "num_envs": 3},
         "num_envs_per_env_runner is 3; a pack of 2 members x num_envs_per_member 2 needs 4"),
        ({"members": [{"seed": 0}, {"num_items": 5, "seed": 1}], "num_envs_per_member": 1, "num_envs": 2},
         r"members\[1\] has spaces"),
    ],
)
def test_bad_pack_configs_name_the_field(config, message):
    with pytest.raises(ValueError, match=message):
        make_packed_env(config)


def test_configure_pack_needs_a_seed_and_valid_members():
    config, knobs = solo_config("PreferenceBandit", "clean", 0)
    with pytest.raises(ValueError, match="needs config.seed"):
        configure_pack(config.debugging(seed=None), [{**knobs.env_config, "seed": 0}], 2)
    with pytest.raises(ValueError, match=r"members\[0\].seed"):
        configure_pack(config.debugging(seed=0), [knobs.env_config], 2)


def filter_step(filt, rows, members, space):
    """One env-to-module call on fresh episodes holding ``rows`` as their newest observation."""
    episodes = []
    for row, member in zip(rows, members, strict=True):
        episode = SingleAgentEpisode(observation_space=space, action_space=gym.spaces.Discrete(2))
        episode.add_env_reset(observation=row)
        if member is not None:
            episode.custom_data[MEMBER] = member
        episodes.append(episode)
    filt(rl_module=None, batch={}, episodes=episodes)
    return np.stack([e.get_observations(-1) for e in episodes])


@pytest.mark.parametrize("shuffled", [False, True])
def test_packed_filter_is_one_solo_filter_per_member(shuffled):
    """Rows are routed by their episode's member (grouped, as the env runner orders them, or
    shuffled) and normalised by that member's statistics only: member k's state and outputs are a
    solo filter's fed member k's rows."""
    k, n, d = 3, 4, 5
    space = gym.spaces.Box(-np.inf, np.inf, (d,), np.float64)
    pack, solos = PackedMeanStdFilter(num_members=k), [BatchedMeanStdFilter() for _ in range(k)]
    for filt in (pack, *solos):  # as a connector pipeline sets them
        filt.input_observation_space, filt.input_action_space = space, gym.spaces.Discrete(2)
    rng = np.random.default_rng(0)
    members = np.repeat(np.arange(k), n)
    for _ in range(6):
        rows = rng.normal(size=(k * n, d)) * np.arange(1, k + 1).repeat(n)[:, None] + members[:, None] * 10
        order = rng.permutation(k * n) if shuffled else np.arange(k * n)
        rows, of = rows[order], members[order]
        out = filter_step(pack, rows, of, space)
        for m, solo in enumerate(solos):  # member m's rows in the order the pack saw them
            np.testing.assert_array_equal(out[of == m], filter_step(solo, rows[of == m], [None] * n, space))
    state = pack.get_state()
    for m, solo in enumerate(solos):
        np.testing.assert_equal(PackedMeanStdFilter.member_states(state)[m], solo.get_state())
    with pytest.raises(KeyError, match="has no custom_data\\['member'\\]"):
        filter_step(pack, rows[:1], [None], space)


@pytest.mark.parametrize("shuffled", [False, True])
def test_a_frozen_members_filter_keeps_its_statistics(shuffled):
    """A frozen member (past its budget) is normalised by its statistics as they were, which no
    longer move; the others go on as solo filters; thawed, it updates again."""
    k, n, d = 3, 4, 5
    space = gym.spaces.Box(-np.inf, np.inf, (d,), np.float64)
    pack, solos = PackedMeanStdFilter(num_members=k), [BatchedMeanStdFilter() for _ in range(k)]
    for filt in (pack, *solos):
        filt.input_observation_space, filt.input_action_space = space, gym.spaces.Discrete(2)
    rng = np.random.default_rng(3)
    members = np.repeat(np.arange(k), n)

    def rows_and_members():
        rows = rng.normal(size=(k * n, d)) + members[:, None] * 10
        order = rng.permutation(k * n) if shuffled else np.arange(k * n)
        return rows[order], members[order]

    rows, of = rows_and_members()
    filter_step(pack, rows, of, space)
    for m, solo in enumerate(solos):
        filter_step(solo, rows[of == m], [None] * n, space)
    frozen_state = PackedMeanStdFilter.member_states(pack.get_state())[1]
    pack.freeze_members([False, True, False])
    for _ in range(3):
        rows, of = rows_and_members()
        out = filter_step(pack, rows, of, space)
        for m in (0, 2):
            np.testing.assert_array_equal(out[of == m], filter_step(solos[m], rows[of == m], [None] * n, space))
        # member 1: normalised by its frozen statistics (a filter that no longer updates)
        np.testing.assert_array_equal(out[of == 1], solos[1]._filter_rows(
            rp.built_filters(solos[1])[None], rows[of == 1], update=False))
        np.testing.assert_equal(PackedMeanStdFilter.member_states(pack.get_state())[1], frozen_state)
    pack.freeze_members([False, False, False])
    filter_step(pack, *rows_and_members(), space)
    assert PackedMeanStdFilter.member_states(pack.get_state())[1][None]["running_stats"] != frozen_state[None]["running_stats"]
    with pytest.raises(ValueError, match=r"frozen: need one flag per member \(3\), got \[True\]"):
        pack.freeze_members([True])


def test_packed_filter_rebuilds_from_its_checkpoint(tmp_path):
    """RLlib's ``Checkpointable.from_checkpoint`` rebuilds a pack's env-to-module pipeline from its
    saved constructor keywords (the filter's ``num_members`` and ``add_obs_column`` included),
    with every member's statistics."""
    from ray.rllib.connectors.env_to_module import EnvToModulePipeline
    from ray.rllib.utils.checkpoints import Checkpointable

    k, n, d = 2, 3, 4
    space = gym.spaces.Box(-np.inf, np.inf, (d,), np.float64)
    pack = PackedMeanStdFilter(num_members=k, add_obs_column=True)
    pipeline = EnvToModulePipeline(input_observation_space=space, input_action_space=gym.spaces.Discrete(2),
                                   connectors=[pack])
    filter_step(pack, np.random.default_rng(1).normal(size=(k * n, d)), np.repeat(np.arange(k), n), space)
    pipeline.save_to_path(str(tmp_path / "pipeline"))

    (again,) = Checkpointable.from_checkpoint(str(tmp_path / "pipeline")).connectors
    assert type(again) is PackedMeanStdFilter and (again.num_members, again.add_obs_column) == (k, True)
    np.testing.assert_equal(again.get_state(), pack.get_state())
