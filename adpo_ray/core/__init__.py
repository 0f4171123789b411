"""Pure ADPO math and data: losses, targets, anchor schedules, noise scenarios.

No Ray import anywhere under this package (checked by the tests)."""

from adpo_ray.core.anchors import (
    SCHEDULES,
    AnchorSchedule,
    make_schedule,
    polyak_,
    register_schedule,
    resolve_schedule,
)
from adpo_ray.core.distill import (
    DISTILL_METHODS,
    bc_loss,
    diag_gaussian_kl,
    diag_gaussian_logp,
    kd_loss,
    ndcg,
    rank_grades,
)
from adpo_ray.core.losses import LOSSES, adpo_loss, dpo_loss, listwise_loss, pairwise_loss
from adpo_ray.core.noise import CLEAN, SCENARIOS, SEVERITY_TABLE, TWELVE, Scenario, get_scenario
from adpo_ray.core.targets import TARGETS, kde_logits, list_target, pair_target

__all__ = [
    "SCHEDULES",
    "AnchorSchedule",
    "make_schedule",
    "polyak_",
    "register_schedule",
    "resolve_schedule",
    "DISTILL_METHODS",
    "bc_loss",
    "diag_gaussian_kl",
    "diag_gaussian_logp",
    "kd_loss",
    "ndcg",
    "rank_grades",
    "LOSSES",
    "adpo_loss",
    "dpo_loss",
    "listwise_loss",
    "pairwise_loss",
    "CLEAN",
    "SCENARIOS",
    "SEVERITY_TABLE",
    "TWELVE",
    "Scenario",
    "get_scenario",
    "TARGETS",
    "kde_logits",
    "list_target",
    "pair_target",
]
