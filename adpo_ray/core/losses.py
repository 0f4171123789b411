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
* ``clip_log_ratio``, ``clip_score``: ``s - r`` clamped to ``[-c, c]`` before the temperature, and
  ``u`` clamped to ``[-c, c]`` after it (0: off); where a clamp binds, no gradient flows.

Plackett-Luce (ListMLE, the author's current default): the list ranked by the signal, best first
(``sigma``), and per rank ``k`` the loss ``l_k = logsumexp(u_sigma(k:)) - u_sigma(k)`` — minus the
log-probability that the k-th best candidate is drawn first from those not yet ranked. Knobs:

* ``top_k``: only the first ``top_k`` ranks count (None: every rank; a rank past the list counts
  nothing); the last rank of a list is certain (``l = 0``) and never counts;
* ``label_smoothing`` ``eps``: ``l_k <- (1 - eps) l_k + eps (logsumexp(u_sigma(k:)) - mean(u_sigma(k:)))``,
  the cross-entropy of each rank's draw against the uniform draw over the candidates left;
* ``poly_epsilon`` ``e``: ``l_k <- l_k + e (1 - exp(-min(l_k, 20)))`` (Poly-1 on each rank's draw,
  after smoothing; the cap keeps ``exp`` finite);
* ties in the signal keep the list's order (a stable sort), so equal candidates are ranked by
  position; the loss per list is the mean over its counted ranks.

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

from adpo_ray.core.choices import LOSSES, TAU_MIN
from adpo_ray.core.targets import hard_pairwise_target, list_target, pair_target

__all__ = ["LOSSES", "adpo_loss", "anchored_logits", "listwise_loss", "pairwise_loss", "dpo_loss", "pair_mask",
           "normalize_signal", "adaptive_tau", "plackett_luce_loss", "TAU_MIN"]


def anchored_logits(s: torch.Tensor, r: torch.Tensor, tau_anc: float | torch.Tensor,
                    clip_log_ratio: float = 0.0, clip_score: float = 0.0) -> torch.Tensor:
    """``u = (s - r) / tau_anc``; the anchor scores are detached. ``tau_anc`` is a number or a
    per-list tensor of shape ``(..., 1)``. ``clip_log_ratio`` clamps ``s - r`` and ``clip_score``
    clamps ``u`` to ``[-c, c]`` (0: off)."""
    if not isinstance(tau_anc, torch.Tensor) and tau_anc <= 0:
        raise ValueError(f"tau_anc must be > 0, got {tau_anc}")
    d = s - r.detach()
    if clip_log_ratio > 0:
        d = d.clamp(-clip_log_ratio, clip_log_ratio)
    u = d / tau_anc
    return u.clamp(-clip_score, clip_score) if clip_score > 0 else u


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
    clip_log_ratio: float = 0.0,
    clip_score: float = 0.0,
) -> torch.Tensor:
    """Anchored listwise loss ``-sum_i q_i log softmax((s - r) / tau_anc)_i`` per list
    (``q_center``: the logits minus their ``q``-weighted mean first, which changes nothing)."""
    u = anchored_logits(s, r, tau_anc, clip_log_ratio, clip_score)
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


