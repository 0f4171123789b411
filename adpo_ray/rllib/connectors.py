"""Learner connector: carry each step's per-candidate feedback from the env's ``info`` into the
train batch (the signal ``y`` of ``list_source: actions``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.connectors.connector_v2 import ConnectorV2

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
