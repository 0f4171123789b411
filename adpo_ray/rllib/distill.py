"""Offline distillation as an RLlib algorithm: ``DistillConfig`` / ``Distill`` / ``DistillTorchLearner``.

A student learns from a fixed dataset of teacher states (see :mod:`adpo_ray.envs.candidates`): each
row holds the state, ``K`` candidate actions sampled from the teacher, their (noisy) one-step
rewards, the teacher's log-probabilities of them and the teacher's Gaussian. Methods
(``distill_method``):

* ``adpo``: the ADPO loss of :func:`adpo_ray.core.losses.adpo_loss` over each state's ``K``
  candidates, ``y`` = their rewards. Anchor ``fixed`` = the teacher (its stored log-probs are the
  anchor scores); any other mode (``dynamic``, ``ema``, ``kl_triggered`` or an import path of an
  :class:`~adpo_ray.core.anchors.AnchorSchedule`) is self-anchored: a copy of the student, made at
  its start and moved by the mode's schedule exactly as online (the same hook, once per training
  iteration).
* ``kd``: minimise ``KL(teacher ‖ student)`` on the dataset states (exact, diagonal Gaussians).
* ``bc``: maximise the likelihood of the teacher's (candidate) actions.

Every iteration the learner takes ``states_per_iteration`` dataset states in minibatches of
``minibatch_states``; then ``distill/kl_teacher`` (mean KL(teacher ‖ student) over the held-out
states) and ``distill/ndcg`` (the mean NDCG of the student's ranking of each held-out state's
candidates, by its log-probability, against their clean signal's: :func:`adpo_ray.core.distill.ndcg`)
are measured, beside ``distill/ndcg_random`` (what a random order of the same lists scores in
expectation, a constant of the dataset: :func:`adpo_ray.core.distill.random_order_ndcg`); every
``evaluation_interval`` iterations (and at the last one) the student's mean action is evaluated on
the clean env: ``eval/return_mean`` and its ratio to the teacher's return measured the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import LEARNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

from adpo_ray.core.anchors import make_schedule
from adpo_ray.core.distill import (
    DISTILL_METHODS,
    bc_loss,
    diag_gaussian_kl,
    diag_gaussian_logp,
    kd_loss,
    ndcg,
    random_order_ndcg,
)
from adpo_ray.core.losses import LOSSES, TAU_MIN, adpo_loss
from adpo_ray.core.targets import TARGETS
from adpo_ray.envs.candidates import read_dataset
from adpo_ray.metrics import (
    DISTILL_EVAL_OVER_TEACHER_KEY,
    DISTILL_EVAL_RETURN_KEY,
    DISTILL_GROUP,
    DISTILL_KL_KEY,
    DISTILL_NDCG_KEY,
    DISTILL_NDCG_RANDOM_KEY,
    DISTILL_STATES_KEY,
    ENTROPY,
    LOSS_DISTILL,
    TRAIN_KL_TEACHER,
)
from adpo_ray.rllib import _ray_private as rp
from adpo_ray.rllib.anchor_refresh import AnchorRefreshMixin
from adpo_ray.rllib.module import ANCHOR_DIST_INPUTS, ADPOTorchRLModule, split_gaussian
from adpo_ray.rllib.rollout import EVAL_SEED, evaluate_policy
from adpo_ray.rllib.settings import OptimizerConfigMixin, OptimizerLearnerMixin, set_provided

#: Dataset columns a learner minibatch carries (``obs`` becomes ``Columns.OBS``).
LEARNER_COLUMNS = ("actions", "rewards", "teacher_logp", "teacher_mean", "teacher_log_std")
#: Dataset columns of the held-out states the measurements read.
HELDOUT_COLUMNS = ("obs", "actions", "rewards_clean", "teacher_mean", "teacher_log_std")

def _logp(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Diagonal-Gaussian log-probs of ``actions`` ``(B, K, A)`` under per-state ``(B, A)`` params."""
    return diag_gaussian_logp(actions, mean.unsqueeze(-2), log_std.unsqueeze(-2))


#: The author's loss variants a config carries, as :func:`adpo_ray.core.losses.adpo_loss` names them.
LOSS_VARIANTS = ("target_norm", "tau_alpha", "tau_min", "q_center", "pl_top_k", "label_smoothing",
                 "poly_epsilon", "clip_log_ratio", "clip_score")


