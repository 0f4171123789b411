"""Offline distillation math (torch only): the student losses that are not ADPO, and the exact
KL between diagonal Gaussian policies used to measure how far a student is from its teacher.

Every policy here is a diagonal Gaussian given by ``mean`` and ``log_std`` of shape ``(..., A)``.
The ADPO students reuse :func:`adpo_ray.core.losses.adpo_loss` unchanged: the list is the ``K``
candidate actions stored at one state, ``y`` their one-step rewards.
"""

from __future__ import annotations

import math

import torch

__all__ = ["DISTILL_METHODS", "diag_gaussian_kl", "diag_gaussian_logp", "kd_loss", "bc_loss"]

#: Student methods of a distillation grid (``adpo`` comes with an anchor mode).
DISTILL_METHODS: tuple[str, ...] = ("adpo", "kd", "bc")

_LOG_2PI = math.log(2 * math.pi)


def diag_gaussian_logp(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """``log N(x; mean, diag(exp(log_std)^2))`` summed over the last axis."""
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * _LOG_2PI).sum(dim=-1)


def diag_gaussian_kl(
    mean_p: torch.Tensor, log_std_p: torch.Tensor, mean_q: torch.Tensor, log_std_q: torch.Tensor
) -> torch.Tensor:
    """Exact ``KL(p || q)`` of two diagonal Gaussians, summed over the last axis:
    ``sum_d log(s_q / s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2``."""
    var_ratio = torch.exp(2 * (log_std_p - log_std_q))
    mean_term = ((mean_p - mean_q) * torch.exp(-log_std_q)) ** 2
    return (log_std_q - log_std_p + 0.5 * (var_ratio + mean_term) - 0.5).sum(dim=-1)


def kd_loss(
    teacher_mean: torch.Tensor, teacher_log_std: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor
) -> torch.Tensor:
    """Knowledge distillation: the mean of ``KL(teacher ‖ student)`` over states."""
    return diag_gaussian_kl(teacher_mean.detach(), teacher_log_std.detach(), mean, log_std).mean()


def bc_loss(logp_teacher_actions: torch.Tensor) -> torch.Tensor:
    """Behaviour cloning: the mean negative log-likelihood of the teacher's actions."""
    return -logp_teacher_actions.mean()
