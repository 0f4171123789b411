"""A trial pack's env side in RLlib: K members' envs in one :class:`~adpo_ray.envs.packed.PackedVectorEnv`,
run by RLlib's stock ``SingleAgentEnvRunner``.

* :func:`configure_pack` sets an AlgorithmConfig up for a pack: the env (built through gymnasium's
  ``vector_entry_point``), ``K * N`` envs per env runner, the callbacks, the member column and, on
  MuJoCo, the per-member observation filter.
* :class:`PackCallbacks` tags every episode with its member (``episode.custom_data["member"]``,
  from the ``env_index`` RLlib passes to ``on_episode_created``) and logs each member's episode
  metrics under ``env_runners/member/<k>/``, keyed as a solo trial's.
* :class:`PackedMeanStdFilter`: the batched observation filter with one running mean/std per member.
* :class:`AddMemberColumn`: the train batch's ``member`` column (int64, ``(B,)``).

Row order: RLlib's env runner keeps its episodes in a list indexed by sub-env (``env_index``),
unbatches the vector env's observations by that index and builds the module's batch from the
episodes in that order, so row ``i`` of every env-to-module batch is sub-env ``i``. The filter
and the column read the member from the episode, not from a row position.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.connectors.common import NumpyToTensor, TensorToNumpy
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.module_to_env import GetActions
from ray.rllib.core.columns import Columns
from ray.rllib.utils import force_list
from ray.rllib.utils.filter import MeanStdFilter as _MeanStdFilter
from ray.rllib.utils.filter import RunningStat
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME
from ray.rllib.utils.numpy import SMALL_NUMBER
from ray.rllib.utils.typing import StateDict
from ray.tune.registry import register_env

from adpo_ray.envs import ENVIRONMENTS
from adpo_ray.envs.packed import PackedVectorEnv, check_members, make_packed_env
from adpo_ray.metrics import CLEAN_RETURN_KEY, MEMBER_GROUP
from adpo_ray.rllib import _ray_private as rp
from adpo_ray.rllib.connectors import BatchedMeanStdFilter

PACK_ENV_NAME = "adpo_ray_pack"
#: Train-batch column and ``episode.custom_data`` key: the member of a row / an episode.
MEMBER = "member"
#: ``episode.custom_data`` key: the vector env index (``0 .. K*N-1``) the episode ran in.
ENV_INDEX = "env_index"


def register_pack() -> str:
    """Register :func:`adpo_ray.envs.packed.make_packed_env` with Ray as :data:`PACK_ENV_NAME`
    (idempotent)."""
    register_env(PACK_ENV_NAME, make_packed_env)
    return PACK_ENV_NAME


def configure_pack(config: AlgorithmConfig, members: list[dict[str, Any]], num_envs_per_member: int) -> AlgorithmConfig:
    """Make ``config`` (a solo trial's config shape) sample a pack of ``len(members)`` members.

    Args:
        config: the pack's AlgorithmConfig; its ``seed`` is the base RLlib's env runners add their
            worker offset to (members' env seeds come from ``members[k]["seed"]``).
        members: each member's env config (as a solo trial's ``env_config``) with ``seed``, the
            member's trial seed.
        num_envs_per_member: ``N``, the solo trials' ``num_envs_per_env_runner``.

    Sets the env, ``num_envs_per_env_runner = K * N``, ``gym_env_vectorize_mode =
    "vector_entry_point"``, adds :class:`PackCallbacks` to the callbacks, sets the learner
    connector to :class:`AddMemberColumn` and, for MuJoCo envs, batched connector pipelines:
    :class:`PackedMeanStdFilter` then RLlib's ``NumpyToTensor`` into the module, RLlib's
    ``GetActions`` and ``TensorToNumpy`` out of it. Evaluation settings are left alone.

    Raises:
        ValueError: ``config.seed`` unset, or bad ``members`` / ``num_envs_per_member``.
    """
    if config.seed is None:
        raise ValueError("configure_pack needs config.seed (config.debugging(seed=...)): the pack's seed "
                         "base, to which env runners add their worker offset")
    check_members(members, num_envs_per_member)
    env_config = {"members": [dict(m) for m in members], "num_envs_per_member": num_envs_per_member,
                  "seed_base": int(config.seed)}
    num_members = len(members)
    config.environment(register_pack(), env_config=env_config)
    config.env_runners(num_envs_per_env_runner=num_members * num_envs_per_member,
                       gym_env_vectorize_mode="vector_entry_point")
    callbacks = [c for c in force_list(config.callbacks_class) if c is not RLlibCallback]
    config.callbacks([*callbacks, PackCallbacks])
    config.learners(learner_connector=lambda obs_space, act_space: AddMemberColumn(obs_space, act_space))
    if ENVIRONMENTS[members[0].get("env", "PreferenceBandit")]["kind"] == "mujoco":
        # Batched pipelines: the filter hands the module its (K*N, d) observations in row order
        # and the actions go back to the env as one array, instead of RLlib's default pieces,
        # which move every row through per-episode lists and back.
        config.env_runners(
            env_to_module_connector=pack_env_to_module(num_members),
            module_to_env_connector=lambda env, spaces=None: [GetActions(), TensorToNumpy()],
            add_default_connectors_to_env_to_module_pipeline=False,
            add_default_connectors_to_module_to_env_pipeline=False,
        )
    return config


def pack_env_to_module(num_members: int, update_stats: bool = True):
    """The env-to-module connector factory of a MuJoCo pack's env runners: its
    :class:`PackedMeanStdFilter` (``update_stats=False`` on evaluation runners: their statistics
    are the training runners', synced before each evaluation) then RLlib's ``NumpyToTensor``."""
    def make(env=None, spaces=None, device=None):
        return [PackedMeanStdFilter(num_members=num_members, add_obs_column=True, update_stats=update_stats),
                NumpyToTensor(device=device)]

    return make


def _member(episode) -> int:
    try:
        return episode.custom_data[MEMBER]
    except KeyError:
        raise KeyError(
            f"episode {episode.id_} has no custom_data[{MEMBER!r}]: a pack needs PackCallbacks "
            "(configure_pack adds it), which tags each episode with its member"
        ) from None


class PackCallbacks(RLlibCallback):
    """Tags each episode with its member and logs per-member episode metrics.

    ``env_runners/member/<k>/`` gets, for member ``k``'s finished episodes, what a solo trial's
    env runners log: ``train_clean_return`` (window 100, as :class:`CleanMetricsCallbacks`),
    ``episode_return_mean`` (the noisy training return) and ``episode_len_mean`` (RLlib's window,
    ``metrics_num_episodes_for_smoothing / num_env_runners``), and the member's
    ``num_env_steps_sampled_lifetime``.
    """

    def on_episode_created(self, *, episode, env_index: int, env=None, **kwargs) -> None:
        if not isinstance(env, PackedVectorEnv):
            raise TypeError(f"PackCallbacks runs on a PackedVectorEnv (configure_pack), got {type(env).__name__}")
        episode.custom_data[MEMBER] = env.member_of(env_index)
        episode.custom_data[ENV_INDEX] = int(env_index)

    def on_sample_end(self, *, env_runner=None, metrics_logger=None, samples=(), **kwargs) -> None:
        """Each member's env steps (``member/<k>/num_env_steps_sampled_lifetime``): the steps of
        its episodes (chunks) this sample, which is what its solo trial's env runner counts."""
        if metrics_logger is None:
            return
        steps: dict[int, int] = {}
        for episode in samples:
            m = _member(episode)
            steps[m] = steps.get(m, 0) + episode.env_steps()
        for m, n in steps.items():
            metrics_logger.log_value((MEMBER_GROUP, str(m), NUM_ENV_STEPS_SAMPLED_LIFETIME), n,
                                     reduce="lifetime_sum")

    def on_episode_end(self, *, episode, env_runner=None, metrics_logger=None, prev_episode_chunks=(), **kwargs) -> None:
        if metrics_logger is None:
            return
        key = (MEMBER_GROUP, str(_member(episode)))
        chunks = [*prev_episode_chunks, episode]  # an episode cut by earlier sample() calls
        length = sum(len(c) for c in chunks)
        ret = sum(c.get_return() for c in chunks)
        win = max(1, math.ceil(env_runner.config.metrics_num_episodes_for_smoothing
                               / (env_runner.config.num_env_runners or 1)))
        metrics_logger.log_value((*key, "episode_return_mean"), ret, window=win)
        metrics_logger.log_value((*key, "episode_len_mean"), length, window=win)
        last = episode.get_infos(-1)
        if isinstance(last, dict) and "clean_return" in last:
            metrics_logger.log_value((*key, CLEAN_RETURN_KEY), float(last["clean_return"]), reduce="mean", window=100)


@rp.builds_own_filters
class PackedMeanStdFilter(BatchedMeanStdFilter):
    """:class:`BatchedMeanStdFilter` with one running mean/std per member, never shared.

    Each vector step, member ``k``'s rows (episodes tagged ``k``, in sub-env order) are pushed into
    member ``k``'s statistics and normalised by them: the same arithmetic, on the same rows, as a
    solo trial's filter. The state maps member ``k`` to the state RLlib's filter keeps under its
    single-agent key ``None``, so checkpoints, restores and the merge across env runners work
    unchanged; :meth:`member_states` / :meth:`pack_states` convert to and from solo states.
    Flat ``Box`` observations only. ``add_obs_column`` also puts the normalised observations, row
    ``i`` from ``episodes[i]``, in the batch's ``obs`` column (for a pipeline without RLlib's
    default pieces, which would otherwise collect them from the episodes). A frozen member
    (:meth:`freeze_members`) is normalised by its statistics without updating them.
    """

    def __init__(self, *args, num_members: int, add_obs_column: bool = False, **kwargs):
        if isinstance(num_members, bool) or not isinstance(num_members, int) or num_members < 1:
            raise ValueError(f"num_members must be an int >= 1, got {num_members!r}")
        super().__init__(*args, **kwargs)
        self.num_members = num_members
        self.add_obs_column = add_obs_column
        self.frozen = np.zeros(num_members, dtype=bool)

    def freeze_members(self, frozen: list[bool]) -> None:
        """Member ``k``'s statistics stay as they are where ``frozen[k]`` (a pack member past its
        budget), and update again where not. Raises ``ValueError`` for a length other than the
        pack's members."""
        frozen = np.asarray(frozen, dtype=bool)
        if frozen.shape != (self.num_members,):
            raise ValueError(f"frozen: need one flag per member ({self.num_members}), got {frozen.tolist()}")
        self.frozen = frozen.copy()

    def get_ctor_args_and_kwargs(self):
        """RLlib's record of the constructor's keywords (``MeanStdFilter``'s), with this filter's
        own: a checkpoint's pipeline rebuilds it from its files (``Checkpointable.from_checkpoint``)."""
        args, kwargs = super().get_ctor_args_and_kwargs()
        return args, {**kwargs, "num_members": self.num_members, "add_obs_column": self.add_obs_column}

    def build_filters(self, solo: _MeanStdFilter) -> dict[int, _MeanStdFilter]:
        """One filter per member, each like RLlib's single-agent ``solo`` (see
        :func:`adpo_ray.rllib._ray_private.builds_own_filters`)."""
        if not isinstance(solo.running_stats, RunningStat):
            raise ValueError("PackedMeanStdFilter takes flat Box observations only")
        return {k: _MeanStdFilter(solo.shape, demean=solo.demean, destd=solo.destd, clip=solo.clip)
                for k in range(self.num_members)}

    def __call__(self, *, rl_module, batch, episodes, explore=None, persistent_data=None, **kwargs):
        filters = self._member_filters()
        sa_episodes = list(self.single_agent_episode_iterator(episodes))
        if not sa_episodes:
            return batch
        obs = np.stack([e.get_observations(indices=-1) for e in sa_episodes])
        members = np.fromiter((_member(e) for e in sa_episodes), dtype=np.int64, count=len(sa_episodes))
        k = self.num_members
        if len(members) % k == 0 and np.array_equal(members, np.repeat(np.arange(k), len(members) // k)):
            # the env runner's case: every member's N rows, in sub-env order; one stacked update
            out = self._filter_stacked(obs.reshape(k, -1, *obs.shape[1:])).reshape(obs.shape)
        else:
            out = np.empty_like(obs)
            # stable: each member's rows stay in sub-env order, as in the solo trial's batch
            order = np.argsort(members, kind="stable")
            bounds = np.searchsorted(members[order], np.arange(k + 1))
            for m in range(k):
                rows = order[bounds[m]:bounds[m + 1]]
                if rows.size:
                    out[rows] = self._filter_rows(filters[m], obs[rows], update=not self.frozen[m])
        for episode, row in zip(sa_episodes, out, strict=True):
            episode.set_observations(at_indices=-1, new_data=row)
            episode.observation_space = self.observation_space
        if self.add_obs_column:
            batch[Columns.OBS] = out
        return batch

    def _member_filters(self) -> dict[int, _MeanStdFilter]:
        return rp.built_filters(self)

    def _filter_stacked(self, x: np.ndarray) -> np.ndarray:
        """:meth:`_filter_rows` for all members at once; ``x`` is ``(K, n, d)``, member k's rows ``x[k]``."""
        filters = [self._member_filters()[m] for m in range(self.num_members)]
        if rp.updates_filter_stats(self):
            live = np.flatnonzero(~self.frozen)  # every member, unless some are past their budget
            rows = x if len(live) == self.num_members else x[live]
            if len(live):
                push_stacked([filters[m].running_stats for m in live], rows)
                push_stacked([filters[m].buffer for m in live], rows)
        first = filters[0]
        out = x
        if first.demean:
            out = out - np.stack([f.running_stats.mean_array for f in filters])[:, None]
        if first.destd:
            out = out / (stacked_std([f.running_stats for f in filters]) + SMALL_NUMBER)[:, None]
        if first.clip:
            out = np.clip(out, -first.clip, first.clip)
        return out.astype(x.dtype)

    @staticmethod
    def member_states(state: StateDict) -> list[StateDict]:
        """A pack filter's state -> one solo filter state (``{None: ...}``) per member."""
        return [{None: state[k]} for k in sorted(state)]

    @staticmethod
    def pack_states(states: list[StateDict]) -> StateDict:
        """Solo filter states (one per member, in member order) -> a pack filter's state."""
        return {k: s[None] for k, s in enumerate(states)}


class AddMemberColumn(ConnectorV2):
    """Learner connector: adds the :data:`MEMBER` column (int64, shape ``(B,)``) to the train
    batch, each row its episode's member. Like every custom learner connector it runs before
    RLlib's batching pieces (and after PPO's extra-timestep piece), so the column lines up with
    the observations row for row."""

    def __call__(self, *, rl_module, batch: dict[str, Any], episodes, explore=None, shared_data=None, **kwargs):
        if MEMBER in batch:  # added already: a second pass would double the column's rows
            return batch
        for sa_episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            n = len(sa_episode)
            self.add_n_batch_items(batch, MEMBER, items_to_add=np.full(n, _member(sa_episode), dtype=np.int64),
                                   num_items=n, single_agent_episode=sa_episode)
        return batch


def push_stacked(stats: list[RunningStat], x: np.ndarray) -> None:
    """Push ``x[k]`` (``x``: ``(K, n, d)``) into ``stats[k]`` for every ``k``: the same result, bit
    for bit, as :func:`~adpo_ray.rllib.connectors.push_batch` per member, in one array update."""
    n_b = x.shape[1]
    if n_b == 0:
        return
    mean_b = x.mean(axis=1)
    m2_b = ((x - mean_b[:, None]) ** 2).sum(axis=1)
    n_a = np.array([s.num_pushes for s in stats], dtype=np.int64)
    old_mean = np.stack([s.mean_array for s in stats])
    old_m2 = np.stack([s.sum_sq_diff_array for s in stats])
    n = n_a + n_b
    delta = mean_b - old_mean
    new_mean = old_mean + delta * (n_b / n)[:, None]
    new_m2 = old_m2 + m2_b + delta**2 * (n_a * n_b / n)[:, None]
    d_mean, d_m2 = new_mean - old_mean, new_m2 - old_m2
    for k, stat in enumerate(stats):
        stat.mean_array[...] = new_mean[k]
        stat.sum_sq_diff_array[...] = new_m2[k]
        # the "delta" arrays move exactly as the main ones do under push(); a first push sets them
        if n_a[k] == 0:
            stat.mean_delta_array[...] = new_mean[k]
            stat.sum_sq_diff_delta_array[...] += new_m2[k]
        else:
            stat.mean_delta_array[...] += d_mean[k]
            stat.sum_sq_diff_delta_array[...] += d_m2[k]
        stat.num_pushes = int(n[k])
        stat.num_pushes_delta += n_b


def stacked_std(stats: list[RunningStat]) -> np.ndarray:
    """``np.stack([s.std for s in stats])`` (``(K, d)`` float32) in one array operation."""
    n = np.array([s.num_pushes for s in stats], dtype=np.float64)
    m2 = np.stack([s.sum_sq_diff_array for s in stats])
    var = (m2 / np.maximum(n - 1, 1)[:, None]).astype(np.float32)
    var[n <= 1] = 0.0  # RunningStat.var's convention for n <= 1
    return np.sqrt(np.maximum(0, var))
