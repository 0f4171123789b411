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

import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.core.rl_module.apis import TargetNetworkAPI
from ray.rllib.core.rl_module.rl_module import RLModule

from adpo_ray.core.anchors import polyak_
from adpo_ray.core.losses import adpo_loss
from adpo_ray.metrics import ENTROPY, LOSS_ADPO, LOSS_VF
from adpo_ray.rllib.anchor_refresh import AnchorRefreshMixin
from adpo_ray.rllib.connectors import LIST_SIGNAL
from adpo_ray.rllib.module import ANCHOR_DIST_INPUTS, ADPOTorchRLModule


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
