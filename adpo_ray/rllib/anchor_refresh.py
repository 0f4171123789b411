"""The anchor-refresh hook shared by ADPO's learners, online (:mod:`adpo_ray.rllib.learner`) and
offline (:mod:`adpo_ray.rllib.distill`).

One schedule per module (:mod:`adpo_ray.core.anchors`), fed the mean KL(policy || anchor) of each
update; after every update (one training iteration) the schedule decides, and the anchor is
refreshed by a hard copy or a Polyak step. The schedules' state is part of the learner's
checkpoint state, and every refresh is logged (count, step and KL of the last refresh).
"""

from __future__ import annotations

from typing import Any

from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

from adpo_ray.core.anchors import AnchorSchedule, make_schedule, polyak_
from adpo_ray.metrics import ANCHOR_KL, ANCHOR_REFRESHES, LAST_REFRESH_KL, LAST_REFRESH_STEP

_STATE_KEY = "adpo_anchor_schedules"


class AnchorRefreshMixin:
    """The anchor-refresh hook of ADPO's learners (online and offline): one schedule per module,
    the mean KL(policy || anchor) of each update, the refresh after every update (one training
    iteration), and the schedules' state in the learner's checkpoint state.

    Subclasses say in ``_attach_anchor(module_id, module)`` whether a module gets an anchor and a
    schedule (:meth:`add_schedule`) and report KLs from their loss (:meth:`record_anchor_kl`)."""

    def build(self) -> None:
        super().build()  # module and optimizer first: the anchor never enters the optimizer
        self._schedules: dict[str, AnchorSchedule] = {}
        self._kl_sum: dict[str, float] = {}
        self._kl_count: dict[str, int] = {}
        self.module.foreach_module(self._attach_anchor)

    def _attach_anchor(self, module_id: str, module: RLModule) -> None:
        raise NotImplementedError

    def add_schedule(self, module_id: str, mode: str, params: dict | None) -> None:
        self._schedules[module_id] = make_schedule(mode, **(params or {}))

    def record_anchor_kl(self, module_id: str, kl) -> None:
        """One minibatch's (or one update's) mean KL: a float or a tensor, summed as given and
        read once after the update (no host sync per minibatch on a GPU)."""
        self._kl_sum[module_id] = self._kl_sum.get(module_id, 0.0) + kl
        self._kl_count[module_id] = self._kl_count.get(module_id, 0) + 1

    def before_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().before_gradient_based_update(timesteps=timesteps)
        self._kl_sum.clear()
        self._kl_count.clear()

    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().after_gradient_based_update(timesteps=timesteps)
        step = int(timesteps.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0) or 0)
        for module_id, schedule in self._schedules.items():
            module = self.module[module_id].unwrapped()
            kl = float(self._kl_sum.get(module_id, 0.0)) / max(1, self._kl_count.get(module_id, 0))
            rate = schedule.step(kl, timestep=step)
            polyak_(module.anchor_parameters(), module.policy_parameters(), rate)
            self.metrics.log_dict(
                {
                    ANCHOR_KL: kl,
                    ANCHOR_REFRESHES: schedule.refreshes,
                    LAST_REFRESH_STEP: schedule.last_refresh_step,
                    LAST_REFRESH_KL: schedule.last_refresh_kl,
                },
                key=module_id,
                window=1,
            )

    def anchor_schedule(self, module_id: str) -> AnchorSchedule:
        return self._schedules[module_id]

    def get_state(self, components=None, *, not_components=None, **kwargs):
        state = super().get_state(components, not_components=not_components, **kwargs)
        state[_STATE_KEY] = {mid: s.state_dict() for mid, s in self._schedules.items()}
        return state

    def set_state(self, state) -> None:
        super().set_state(state)
        for mid, sched_state in state.get(_STATE_KEY, {}).items():
            if mid in self._schedules:
                self._schedules[mid].load_state_dict(sched_state)