class LossVariantsConfigMixin:
    """The author's loss variants (:func:`adpo_ray.core.losses.adpo_loss`) as settings of an
    ADPO or distillation config, each off by default (``pl_top_k`` None: every rank counts)."""

    def _init_loss_variants(self) -> None:
        self.target_norm = "none"
        self.tau_alpha = 0.0
        self.tau_min = TAU_MIN
        self.q_center = False
        self.pl_top_k: int | None = None
        self.label_smoothing = 0.0
        self.poly_epsilon = 0.0
        self.clip_log_ratio = 0.0
        self.clip_score = 0.0

    def _set_loss_variants(self, **values) -> None:
        set_provided(self, **values)

    def _validate_loss_variants(self) -> None:
        if self.target_norm not in ("none", "list"):
            rp.config_value_error(self, f"target_norm={self.target_norm!r}; allowed: none, list")
        if not 0 <= self.tau_alpha <= 1 or not self.tau_min > 0:
            rp.config_value_error(self, f"tau_alpha must be in [0, 1] and tau_min > 0 (got {self.tau_alpha}, {self.tau_min})")
        if self.pl_top_k is not None and self.pl_top_k < 1:
            rp.config_value_error(self, f"pl_top_k must be >= 1 or None (every rank), got {self.pl_top_k}")
        if not 0 <= self.label_smoothing <= 1 or min(self.poly_epsilon, self.clip_log_ratio, self.clip_score) < 0:
            rp.config_value_error(self, "label_smoothing must be in [0, 1], poly_epsilon, clip_log_ratio and "
                                  f"clip_score >= 0 (got {self.label_smoothing}, {self.poly_epsilon}, "
                                  f"{self.clip_log_ratio}, {self.clip_score})")
        try:  # the loss itself says which variants fit it
            adpo_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), loss=self.adpo_loss,
                      target=self.adpo_target, **loss_variants_of(self))
        except ValueError as e:
            rp.config_value_error(self, f"adpo_loss={self.adpo_loss!r} with its variants: {e}")


def loss_variants_of(config) -> dict:
    """The author's loss variants set on an ADPO or distillation config, as keyword arguments of
    :func:`adpo_ray.core.losses.adpo_loss`."""
    return {name: getattr(config, name) for name in LOSS_VARIANTS}


