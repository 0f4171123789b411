"""Connectors: the per-candidate feedback of ``list_source: actions`` into the train batch, and a
batched observation filter for fast vectorized sampling."""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.env_to_module import MeanStdFilter
from ray.rllib.utils.filter import RunningStat
from ray.rllib.utils.numpy import SMALL_NUMBER

from adpo_ray.rllib import _ray_private as rp

#: Train-batch column holding the per-candidate signal ``y`` (shape ``(B, K)``).
LIST_SIGNAL = "adpo_list_signal"


class AddListSignalFromInfos(ConnectorV2):
    """Adds ``info[info_key]`` of every step as the :data:`LIST_SIGNAL` column.

    Infos align with observations (index 0 is the reset info), so the feedback for the action at
    step ``t`` is ``get_infos(t + 1)``. PPO's learner pipeline has already appended one artificial
    step to each episode (masked out of the loss); its info is the duplicated last one.
    """

    def __init__(self, input_observation_space=None, input_action_space=None, *, info_key: str = "utilities_noisy", **kwargs):
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.info_key = info_key

    def __call__(self, *, rl_module, batch: dict[str, Any], episodes, explore=None, shared_data=None, **kwargs):
        if LIST_SIGNAL in batch:
            return batch
        for sa_episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            n = len(sa_episode)
            infos = sa_episode.get_infos(slice(1, n + 1))
            try:
                items = [np.asarray(info[self.info_key], dtype=np.float32) for info in infos]
            except KeyError:
                raise KeyError(
                    f"list_source 'actions' needs info[{self.info_key!r}] (per-candidate feedback) "
                    "from every env step; this env does not provide it"
                ) from None
            self.add_n_batch_items(
                batch, LIST_SIGNAL, items_to_add=items, num_items=n, single_agent_episode=sa_episode
            )
        return batch


class BatchedMeanStdFilter(MeanStdFilter):
    """RLlib's observation mean/std filter, updated and applied once per vector step.

    The stock connector pushes every observation into its running statistics one at a time through
    nested-structure helpers, which costs more than stepping a MuJoCo env. This one stacks the
    newest observation of every episode, merges the batch into the same statistics (Chan et al.'s
    parallel update, bit-for-bit the same state layout, so syncing across env runners, evaluation
    and checkpoints work unchanged) and normalises all of them in one array operation. Only flat
    Box observations of single-agent episodes take the fast path; anything else is the stock filter.
    """

    def __call__(self, *, rl_module, batch, episodes, explore=None, persistent_data=None, **kwargs):
        filt = rp.single_agent_filter(self)
        if filt is None or not isinstance(filt.running_stats, RunningStat):
            return super().__call__(rl_module=rl_module, batch=batch, episodes=episodes, explore=explore,
                                    persistent_data=persistent_data, **kwargs)
        sa_episodes = list(self.single_agent_episode_iterator(episodes))
        if not sa_episodes:
            return batch
        obs = np.stack([e.get_observations(indices=-1) for e in sa_episodes])
        out = self._filter_rows(filt, obs)
        for episode, row in zip(sa_episodes, out, strict=True):
            episode.set_observations(at_indices=-1, new_data=row)
            episode.observation_space = self.observation_space
        return batch


    def _filter_rows(self, filt, x: np.ndarray, update: bool = True) -> np.ndarray:
        """``x`` (rows of observations) through RLlib's filter ``filt`` in one batched step: its
        running statistics updated with every row first (when this connector updates them and
        ``update``), then demeaned, scaled and clipped as RLlib's filter does, in ``x``'s dtype."""
        if update and rp.updates_filter_stats(self):
            push_batch(filt.running_stats, x)
            push_batch(filt.buffer, x)
        out = x
        if filt.demean:
            out = out - filt.running_stats.mean
        if filt.destd:
            out = out / (filt.running_stats.std + SMALL_NUMBER)
        if filt.clip:
            out = np.clip(out, -filt.clip, filt.clip)
        return out.astype(x.dtype)


def push_batch(stat: RunningStat, x: np.ndarray) -> None:
    """Push the rows of ``x`` into ``stat``: the same result as ``stat.push(row)`` for each row."""
    n_b = x.shape[0]
    if n_b == 0:
        return
    mean_b = x.mean(axis=0)
    m2_b = ((x - mean_b) ** 2).sum(axis=0)
    n_a = stat.num_pushes
    old_mean, old_m2 = stat.mean_array.copy(), stat.sum_sq_diff_array.copy()
    n = n_a + n_b
    delta = mean_b - old_mean
    new_mean = old_mean + delta * (n_b / n)
    new_m2 = old_m2 + m2_b + delta**2 * (n_a * n_b / n)
    stat.mean_array[...] = new_mean
    stat.sum_sq_diff_array[...] = new_m2
    # the "delta" arrays move exactly as the main ones do under push(); a first push sets them
    if n_a == 0:
        stat.mean_delta_array[...] = new_mean
        stat.sum_sq_diff_delta_array[...] += new_m2
    else:
        stat.mean_delta_array[...] += new_mean - old_mean
        stat.sum_sq_diff_delta_array[...] += new_m2 - old_m2
    stat.num_pushes = n
    stat.num_pushes_delta += n_b
