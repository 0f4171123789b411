"""ADPO losses: the whole method in a few functions (torch only).

Notation, for a list of candidates ``i = 1..L``:

* ``s_i = log pi_theta(a_i | x_i)``   policy scores (carry gradient),
* ``r_i = log pi_anchor(a_i | x_i)``  anchor scores (no gradient),
* ``u_i = (s_i - r_i) / tau_anc``     anchored logits,
* ``q``                               target distribution over the list (see :mod:`targets`).

Listwise:  ``L = -sum_i q_i log softmax(u)_i``; ``dL/ds_i = (softmax(u)_i - q_i) / tau_anc``.

The author's variants of the listwise loss (the public ADPO trainer), each off by default:

* ``target_norm='list'``: ``y`` is z-normalised within each list before the target,
  ``(y - mean) / (std + 1e-8)`` (``std`` with ``ddof=1``; a one-candidate list gives 0), so
  ``beta_q`` no longer depends on the signal's scale (:func:`normalize_signal`);
* adaptive temperature: per list ``tau = max(tau_min, tau_anc * (1 - tau_alpha * H(q) / log K))``
  with ``H(q)`` the target's entropy and ``K`` the list's candidates, no gradient through it
  (:func:`adaptive_tau`): a confident target gets a wider trust region;
* ``q_center``: ``u - sum_i q_i u_i`` before the softmax. ``log softmax`` is shift-invariant, so
  this changes neither the loss nor its gradient (kept to reproduce the author's code; tested).
Pairwise (anchored soft-DPO): ``z_ij = (s_i - s_j) - (r_i - r_j)``,
``L_ij = -[q_ij log sigmoid(beta z_ij) + (1 - q_ij) log sigmoid(-beta z_ij)]``;
hard ``q_ij`` with the anchor as the reference policy is DPO.

All functions take tensors of shape ``(..., L)`` (a batch of lists) and an optional boolean
``mask`` of the same shape marking real candidates, so ragged lists can be padded. They return the
loss per list, shape ``(...)``; callers reduce.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adpo_ray.core.targets import hard_pairwise_target, list_target, pair_target

__all__ = ["LOSSES", "adpo_loss", "anchored_logits", "listwise_loss", "pairwise_loss", "dpo_loss", "pair_mask",
           "normalize_signal", "adaptive_tau"]


def anchored_logits(s: torch.Tensor, r: torch.Tensor, tau_anc: float | torch.Tensor) -> torch.Tensor:
    """``u = (s - r) / tau_anc``; the anchor scores are detached. ``tau_anc`` is a number or a
    per-list tensor of shape ``(..., 1)``."""
    if not isinstance(tau_anc, torch.Tensor) and tau_anc <= 0:
        raise ValueError(f"tau_anc must be > 0, got {tau_anc}")
    return (s - r.detach()) / tau_anc


def _counts(y: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.ones_like(y) if mask is None else mask.to(y.dtype)
    return w, w.sum(dim=-1, keepdim=True)


def normalize_signal(y: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """``(y - mean) / (std + eps)`` within each list (``std`` with ``ddof=1`` over the real
    candidates; a list of one candidate has std 0); padded slots are 0."""
    w, n = _counts(y, mask)
    mean = (y * w).sum(dim=-1, keepdim=True) / n.clamp(min=1.0)
    var = (((y - mean) * w) ** 2).sum(dim=-1, keepdim=True) / (n - 1.0).clamp(min=1.0)
    return (y - mean) * w / (var.sqrt() + eps)


def adaptive_tau(q: torch.Tensor, tau_anc: float, alpha: float, tau_min: float,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per list ``max(tau_min, tau_anc * (1 - alpha * H(q) / log K))``, shape ``(..., 1)``, no
    gradient; ``K`` counts the list's real candidates (a list of one has ``H / log K = 0``)."""
    with torch.no_grad():
        _, n = _counts(q, mask)
        h = -torch.special.xlogy(q, q).sum(dim=-1, keepdim=True)
        log_k = torch.log(n.clamp(min=1.0))
        ratio = torch.where(log_k > 0, h / log_k.clamp(min=1e-12), torch.zeros_like(h))
        return (tau_anc * (1.0 - alpha * ratio)).clamp(min=tau_min)


def listwise_loss(
    s: torch.Tensor,
    r: torch.Tensor,
    q: torch.Tensor,
    tau_anc: float | torch.Tensor,
    mask: torch.Tensor | None = None,
    q_center: bool = False,
) -> torch.Tensor:
    """Anchored listwise loss ``-sum_i q_i log softmax((s - r) / tau_anc)_i`` per list
    (``q_center``: the logits minus their ``q``-weighted mean first, which changes nothing)."""
    u = anchored_logits(s, r, tau_anc)
    if q_center:
        q_real = q if mask is None else torch.where(mask, q, torch.zeros((), dtype=q.dtype, device=q.device))
        u = u - (q_real.detach() * u).sum(dim=-1, keepdim=True)
    if mask is None:
        return -(q * torch.log_softmax(u, dim=-1)).sum(dim=-1)
    # Padded slots get a huge finite negative logit: their softmax mass is exactly 0, their
    # log-probability finite (so 0 * log p = 0, no NaN), and the gradient reaching them 0. An
    # additive bias is also the cheapest mask to differentiate through.
    log_p = torch.log_softmax(u + mask_bias(mask, u.dtype), dim=-1)
    q = torch.where(mask, q, torch.zeros((), dtype=q.dtype, device=q.device))
    return -(q * log_p).sum(dim=-1) * mask.any(dim=-1)  # a list with no candidate counts 0