class DistillTorchLearner(AnchorRefreshMixin, OptimizerLearnerMixin, TorchLearner):
    def _attach_anchor(self, module_id: str, module) -> None:
        # only ADPO with a moving anchor needs a network copy; anchor = teacher uses stored log-probs
        cfg = self.config.get_config_for_module(module_id)
        if cfg.distill_method == "adpo" and cfg.anchor_mode != "fixed":
            module.make_target_networks()
            self.add_schedule(module_id, cfg.anchor_mode, cfg.anchor_params)

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        mean, log_std = split_gaussian(fwd_out[Columns.ACTION_DIST_INPUTS])
        t_mean, t_log_std = batch["teacher_mean"], batch["teacher_log_std"]
        cands = batch["actions"]  # (B, K, A)
        logp = _logp(mean, log_std, cands)  # (B, K)
        if config.distill_method == "adpo":
            anchor_logp = self.anchor_logp(module_id, config, batch, mean, log_std)
            loss = adpo_loss(
                logp, anchor_logp, batch["rewards"],
                loss=config.adpo_loss, target=config.adpo_target,
                tau_anc=config.tau_anc, beta_q=config.beta_q, **loss_variants_of(config),
            ).mean()
        elif config.distill_method == "kd":
            loss = kd_loss(t_mean, t_log_std, mean, log_std)
        else:
            loss = bc_loss(logp)
        with torch.no_grad():
            metrics = {
                TRAIN_KL_TEACHER: diag_gaussian_kl(t_mean, t_log_std, mean, log_std).mean(),
                ENTROPY: (log_std + 0.5 * np.log(2 * np.pi * np.e)).sum(-1).mean(),
                LOSS_DISTILL: loss.detach(),
            }
        self.metrics.log_dict(metrics, key=module_id, window=1)
        return loss

    def anchor_logp(self, module_id: str, config, batch, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        """An ADPO student's anchor scores of a minibatch's candidates ``batch["actions"]``
        ``(B, K, A)``: ``(B, K)`` log-probs, without gradient. ``fixed``: the teacher's stored
        log-probs; any other mode: the student's anchor copy's, recording the mean
        KL(student ‖ anchor) of the minibatch (``mean``, ``log_std``: the student's ``(B, A)``
        Gaussian) for the mode's schedule."""
        if config.anchor_mode == "fixed":
            return batch["teacher_logp"]  # the anchor is the teacher
        module = self.module[module_id].unwrapped()
        with torch.no_grad():
            a_mean, a_log_std = split_gaussian(module.forward_target(batch)[ANCHOR_DIST_INPUTS])
            self.record_anchor_kl(module_id, float(diag_gaussian_kl(mean, log_std, a_mean, a_log_std).mean()))
            return _logp(a_mean, a_log_std, batch["actions"])

    # measurements on the learner's own module
    def heldout_metrics(self, heldout: dict[str, np.ndarray], module_id: str = DEFAULT_MODULE_ID) -> tuple[float, float]:
        """``(KL, NDCG)`` over the held-out states: the mean exact KL(teacher ‖ student), and the
        mean NDCG of the student's ranking of each state's candidates by its log-probability
        against the ranking by their clean signal (states whose signal is constant left out;
        NaN if all are)."""
        module = self.module[module_id].unwrapped()
        with torch.no_grad():
            out = module.forward_inference({Columns.OBS: torch.as_tensor(heldout["obs"], device=self.device)})
            mean, log_std = split_gaussian(out[Columns.ACTION_DIST_INPUTS])
            kl = diag_gaussian_kl(
                torch.as_tensor(heldout["teacher_mean"], device=self.device),
                torch.as_tensor(heldout["teacher_log_std"], device=self.device),
                mean, log_std,
            )
            logp = _logp(mean, log_std, torch.as_tensor(heldout["actions"], device=self.device))
            per_state = ndcg(logp, torch.as_tensor(heldout["rewards_clean"], device=self.device))
        return float(kl.mean()), float(torch.nanmean(per_state))


    def evaluate(self, env_name: str, obs_norm: dict, episodes: int, seed: int,
                 module_id: str = DEFAULT_MODULE_ID, explore: bool = False) -> float:
        return evaluate_policy(self.module[module_id].unwrapped(), env_name, obs_norm, episodes, seed, explore)


class DistillConfig(LossVariantsConfigMixin, OptimizerConfigMixin, AlgorithmConfig):
    """An offline student. ``dataset`` is a dict of numpy columns (see
    :data:`adpo_ray.envs.candidates.COLUMNS`) or a local dataset folder (:func:`read_dataset`)."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or Distill)
        self.distill_method = "adpo"
        self.adpo_loss = "listwise"
        self.adpo_target = "softmax"
        self.tau_anc = 1.0
        self.beta_q = 1.0
        self.anchor_mode = "fixed"
        self.anchor_params: dict[str, Any] = {}
        self.dataset: Any = None
        self.obs_norm: dict | None = None
        self.teacher_return: float | None = None
        self.states_per_iteration = 2048
        self.minibatch_states = 256
        self.eval_interval = 5
        self.eval_episodes = 3
        self.eval_explore = False
        self.total_iterations: int | None = None
        self._init_loss_variants()
        self._init_optimizer()
        self.num_env_runners = 0

    def training(self, *, distill_method=NotProvided, adpo_loss=NotProvided, adpo_target=NotProvided,
                 tau_anc=NotProvided, beta_q=NotProvided, anchor_mode=NotProvided,
                 anchor_params=NotProvided, dataset=NotProvided, obs_norm=NotProvided,
                 teacher_return=NotProvided, states_per_iteration=NotProvided,
                 minibatch_states=NotProvided, eval_interval=NotProvided, eval_episodes=NotProvided,
                 eval_explore=NotProvided, total_iterations=NotProvided, target_norm=NotProvided,
                 tau_alpha=NotProvided, tau_min=NotProvided, q_center=NotProvided, pl_top_k=NotProvided,
                 label_smoothing=NotProvided, poly_epsilon=NotProvided, clip_log_ratio=NotProvided,
                 clip_score=NotProvided, torch_optimizer=NotProvided, weight_decay=NotProvided,
                 **kwargs) -> DistillConfig:
        """The student's settings on top of RLlib's (``lr``, ``grad_clip``...): its method, the
        ADPO loss and its variants (as :class:`~adpo_ray.rllib.algorithm.ADPOConfig`'s), the
        dataset and its batches, evaluation, and the optimiser (``torch_optimizer``,
        ``weight_decay``)."""
        super().training(**kwargs)
        set_provided(
            self, distill_method=distill_method, adpo_loss=adpo_loss, adpo_target=adpo_target,
            tau_anc=tau_anc, beta_q=beta_q, anchor_mode=anchor_mode, anchor_params=anchor_params,
            dataset=dataset, obs_norm=obs_norm, teacher_return=teacher_return,
            states_per_iteration=states_per_iteration, minibatch_states=minibatch_states,
            eval_interval=eval_interval, eval_episodes=eval_episodes, total_iterations=total_iterations,
            eval_explore=eval_explore,
        )
        self._set_loss_variants(target_norm=target_norm, tau_alpha=tau_alpha, tau_min=tau_min, q_center=q_center,
                                pl_top_k=pl_top_k, label_smoothing=label_smoothing, poly_epsilon=poly_epsilon,
                                clip_log_ratio=clip_log_ratio, clip_score=clip_score)
        self._set_optimizer(torch_optimizer, weight_decay)
        return self

    def get_default_learner_class(self):
        return DistillTorchLearner

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=ADPOTorchRLModule)

    def validate(self) -> None:
        super().validate()
        if self.distill_method not in DISTILL_METHODS:
            rp.config_value_error(self, f"distill_method={self.distill_method!r}; allowed: {', '.join(DISTILL_METHODS)}")
        if self.adpo_loss not in LOSSES or self.adpo_target not in TARGETS:
            rp.config_value_error(self, f"adpo_loss / adpo_target: allowed {LOSSES} / {TARGETS}")
        self._validate_loss_variants()
        self._validate_optimizer()
        if self.minibatch_states > self.states_per_iteration:
            rp.config_value_error(self, "minibatch_states must be <= states_per_iteration")
        try:
            make_schedule(self.anchor_mode, **(self.anchor_params or {}))
        except ValueError as e:
            rp.config_value_error(self, f"anchor_mode / anchor_params: {e}")


class Distill(Algorithm):
    """RLlib's Algorithm loop around an offline learner: the env runner only provides the spaces."""

    @classmethod
    def get_default_config(cls) -> DistillConfig:
        return DistillConfig()

    def setup(self, config) -> None:
        super().setup(config)
        if self.config.dataset is None or self.config.obs_norm is None:
            raise ValueError("a distillation student needs `dataset` and `obs_norm` (DistillConfig.training)")
        data = self.config.dataset
        if not isinstance(data, dict):
            data = read_dataset(data)
        heldout = np.asarray(data["heldout"], dtype=bool)
        self._train = {k: data[k][~heldout] for k in ("obs", *LEARNER_COLUMNS)}
        missing = [k for k in ("obs", *LEARNER_COLUMNS, *HELDOUT_COLUMNS) if k not in data]
        if missing:
            raise ValueError(f"the dataset lacks the column(s) {', '.join(dict.fromkeys(missing))} "
                             "(adpo_ray.envs.candidates.COLUMNS)")
        self._heldout = {k: data[k][heldout] for k in HELDOUT_COLUMNS}
        if not len(self._train["obs"]) or not len(self._heldout["obs"]):
            raise ValueError("the dataset needs training and held-out states (dataset.heldout_fraction)")
        # what a random order of the same held-out lists scores: the level distill/ndcg must beat
        self._ndcg_random = float(torch.nanmean(random_order_ndcg(torch.as_tensor(self._heldout["rewards_clean"]))))
        self.last_eval_iteration: int | None = None

    def training_step(self) -> None:
        cfg = self.config
        it = self.iteration + 1  # Algorithm.iteration counts finished iterations
        # each iteration's states are a pure function of (seed, iteration): restored runs go on alike
        rng = np.random.default_rng([cfg.seed or 0, it])
        idx = rng.integers(0, len(self._train["obs"]), cfg.states_per_iteration)
        columns = {Columns.OBS: self._train["obs"][idx], **{k: self._train[k][idx] for k in LEARNER_COLUMNS}}
        states_trained = it * cfg.states_per_iteration
        batch = MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(columns)}, env_steps=len(idx))
        results = self.learner_group.update(
            batch=batch,
            minibatch_size=cfg.minibatch_states,
            num_epochs=1,
            shuffle_batch_per_epoch=False,  # the states are a fresh random draw already
            timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: states_trained},
        )
        self.metrics.aggregate(results, key=LEARNER_RESULTS)
        heldout = self._heldout
        measured = [v.get() for v in self.learner_group.foreach_learner(lambda lr: lr.heldout_metrics(heldout))]
        self.metrics.log_value((DISTILL_GROUP, DISTILL_KL_KEY), float(np.mean([kl for kl, _ in measured])), window=1)
        self.metrics.log_value((DISTILL_GROUP, DISTILL_NDCG_KEY), float(np.mean([n for _, n in measured])), window=1)
        self.metrics.log_value((DISTILL_GROUP, DISTILL_NDCG_RANDOM_KEY), self._ndcg_random, window=1)
        self.metrics.log_value((DISTILL_GROUP, DISTILL_STATES_KEY), states_trained, window=1)
        if it % cfg.eval_interval == 0 or (cfg.total_iterations and it >= cfg.total_iterations):
            env_name, obs_norm, episodes, explore = cfg.env_config["env"], cfg.obs_norm, cfg.eval_episodes, cfg.eval_explore
            ret = self.learner_group.foreach_learner(
                lambda lr: lr.evaluate(env_name, obs_norm, episodes, seed=EVAL_SEED, explore=explore)
            )
            self.last_eval_iteration = it
            value = float(np.mean([v.get() for v in ret]))
            self.metrics.log_value((DISTILL_GROUP, DISTILL_EVAL_RETURN_KEY), value, window=1)
            if cfg.teacher_return:
                self.metrics.log_value((DISTILL_GROUP, DISTILL_EVAL_OVER_TEACHER_KEY), value / cfg.teacher_return, window=1)
