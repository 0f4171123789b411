"""The fused learner update, shared by ADPO and the PPO baselines (clipped PPO and the KL-penalty
policy gradient ``ppo_kl``), so their comparison stays fair.

RLlib's ``Learner.update`` slices a ``SampleBatch`` into each minibatch, logs a dozen metrics and
checks every gradient for NaNs (a host sync per parameter on a GPU) on every minibatch: at our
network sizes that overhead, not the arithmetic, is the update's cost. The fused path, inside
RLlib's Learner API (``Learner.update`` is its documented override point):

* builds the train batch with the learner connector as RLlib does (GAE, value targets), once;
* turns it into one dict of tensors on the learner's device and adds each algorithm's per-update
  inputs (ADPO: the anchor's outputs for the whole batch; the anchor only moves after the update);
* makes every epoch's minibatch indices at once on that device
  (:func:`adpo_ray.core.minibatches.minibatch_plan`, RLlib's cyclic iterator exactly);
* runs all minibatches in one tight loop (gather, forward, loss, backward, global-norm clip,
  optimizer step) with the loss terms summed on the device and read once per update;
* logs the update's mean loss terms and RLlib's step counters once.

Numerically it is RLlib's path: with the same seed and shuffles (``fused_shuffle="rllib"``), one
update gives the same parameters to within 1e-5 (``tests/integration/test_fused_learner.py``).
``learner_update="rllib"`` selects RLlib's own loop, unchanged. Single-learner, feed-forward
modules with one tensor observation and global-norm clipping take the fused path; anything else
(several learners, learning-rate schedules, grad scalers, recurrent modules) runs RLlib's path.
"""

from __future__ import annotations

import numpy as np
import torch
from ray.rllib.algorithms.algorithm_config import NotProvided
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.ppo.ppo import (
    LEARNER_RESULTS_CURR_KL_COEFF_KEY,
    LEARNER_RESULTS_KL_KEY,
    LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY,
    LEARNER_RESULTS_VF_LOSS_UNCLIPPED_KEY,
)
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.core.learner.training_data import TrainingData
from ray.rllib.utils.metrics import (
    ALL_MODULES,
    DIFF_NUM_GRAD_UPDATES_VS_SAMPLER_POLICY,
    MODULE_TRAIN_BATCH_SIZE_MEAN,
    NUM_ENV_STEPS_TRAINED,
    NUM_ENV_STEPS_TRAINED_LIFETIME,
    NUM_MODULE_STEPS_TRAINED,
    NUM_MODULE_STEPS_TRAINED_LIFETIME,
    WEIGHTS_SEQ_NO,
)

from adpo_ray.core.kl_penalty import adapt_kl_beta
from adpo_ray.core.minibatches import minibatch_plan
from adpo_ray.rllib import _ray_private as rp
from adpo_ray.rllib.settings import OptimizerConfigMixin, OptimizerLearnerMixin, set_provided
from adpo_ray.spec.sections import LEARNER_UPDATES

FUSED_SHUFFLES = ("device", "rllib")
_SMALL = 1e-5  # RLlib's SMALL_NUMBER, in explained variance


class FusedLearnerConfigMixin(OptimizerConfigMixin):
    """The ``learner_update`` / ``fused_shuffle`` / ``fused_compile`` settings of an
    AlgorithmConfig whose learner is a :class:`FusedUpdateMixin`, and its optimiser's
    (:class:`~adpo_ray.rllib.settings.OptimizerConfigMixin`)."""

    def _init_fused(self) -> None:
        self.learner_update = LEARNER_UPDATES[0]
        self.fused_shuffle = "device"
        self.fused_compile = False
        self._init_optimizer()

    def _set_fused(self, learner_update, fused_shuffle, fused_compile, torch_optimizer, weight_decay) -> None:
        set_provided(self, learner_update=learner_update, fused_shuffle=fused_shuffle, fused_compile=fused_compile)
        self._set_optimizer(torch_optimizer, weight_decay)

    def _validate_fused(self) -> None:
        self._validate_optimizer()
        if self.learner_update not in LEARNER_UPDATES:
            rp.config_value_error(self, f"learner_update={self.learner_update!r}; allowed: {', '.join(LEARNER_UPDATES)}")
        if self.fused_shuffle not in FUSED_SHUFFLES:
            rp.config_value_error(self, f"fused_shuffle={self.fused_shuffle!r}; allowed: {', '.join(FUSED_SHUFFLES)}")


