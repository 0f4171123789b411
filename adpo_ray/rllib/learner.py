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

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchCategorical, TorchDiagGaussian
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.core.rl_module.apis import TargetNetworkAPI
from ray.rllib.core.rl_module.rl_module import RLModule

from adpo_ray.core.anchors import polyak_
from adpo_ray.core.distill import diag_gaussian_kl
from adpo_ray.core.losses import adpo_loss
from adpo_ray.metrics import ENTROPY, LOSS_ADPO, LOSS_VF
from adpo_ray.rllib import _ray_private as rp
from adpo_ray.rllib.anchor_refresh import AnchorRefreshMixin
from adpo_ray.rllib.connectors import LIST_SIGNAL
from adpo_ray.rllib.distill import loss_variants_of
from adpo_ray.rllib.fused import FusedPPOTorchLearner, masked_mean
from adpo_ray.rllib.init import module_dir
from adpo_ray.rllib.module import ANCHOR_DIST_INPUTS, ADPOTorchRLModule, split_gaussian


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


def compact_into_lists(
    x: torch.Tensor, mask: torch.Tensor | None, list_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`group_into_lists` of the rows where ``mask`` is true, with static shapes (no host
    sync on a GPU): the valid rows move to the front in order (a stable sort), the lists cover all
    ``N`` rows, and the returned mask marks the valid slots (lists past the valid rows are empty)."""
    if mask is None:
        return group_into_lists(x, list_size)
    order = torch.argsort((~mask).to(torch.int8), stable=True)
    lists, slots = group_into_lists(x[order], list_size)
    valid = torch.arange(slots.numel(), device=x.device).reshape(slots.shape) < mask.sum()
    return lists, valid


def kl_from_logits(dist_cls, p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Per-row KL(p || q) of two action distributions given by their inputs: closed forms for
    RLlib's diagonal Gaussian (:func:`adpo_ray.core.distill.diag_gaussian_kl`) and categorical
    (a few fused ops, no distribution objects), else the distribution's own ``kl``."""
    if issubclass(dist_cls, TorchDiagGaussian):
        return diag_gaussian_kl(*split_gaussian(p_logits), *split_gaussian(q_logits))
    if issubclass(dist_cls, TorchCategorical):
        log_p, log_q = torch.log_softmax(p_logits, dim=-1), torch.log_softmax(q_logits, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    return dist_cls.from_logits(p_logits).kl(dist_cls.from_logits(q_logits))


def list_weights(list_mask: torch.Tensor) -> torch.Tensor:
    """``1 / (number of lists with a valid slot)`` for those lists, 0 for empty ones: the per-list
    loss times these weights, summed, is the mean over the real lists."""
    has = list_mask.any(dim=-1).to(torch.float32)
    return has / has.sum(dim=-1, keepdim=True)


ANCHOR_LOGITS = "adpo_anchor_logits"  # per-update inputs of the fused path
ANCHOR_LOGP = "adpo_anchor_logp"
LIST_MASK = "adpo_list_mask"  # per-minibatch inputs of the fused path
LIST_WEIGHT = "adpo_list_weight"
LIST_FULL = "adpo_list_full"


class ADPOTorchLearner(AnchorRefreshMixin, FusedPPOTorchLearner):
    def _attach_anchor(self, module_id: str, module: RLModule) -> None:
        if not isinstance(module, TargetNetworkAPI):
            raise TypeError(f"ADPO needs an RLModule with an anchor (ADPOTorchRLModule), got {type(module).__name__}")
        module.make_target_networks()
        cfg = self.config.get_config_for_module(module_id)
        if cfg.anchor_init:
            load_anchor_from_checkpoint(module, cfg.anchor_init, module_id)
        self.add_schedule(module_id, cfg.anchor_mode, cfg.anchor_params)

    # -- loss, fused path (RLlib's loop: compute_loss_for_module below) -------------------
    fused_terms = ("adpo_loss", "vf_loss", "entropy")

    def fused_columns(self, config):
        return frozenset({Columns.OBS, Columns.ACTIONS, Columns.ADVANTAGES, Columns.VALUE_TARGETS,
                          Columns.LOSS_MASK, LIST_SIGNAL})

    def fused_plan(self, module_id, config, plan, rows):
        """With ``list_source='batch'``, each minibatch's valid rows first (in plan order), so
        that its lists are consecutive slots, and every minibatch's list mask and list weights
        computed here, once: the loop never compacts."""
        if config.list_source != "batch":
            return plan, {}
        mask = rows.get(Columns.LOSS_MASK)
        if mask is None:
            valid = torch.ones_like(plan, dtype=torch.bool)
        else:
            valid = mask.reshape(-1)[plan]
            order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
            plan, valid = plan.gather(1, order), valid.gather(1, order)
        m, size = plan.shape
        n_lists = -(-size // config.list_size)
        pad = n_lists * config.list_size - size
        if pad:
            valid = torch.cat([valid, valid.new_zeros(m, pad)], dim=1)
        list_mask = valid.view(m, n_lists, config.list_size)
        # which minibatches have no padding at all (read once per update): their loss skips masking
        full = list_mask.flatten(1).all(dim=1).tolist()
        return plan, {LIST_MASK: list_mask, LIST_WEIGHT: list_weights(list_mask), LIST_FULL: full}

    def fused_prepare(self, module_id, config, data):
        """The anchor's outputs for the whole batch, once: it only moves after the update."""
        module = self.module[module_id].unwrapped()
        with torch.no_grad():
            logits = module.forward_target(data)[ANCHOR_DIST_INPUTS]
            if config.list_source == "actions":
                return {ANCHOR_LOGITS: logits, ANCHOR_LOGP: torch.log_softmax(logits, dim=-1)}
            dist = module.get_train_action_dist_cls().from_logits(logits)
            return {ANCHOR_LOGITS: logits, ANCHOR_LOGP: dist.logp(data[Columns.ACTIONS])}

    def fused_loss(self, module_id, config, batch):
        module = self.module[module_id].unwrapped()
        fwd = rp.forward_train(module, batch)  # the fused loop put the module in train mode
        total, stats, logits = self.adpo_terms(module_id, config, batch, fwd, batch[ANCHOR_LOGP], batch[ANCHOR_LOGITS])
        # the KL to the anchor is a diagnostic (and the schedules' input): computed for every
        # minibatch at once after the loop, from the policy's outputs kept here
        return total, stats, logits.detach()

    def fused_finish(self, module_id, config, plan, rows, kept, values):
        module = self.module[module_id].unwrapped()
        logits = kept
        with torch.no_grad():
            kl = kl_from_logits(module.get_train_action_dist_cls(), logits, rows[ANCHOR_LOGITS][plan])
            mask = rows.get(Columns.LOSS_MASK)
            if mask is None:
                per_minibatch = kl.mean(dim=1)
            else:
                mask = mask.reshape(-1)[plan]
                per_minibatch = torch.where(mask, kl, torch.zeros((), device=kl.device)).sum(dim=1) / mask.sum(dim=1)
        values["anchor_kl"] = float(per_minibatch.mean())

    def adpo_terms(self, module_id, config, batch, fwd, anchor_logp, anchor_logits):
        """ADPO's total loss, its detached terms (:attr:`fused_terms`) and the policy's action
        distribution inputs on one minibatch, given the anchor's log-probabilities for its rows
        (of the taken actions, or of every action with ``list_source='actions'``) and its
        distribution inputs (for ``anchor_kl_coeff``). Shared by both
        update paths; no host sync (masks are applied by ``where``, never by boolean indexing)."""
        module = self.module[module_id].unwrapped()
        mask = batch.get(Columns.LOSS_MASK)
        if mask is not None and mask.ndim > 1:
            mask = mask.reshape(-1)
        dist_cls = module.get_train_action_dist_cls()
        logits = fwd[Columns.ACTION_DIST_INPUTS]
        dist = dist_cls.from_logits(logits)
        knobs = dict(loss=config.adpo_loss, target=config.adpo_target, tau_anc=config.tau_anc, beta_q=config.beta_q,
                     **loss_variants_of(config))
        if config.list_source == "actions":  # one list per row: every action of its context
            y = batch[LIST_SIGNAL]
            if mask is not None:
                y = torch.where(mask[:, None], y, torch.zeros((), dtype=y.dtype, device=y.device))
            loss_adpo = masked_mean(adpo_loss(torch.log_softmax(logits, dim=-1), anchor_logp, y, **knobs), mask)
        else:  # lists of list_size consecutive valid rows
            columns = torch.stack([dist.logp(batch[Columns.ACTIONS]), anchor_logp, batch[Columns.ADVANTAGES]], dim=-1)
            if LIST_MASK in batch:  # the fused path put the valid rows first and made the masks
                n_lists = batch[LIST_MASK].shape[0]
                lists = columns.reshape(n_lists, config.list_size, 3) if n_lists * config.list_size == len(columns) \
                    else group_into_lists(columns, config.list_size)[0]
                list_mask, weight = batch[LIST_MASK], batch[LIST_WEIGHT]
                if batch[LIST_FULL]:  # every slot real: masking would change nothing
                    list_mask = None
            else:
                lists, list_mask = compact_into_lists(columns, mask, config.list_size)
                weight = list_weights(list_mask)
            s, r, y = lists.unbind(-1)
            loss_adpo = (adpo_loss(s, r, y, mask=list_mask, **knobs) * weight).sum()
        values = module.compute_values(batch, embeddings=fwd.get(Columns.EMBEDDINGS))
        vf = torch.clamp((values - batch[Columns.VALUE_TARGETS]) ** 2, 0, config.vf_clip_param)
        entropy, loss_vf = masked_mean(torch.stack([dist.entropy(), vf], dim=-1), mask).unbind()
        entropy_coeff = self.entropy_coeff_schedulers_per_module[module_id].get_current_value()
        total = loss_adpo + config.vf_loss_coeff * loss_vf - entropy_coeff * entropy
        if config.anchor_kl_coeff > 0:  # the author's KL penalty to the anchor, exact per state
            total = total + config.anchor_kl_coeff * masked_mean(kl_from_logits(dist_cls, logits, anchor_logits), mask)
        stats = torch.stack([loss_adpo, loss_vf, entropy]).detach()
        return total, stats, logits

    def fused_log(self, module_id, config, values):
        self.record_anchor_kl(module_id, values["anchor_kl"])
        self._log_losses(module_id, values["adpo_loss"], values["vf_loss"], values["entropy"])

    def _log_losses(self, module_id, loss_adpo, loss_vf, entropy) -> None:
        self.metrics.log_dict(
            {
                LOSS_ADPO: loss_adpo,
                LOSS_VF: loss_vf,
                ENTROPY: entropy,
                # RLlib's own names, so stock dashboards and PPO comparisons keep working
                POLICY_LOSS_KEY: loss_adpo,
                VF_LOSS_KEY: loss_vf,
                ENTROPY_KEY: entropy,
            },
            key=module_id,
            window=1,
        )

    # -- loss, RLlib's path ----------------------------------------------------------------
    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        module = self.module[module_id].unwrapped()
        with torch.no_grad():
            anchor_logits = module.forward_target(batch)[ANCHOR_DIST_INPUTS]
            if config.list_source == "actions":
                anchor_logp = torch.log_softmax(anchor_logits, dim=-1)
            else:
                anchor_logp = module.get_train_action_dist_cls().from_logits(anchor_logits).logp(batch[Columns.ACTIONS])
        total, stats, logits = self.adpo_terms(module_id, config, batch, fwd_out, anchor_logp, anchor_logits)
        loss_adpo, loss_vf, entropy = stats.unbind()
        mask = batch.get(Columns.LOSS_MASK)
        with torch.no_grad():
            kl = masked_mean(kl_from_logits(module.get_train_action_dist_cls(), logits.detach(), anchor_logits),
                             None if mask is None else mask.reshape(-1))
        self.record_anchor_kl(module_id, kl)  # summed on the device, read after the update
        self._log_losses(module_id, loss_adpo, loss_vf, entropy)
        return total


def load_anchor_from_checkpoint(module: ADPOTorchRLModule, path: str, module_id: str) -> None:
    """Set the anchor to the policy saved at ``path``: an algorithm checkpoint directory (its
    module ``module_id`` is used) or an RLModule checkpoint directory."""
    try:
        folder = module_dir(path, module_id)
    except FileNotFoundError:
        raise FileNotFoundError(f"anchor_init: no RLModule checkpoint for {module_id!r} under {path}") from None
    source = RLModule.from_checkpoint(str(folder))
    src_encoder = getattr(source.encoder, "actor_encoder", source.encoder)
    polyak_(module.anchor_parameters(), [*src_encoder.parameters(), *source.pi.parameters()], 1.0)
