"""The names an experiment spec chooses among in the ADPO math, and the defaults every layer
reads, without importing torch: the spec and the CLI commands that train nothing load without it
(about 2.5 s of CPU per process; a grid's driver imports it anyway, through RLlib). The math
modules re-export them.

* :data:`LOSSES`: ``adpo.loss`` (:func:`adpo_ray.core.losses.adpo_loss`);
* :data:`TARGETS`: ``adpo.target`` (:func:`adpo_ray.core.targets.list_target`);
* :data:`DISTILL_METHODS`: the student methods of a distillation grid;
* :data:`TAU_MIN`: the adaptive temperature's floor by default (``adpo.tau_min``).
"""

from __future__ import annotations

__all__ = ["LOSSES", "TARGETS", "DISTILL_METHODS", "TAU_MIN"]

#: ``adpo.loss``: the listwise loss (softmax cross-entropy), Plackett-Luce (ListMLE), the anchored
#: pairwise loss, and DPO (hard pairs).
LOSSES: tuple[str, ...] = ("listwise", "plackett_luce", "pairwise", "dpo")

#: ``adpo.target``: how the signal becomes the target distribution over a list.
TARGETS: tuple[str, ...] = ("softmax", "kde", "hard")

#: Student methods of a distillation grid (``adpo`` comes with an anchor mode).
DISTILL_METHODS: tuple[str, ...] = ("adpo", "kd", "bc")

#: The adaptive temperature's floor by default (``tau_min``): every layer that sets it reads this.
TAU_MIN = 0.05
