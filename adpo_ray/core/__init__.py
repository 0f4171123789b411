"""Pure ADPO math and data: losses, targets, anchor schedules, noise scenarios.

No Ray import anywhere under this package (checked by the tests). The names below load their
module on first use (PEP 562): ``adpo_ray.core.choices`` and ``adpo_ray.core.noise`` import
without torch, so the spec and the CLI do too."""

from __future__ import annotations

import importlib
from typing import Any

#: Each public name and the module under this package that defines it.
_HOMES = {
    "SCHEDULES": "anchors",
    "AnchorSchedule": "anchors",
    "make_schedule": "anchors",
    "polyak_": "anchors",
    "register_schedule": "anchors",
    "resolve_schedule": "anchors",
    "DISTILL_METHODS": "choices",
    "bc_loss": "distill",
    "diag_gaussian_kl": "distill",
    "diag_gaussian_logp": "distill",
    "kd_loss": "distill",
    "ndcg": "distill",
    "rank_grades": "distill",
    "LOSSES": "choices",
    "TAU_MIN": "choices",
    "adpo_loss": "losses",
    "dpo_loss": "losses",
    "listwise_loss": "losses",
    "pairwise_loss": "losses",
    "CLEAN": "noise",
    "SCENARIOS": "noise",
    "SEVERITY_TABLE": "noise",
    "TWELVE": "noise",
    "Scenario": "noise",
    "get_scenario": "noise",
    "TARGETS": "choices",
    "kde_logits": "targets",
    "list_target": "targets",
    "pair_target": "targets",
}

__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