class FusedUpdateMixin(OptimizerLearnerMixin):
    """A torch Learner whose ``update`` runs all epochs x minibatches in one loop on its device.

    Subclasses give the loss of one minibatch (:meth:`fused_loss`, returning the total loss and
    a 1-D tensor of detached terms named by :attr:`fused_terms`), optionally per-update inputs
    (:meth:`fused_prepare`), and log the terms' update means (:meth:`fused_log`)."""

    #: names of the terms :meth:`fused_loss` returns, in order
    fused_terms: tuple[str, ...] = ()

    def build(self) -> None:
        super().build()
        self._fused_loss_fn = self.fused_loss
        if getattr(self.config, "fused_compile", False):
            self._fused_loss_fn = torch.compile(self.fused_loss, dynamic=False)

    def fused_optimizer(self) -> bool:
        """The fused path steps its optimiser as one fused kernel where torch has one for the
        device (CPU and CUDA: a third of the per-parameter loop's time at our sizes); RLlib's
        path keeps RLlib's per-parameter step."""
        return self.config.learner_update == "fused"

    # -- which path -----------------------------------------------------------------------
    def fused_applies(self) -> bool:
        cfg = self.config
        return (
            getattr(cfg, "learner_update", "rllib") == "fused"
            and cfg.num_learners <= 1
            and not rp.has_lr_schedulers(self)
            and not rp.has_grad_scalers(self)
            and not rp.compiles_complete_update(self)
            and cfg.grad_clip_by == "global_norm"
            and len(self.module) == 1
            and not any(m.is_stateful() for m in self.module.values())
        )

    def update(self, batch=None, batches=None, batch_refs=None, episodes=None, episodes_refs=None,
               data_iterators=None, training_data=None, *, timesteps=None, num_total_minibatches=0,
               num_epochs=1, minibatch_size=None, shuffle_batch_per_epoch=False,
               _no_metrics_reduce=False, **kwargs):
        if data_iterators or num_total_minibatches or not self.fused_applies():
            return super().update(
                batch=batch, batches=batches, batch_refs=batch_refs, episodes=episodes,
                episodes_refs=episodes_refs, data_iterators=data_iterators, training_data=training_data,
                timesteps=timesteps, num_total_minibatches=num_total_minibatches, num_epochs=num_epochs,
                minibatch_size=minibatch_size, shuffle_batch_per_epoch=shuffle_batch_per_epoch,
                _no_metrics_reduce=_no_metrics_reduce, **kwargs,
            )
        rp.check_is_built(self)
        self.before_gradient_based_update(timesteps=timesteps or {})
        if training_data is None:
            training_data = TrainingData(batch=batch, batches=batches, batch_refs=batch_refs,
                                         episodes=episodes, episodes_refs=episodes_refs)
        training_data.validate()
        training_data.solve_refs()
        rp.next_weights_seq_no(self)
        ma_batch = self.fused_train_batch(training_data)
        for module_id, module_batch in list(ma_batch.policy_batches.items()):
            if not self.should_module_be_updated(module_id, ma_batch):
                continue
            self._fused_update_module(
                module_id, module_batch, env_steps=ma_batch.env_steps(), num_epochs=num_epochs,
                minibatch_size=minibatch_size or len(module_batch),
                shuffle=shuffle_batch_per_epoch and num_epochs > 1,
            )
        self.after_gradient_based_update(timesteps=timesteps or {})
        if not _no_metrics_reduce:
            return self.metrics.reduce()

    # -- the loop -------------------------------------------------------------------------
    def _fused_update_module(self, module_id, module_batch, *, env_steps, num_epochs, minibatch_size, shuffle):
        config = self.config.get_config_for_module(module_id)
        data = {k: v for k, v in module_batch.items() if isinstance(v, torch.Tensor)}
        if Columns.OBS not in data:
            raise TypeError(
                f"the fused learner update needs one tensor observation per row, got "
                f"{type(module_batch.get(Columns.OBS)).__name__}; set learner_update='rllib' "
                f"(spec: resources.learner_update: rllib)"
            )
        n = len(module_batch)
        permute = np.random.permutation if config.fused_shuffle == "rllib" else None
        plan = minibatch_plan(n, minibatch_size, num_epochs, shuffle=shuffle, permute=permute, device=self.device)
        wanted = self.fused_columns(config)
        rows = {k: v for k, v in data.items() if k in wanted}
        rows.update(self.fused_prepare(module_id, config, data))
        plan, per_minibatch = self.fused_plan(module_id, config, plan, rows)
        packed = PackedRows(rows)

        self.module[module_id].unwrapped().train()  # once (RLlib's forward_train sets it per call)
        groups = []
        for name, optimizer in self.get_optimizers_for_module(module_id):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            groups.append((optimizer, params))
            norm_key = f"gradients_{name}_global_norm"  # RLlib's name (the last optimizer's)
        grad_clip = config.grad_clip
        terms = torch.zeros(len(self.fused_terms) + 2, device=self.device)
        norm = torch.zeros((), device=self.device)
        buckets = None  # per optimizer: one flat buffer whose views are the parameters' grads
        kept = None
        for i, idx in enumerate(plan):
            mb = packed.take(idx)
            for k, v in per_minibatch.items():
                mb[k] = v[i]
            loss, stats, keep = self._fused_loss_fn(module_id, config, mb)
            if keep is not None:  # per-minibatch outputs for fused_finish, kept on the device
                if kept is None:
                    kept = keep.new_empty((len(plan), *keep.shape))
                kept[i].copy_(keep)
            if buckets is None:  # first minibatch: learn which parameters get gradients
                for optimizer, _ in groups:
                    optimizer.zero_grad(set_to_none=True)
                loss.backward()
                buckets = [_bucket_grads(params) for _, params in groups]
            else:
                for flat in buckets:
                    flat.zero_()
                loss.backward()  # accumulates into the buffers' views
            for (optimizer, _), flat in zip(groups, buckets, strict=True):
                if flat.numel() == 0:
                    continue
                if grad_clip:
                    norm = _clip_global_norm_(flat, grad_clip)
                torch.nan_to_num_(flat)  # RLlib zeroes non-finite gradients before the step
                optimizer.step()
            terms += torch.cat([loss.detach().reshape(1), norm.reshape(1), stats])
        for _, params in groups:  # leave no grad pointing into the buffers
            for p in params:
                p.grad = None
        means = (terms / len(plan)).tolist()  # the update's one read of the device
        values = dict(zip(("total_loss", "grad_norm", *self.fused_terms), means, strict=True))
        self.fused_finish(module_id, config, plan, rows, kept, values)
        self.fused_log(module_id, config, values)
        self.metrics.log_value((module_id, self.TOTAL_LOSS_KEY), values["total_loss"], window=1)
        if grad_clip:
            self.metrics.log_value((module_id, norm_key), values["grad_norm"], window=1)
        self._fused_log_steps(module_id, data, num_minibatches=len(plan), minibatch_size=minibatch_size,
                              env_steps=env_steps)

    def _fused_log_steps(self, module_id, data, *, num_minibatches, minibatch_size, env_steps) -> None:
        """RLlib's per-minibatch step counters, logged once with the update's totals."""
        rows = num_minibatches * minibatch_size
        env_rows = num_minibatches * env_steps  # RLlib counts the whole batch's env steps per minibatch
        log = self.metrics.log_value
        log((module_id, WEIGHTS_SEQ_NO), rp.weights_seq_no(self), window=1)
        log((module_id, MODULE_TRAIN_BATCH_SIZE_MEAN), minibatch_size, reduce="mean")
        log((module_id, NUM_MODULE_STEPS_TRAINED), rows, reduce="sum")
        log((module_id, NUM_MODULE_STEPS_TRAINED_LIFETIME), rows, reduce="lifetime_sum", with_throughput=True)
        log((ALL_MODULES, NUM_MODULE_STEPS_TRAINED), rows, reduce="sum", with_throughput=True)
        log((ALL_MODULES, NUM_MODULE_STEPS_TRAINED_LIFETIME), rows, reduce="lifetime_sum", with_throughput=True)
        log((ALL_MODULES, NUM_ENV_STEPS_TRAINED), env_rows, reduce="sum", with_throughput=True)
        log((ALL_MODULES, NUM_ENV_STEPS_TRAINED_LIFETIME), env_rows, reduce="lifetime_sum", with_throughput=True)
        if WEIGHTS_SEQ_NO in data:
            lag = (rp.weights_seq_no(self) - data[WEIGHTS_SEQ_NO]).float()
            log((module_id, DIFF_NUM_GRAD_UPDATES_VS_SAMPLER_POLICY), float(masked_mean(lag, data.get(Columns.LOSS_MASK))), window=1)

    # -- what subclasses give -------------------------------------------------------------
    def fused_train_batch(self, training_data):
        """The update's ``MultiAgentBatch``: RLlib's (episodes through the learner connector)."""
        return rp.multi_agent_batch(self, training_data)

    def fused_columns(self, config) -> frozenset[str]:
        """The batch columns the minibatch loss reads (the rest is never gathered)."""
        return frozenset({Columns.OBS, Columns.ACTIONS, Columns.LOSS_MASK})

    def fused_plan(self, module_id: str, config, plan: torch.Tensor, rows: dict[str, torch.Tensor]):
        """The minibatch plan, possibly with the rows of each minibatch reordered (a loss that
        averages over rows does not see the order), and per-minibatch inputs (``(M, ...)``
        tensors or length-``M`` lists; minibatch ``i`` gets item ``i``)."""
        return plan, {}

    def fused_prepare(self, module_id: str, config, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-row inputs computed once per update (no gradient), indexed with the minibatches."""
        return {}

    def fused_loss(self, module_id: str, config, batch: dict[str, torch.Tensor]):
        """One minibatch: ``(total loss, 1-D tensor of detached terms, tensor to keep or None)``.
        Kept tensors reach :meth:`fused_finish` stacked, ``(num_minibatches, ...)``. Tensors in,
        tensors out, so that ``fused_compile`` can compile it."""
        raise NotImplementedError

    def fused_finish(self, module_id: str, config, plan, rows, kept, values: dict[str, float]) -> None:
        """After the loop: add update-level terms to ``values`` (computed for all minibatches at
        once, e.g. from the ``kept`` outputs)."""

    def fused_log(self, module_id: str, config, values: dict[str, float]) -> None:
        raise NotImplementedError


class PackedRows:
    """Per-row tensors packed into one 2-D block per dtype, so that a minibatch is one gather per
    dtype (not one per column); :meth:`take` returns the columns as views of that gather."""

    def __init__(self, rows: dict[str, torch.Tensor]):
        layout: dict[torch.dtype, list[tuple[str, tuple[int, ...]]]] = {}
        flats: dict[torch.dtype, list[torch.Tensor]] = {}
        for name, value in rows.items():
            layout.setdefault(value.dtype, []).append((name, tuple(value.shape[1:])))
            flats.setdefault(value.dtype, []).append(value.reshape(value.shape[0], -1))
        self._layout = layout
        self._widths = {dt: [f.shape[1] for f in fs] for dt, fs in flats.items()}
        self._blocks = {dt: torch.cat(fs, dim=1) if len(fs) > 1 else fs[0] for dt, fs in flats.items()}

    def take(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for dtype, block in self._blocks.items():
            part = block.index_select(0, idx)
            pieces = part.split(self._widths[dtype], dim=1) if len(self._widths[dtype]) > 1 else (part,)
            for (name, shape), piece in zip(self._layout[dtype], pieces, strict=True):
                out[name] = piece.reshape(idx.shape[0], *shape)
        return out


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean over the rows (dim 0) where ``mask`` is true (all rows without a mask), with no
    host sync; ``x`` may carry several per-row terms in its last dimension, averaged at once."""
    if mask is None:
        return x.mean(dim=0)
    if x.ndim > 1:
        mask = mask.reshape(-1, *([1] * (x.ndim - 1)))
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=0) / mask.sum()