def mask_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 on real candidates, a huge finite negative number on padding (added to logits)."""
    return (~mask).to(dtype) * (torch.finfo(dtype).min / 4)


def pair_mask(mask: torch.Tensor | None, shape: torch.Size, device=None) -> torch.Tensor:
    """Boolean ``(..., L, L)`` mask of the ordered pairs ``i < j`` between real candidates."""
    L = shape[-1]
    upper = torch.ones(L, L, dtype=torch.bool, device=device).triu(diagonal=1)
    if mask is None:
        return upper.expand(*shape[:-1], L, L)
    return upper & mask[..., :, None] & mask[..., None, :]


def pairwise_loss(
    s: torch.Tensor,
    r: torch.Tensor,
    q_pair: torch.Tensor,
    beta: float | torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Anchored soft-DPO over all pairs ``i < j`` of each list, averaged over the pairs.

    ``q_pair[..., i, j]`` is the target probability that candidate ``i`` beats ``j``; ``beta`` is
    a number or a per-list tensor of shape ``(..., 1, 1)``.
    """
    if not isinstance(beta, torch.Tensor) and beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    d = s - r.detach()
    z = d[..., :, None] - d[..., None, :]  # (s_i - s_j) - (r_i - r_j)
    per_pair = -(q_pair * F.logsigmoid(beta * z) + (1.0 - q_pair) * F.logsigmoid(-beta * z))
    pm = pair_mask(mask, s.shape, device=s.device)
    per_pair = torch.where(pm, per_pair, torch.zeros_like(per_pair))
    n_pairs = pm.sum(dim=(-2, -1)).clamp(min=1)
    return per_pair.sum(dim=(-2, -1)) / n_pairs


def dpo_loss(
    s: torch.Tensor,
    r: torch.Tensor,
    y: torch.Tensor,
    beta: float | torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """DPO: the pairwise loss with hard labels ``1[y_i > y_j]`` (ties count 1/2)."""
    return pairwise_loss(s, r, hard_pairwise_target(y), beta, mask)


LOSSES: tuple[str, ...] = ("listwise", "pairwise", "dpo")


def adpo_loss(
    s: torch.Tensor,
    r: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str = "listwise",
    target: str = "softmax",
    tau_anc: float | torch.Tensor = 1.0,
    beta_q: float | torch.Tensor = 1.0,
    mask: torch.Tensor | None = None,
    target_norm: str = "none",
    tau_alpha: float = 0.0,
    tau_min: float = 0.05,
    q_center: bool = False,
) -> torch.Tensor:
    """The ADPO loss of one variant per list, from scores and the raw signal ``y``.

    ``loss`` is one of :data:`LOSSES`; ``target`` one of ``targets.TARGETS`` (ignored by ``dpo``,
    which always uses hard pairs). The pairwise variants use ``beta = 1 / tau_anc`` so that one
    temperature sets the trust region of every variant. ``target_norm`` (``none`` | ``list``)
    applies to every variant's signal; ``tau_alpha`` / ``tau_min`` and ``q_center`` to listwise only.
    ``tau_anc`` and ``beta_q`` are numbers or per-list tensors of shape ``(..., 1)`` (e.g. one value
    per member of a trial pack, shape ``(K, 1, 1)`` for lists ``(K, n_lists, L)``).
    """
    if target_norm == "list":
        y = normalize_signal(y, mask)
    elif target_norm != "none":
        raise ValueError(f"unknown target_norm {target_norm!r}; allowed: none, list")
    if loss == "listwise":
        q = list_target(y, target, beta_q, mask)
        tau = adaptive_tau(q, tau_anc, tau_alpha, tau_min, mask) if tau_alpha > 0 else tau_anc
        return listwise_loss(s, r, q, tau, mask, q_center=q_center)
    if tau_alpha > 0 or q_center:
        raise ValueError(f"tau_alpha and q_center apply to the listwise loss, not {loss!r}")
    # the pair terms are (..., L, L): a per-list tensor needs one more axis to broadcast
    beta_q, tau_anc = (x[..., None] if isinstance(x, torch.Tensor) else x for x in (beta_q, tau_anc))
    if loss == "pairwise":
        return pairwise_loss(s, r, pair_target(y, target, beta_q, mask), 1.0 / tau_anc, mask)
    if loss == "dpo":
        return dpo_loss(s, r, y, 1.0 / tau_anc, mask)
    raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(LOSSES)}")
