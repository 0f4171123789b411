"""How the project's AlgorithmConfigs take their own settings, the way RLlib's do, and the
optimiser every project learner builds (``torch_optimizer``, ``weight_decay``)."""

from __future__ import annotations

import torch
from ray.rllib.algorithms.algorithm_config import NotProvided

from adpo_ray.spec.sections import OPTIMIZERS


def set_provided(config, **values) -> None:
    """Set each of ``values`` on ``config`` unless it is RLlib's ``NotProvided`` (the default of
    every keyword of a ``training(...)`` call, so that a call changes only what it names)."""
    for name, value in values.items():
        if value is not NotProvided:
            setattr(config, name, value)


class OptimizerConfigMixin:
    """The ``torch_optimizer`` (``adam`` | ``adamw``; RLlib's own ``optimizer`` is its old API
    stack's dict) and ``weight_decay`` settings of a config whose learner is an
    :class:`OptimizerLearnerMixin`."""

    def _init_optimizer(self) -> None:
        self.torch_optimizer = OPTIMIZERS[0]
        self.weight_decay = 0.0

    def _set_optimizer(self, torch_optimizer, weight_decay) -> None:
        set_provided(self, torch_optimizer=torch_optimizer, weight_decay=weight_decay)

    def _validate_optimizer(self) -> None:
        from adpo_ray.rllib import _ray_private as rp

        if self.torch_optimizer not in OPTIMIZERS:
            rp.config_value_error(self, f"torch_optimizer={self.torch_optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        if not self.weight_decay >= 0:
            rp.config_value_error(self, f"weight_decay must be >= 0, got {self.weight_decay}")


def make_optimizer(config, params: list[torch.nn.Parameter], *, fused: bool = False) -> torch.optim.Optimizer:
    """The optimiser ``config`` names over ``params``: torch's Adam (``weight_decay`` an L2 term
    in the gradient) or AdamW (decoupled decay); ``fused``: torch's single-kernel step where the
    device has one (else its per-parameter loop). The learning rate is RLlib's to set."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[config.torch_optimizer]
    if fused:
        try:
            return cls(params, weight_decay=config.weight_decay, fused=True)
        except RuntimeError:  # no fused kernel for this device
            pass
    return cls(params, weight_decay=config.weight_decay)


class OptimizerLearnerMixin:
    """A torch Learner whose optimiser is its config's :func:`make_optimizer` (RLlib's: Adam)."""

    def fused_optimizer(self) -> bool:
        """Whether to ask torch for its single-kernel optimiser step."""
        return False

    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        params = self.get_parameters(self.module[module_id])
        optimizer = make_optimizer(config, params, fused=self.fused_optimizer())
        self.register_optimizer(module_id=module_id, optimizer=optimizer, params=params, lr_or_lr_schedule=config.lr)
