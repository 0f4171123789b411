"""Offline distillation math (torch only): the student losses that are not ADPO, the exact
KL between diagonal Gaussian policies used to measure how far a student is from its teacher, and
the NDCG of a student's ranking of each state's candidates (:func:`ndcg`).

Every policy here is a diagonal Gaussian given by ``mean`` and ``log_std`` of shape ``(..., A)``.
The ADPO students reuse :func:`adpo_ray.core.losses.adpo_loss` unchanged: the list is the ``K``
candidate actions stored at one state, ``y`` their one-step rewards.
"""

from __future__ import annotations

import math

import torch

from adpo_ray.core.choices import DISTILL_METHODS

__all__ = ["DISTILL_METHODS", "diag_gaussian_kl", "diag_gaussian_logp", "kd_loss", "bc_loss", "rank_grades", "ndcg", "random_order_ndcg"]

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


def rank_grades(signal: torch.Tensor) -> torch.Tensor:
    """Graded relevance of each candidate from its signal: the number of candidates of its list
    with a strictly lower signal (the worst gets 0, the best of ``K`` distinct ones ``K - 1``;
    equal signals share a grade). ``signal`` ``(..., K)`` -> grades ``(..., K)`` (float)."""
    return (signal.unsqueeze(-2) < signal.unsqueeze(-1)).sum(dim=-1).to(torch.float64)


def ndcg(scores: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """NDCG of the ranking of each list's ``K`` candidates by ``scores`` (e.g. a student's
    log-probabilities), against the ranking by ``signal`` (e.g. their clean rewards).

    Järvelin & Kekäläinen (2002, "Cumulated gain-based evaluation of IR techniques", ACM TOIS
    20(4)): ``DCG = sum_p gain(p) / log2(p + 1)`` over rank positions ``p = 1..K``, and
    ``NDCG = DCG / IDCG`` with ``IDCG`` the DCG of the candidates sorted by gain. The gain of a
    candidate is its graded relevance :func:`rank_grades` (its rank under the signal, counted from
    the worst), not the signal itself: the grades do not change under any increasing transform of
    the signal, so one NDCG reads alike across envs, signals and reward scales, and one outlying
    reward cannot dominate a list. Candidates that ``scores`` ties share the positions they span:
    each gets the mean discount of those positions (the expected DCG over the ties' orders,
    McSherry & Najork 2008), so the value does not depend on the candidates' order in the list.

    ``scores``, ``signal``: ``(..., K)``; returns ``(...)`` (float64) in ``[0, 1]``, 1 when
    ``scores`` orders the candidates as the signal does; NaN for a list whose signal is constant
    (every order is ideal: it carries no ranking to measure).
    """
    if scores.shape != signal.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and signal {tuple(signal.shape)} must have the same shape (..., K)")
    k = scores.shape[-1]
    gains = rank_grades(signal)
    positions = torch.arange(1, k + 1, dtype=torch.float64, device=scores.device)
    # cumulative discount: cum[n] = sum of 1 / log2(p + 1) over positions p = 1..n (cum[0] = 0)
    cum = torch.cat([torch.zeros(1, dtype=torch.float64, device=scores.device),
                     torch.cumsum(1.0 / torch.log2(positions + 1), 0)])
    above = (scores.unsqueeze(-2) > scores.unsqueeze(-1)).sum(dim=-1)  # candidates ranked before
    tied = (scores.unsqueeze(-2) == scores.unsqueeze(-1)).sum(dim=-1)  # itself included
    discount = (cum[above + tied] - cum[above]) / tied.to(torch.float64)
    dcg = (gains * discount).sum(dim=-1)
    ideal = (torch.sort(gains, dim=-1, descending=True).values / torch.log2(positions + 1)).sum(dim=-1)
    return torch.where(ideal > 0, dcg / torch.where(ideal > 0, ideal, 1.0), torch.nan)


def random_order_ndcg(signal: torch.Tensor) -> torch.Tensor:
    """The expected :func:`ndcg` of a uniformly random order of each list's ``K`` candidates: the
    level a ranking must beat to carry information about ``signal``. Every candidate is equally
    likely at every position, so each gets the mean discount of the ``K`` positions, which is
    :func:`ndcg` with all scores tied. For ``K`` distinct signals it is
    ``((K - 1) / 2 * sum_p 1 / log2(p + 1)) / sum_p (K - p) / log2(p + 1)`` (0.8038 at ``K = 8``,
    0.8069 at ``K = 4``): high, because the rank grades leave little room between orders.

    ``signal``: ``(..., K)``; returns ``(...)`` (float64); NaN for a list whose signal is constant.
    """
    return ndcg(torch.zeros_like(signal), signal)
