"""Target distributions ``q`` built from a per-candidate signal ``y`` (torch only).

* ``softmax``: ``q = softmax(y / beta_q)`` over each list.
* ``pairwise``: ``q_ij = sigmoid((y_i - y_j) / beta_q)``.
* ``hard``: one-hot on the best candidate (ties share the mass); hard pairs ``1[y_i > y_j]``
  (ties 1/2).
* ``kde``: robust to heavy tails. Each list's ``y`` goes through its own Gaussian-KDE CDF
  (Silverman bandwidth, as ``scipy.stats.gaussian_kde(bw_method="silverman")``) and a logit, so an
  outlier of any size moves a target by a bounded amount; then ``softmax`` (or ``pairwise``) as above.

Shapes: ``y`` is ``(..., L)``; ``mask`` (optional, bool, same shape) marks real candidates.
"""

from __future__ import annotations

import torch

from adpo_ray.core.choices import TARGETS

__all__ = [
    "TARGETS",
    "softmax_target",
    "pairwise_target",
    "hard_target",
    "hard_pairwise_target",
    "kde_logits",
    "list_target",
    "pair_target",
]

_KDE_EPS = 1e-6


def softmax_target(y: torch.Tensor, beta_q: float | torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(y / beta_q)`` over each list; ``beta_q`` is a number or a per-list tensor of
    shape ``(..., 1)`` (checked by whoever builds it: a check here would read the device)."""
    if not isinstance(beta_q, torch.Tensor) and beta_q <= 0:
        raise ValueError(f"beta_q must be > 0, got {beta_q}")
    logits = y / beta_q
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, dim=-1)


def pairwise_target(y: torch.Tensor, beta_q: float | torch.Tensor) -> torch.Tensor:
    """``sigmoid((y_i - y_j) / beta_q)``; ``beta_q`` is a number or a per-list tensor of shape
    ``(..., 1, 1)``."""
    if not isinstance(beta_q, torch.Tensor) and beta_q <= 0:
        raise ValueError(f"beta_q must be > 0, got {beta_q}")
    return torch.sigmoid((y[..., :, None] - y[..., None, :]) / beta_q)


def hard_target(y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One-hot on the argmax of each list; tied maxima share the mass equally."""
    if mask is not None:
        y = y.masked_fill(~mask, float("-inf"))
    best = y == y.max(dim=-1, keepdim=True).values
    best = best.to(y.dtype)
    return best / best.sum(dim=-1, keepdim=True)


def hard_pairwise_target(y: torch.Tensor) -> torch.Tensor:
    """``1[y_i > y_j]``, with 1/2 for ties."""
    diff = y[..., :, None] - y[..., None, :]
    return (diff > 0).to(y.dtype) + 0.5 * (diff == 0).to(y.dtype)


def kde_logits(y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``logit(F_kde(y_i))`` per list, with ``F_kde`` the list's Gaussian-KDE CDF.

    The bandwidth is Silverman's factor times the sample standard deviation,
    ``h = std(y, ddof=1) * (3 n / 4) ** (-1/5)`` (scipy's ``gaussian_kde`` in one dimension).
    Values are clipped to ``[1e-6, 1 - 1e-6]`` before the logit, so outputs lie in about +-13.8.
    """
    if mask is None:
        mask = torch.ones_like(y, dtype=torch.bool)
    w = mask.to(y.dtype)
    n = w.sum(dim=-1, keepdim=True).clamp(min=1.0)
    mean = (y * w).sum(dim=-1, keepdim=True) / n
    var = (((y - mean) * w) ** 2).sum(dim=-1, keepdim=True) / (n - 1.0).clamp(min=1.0)
    h = var.sqrt() * (0.75 * n) ** (-0.2)
    h = h.clamp(min=1e-8)
    z = (y[..., :, None] - y[..., None, :]) / h[..., None]
    cdf = (torch.special.ndtr(z) * w[..., None, :]).sum(dim=-1) / n
    cdf = cdf.clamp(_KDE_EPS, 1.0 - _KDE_EPS)
    out = torch.logit(cdf)
    return torch.where(mask, out, torch.zeros_like(out))


def list_target(
    y: torch.Tensor, kind: str, beta_q: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The listwise target ``q`` of variant ``kind`` (one of :data:`TARGETS`)."""
    if kind == "softmax":
        return softmax_target(y, beta_q, mask)
    if kind == "kde":
        return softmax_target(kde_logits(y, mask), beta_q, mask)
    if kind == "hard":
        return hard_target(y, mask)
    raise ValueError(f"unknown target {kind!r}; allowed: {', '.join(TARGETS)}")


def pair_target(
    y: torch.Tensor, kind: str, beta_q: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The pairwise target ``q_ij`` of variant ``kind`` (one of :data:`TARGETS`)."""
    if kind == "softmax":
        return pairwise_target(y, beta_q)
    if kind == "kde":
        return pairwise_target(kde_logits(y, mask), beta_q)
    if kind == "hard":
        return hard_pairwise_target(y)
    raise ValueError(f"unknown target {kind!r}; allowed: {', '.join(TARGETS)}")
