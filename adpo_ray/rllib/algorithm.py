"""``ADPOConfig`` / ``ADPO``: PPO's algorithm with the ADPO learner and anchored RLModule.

Everything RLlib does for PPO (sampling on env runners, GAE, minibatch epochs, weight sync,
checkpoints) is reused; ADPO adds its own knobs::

    config = (
        ADPOConfig()
        .environment("adpo_ray_env", env_config={"env": "PreferenceBandit", "scenario": "flip-high"})
        .training(adpo_loss="listwise", adpo_target="softmax", tau_anc=1.0, beta_q=0.5,
                  list_source="actions", anchor_mode="dynamic", anchor_params={"every": 1})
    )
    algo = config.build_algo()
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from ray.rllib.algorithms.algorithm_config import NotProvided
from ray.rllib.algorithms.ppo import PPO
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from adpo_ray.core.anchors import make_schedule
from adpo_ray.core.losses import LOSSES
from adpo_ray.core.targets import TARGETS
from adpo_ray.rllib import _ray_private as rp
from adpo_ray.rllib.connectors import AddListSignalFromInfos
from adpo_ray.rllib.distill import LossVariantsConfigMixin
from adpo_ray.rllib.fused import FusedPPOConfig
from adpo_ray.rllib.learner import ADPOTorchLearner
from adpo_ray.rllib.module import ADPOTorchRLModule
from adpo_ray.rllib.settings import set_provided

LIST_SOURCES = ("actions", "batch")


class ADPOConfig(LossVariantsConfigMixin, FusedPPOConfig):
    """PPOConfig plus ADPO's settings (see :meth:`training`) and the fused learner update's
    (:class:`~adpo_ray.rllib.fused.FusedPPOConfig`)."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or ADPO)
        self.adpo_loss = "listwise"
        self.adpo_target = "softmax"
        self.tau_anc = 1.0
        self.beta_q = 1.0
        self.list_source = "batch"
        self.list_size = 8
        self.list_info_key = "utilities_noisy"
        self.anchor_mode = "dynamic"
        self.anchor_params: dict[str, Any] = {}
        self.anchor_init: str | None = None
        self._init_loss_variants()
        self.anchor_kl_coeff = 0.0
        # ADPO's anchor is its trust region: PPO's KL penalty is off.
        self.use_kl_loss = False

    def training(
        self,
        *,
        adpo_loss=NotProvided,
        adpo_target=NotProvided,
        tau_anc=NotProvided,
        beta_q=NotProvided,
        list_source=NotProvided,
        list_size=NotProvided,
        list_info_key=NotProvided,
        anchor_mode=NotProvided,
        anchor_params=NotProvided,
        anchor_init=NotProvided,
        target_norm=NotProvided,
        tau_alpha=NotProvided,
        tau_min=NotProvided,
        q_center=NotProvided,
        pl_top_k=NotProvided,
        label_smoothing=NotProvided,
        poly_epsilon=NotProvided,
        clip_log_ratio=NotProvided,
        clip_score=NotProvided,
        anchor_kl_coeff=NotProvided,
        **kwargs,
    ) -> ADPOConfig:
        """ADPO's settings, on top of PPO's.

        Args:
            adpo_loss: ``listwise`` | ``plackett_luce`` | ``pairwise`` | ``dpo``.
            adpo_target: ``softmax`` | ``kde`` | ``hard`` (how ``q`` is made from ``y``).
            tau_anc: anchor temperature (trust-region size); the pairwise beta is ``1 / tau_anc``.
            beta_q: target temperature.
            list_source: ``actions`` (discrete env with per-item feedback in ``info``) or
                ``batch`` (lists of ``list_size`` transitions, ``y`` = GAE advantages).
            list_size: candidates per list for ``list_source='batch'``.
            list_info_key: the ``info`` key holding per-item feedback for ``list_source='actions'``.
            anchor_mode: a registered schedule name (``fixed``, ``dynamic``, ``ema``,
                ``kl_triggered``) or an import path ``pkg.module:Class``.
            anchor_params: the schedule's constructor kwargs.
            anchor_init: ``None`` (the initial policy) or a checkpoint path whose policy becomes
                the anchor (the anchor only; :func:`adpo_ray.rllib.init.start_from_checkpoint`
                starts the policy, value function and observation filter from a checkpoint,
                with the anchor at that policy unless ``anchor_init`` names another).
            target_norm: ``none`` | ``list`` (z-normalise ``y`` within each list first).
            tau_alpha, tau_min: adaptive temperature
                ``max(tau_min, tau_anc * (1 - tau_alpha * H(q) / log K))`` per list (0: off).
            q_center: centre the anchored logits by ``q`` (shift-invariant: no effect).
            pl_top_k, label_smoothing, poly_epsilon: the Plackett-Luce loss's rank knobs
                (``pl_top_k`` None: every rank; see :mod:`adpo_ray.core.losses`).
            clip_log_ratio, clip_score: the listwise losses' clamps of ``s - r`` and of the
                anchored logits (0: off).
            anchor_kl_coeff: adds ``coeff * KL(policy || anchor)`` (exact, per state) to the loss.
        """
        super().training(**kwargs)
        set_provided(
            self, adpo_loss=adpo_loss, adpo_target=adpo_target, tau_anc=tau_anc, beta_q=beta_q,
            list_source=list_source, list_size=list_size, list_info_key=list_info_key,
            anchor_mode=anchor_mode, anchor_params=anchor_params, anchor_init=anchor_init,
            anchor_kl_coeff=anchor_kl_coeff,
        )
        self._set_loss_variants(target_norm=target_norm, tau_alpha=tau_alpha, tau_min=tau_min, q_center=q_center,
                                pl_top_k=pl_top_k, label_smoothing=label_smoothing, poly_epsilon=poly_epsilon,
                                clip_log_ratio=clip_log_ratio, clip_score=clip_score)
        return self

    def get_default_learner_class(self):
        return ADPOTorchLearner

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=ADPOTorchRLModule)

    def build_learner_connector(self, input_observation_space, input_action_space, device=None):
        pipeline = super().build_learner_connector(input_observation_space, input_action_space, device)
        if self.list_source == "actions":
            # First (PPO's learner later puts its extra-timestep piece before it), so the new
            # column is batched like every other.
            pipeline.prepend(
                AddListSignalFromInfos(input_observation_space, input_action_space, info_key=self.list_info_key)
            )
        return pipeline

    def validate(self) -> None:
        super().validate()
        if self.adpo_loss not in LOSSES:
            rp.config_value_error(self, f"adpo_loss={self.adpo_loss!r}; allowed: {', '.join(LOSSES)}")
        if self.adpo_target not in TARGETS:
            rp.config_value_error(self, f"adpo_target={self.adpo_target!r}; allowed: {', '.join(TARGETS)}")
        if self.list_source not in LIST_SOURCES:
            rp.config_value_error(self, f"list_source={self.list_source!r}; allowed: {', '.join(LIST_SOURCES)}")
        if not self.tau_anc > 0 or not self.beta_q > 0:
            rp.config_value_error(self, f"tau_anc and beta_q must be > 0 (got {self.tau_anc}, {self.beta_q})")
        self._validate_loss_variants()
        if self.anchor_kl_coeff < 0:
            rp.config_value_error(self, f"anchor_kl_coeff must be >= 0, got {self.anchor_kl_coeff}")
        if self.list_size < 2:
            rp.config_value_error(self, f"list_size must be >= 2, got {self.list_size}")
        try:
            make_schedule(self.anchor_mode, **(self.anchor_params or {}))
        except ValueError as e:
            rp.config_value_error(self, f"anchor_mode / anchor_params: {e}")
        if self.list_source == "actions":
            space = self._env_action_space()
            if space is not None and not isinstance(space, gym.spaces.Discrete):
                rp.config_value_error(
                    self,
                    f"list_source='actions' needs a discrete action space (a list is every action of "
                    f"one context), but env {self.env!r} has {space}; use list_source='batch'"
                )

    def _env_action_space(self) -> gym.Space | None:
        if self.action_space is not None:
            return self.action_space
        from adpo_ray.rllib.env import env_action_space

        return env_action_space(self.env, self.env_config)


class ADPO(PPO):
    """PPO's training loop with ADPO's learner (loss + anchor-refresh hooks)."""

    @classmethod
    def get_default_config(cls) -> ADPOConfig:
        return ADPOConfig()