def explained_variance(y: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """RLlib's ``max(-1, 1 - var(y - pred) / var(y))``."""
    return torch.clamp(1 - torch.var(y - pred, dim=0) / (torch.var(y, dim=0) + _SMALL), min=-1.0)


def _bucket_grads(params: list[torch.Tensor]) -> torch.Tensor:
    """Move the parameters' gradients into one flat buffer and make each ``.grad`` a view of it,
    so that clipping, the NaN guard and zeroing are one op each (autograd accumulates into an
    existing ``.grad`` in place). Parameters without a gradient keep none."""
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return torch.zeros(0)
    flat = torch.cat([p.grad.reshape(-1) for p in with_grad])
    offset = 0
    for p in with_grad:
        p.grad = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


def _clip_global_norm_(flat: torch.Tensor, grad_clip: float) -> torch.Tensor:
    """RLlib's global-norm clipping (``ray.rllib.utils.torch_utils.clip_gradients``) of one flat
    gradient buffer, in place, with no branch on a device value; returns the norm."""
    total = torch.linalg.vector_norm(flat).nan_to_num(neginf=-10e8, posinf=10e8)
    flat.mul_(torch.clamp(grad_clip / torch.clamp(total + 1e-6, min=grad_clip), max=1.0))
    return total


class FusedPPOTorchLearner(FusedUpdateMixin, PPOTorchLearner):
    """The PPO baseline's learner: RLlib's PPO loss, term for term, on the fused update path."""

    fused_terms = ("policy_loss", "vf_loss", "vf_loss_unclipped", "entropy", "kl", "vf_explained_var")

    def fused_columns(self, config):
        columns = {Columns.OBS, Columns.ACTIONS, Columns.ACTION_LOGP, Columns.ADVANTAGES, Columns.VALUE_TARGETS,
                   Columns.LOSS_MASK}
        if config.use_kl_loss:
            columns.add(Columns.ACTION_DIST_INPUTS)
        return frozenset(columns)

    def fused_loss(self, module_id, config, batch):
        fwd = rp.forward_train(self.module[module_id].unwrapped(), batch)  # the loop set train mode
        total, stats = self.ppo_terms(module_id, config, batch, fwd)
        return total, stats, None

    def surrogate(self, config, ratio: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        """The per-row surrogate objective (maximised) from the probability ratio
        ``pi_new(a|s) / pi_old(a|s)`` and the advantage, both ``(N,)``: PPO's clipped one."""
        return torch.min(adv * ratio, adv * torch.clamp(ratio, 1 - config.clip_param, 1 + config.clip_param))

    def ppo_terms(self, module_id, config, batch, fwd):
        """One minibatch's total loss and its detached terms (:attr:`fused_terms`), given the
        module's forward outputs ``fwd``: ``-surrogate`` (:meth:`surrogate`), the clipped value
        loss times ``vf_loss_coeff``, minus the entropy bonus, plus ``beta * KL(pi_old || pi_new)``
        when ``use_kl_loss`` (beta: ``curr_kl_coeffs_per_module``), each a masked mean over rows."""
        module = self.module[module_id].unwrapped()
        mask = batch.get(Columns.LOSS_MASK)
        dist = module.get_train_action_dist_cls().from_logits(fwd[Columns.ACTION_DIST_INPUTS])
        ratio = torch.exp(dist.logp(batch[Columns.ACTIONS]) - batch[Columns.ACTION_LOGP])
        surrogate = self.surrogate(config, ratio, batch[Columns.ADVANTAGES])
        values = module.compute_values(batch, embeddings=fwd.get(Columns.EMBEDDINGS))
        vf_loss = torch.pow(values - batch[Columns.VALUE_TARGETS], 2.0)
        vf_clipped = torch.clamp(vf_loss, 0, config.vf_clip_param)
        # the per-row terms averaged at once: policy, clipped vf, entropy, unclipped vf
        means = masked_mean(torch.stack([-surrogate, vf_clipped, dist.entropy(), vf_loss.detach()], dim=-1), mask)
        entropy_coeff = self.entropy_coeff_schedulers_per_module[module_id].get_current_value()
        total = means[0] + config.vf_loss_coeff * means[1] - entropy_coeff * means[2]
        if config.use_kl_loss:
            prev = module.get_exploration_action_dist_cls().from_logits(batch[Columns.ACTION_DIST_INPUTS])
            kl = masked_mean(prev.kl(dist), mask)
            total = total + self.curr_kl_coeffs_per_module[module_id] * kl
        else:
            kl = torch.zeros((), device=total.device)
        with torch.no_grad():
            ev = explained_variance(batch[Columns.VALUE_TARGETS], values)
            stats = torch.cat([means.detach()[[0, 1, 3, 2]], torch.stack([kl.detach(), ev])])
        return total, stats

    def fused_log(self, module_id, config, values):
        self.metrics.log_dict(
            {
                POLICY_LOSS_KEY: values["policy_loss"],
                VF_LOSS_KEY: values["vf_loss"],
                LEARNER_RESULTS_VF_LOSS_UNCLIPPED_KEY: values["vf_loss_unclipped"],
                LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY: values["vf_explained_var"],
                ENTROPY_KEY: values["entropy"],
                LEARNER_RESULTS_KL_KEY: values["kl"],
            },
            key=module_id,
            window=1,
        )


class FusedPPOConfig(FusedLearnerConfigMixin, PPOConfig):
    """PPOConfig whose learner runs the fused update (``learner_update="rllib"``: RLlib's loop)."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class)
        self._init_fused()

    def training(self, *, learner_update=NotProvided, fused_shuffle=NotProvided, fused_compile=NotProvided,
                 torch_optimizer=NotProvided, weight_decay=NotProvided, **kwargs) -> FusedPPOConfig:
        """PPO's settings, plus ``learner_update`` (``fused`` | ``rllib``), ``fused_shuffle``
        (``device``: permutations drawn on the learner's device; ``rllib``: numpy's global RNG,
        RLlib's exact minibatches), ``fused_compile`` (``torch.compile`` the minibatch loss),
        ``torch_optimizer`` (``adam`` | ``adamw``) and ``weight_decay`` (>= 0)."""
        super().training(**kwargs)
        self._set_fused(learner_update, fused_shuffle, fused_compile, torch_optimizer, weight_decay)
        return self

    def get_default_learner_class(self):
        return FusedPPOTorchLearner

    def validate(self) -> None:
        super().validate()
        self._validate_fused()


#: Where a :class:`FusedPPOKLTorchLearner` keeps each module's current beta in its state.
KL_BETA_STATE = "ppo_kl_beta"


class FusedPPOKLTorchLearner(FusedPPOTorchLearner):
    """The KL-penalty policy gradient (``ppo_kl``): PPO's learner with the unclipped surrogate
    ``ratio * A`` and the penalty ``beta * KL(pi_old || pi_new)`` (exact, per state, the behaviour
    policy's action distribution against the current one), plus PPO's value loss and entropy
    bonus. After each update beta follows the PPO paper's adaptive rule
    (:func:`~adpo_ray.core.kl_penalty.adapt_kl_beta`) on the update's mean KL over all its
    minibatches, unless ``kl_adaptive`` is off; beta is logged (RLlib's ``curr_kl_coeff``) and kept
    in the learner's state, so a restored checkpoint continues with it."""

    def build(self) -> None:
        super().build()
        self._kl_sum: dict[str, float] = {}
        self._kl_count: dict[str, int] = {}

    def surrogate(self, config, ratio, adv):
        return adv * ratio  # no clipping: the KL penalty is the trust region

    def fused_log(self, module_id, config, values):
        super().fused_log(module_id, config, values)
        self._record_kl(module_id, values["kl"])

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        """RLlib's update loop (``learner_update='rllib'``): the fused path's terms per minibatch."""
        total, stats = self.ppo_terms(module_id, config, batch, fwd_out)
        values = dict(zip(self.fused_terms, stats.unbind(), strict=True))
        super().fused_log(module_id, config, values)
        self._record_kl(module_id, values["kl"])  # a tensor: summed on the device, read after the update
        return total

    def _record_kl(self, module_id: str, kl) -> None:
        self._kl_sum[module_id] = self._kl_sum.get(module_id, 0.0) + kl
        self._kl_count[module_id] = self._kl_count.get(module_id, 0) + 1

    def before_gradient_based_update(self, *, timesteps) -> None:
        super().before_gradient_based_update(timesteps=timesteps)
        self._kl_sum.clear()
        self._kl_count.clear()

    def kl_beta(self, module_id: str) -> float:
        """The module's current KL coefficient (the one the next update uses)."""
        return float(self.curr_kl_coeffs_per_module[module_id])

    def _update_module_kl_coeff(self, *, module_id, config, kl_loss) -> None:
        # RLlib hands over the last minibatch's KL; the rule reads the update's mean
        count = self._kl_count.get(module_id, 0)
        beta = self.curr_kl_coeffs_per_module[module_id]
        if count and config.kl_adaptive:
            kl = float(self._kl_sum[module_id]) / count
            beta.data.fill_(adapt_kl_beta(float(beta), kl, config.kl_target))
        self.metrics.log_value((module_id, LEARNER_RESULTS_CURR_KL_COEFF_KEY), float(beta), window=1)

    def get_state(self, components=None, *, not_components=None, **kwargs):
        state = super().get_state(components, not_components=not_components, **kwargs)
        state[KL_BETA_STATE] = {mid: float(b) for mid, b in self.curr_kl_coeffs_per_module.items()}
        return state

    def set_state(self, state) -> None:
        super().set_state(state)
        for mid, beta in state.get(KL_BETA_STATE, {}).items():
            self.curr_kl_coeffs_per_module[mid].data.fill_(beta)


class PPOKLConfig(FusedPPOConfig):
    """The KL-penalty policy gradient's config (``ppo_kl``): PPO's, with ``use_kl_loss`` on,
    ``kl_coeff`` the initial beta (default 1.0), ``kl_target`` the rule's d_targ (0.01) and
    ``kl_adaptive`` (True); ``clip_param`` is not read."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class)
        self.use_kl_loss = True
        self.kl_coeff = 1.0
        self.kl_target = 0.01
        self.kl_adaptive = True

    def training(self, *, kl_adaptive=NotProvided, **kwargs) -> PPOKLConfig:
        """:class:`FusedPPOConfig`'s settings, plus ``kl_adaptive`` (adapt beta after each update)."""
        super().training(**kwargs)
        set_provided(self, kl_adaptive=kl_adaptive)
        return self

    def get_default_learner_class(self):
        return FusedPPOKLTorchLearner

    def validate(self) -> None:
        super().validate()
        if not self.use_kl_loss:
            rp.config_value_error(self, "use_kl_loss=False: the KL penalty is this method's trust region; keep it on")
        if not self.kl_coeff > 0 or not self.kl_target > 0:
            rp.config_value_error(self, f"kl_coeff (initial beta) and kl_target must be > 0, got "
                                        f"{self.kl_coeff} and {self.kl_target}")
