"""ADPO's torch Learner: PPO's sampling, GAE and value loss, with the policy loss replaced by the
anchored preference loss of :mod:`adpo_ray.core.losses`, and the anchor-refresh hook run after
every learner update (one training iteration).

Lists (``config.list_source``):

* ``actions``: one list per sampled context = all K discrete actions; scores are the full
  log-softmax of the policy (and anchor) logits, ``y`` is the per-candidate feedback carried from the
  env's ``info`` by :class:`~adpo_ray.rllib.connectors.AddListSignalFromInfos`.
* ``batch``: lists of ``list_size`` transitions grouped inside each (shuffled) minibatch; scores
  are ``log pi(a_t | s_t)``, ``y`` the GAE advantages computed from the (noisy) rewards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.core.rl_module.apis import TargetNetworkAPI
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

from adpo_ray.core.anchors import AnchorSchedule, make_schedule, polyak_
from adpo_ray.core.losses import adpo_loss
from adpo_ray.rllib.connectors import LIST_SIGNAL
from adpo_ray.rllib.module import ANCHOR_DIST_INPUTS, ADPOTorchRLModule

# Curated metric names (README "Tracking and results"), logged per module.
ANCHOR_KL = "adpo/anchor_kl"
ANCHOR_REFRESHES = "adpo/anchor_refreshes"
LAST_REFRESH_STEP = "adpo/last_refresh_step"
LAST_REFRESH_KL = "adpo/last_refresh_kl"
LOSS_ADPO = "loss/adpo"
LOSS_VF = "loss/vf"
ENTROPY = "policy/entropy"

_STATE_KEY = "adpo_anchor_schedules"


def group_into_lists(x: torch.Tensor, list_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reshape ``(N, ...)`` rows into ``(ceil(N / L), L, ...)`` lists plus a validity mask."""
    n = x.shape[0]
    n_lists = max(1, -(-n // list_size))
    pad = n_lists * list_size - n
    mask = torch.ones(n, dtype=torch.bool, device=x.device)
    if pad:
        x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
        mask = torch.cat([mask, mask.new_zeros(pad)])
    return x.reshape(n_lists, list_size, *x.shape[1:]), mask.reshape(n_lists, list_size)


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

    def record_anchor_kl(self, module_id: str, kl: float) -> None:
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
            kl = self._kl_sum.get(module_id, 0.0) / max(1, self._kl_count.get(module_id, 0))
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


class ADPOTorchLearner(AnchorRefreshMixin, PPOTorchLearner):
    def _attach_anchor(self, module_id: str, module: RLModule) -> None:
        if not isinstance(module, TargetNetworkAPI):
            raise TypeError(f"ADPO needs an RLModule with an anchor (ADPOTorchRLModule), got {type(module).__name__}")
        module.make_target_networks()
        cfg = self.config.get_config_for_module(module_id)
        if cfg.anchor_init:
            load_anchor_from_checkpoint(module, cfg.anchor_init, module_id)
        self.add_schedule(module_id, cfg.anchor_mode, cfg.anchor_params)

    # -- loss ------------------------------------------------------------------------------
    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        module = self.module[module_id].unwrapped()
        if Columns.LOSS_MASK in batch:
            mask = batch[Columns.LOSS_MASK]
        else:
            mask = torch.ones_like(batch[Columns.ACTIONS], dtype=torch.bool)
        if mask.ndim > 1:
            mask = mask.reshape(-1)

        def masked_mean(x: torch.Tensor) -> torch.Tensor:
            return x[mask].mean()

        dist_cls = module.get_train_action_dist_cls()
        logits = fwd_out[Columns.ACTION_DIST_INPUTS]
        with torch.no_grad():
            anchor_logits = module.forward_target(batch)[ANCHOR_DIST_INPUTS]
        dist, anchor_dist = dist_cls.from_logits(logits), dist_cls.from_logits(anchor_logits)

        if config.list_source == "actions":
            s = torch.log_softmax(logits[mask], dim=-1)
            r = torch.log_softmax(anchor_logits[mask], dim=-1)
            y = batch[LIST_SIGNAL][mask]
            list_mask = None
        else:
            actions = batch[Columns.ACTIONS]
            s, list_mask = group_into_lists(dist.logp(actions)[mask], config.list_size)
            r, _ = group_into_lists(anchor_dist.logp(actions)[mask], config.list_size)
            y, _ = group_into_lists(batch[Columns.ADVANTAGES][mask], config.list_size)
        per_list = adpo_loss(
            s, r, y,
            loss=config.adpo_loss,
            target=config.adpo_target,
            tau_anc=config.tau_anc,
            beta_q=config.beta_q,
            mask=list_mask,
        )
        loss_adpo = per_list.mean()

        entropy = masked_mean(dist.entropy())
        values = module.compute_values(batch, embeddings=fwd_out.get(Columns.EMBEDDINGS))
        vf_loss = torch.clamp((values - batch[Columns.VALUE_TARGETS]) ** 2, 0, config.vf_clip_param)
        loss_vf = masked_mean(vf_loss)
        with torch.no_grad():
            anchor_kl = masked_mean(dist.kl(anchor_dist))
        self.record_anchor_kl(module_id, float(anchor_kl))

        entropy_coeff = self.entropy_coeff_schedulers_per_module[module_id].get_current_value()
        total = loss_adpo + config.vf_loss_coeff * loss_vf - entropy_coeff * entropy
        self.metrics.log_dict(
            {
                LOSS_ADPO: loss_adpo.detach(),
                LOSS_VF: loss_vf.detach(),
                ENTROPY: entropy.detach(),
                # RLlib's own names, so stock dashboards and PPO comparisons keep working
                POLICY_LOSS_KEY: loss_adpo.detach(),
                VF_LOSS_KEY: loss_vf.detach(),
                ENTROPY_KEY: entropy.detach(),
            },
            key=module_id,
            window=1,
        )
        return total


def load_anchor_from_checkpoint(module: ADPOTorchRLModule, path: str, module_id: str) -> None:
    """Set the anchor to the policy saved at ``path``: an algorithm checkpoint directory (its
    module ``module_id`` is used) or an RLModule checkpoint directory."""
    root = Path(path)
    candidates = [root / "learner_group" / "learner" / "rl_module" / module_id, root / module_id, root]
    module_dir = next((c for c in candidates if (c / "module_state.pkl").exists() or (c / "module_state.pt").exists()), None)
    if module_dir is None:
        raise FileNotFoundError(f"anchor_init: no RLModule checkpoint for {module_id!r} under {path}")
    source = RLModule.from_checkpoint(str(module_dir))
    src_encoder = getattr(source.encoder, "actor_encoder", source.encoder)
    polyak_(module.anchor_parameters(), [*src_encoder.parameters(), *source.pi.parameters()], 1.0)