def plackett_luce_loss(
    s: torch.Tensor,
    r: torch.Tensor,
    y: torch.Tensor,
    tau_anc: float | torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    top_k: int | None = None,
    label_smoothing: float = 0.0,
    poly_epsilon: float = 0.0,
    clip_log_ratio: float = 0.0,
    clip_score: float = 0.0,
) -> torch.Tensor:
    """Anchored Plackett-Luce (ListMLE) loss per list, shape ``(...)``, over ``u = (s - r) /
    tau_anc`` ranked by the signal ``y`` (see the module docstring for ``top_k``,
    ``label_smoothing``, ``poly_epsilon`` and the clamps). A list with fewer than two real
    candidates, or ``top_k=0``, counts 0.

    Source: the ranking loss of the ADPO author's public trainer (``_compute_plackett_luce_loss``,
    defaults there: top 3, smoothing 0.1, poly 1, clamps 5 and 10), written here from the math.
    """
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 or None (every rank), got {top_k}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    u = anchored_logits(s, r, tau_anc, clip_log_ratio, clip_score)
    real = torch.ones_like(y, dtype=torch.bool) if mask is None else mask
    # best first, padding last, ties in list order
    key = torch.where(real, y.detach(), torch.full_like(y, -torch.inf))
    order = torch.argsort(key, dim=-1, descending=True, stable=True)
    u_sorted = torch.gather(u, -1, order)
    w = torch.gather(real, -1, order)
    # suffix logsumexp over the candidates not yet ranked (padding carries no mass)
    masked = u_sorted + mask_bias(w, u.dtype)
    lse = torch.logcumsumexp(masked.flip(-1), dim=-1).flip(-1)
    per_rank = lse - u_sorted
    if label_smoothing > 0:
        wf = w.to(u.dtype)
        suffix_sum = torch.cumsum((u_sorted * wf).flip(-1), dim=-1).flip(-1)
        suffix_n = torch.cumsum(wf.flip(-1), dim=-1).flip(-1).clamp(min=1.0)
        per_rank = (1.0 - label_smoothing) * per_rank + label_smoothing * (lse - suffix_sum / suffix_n)
    if poly_epsilon:
        per_rank = per_rank + poly_epsilon * (1.0 - torch.exp(-per_rank.clamp(max=20.0)))
    n = real.sum(dim=-1, keepdim=True)
    ranks = torch.arange(u.shape[-1], device=u.device)
    counted = ranks < (n - 1)  # the last real rank is certain
    if top_k is not None:
        counted = counted & (ranks < top_k)
    per_rank = torch.where(counted, per_rank, torch.zeros((), dtype=u.dtype, device=u.device))
    return per_rank.sum(dim=-1) / counted.sum(dim=-1).clamp(min=1)


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
    tau_min: float = TAU_MIN,
    q_center: bool = False,
    pl_top_k: int | None = None,
    label_smoothing: float = 0.0,
    poly_epsilon: float = 0.0,
    clip_log_ratio: float = 0.0,
    clip_score: float = 0.0,
) -> torch.Tensor:
    """The ADPO loss of one variant per list, from scores and the raw signal ``y``.

    ``loss`` is one of :data:`LOSSES`; ``target`` one of ``targets.TARGETS`` (ignored by ``dpo``,
    which always uses hard pairs). The pairwise variants use ``beta = 1 / tau_anc`` so that one
    temperature sets the trust region of every variant. ``target_norm`` (``none`` | ``list``)
    applies to every variant's signal; ``tau_alpha`` / ``tau_min`` and ``q_center`` to listwise only;
    ``pl_top_k``, ``label_smoothing`` and ``poly_epsilon`` to ``plackett_luce`` only; the clamps
    ``clip_log_ratio`` and ``clip_score`` to both listwise losses. ``tau_anc`` and ``beta_q`` are
    numbers or per-list tensors of shape ``(..., 1)`` (e.g. one value per member of a trial pack,
    shape ``(K, 1, 1)`` for lists ``(K, n_lists, L)``).
    """
    if target_norm == "list":
        y = normalize_signal(y, mask)
    elif target_norm != "none":
        raise ValueError(f"unknown target_norm {target_norm!r}; allowed: none, list")
    if loss != "plackett_luce" and (pl_top_k is not None or label_smoothing or poly_epsilon):
        raise ValueError(f"pl_top_k, label_smoothing and poly_epsilon apply to 'plackett_luce', not {loss!r}")
    if loss == "listwise":
        q = list_target(y, target, beta_q, mask)
        tau = adaptive_tau(q, tau_anc, tau_alpha, tau_min, mask) if tau_alpha > 0 else tau_anc
        return listwise_loss(s, r, q, tau, mask, q_center=q_center, clip_log_ratio=clip_log_ratio,
                             clip_score=clip_score)
    if loss == "plackett_luce":
        if tau_alpha > 0 or q_center:
            raise ValueError("tau_alpha and q_center apply to the listwise loss, not 'plackett_luce'")
        return plackett_luce_loss(s, r, y, tau_anc, mask, top_k=pl_top_k, label_smoothing=label_smoothing,
                                  poly_epsilon=poly_epsilon, clip_log_ratio=clip_log_ratio, clip_score=clip_score)
    if tau_alpha > 0 or q_center or clip_log_ratio or clip_score:
        raise ValueError(f"tau_alpha, q_center and the clamps apply to the listwise losses, not {loss!r}")
    # the pair terms are (..., L, L): a per-list tensor needs one more axis to broadcast
    beta_q, tau_anc = (x[..., None] if isinstance(x, torch.Tensor) else x for x in (beta_q, tau_anc))
    if loss == "pairwise":
        return pairwise_loss(s, r, pair_target(y, target, beta_q, mask), 1.0 / tau_anc, mask)
    if loss == "dpo":
        return dpo_loss(s, r, y, 1.0 / tau_anc, mask)
    raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(LOSSES)}")
