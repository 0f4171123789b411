"""ADPO's RLModule: PPO's default actor-critic plus a frozen *anchor* copy of the policy network.

The anchor follows RLlib's target-network pattern (:class:`TargetNetworkAPI`): the learner builds
it after the optimizer (so it never trains), env runners never hold it (inference-only modules drop
it), and it is part of the module state, so checkpoints carry it.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.models.base import ENCODER_OUT
from ray.rllib.core.rl_module.apis import TARGET_NETWORK_ACTION_DIST_INPUTS, TargetNetworkAPI

ANCHOR_DIST_INPUTS = TARGET_NETWORK_ACTION_DIST_INPUTS


def split_gaussian(dist_inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RLlib's diagonal-Gaussian inputs ``[mean, log_std]`` ``(..., 2A)`` -> ``(mean, log_std)``,
    each ``(..., A)``."""
    mean, log_std = torch.chunk(dist_inputs, 2, dim=-1)
    return mean, log_std


class ADPOTorchRLModule(DefaultPPOTorchRLModule, TargetNetworkAPI):
    def _policy_encoder(self):
        # With vf_share_layers=False the encoder is an actor-critic pair; the anchor copies the
        # policy half only.
        return getattr(self.encoder, "actor_encoder", self.encoder)

    def make_target_networks(self) -> None:
        self._anchor_encoder = make_target_network(self._policy_encoder())
        self._anchor_pi = make_target_network(self.pi)

    def get_target_network_pairs(self):
        return [(self._policy_encoder(), self._anchor_encoder), (self.pi, self._anchor_pi)]

    def policy_parameters(self) -> list:
        """The policy's parameters, in the anchor's order."""
        return [p for main, _ in self.get_target_network_pairs() for p in main.parameters()]

    def anchor_parameters(self) -> list:
        return [p for _, anchor in self.get_target_network_pairs() for p in anchor.parameters()]

    def forward_target(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        out = self._anchor_encoder(batch)[ENCODER_OUT]
        if isinstance(out, dict):  # a shared actor-critic encoder returns both halves
            out = out["actor"]
        return {ANCHOR_DIST_INPUTS: self._anchor_pi(out)}

    def get_non_inference_attributes(self) -> list[str]:
        return [*super().get_non_inference_attributes(), "_anchor_encoder", "_anchor_pi"]
