"""Anchor-refresh schedules: when, and how strongly, the anchor policy follows the learner.

A schedule is a small pure object. After every learner update (one training iteration: all its
epochs and minibatches) the learner calls
``rate = schedule.step(kl, timestep)`` with the current mean KL(policy || anchor) and then moves
the anchor: ``anchor <- (1 - rate) * anchor + rate * policy`` (see :func:`polyak_`), where
``rate == 0`` leaves it alone and ``rate == 1`` is a hard copy. The schedule counts its refreshes
and keeps all of its state in :meth:`AnchorSchedule.state_dict`, so checkpoints carry it.

Built in: ``fixed`` (never), ``dynamic`` (hard copy every ``every`` updates; ``every=1`` tracks
the policy), ``ema`` (Polyak rate ``rate`` every update), ``kl_triggered`` (hard copy once the mean
KL over the last ``window`` updates exceeds ``threshold``). "Update" means learner update.

A new strategy is one subclass with a ``decide`` method, registered by name::

    @register_schedule("every_other")
    class EveryOther(AnchorSchedule):
        def decide(self, kl: float) -> float:
            return 1.0 if self.updates % 2 == 0 else 0.0

or referenced from a spec by import path (``my_pkg.anchors:EveryOther``) without registering.
"""

from __future__ import annotations

import importlib
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # the schedules are plain Python: a spec validates its anchors without torch
    import torch

__all__ = [
    "AnchorSchedule",
    "Fixed",
    "Dynamic",
    "EMA",
    "KLTriggered",
    "SCHEDULES",
    "register_schedule",
    "make_schedule",
    "resolve_schedule",
    "polyak_",
]

SCHEDULES: dict[str, type[AnchorSchedule]] = {}


def register_schedule(name: str):
    """Class decorator: make a schedule available under ``name`` in specs."""

    def deco(cls: type[AnchorSchedule]) -> type[AnchorSchedule]:
        cls.name = name
        SCHEDULES[name] = cls
        return cls

    return deco


class AnchorSchedule:
    """Base class. Subclasses implement :meth:`decide`; parameters are constructor kwargs."""

    name: ClassVar[str] = "base"

    def __init__(self) -> None:
        self.updates = 0  # gradient updates seen
        self.refreshes = 0  # refreshes made (soft ones included)
        self.last_refresh_step = -1  # env-step count at the last refresh (-1: never)
        self.last_refresh_kl = float("nan")  # KL(policy || anchor) just before the last refresh

    def decide(self, kl: float) -> float:
        """Return the refresh rate for this update: 0 (none), 1 (hard copy) or in between."""
        raise NotImplementedError

    def step(self, kl: float, timestep: int = 0) -> float:
        """Record one gradient update and return the refresh rate to apply now."""
        self.updates += 1
        rate = float(self.decide(float(kl)))
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{type(self).__name__}.decide returned {rate}; must be in [0, 1]")
        if rate > 0.0:
            self.refreshes += 1
            self.last_refresh_step = int(timestep)
            self.last_refresh_kl = float(kl)
        return rate

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "updates": self.updates,
            "refreshes": self.refreshes,
            "last_refresh_step": self.last_refresh_step,
            "last_refresh_kl": self.last_refresh_kl,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.refreshes = int(state["refreshes"])
        self.last_refresh_step = int(state["last_refresh_step"])
        self.last_refresh_kl = float(state["last_refresh_kl"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.state_dict()})"


@register_schedule("fixed")
class Fixed(AnchorSchedule):
    """The anchor never moves (it stays the initial / loaded policy)."""

    def decide(self, kl: float) -> float:
        return 0.0


@register_schedule("dynamic")
class Dynamic(AnchorSchedule):
    """Hard copy of the policy every ``every`` updates (``every=1``: the anchor tracks the policy)."""

    def __init__(self, every: int = 1) -> None:
        super().__init__()
        if int(every) < 1:
            raise ValueError(f"dynamic.every must be >= 1, got {every}")
        self.every = int(every)

    def decide(self, kl: float) -> float:
        return 1.0 if self.updates % self.every == 0 else 0.0


@register_schedule("ema")
class EMA(AnchorSchedule):
    """Polyak averaging: ``anchor <- (1 - rate) anchor + rate policy`` after every update."""

    def __init__(self, rate: float = 0.05) -> None:
        super().__init__()
        if not 0.0 < float(rate) <= 1.0:
            raise ValueError(f"ema.rate must be in (0, 1], got {rate}")
        self.rate = float(rate)

    def decide(self, kl: float) -> float:
        return self.rate


@register_schedule("kl_triggered")
class KLTriggered(AnchorSchedule):
    """Hard copy once the mean KL(policy || anchor) over the last ``window`` updates exceeds
    ``threshold``; the window restarts after each refresh."""

    def __init__(self, threshold: float = 0.05, window: int = 1) -> None:
        super().__init__()
        if float(threshold) <= 0:
            raise ValueError(f"kl_triggered.threshold must be > 0, got {threshold}")
        if int(window) < 1:
            raise ValueError(f"kl_triggered.window must be >= 1, got {window}")
        self.threshold = float(threshold)
        self.window = int(window)
        self._recent: deque[float] = deque(maxlen=self.window)

    def decide(self, kl: float) -> float:
        self._recent.append(kl)
        if len(self._recent) == self.window and sum(self._recent) / self.window > self.threshold:
            self._recent.clear()
            return 1.0
        return 0.0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "recent": list(self._recent)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._recent = deque((float(x) for x in state["recent"]), maxlen=self.window)


def resolve_schedule(name: str) -> type[AnchorSchedule]:
    """A schedule class from a registered name or an import path (``pkg.mod:Class``/``pkg.mod.Class``)."""
    if name in SCHEDULES:
        return SCHEDULES[name]
    if ":" in name or "." in name:
        module_name, _, attr = name.replace(":", ".").rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot import anchor schedule {name!r}: {e}") from None
        if not (isinstance(cls, type) and issubclass(cls, AnchorSchedule)):
            raise ValueError(f"{name!r} is not an AnchorSchedule subclass")
        return cls
    raise ValueError(
        f"unknown anchor mode {name!r}; allowed: {', '.join(SCHEDULES)} or an import path "
        "'package.module:Class' of an AnchorSchedule subclass"
    )


def make_schedule(name: str, **params: Any) -> AnchorSchedule:
    """Build a schedule by registered name or import path with its parameters."""
    cls = resolve_schedule(name)
    try:
        return cls(**params)
    except TypeError as e:
        raise ValueError(f"bad parameters for anchor mode {name!r}: {e}") from None


def polyak_(anchor: Iterable[torch.Tensor], policy: Iterable[torch.Tensor], rate: float) -> None:
    """In place: ``anchor <- (1 - rate) * anchor + rate * policy`` for paired tensors."""
    import torch

    if rate <= 0.0:
        return
    with torch.no_grad():
        for a, p in zip(anchor, policy, strict=True):
            if rate >= 1.0:
                a.copy_(p)
            else:
                a.lerp_(p, rate)
