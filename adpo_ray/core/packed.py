"""A trial pack's learner: K members' actor-critic networks stacked, one batched update equal to
K solo updates (torch only).

Members share one network shape (RLlib's default PPO actor-critic: separate policy and value MLPs
with tanh hidden layers and a one-layer head) and differ in their weights, data and float knobs
(lr, ``beta_q``, ``tau_anc``, clips, coefficients, ``ppo_kl``'s beta), each a ``(K,)`` tensor. Read top to bottom:

1. :class:`StackedActorCritic`: the K members' parameters as rows of one ``(K, P)`` matrix
   ``theta`` (policy first, then value); each weight is a view of it shaped ``(K, in, out)`` (the
   solo ``nn.Linear`` weight transposed), each bias ``(K, 1, out)``, and a layer is one
   ``torch.baddbmm`` for all members. Converters to and from K solo state dicts in
   ``DefaultPPOTorchRLModule``'s names are exact.
2. :func:`clip_grad_norm_stacked_`: each member's gradient row clipped by its own global norm.
3. :class:`StackedAdam`: Adam (or AdamW) over ``theta``, elementwise, with per-member lr, weight
   decay and step counts; a member whose gradient is not finite is skipped (nothing of it moves).
4. :func:`polyak_stacked_`: the anchor refresh at a per-member rate.
5. :func:`ppo_terms` / :func:`ppo_kl_terms` / :func:`adpo_terms`: the loss of one minibatch per
   member, ``(K,)``.
6. :func:`stacked_update`: all epochs x minibatches of one update (per-member minibatch plans).

Members never mix: every op is batched along the leading axis, so the gradient of the summed
loss is each member's own gradient, and a NaN in one member's data stays in that member's row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from adpo_ray.core.distill import diag_gaussian_kl
from adpo_ray.core.losses import adpo_loss

__all__ = [
    "ACTION_DISTS",
    "Knobs",
    "StackedActorCritic",
    "StackedAdam",
    "clip_grad_norm_stacked_",
    "polyak_stacked_",
    "member_values",
    "ppo_terms",
    "ppo_kl_terms",
    "adpo_terms",
    "stacked_update",
    "POLICY_INPUTS",
]

ACTION_DISTS = ("gaussian", "categorical")
#: RLlib's module names: policy encoder + head, then value encoder + head (``vf_share_layers=False``)
NETS = (("encoder.actor_encoder.net.mlp.", "pi.net.mlp."), ("encoder.critic_encoder.net.mlp.", "vf.net.mlp."))
LOG_STD_CLIP = "pi.log_std_clip_param_const"  # RLlib's clamp of the Gaussian head's log std
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
#: The key under which :func:`ppo_terms` / :func:`adpo_terms` leave the policy's distribution
#: inputs ``(K, B, D)`` (detached) in the minibatch they were given, for per-minibatch
#: diagnostics such as the KL to the anchor (the forward pass is not repeated).
POLICY_INPUTS = "policy_inputs"


def member_values(name: str, values, k: int, *, off_is: float | None = None, low: float = 0.0,
                  strict: bool = True, dtype=torch.float32, device=None) -> torch.Tensor:
    """One knob for K members as a ``(K,)`` tensor: a number (every member) or K numbers.

    ``off_is``: the value that 0 or ``None`` stands for (e.g. ``inf`` for a clip that is off).
    Raises ``ValueError`` naming ``name`` unless every value is ``> low`` (``>= low`` when not
    ``strict``) and there are K of them."""
    seq = list(values) if isinstance(values, (list, tuple, torch.Tensor)) else [values] * k
    if len(seq) != k:
        raise ValueError(f"{name}: need one value per member ({k}), got {len(seq)}")
    out = []
    for v in seq:
        v = float(v) if v is not None else None
        if off_is is not None and not v:
            v = off_is
        if v is None or math.isnan(v) or (v <= low if strict else v < low):
            raise ValueError(f"{name}: every member's value must be {'>' if strict else '>='} {low:g}"
                             f"{' (0 or None: off)' if off_is is not None else ''}, got {seq}")
        out.append(v)
    return torch.tensor(out, dtype=dtype, device=device)


# -- 1. the stacked network -------------------------------------------------------------------
def _numpy_tanh(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.tanh(x.detach().contiguous().numpy()))


class _NumpyTanh(torch.autograd.Function):
    """tanh through NumPy's SIMD kernel; backward ``g * (1 - y ** 2)`` as ``torch.tanh``'s."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = _numpy_tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """``torch.tanh(x)``, on CPU through NumPy.

    On CPU, ``torch.tanh`` calls MKL's vector math library, which on non-Intel CPUs (AMD EPYC,
    as many cloud instances are) runs a generic kernel: 1.85 ms for a stacked hidden layer of
    16 x 128 x 256 floats on one core, against 0.21 ms for NumPy's (both within about an ulp of
    a float64 tanh; ``bench/tanh.py`` prints both). A pack's tanh layers were a fifth of a
    bandit pack's iteration at hidden 256. Other devices and dtypes use ``torch.tanh``.

    Args:
        x: any shape; float32 or float64 on CPU takes NumPy's kernel.

    Returns:
        ``tanh(x)``, the shape of ``x``, differentiable (backward as ``torch.tanh``'s).
    """
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return torch.tanh(x)
    return _NumpyTanh.apply(x) if x.requires_grad and torch.is_grad_enabled() else _numpy_tanh(x)


def _layers(state_dict: dict[str, torch.Tensor], prefix: str) -> list[str]:
    """The ``nn.Linear`` layer names under ``prefix`` in forward order (``prefix + index``)."""
    idx = sorted({int(k[len(prefix):].split(".")[0]) for k in state_dict
                  if k.startswith(prefix) and k.endswith(".weight")})
    return [f"{prefix}{i}" for i in idx]


class StackedActorCritic:
    """K members' RLlib default actor-critic networks as one ``(K, P)`` parameter matrix.

    ``theta`` (``(K, P)``, the members' flat parameters, policy first) is the storage; the
    trainable leaves (:attr:`params`, views of ``theta``) are what the forward pass uses, so
    gradients come back per leaf and :meth:`flat_grad` packs them into ``(K, P)`` again. The
    policy's part, ``theta[:, :policy_size]``, is laid out as an anchor made by :meth:`anchor`.

    Forward by ``torch.baddbmm``, chosen by measurement over ``torch.func.vmap`` of
    ``functional_call`` on the solo module with stacked parameters (``bench/pack_learner.py``:
    forward + backward of K=16 members, minibatch 64, one thread, medians of alternating runs on a
    shared 2-core machine): 2.8 vs 3.9 ms at hidden 64 and 19.5 vs 20.7 ms at hidden 256; baddbmm
    was faster in each of three such runs, by 22-38 % at hidden 64 and 6-22 % at hidden 256.
    """

    def __init__(self, theta: torch.Tensor, layout: list[tuple[str, tuple[int, ...]]], policy_size: int,
                 action_dist: str, log_std_clip: torch.Tensor, buffers: dict[str, torch.Tensor],
                 names: list[str]):
        if action_dist not in ACTION_DISTS:
            raise ValueError(f"action_dist={action_dist!r}; allowed: {', '.join(ACTION_DISTS)}")
        self.theta, self.layout, self.policy_size = theta, layout, policy_size
        self.action_dist, self.log_std_clip = action_dist, log_std_clip
        self.buffers, self.names = buffers, names  # the solo state dicts' buffers and key order
        self.params = [v.requires_grad_() for v in self.views(theta)]
        self.n_policy = sum(1 for n, _ in layout if n.startswith(NETS[0]))  # policy tensors come first
        self._grad: torch.Tensor | None = None  # flat_grad's buffer

    @property
    def k(self) -> int:
        return self.theta.shape[0]

    # -- converters ------------------------------------------------------------------------
    @classmethod
    def from_state_dicts(cls, state_dicts: Sequence[dict[str, torch.Tensor]], action_dist: str) -> StackedActorCritic:
        """Stack K solo state dicts (``DefaultPPOTorchRLModule.state_dict()`` names and layout;
        anchor entries, if any, are ignored). ``action_dist``: ``gaussian`` (the policy head
        gives means then log stds, RLlib's ``free_log_std=False``) or ``categorical`` (logits).
        Raises ``ValueError`` if the members' keys or shapes differ or the layout is not RLlib's
        separate policy and value MLPs with a one-layer head."""
        if not state_dicts:
            raise ValueError("state_dicts: need at least one member")
        first = state_dicts[0]
        layout: list[tuple[str, tuple[int, ...]]] = []
        for encoder, head in NETS:
            enc, hd = _layers(first, encoder), _layers(first, head)
            if not enc or len(hd) != 1:
                raise ValueError(f"state_dicts: need layers under {encoder!r} and exactly one under {head!r} "
                                 f"(RLlib's default actor-critic, vf_share_layers=False, head_fcnet_hiddens=[]), "
                                 f"got {len(enc)} and {len(hd)}")
            for layer in (*enc, *hd):
                out_dim, in_dim = first[f"{layer}.weight"].shape
                layout += [(f"{layer}.weight", (in_dim, out_dim)), (f"{layer}.bias", (1, out_dim))]
        policy_size = sum(math.prod(s) for n, s in layout if n.startswith(NETS[0]))
        names = [n for n in first if not n.startswith("_anchor")]
        buffer_names = [n for n in names if n not in {ln for ln, _ in layout}]
        rows = []
        for i, sd in enumerate(state_dicts):
            if [n for n in sd if not n.startswith("_anchor")] != names:
                raise ValueError(f"state_dicts[{i}]: keys differ from member 0's")
            for n, _ in layout:
                if sd[n].shape != first[n].shape:
                    raise ValueError(f"state_dicts[{i}][{n!r}]: shape {tuple(sd[n].shape)}, member 0 has "
                                     f"{tuple(first[n].shape)}")
            rows.append(torch.cat([(sd[n].t() if n.endswith(".weight") else sd[n]).reshape(-1) for n, _ in layout]))
        theta = torch.stack(rows).detach().clone()
        buffers = {n: torch.stack([sd[n] for sd in state_dicts]).clone() for n in buffer_names}
        clip = buffers.get(LOG_STD_CLIP, torch.full((len(rows), 1), math.inf, dtype=theta.dtype))
        return cls(theta, layout, policy_size, action_dist, clip.to(theta).reshape(-1, 1, 1), buffers, names)

    def state_dicts(self, flat: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
        """The K members as solo state dicts (RLlib's names, order and layout; copies). ``flat``:
        another ``(K, P)`` matrix in this layout (e.g. an Adam moment) instead of ``theta``."""
        flat = self.theta if flat is None else flat
        views = dict(zip((n for n, _ in self.layout), self.views(flat.detach()), strict=True))
        out = []
        for k in range(self.k):
            sd = {}
            for n in self.names:
                if n in views:
                    v = views[n][k]
                    sd[n] = (v.t() if n.endswith(".weight") else v.reshape(-1)).clone()
                else:
                    sd[n] = self.buffers[n][k].clone()
            out.append(sd)
        return out

    def flatten(self, tensors: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
        """K dicts of solo-layout tensors by parameter name (e.g. Adam moments) -> ``(K, P)``."""
        return torch.stack([torch.cat([(d[n].t() if n.endswith(".weight") else d[n]).reshape(-1)
                                       for n, _ in self.layout]) for d in tensors])

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The layer tensors of a ``(K, P')`` matrix in this layout (``P' = P`` or the policy's
        part), as views: weights ``(K, in, out)``, biases ``(K, 1, out)``."""
        out, offset = [], 0
        for _, shape in self.layout:
            if offset >= flat.shape[1]:
                break
            n = math.prod(shape)
            out.append(flat[:, offset:offset + n].view(flat.shape[0], *shape))
            offset += n
        return out

    def anchor(self) -> torch.Tensor:
        """A frozen copy of the members' policies, ``(K, policy_size)``: the anchor's storage."""
        return self.theta[:, :self.policy_size].detach().clone()

    # -- forward ---------------------------------------------------------------------------
    @staticmethod
    def _mlp(x: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Encoder layers with tanh after each (RLlib's encoder ends on its activation), then the
        one linear head layer."""
        for i in range(0, len(tensors), 2):
            x = torch.baddbmm(tensors[i + 1], x, tensors[i])
            if i + 2 < len(tensors):
                x = tanh(x)
        return x

    def policy(self, obs: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Action distribution inputs, ``(K, B, 2 * act_dim)`` (means then log stds clamped to
        RLlib's ``log_std_clip_param``) or ``(K, B, n_actions)`` logits, for ``obs`` of shape
        ``(K, B, obs_dim)``; ``theta``: another policy matrix (the anchor's), else the leaves."""
        tensors = self.params if theta is None else self.views(theta)
        out = self._mlp(obs, tensors[:self.n_policy])
        if self.action_dist == "gaussian":
            mean, log_std = out.chunk(2, dim=-1)
            out = torch.cat([mean, torch.clamp(log_std, -self.log_std_clip, self.log_std_clip)], dim=-1)
        return out

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """State values ``(K, B)`` for ``obs`` of shape ``(K, B, obs_dim)``."""
        return self._mlp(obs, self.params[self.n_policy:]).squeeze(-1)

    def flat_grad(self, loss: torch.Tensor) -> torch.Tensor:
        """The gradient of ``loss.sum()`` (``loss``: ``(K,)``, one per member) as ``(K, P)``: row
        ``k`` is member ``k``'s own gradient. One buffer serves every call (valid until the next)."""
        grads = torch.autograd.grad(loss.sum(), self.params)
        if self._grad is None:
            self._grad = torch.empty_like(self.theta)
        return torch.cat([g.reshape(self.k, -1) for g in grads], dim=1, out=self._grad)

    # -- action distributions (RLlib's TorchDiagGaussian / TorchCategorical) ---------------
    def logp_entropy(self, inputs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``log pi(a | s)`` and the entropy per row, both ``(K, B)``, from distribution inputs
        ``(K, B, D)`` and actions ``(K, B, act_dim)`` (float) or ``(K, B)`` (int)."""
        if self.action_dist == "gaussian":
            mean, log_std = inputs.chunk(2, dim=-1)
            logp = (-0.5 * ((actions - mean) * torch.exp(-log_std)) ** 2 - log_std - _HALF_LOG_2PI).sum(-1)
            return logp, (0.5 + _HALF_LOG_2PI + log_std).sum(-1)
        log_p = torch.log_softmax(inputs, dim=-1)
        logp = log_p.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        return logp, -(log_p.exp() * log_p).sum(-1)

    def kl(self, p_inputs: torch.Tensor, q_inputs: torch.Tensor) -> torch.Tensor:
        """Exact ``KL(p || q)`` per row, ``(K, B)`` (nats), of two action distributions given by
        their inputs ``(K, B, D)`` (as :meth:`policy` returns them): RLlib's ``p.kl(q)``."""
        if self.action_dist == "gaussian":
            return diag_gaussian_kl(*p_inputs.chunk(2, dim=-1), *q_inputs.chunk(2, dim=-1))
        log_p, log_q = torch.log_softmax(p_inputs, dim=-1), torch.log_softmax(q_inputs, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1)


# -- 2. per-member gradient clipping ----------------------------------------------------------
@torch.no_grad()
def clip_grad_norm_stacked_(grad: torch.Tensor, max_norm: torch.Tensor) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` on each member: row ``k`` of ``grad`` (``(K, P)``) times
    ``min(1, max_norm[k] / (norm_k + 1e-6))``, in place. ``max_norm`` is ``(K,)``; ``inf`` turns a
    member's clip off (see :func:`member_values` with ``off_is=inf``). Returns the norms, ``(K,)``."""
    norm = torch.linalg.vector_norm(grad, dim=1)
    grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0).unsqueeze(1))
    return norm


# -- 3. one Adam for all members --------------------------------------------------------------
class StackedAdam:
    """K independent ``torch.optim.Adam`` (``decoupled=True``: ``AdamW``) over the rows of a
    ``(K, P)`` parameter matrix (``StackedActorCritic.theta``, updated in place), elementwise:
    the same betas and eps for all, per-member ``lr`` and ``weight_decay`` (a number or K) and
    per-member step counts (members may start at different steps, :meth:`load_member`).

    :meth:`step` takes the ``(K, P)`` gradient and returns which members it skipped: a member
    whose gradient is not finite keeps its parameters, moments and step count."""

    def __init__(self, theta: torch.Tensor, lr: torch.Tensor, *, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: torch.Tensor | float = 0.0, decoupled: bool = False):
        k = theta.shape[0]
        self.theta, self.betas, self.eps, self.decoupled = theta, betas, eps, decoupled
        self.lr = member_values("lr", lr, k, dtype=torch.float64, device=theta.device)
        self.weight_decay = member_values("weight_decay", weight_decay, k, strict=False, dtype=torch.float64,
                                          device=theta.device)
        self.exp_avg = torch.zeros_like(theta)
        self.exp_avg_sq = torch.zeros_like(theta)
        self.steps = torch.zeros(k, dtype=torch.float64, device=theta.device)
        self._l2 = not decoupled and bool((self.weight_decay > 0).any())  # Adam's L2 term, read once

    def load_member(self, k: int, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: int) -> None:
        """Set member ``k``'s moments (rows in the parameter layout) and step count, e.g. from a
        solo optimizer's state (:meth:`StackedActorCritic.flatten` makes the rows)."""
        self.exp_avg[k].copy_(exp_avg)
        self.exp_avg_sq[k].copy_(exp_avg_sq)
        self.steps[k] = step

    @torch.no_grad()
    def step(self, grad: torch.Tensor, norm: torch.Tensor | None = None) -> torch.Tensor:
        """One step of every member whose gradient is finite; returns the skipped ones, ``(K,)``
        bool. ``norm``: the rows' global norms if known (:func:`clip_grad_norm_stacked_` returns
        them); a member is skipped when its norm is not finite (a NaN or inf entry). ``grad`` is
        used as scratch space: every op is in place, so a step allocates no ``(K, P)`` tensor (at
        K=64, hidden 256, allocating them made a step ten times slower)."""
        beta1, beta2 = self.betas
        active = torch.isfinite(torch.linalg.vector_norm(grad, dim=1) if norm is None else norm)
        on = active.to(torch.float64)
        grad.masked_fill_(~active.unsqueeze(1), 0.0)  # NaN * 0 is NaN: a skipped row is zeroed outright
        self.steps += on
        # bias corrections in double precision, as torch computes them from its step count
        bc1 = torch.where(self.steps > 0, 1 - beta1 ** self.steps, 1.0)
        bc2_sqrt = torch.where(self.steps > 0, 1 - beta2 ** self.steps, 1.0).sqrt()

        def col(x: torch.Tensor) -> torch.Tensor:  # (K,) float64 -> (K, 1) in the parameters' dtype
            return x.to(self.theta.dtype).unsqueeze(1)

        if self.decoupled:
            self.theta.mul_(col(1 - self.lr * self.weight_decay * on))
        elif self._l2:
            grad.addcmul_(self.theta, col(self.weight_decay))
        # a skipped member's zero gradient and factors of 0 and 1 leave its moments as they are
        self.exp_avg.lerp_(grad, col((1 - beta1) * on))
        self.exp_avg_sq.mul_(col(on * beta2 + (1 - on))).addcmul_(grad, grad, value=1 - beta2)
        denom = torch.sqrt(self.exp_avg_sq, out=grad).div_(col(bc2_sqrt)).add_(self.eps)
        update = torch.div(self.exp_avg, denom, out=grad).mul_(col(self.lr / bc1 * on))
        self.theta.sub_(update)
        return ~active


# -- 4. anchor refresh ------------------------------------------------------------------------
@torch.no_grad()
def polyak_stacked_(anchor: Iterable[torch.Tensor], policy: Iterable[torch.Tensor], rates: torch.Tensor) -> None:
    """In place, per member ``k``: ``anchor[k] <- (1 - rates[k]) * anchor[k] + rates[k] * policy[k]``
    for paired stacked tensors ``(K, ...)``; rate 0 keeps the member's anchor, 1 copies its policy
    (both exactly, as :func:`adpo_ray.core.anchors.polyak_`)."""
    for a, p in zip(anchor, policy, strict=True):
        r = rates.to(a.dtype).reshape(-1, *([1] * (a.ndim - 1)))
        a.copy_(torch.where(r >= 1, p, torch.where(r <= 0, a, a.lerp(p, r))))


# -- 5. the loss of one minibatch -------------------------------------------------------------
def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the rows (dim 1) of ``x`` ``(K, B, ...)`` where ``mask`` ``(K, B)`` is true."""
    if mask is None:
        return x.mean(dim=1)
    mask = mask.reshape(*mask.shape, *([1] * (x.ndim - 2)))
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(dim=1) / mask.sum(dim=1)


@dataclass
class Knobs:
    """Per-member loss knobs, each ``(K,)`` (build and check them with :meth:`of`): PPO's
    ``clip_param``, ``vf_clip_param``, ``vf_loss_coeff``, ``entropy_coeff``, ADPO's ``tau_anc``,
    ``beta_q``, ``anchor_kl_coeff`` (None when every member's is 0: the term is left out),
    ``ppo_kl``'s current KL coefficient ``kl_beta`` (its learner adapts it in place). Pack-wide (one per pack, not per member): the ADPO loss variant in ``adpo``
    (``loss``, ``target``, ``target_norm``, ``tau_alpha``, ``tau_min``, ``q_center``: the keyword
    arguments of :func:`adpo_ray.core.losses.adpo_loss`) and ``list_size``."""

    vf_clip_param: torch.Tensor
    vf_loss_coeff: torch.Tensor
    entropy_coeff: torch.Tensor
    clip_param: torch.Tensor | None = None
    tau_anc: torch.Tensor | None = None
    beta_q: torch.Tensor | None = None
    kl_beta: torch.Tensor | None = None
    anchor_kl_coeff: torch.Tensor | None = None
    list_size: int = 0
    adpo: dict | None = None

    @classmethod
    def of(cls, k: int, *, vf_clip_param, vf_loss_coeff, entropy_coeff, clip_param=None, tau_anc=None,
           beta_q=None, kl_beta=None, anchor_kl_coeff=None, list_size: int = 0, adpo: dict | None = None,
           dtype=torch.float32, device=None) -> Knobs:
        """The knobs of K members from numbers (shared) or K numbers each, checked: ``ValueError``
        naming the knob unless ``vf_clip_param``, ``clip_param``, ``tau_anc``, ``beta_q``, ``kl_beta`` are
        ``> 0``, the coefficients (``anchor_kl_coeff`` too) ``>= 0``, and ``list_size >= 1`` where
        ADPO lists need it."""
        def pos(name, v, strict=True):
            return None if v is None else member_values(name, v, k, strict=strict, dtype=dtype, device=device)

        if (tau_anc is None) != (beta_q is None):
            raise ValueError("tau_anc and beta_q: give both (ADPO) or neither (PPO)")
        if list_size < 0:
            raise ValueError(f"list_size must be >= 1 for list_source: batch (0: the actions layout), got {list_size}")
        if anchor_kl_coeff is not None and tau_anc is None:
            raise ValueError("anchor_kl_coeff: an ADPO knob (give tau_anc and beta_q too)")
        anchor_kl = pos("anchor_kl_coeff", anchor_kl_coeff, strict=False)
        return cls(vf_clip_param=pos("vf_clip_param", vf_clip_param),
                   vf_loss_coeff=pos("vf_loss_coeff", vf_loss_coeff, strict=False),
                   entropy_coeff=pos("entropy_coeff", entropy_coeff, strict=False),
                   clip_param=pos("clip_param", clip_param), tau_anc=pos("tau_anc", tau_anc),
                   beta_q=pos("beta_q", beta_q), kl_beta=pos("kl_beta", kl_beta),
                   anchor_kl_coeff=anchor_kl if anchor_kl is not None and bool((anchor_kl > 0).any()) else None,
                   list_size=list_size, adpo=adpo)


def _value_entropy(net: StackedActorCritic, knobs: Knobs, batch: dict[str, torch.Tensor], entropy: torch.Tensor):
    """The clipped squared value error and the entropy, masked means, ``(K,)`` each."""
    vf = (net.value(batch["obs"]) - batch["value_targets"]) ** 2
    vf = torch.minimum(vf, knobs.vf_clip_param.unsqueeze(1))  # RLlib's clamp(vf, 0, vf_clip_param)
    return _masked_mean(torch.stack([vf, entropy], dim=-1), batch.get("loss_mask")).unbind(-1)


def ppo_terms(net: StackedActorCritic, knobs: Knobs, batch: dict[str, torch.Tensor]):
    """PPO's loss of one minibatch per member (RLlib's, term for term): clipped surrogate, clipped
    value loss, entropy bonus. ``batch``: ``obs`` ``(K, B, obs_dim)``, ``actions``, ``action_logp``,
    ``advantages``, ``value_targets`` ``(K, B)`` and optionally ``loss_mask`` ``(K, B)`` bool.
    Returns ``(total, terms)``: ``(K,)`` losses (sum them for backward) and detached ``(K, 3)``
    policy loss, value loss, entropy; leaves the policy's inputs in ``batch[POLICY_INPUTS]``."""
    inputs = net.policy(batch["obs"])
    batch[POLICY_INPUTS] = inputs.detach()
    logp, entropy = net.logp_entropy(inputs, batch["actions"])
    ratio = torch.exp(logp - batch["action_logp"])
    adv, clip = batch["advantages"], knobs.clip_param.unsqueeze(1)
    surrogate = torch.min(adv * ratio, adv * torch.clamp(ratio, 1 - clip, 1 + clip))
    policy_loss = _masked_mean(-surrogate, batch.get("loss_mask"))
    vf_loss, ent = _value_entropy(net, knobs, batch, entropy)
    total = policy_loss + knobs.vf_loss_coeff * vf_loss - knobs.entropy_coeff * ent
    return total, torch.stack([policy_loss, vf_loss, ent], dim=1).detach()


def ppo_kl_terms(net: StackedActorCritic, knobs: Knobs, batch: dict[str, torch.Tensor]):
    """The KL-penalty policy gradient's loss (``ppo_kl``) of one minibatch per member, the solo
    learner's term for term (``adpo_ray.rllib.fused.FusedPPOKLTorchLearner``): the unclipped
    surrogate ``-ratio * A``, plus ``knobs.kl_beta * KL(pi_old || pi_new)`` (exact, per state),
    the clipped value loss and the entropy bonus, each a masked mean over rows. ``batch`` as for
    :func:`ppo_terms`, plus ``old_inputs`` ``(K, B, D)``: the behaviour policy's distribution
    inputs (RLlib's ``action_dist_inputs`` column). Returns ``(total, terms)``: ``(K,)`` losses
    and detached ``(K, 4)`` policy loss (without the penalty), value loss, entropy, mean KL."""
    inputs = net.policy(batch["obs"])
    batch[POLICY_INPUTS] = inputs.detach()
    logp, entropy = net.logp_entropy(inputs, batch["actions"])
    ratio = torch.exp(logp - batch["action_logp"])
    mask = batch.get("loss_mask")
    policy_loss = _masked_mean(-batch["advantages"] * ratio, mask)
    kl = _masked_mean(net.kl(batch["old_inputs"], inputs), mask)
    vf_loss, ent = _value_entropy(net, knobs, batch, entropy)
    total = policy_loss + knobs.vf_loss_coeff * vf_loss - knobs.entropy_coeff * ent + knobs.kl_beta * kl
    return total, torch.stack([policy_loss, vf_loss, ent, kl], dim=1).detach()


def adpo_terms(net: StackedActorCritic, knobs: Knobs, batch: dict[str, torch.Tensor]):
    """ADPO's loss of one minibatch per member (the learner's), as :func:`ppo_terms` with the
    policy loss the anchored preference loss of :func:`~adpo_ray.core.losses.adpo_loss`, plus
    ``knobs.anchor_kl_coeff * KL(policy || anchor)`` (exact, per state, a masked mean over rows)
    where that knob is set. ``batch`` adds ``anchor_logp``, ``anchor_inputs`` ``(K, B, D)`` (the
    anchor's distribution inputs; needed only for the KL term), and the lists:

    * ``list_signal`` ``(K, B, n_actions)`` present (the bandit's ``actions`` layout): one list per
      row over all actions; ``anchor_logp`` is ``(K, B, n_actions)``; rows are averaged (masked);
    * else ``list_source: batch``: consecutive runs of ``knobs.list_size`` rows are the lists
      (``B`` a multiple of it), ``y`` the advantages, ``anchor_logp`` ``(K, B)``; optional
      ``list_mask`` ``(K, n_lists, list_size)`` marks real slots (valid rows put first by the
      caller, as the fused learner's plan does); the loss is the mean over non-empty lists.
    """
    inputs = net.policy(batch["obs"])
    batch[POLICY_INPUTS] = inputs.detach()
    tau, beta = knobs.tau_anc.reshape(-1, 1, 1), knobs.beta_q.reshape(-1, 1, 1)
    mask = batch.get("loss_mask")
    if "list_signal" in batch:
        _, entropy = net.logp_entropy(inputs, batch["actions"])
        y = batch["list_signal"]
        if mask is not None:
            y = torch.where(mask.unsqueeze(-1), y, torch.zeros((), dtype=y.dtype, device=y.device))
        per_row = adpo_loss(torch.log_softmax(inputs, dim=-1), batch["anchor_logp"], y,
                            tau_anc=tau, beta_q=beta, **(knobs.adpo or {}))
        policy_loss = _masked_mean(per_row, mask)
    else:
        logp, entropy = net.logp_entropy(inputs, batch["actions"])
        k, size = logp.shape
        lists = torch.stack([logp, batch["anchor_logp"], batch["advantages"]], dim=-1)
        s, r, y = lists.reshape(k, size // knobs.list_size, knobs.list_size, 3).unbind(-1)
        list_mask = batch.get("list_mask")
        per_list = adpo_loss(s, r, y, tau_anc=tau, beta_q=beta, mask=list_mask, **(knobs.adpo or {}))
        if list_mask is None:
            policy_loss = per_list.mean(dim=1)
        else:
            has = list_mask.any(dim=-1).to(per_list.dtype)
            policy_loss = (per_list * has).sum(dim=1) / has.sum(dim=1)
    vf_loss, ent = _value_entropy(net, knobs, batch, entropy)
    total = policy_loss + knobs.vf_loss_coeff * vf_loss - knobs.entropy_coeff * ent
    if knobs.anchor_kl_coeff is not None:  # the author's KL penalty to the anchor (0 for some members: exact)
        total = total + knobs.anchor_kl_coeff * _masked_mean(net.kl(inputs, batch["anchor_inputs"]), mask)
    return total, torch.stack([policy_loss, vf_loss, ent], dim=1).detach()


# -- 6. one update ----------------------------------------------------------------------------
def stacked_update(net: StackedActorCritic, optimizer: StackedAdam, loss_fn: Callable, knobs: Knobs,
                   rows: dict[str, torch.Tensor], plans: torch.Tensor, grad_clip: torch.Tensor,
                   num_minibatches: torch.Tensor | None = None,
                   on_minibatch: Callable[[int, dict[str, torch.Tensor]], None] | None = None):
    """All epochs x minibatches of one update for every member.

    ``rows``: per-row inputs ``(K, N, ...)``; ``plans``: ``(K, M, minibatch_size)`` row indices
    (member ``k``'s :func:`~adpo_ray.core.minibatches.minibatch_plan`, stacked); ``loss_fn``:
    :func:`ppo_terms`, :func:`ppo_kl_terms` or :func:`adpo_terms`; ``grad_clip`` ``(K,)`` (``inf``: off). Per minibatch:
    gather, loss, gradient, per-member clip, Adam (a member whose gradient is not finite, e.g.
    from a NaN in its rows or a minibatch with no valid row, skips that step). With a
    ``loss_mask``, each minibatch's valid rows go first: for ADPO's ``list_source: batch`` its lists
    get a mask (as the fused learner's plan does); otherwise every minibatch is cut to the most
    valid rows any active minibatch has (the masked means are the same, the masked rows' work is
    saved). Returns ``(terms, skipped)``: the mean over
    minibatches of ``(K, 2 + T)`` [total, grad norm, *the loss function's T terms] and ``(K,)`` counts of skipped steps.

    ``num_minibatches`` (``(K,)`` ints, default all ``M``): members whose batches differ in size
    have plans of different lengths; member ``k`` takes only its first ``num_minibatches[k]``
    rows of ``plans`` (the rest is padding, never a step, and not in its means or skip count).
    A count of 0 freezes the member (a pack member past its budget): no step, its parameters,
    Adam moments and step count unchanged, zeros in its means.
    ``on_minibatch(i, batch)``: called after minibatch ``i``'s loss, before its step, with the
    gathered ``(K, B, ...)`` columns and the policy's inputs (:data:`POLICY_INPUTS`).
    """
    _check_update(net, loss_fn, knobs, rows, plans, grad_clip)
    k, n = plans.shape[0], next(iter(rows.values())).shape[1]
    counts = None
    if num_minibatches is not None:
        counts = torch.as_tensor(num_minibatches, dtype=torch.long, device=net.theta.device)
        if counts.shape != (k,) or bool((counts < 0).any()) or bool((counts > plans.shape[1]).any()):
            raise ValueError(f"num_minibatches: need K={k} counts in 0..{plans.shape[1]}, got {counts.tolist()}")
    list_masks = None
    if "loss_mask" in rows:  # each minibatch's valid rows first
        valid = rows["loss_mask"].gather(1, plans.flatten(1)).view(plans.shape)
        order = torch.argsort((~valid).to(torch.int8), dim=2, stable=True)
        plans, valid = plans.gather(2, order), valid.gather(2, order)
        if loss_fn is adpo_terms and "list_signal" not in rows:
            list_masks = valid.view(k, plans.shape[1], -1, knobs.list_size)
        else:
            # every row stands alone and each term is a mean over valid rows: the masked rows
            # (PPO's artificial last step of each episode, half of a bandit batch) change nothing
            # but the work, so each minibatch is cut to the most valid rows any active one has
            if counts is not None:
                valid = valid & (torch.arange(plans.shape[1], device=plans.device).view(1, -1, 1)
                                 < counts.to(plans.device).view(-1, 1, 1))
            plans = plans[:, :, :max(1, int(valid.sum(2).max()))]
    flat_rows = {name: v.flatten(0, 1) for name, v in rows.items()}
    offsets = (torch.arange(k, device=plans.device) * n).view(k, 1)
    sums = None  # (K, 2 + T) once the first minibatch tells T
    skipped = torch.zeros(k, dtype=torch.long, device=net.theta.device)
    for i in range(plans.shape[1]):
        idx = (plans[:, i] + offsets).reshape(-1)
        batch = {name: v.index_select(0, idx).view(k, -1, *v.shape[1:]) for name, v in flat_rows.items()}
        if list_masks is not None:
            batch["list_mask"] = list_masks[:, i]
        total, terms = loss_fn(net, knobs, batch)
        if on_minibatch is not None:
            on_minibatch(i, batch)
        grad = net.flat_grad(total)
        norm = clip_grad_norm_stacked_(grad, grad_clip)
        row = torch.cat([total.detach().unsqueeze(1), norm.unsqueeze(1), terms], dim=1)
        if sums is None:
            sums = torch.zeros_like(row)
        if counts is None:
            skipped += optimizer.step(grad, norm)
            sums += row
            continue
        active = i < counts  # a padding minibatch: a non-finite norm makes the optimizer skip it
        skipped += optimizer.step(grad, torch.where(active, norm, torch.full_like(norm, math.nan))) & active
        sums += torch.where(active.unsqueeze(1), row, torch.zeros((), dtype=row.dtype, device=row.device))
    if counts is None:
        return sums / plans.shape[1], skipped
    return sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype), skipped


def _check_update(net, loss_fn, knobs: Knobs, rows, plans, grad_clip) -> None:
    """Bad inputs of :func:`stacked_update`, named, before any step."""
    k = net.k
    if plans.ndim != 3 or plans.shape[0] != k or plans.shape[1] < 1:
        raise ValueError(f"plans: need shape (K={k}, num_minibatches >= 1, minibatch_size), got {tuple(plans.shape)}")
    for name, v in rows.items():
        if v.shape[0] != k:
            raise ValueError(f"rows[{name!r}]: need K={k} members on axis 0, got shape {tuple(v.shape)}")
    if grad_clip.shape != (k,):
        raise ValueError(f"grad_clip: need shape ({k},) (inf: off), got {tuple(grad_clip.shape)}")
    if loss_fn is ppo_terms and knobs.clip_param is None:
        raise ValueError("knobs.clip_param: PPO's loss needs it")
    if loss_fn is ppo_kl_terms:
        if knobs.kl_beta is None:
            raise ValueError("knobs.kl_beta: ppo_kl's loss needs it")
        if "old_inputs" not in rows:
            raise ValueError("rows['old_inputs']: ppo_kl's loss needs the behaviour policy's distribution inputs")
    if loss_fn is adpo_terms:
        if knobs.tau_anc is None:
            raise ValueError("knobs.tau_anc, knobs.beta_q: ADPO's loss needs them")
        if "list_signal" not in rows and (knobs.list_size < 1 or plans.shape[2] % knobs.list_size):
            raise ValueError(f"knobs.list_size={knobs.list_size}: list_source: batch needs lists that tile the "
                             f"minibatch ({plans.shape[2]} rows)")
