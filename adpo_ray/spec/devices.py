"""Where a learner pays: measured RLlib learner costs per minibatch, CPU cores vs one GPU, and
the rule that puts a trial's learner on a GPU (:func:`learner_gpus`).

It sits with the spec, not with the launch's planning, because a trial's knobs need the rule at
the trial's start: a search samples its sweep point (e.g. ``train.minibatch_size`` from a
distribution) only when Tune creates the trial, long after the launch planned, and the learner's
device depends on that point. The launch decides the GPU share (``resources.num_gpus_per_learner``,
:func:`adpo_ray.orchestration.planning.resolve_learner_gpus`); this rule decides, per trial,
whether its learner takes it.

Each row is one measurement of ``bench/learner.py --device cpu|cuda --hidden H --minibatch M`` on
an NVIDIA H100 machine with 16 CPU cores (HalfCheetah-v5, 10 epochs, this project's factory,
RLlib's learner; README "GPUs"). RLlib's GPU learner pays a fixed 12-17 ms per minibatch in
Python and host-device syncs, so a GPU wins only where the arithmetic is large.
"""

from __future__ import annotations

import math

from adpo_ray.spec.sections import Resources

#: (hidden size, minibatch size) -> (CPU ms, GPU ms) per minibatch update.
LEARNER_MS: dict[tuple[int, int], tuple[float, float]] = {
    (64, 64): (6.0, 13.3),
    (256, 64): (16.0, 15.0),
    (64, 1024): (11.5, 14.0),
    (256, 1024): (11.5, 14.0),
    (1024, 1024): (29.0, 13.2),
}
#: A GPU learner is chosen only for a clear win: CPU time over GPU time at least this.
GPU_SPEEDUP = 1.25


def nearest_measurement(hidden: int, minibatch: int) -> tuple[int, int]:
    """The measured (hidden, minibatch) closest on a log2 scale (both axes weigh alike)."""
    def dist(point: tuple[int, int]) -> float:
        return math.hypot(math.log2(point[0] / hidden), math.log2(point[1] / minibatch))

    return min(LEARNER_MS, key=dist)


def gpu_pays(hidden: int, minibatch: int) -> bool:
    """Whether a GPU learner was measured clearly faster than CPU cores at the nearest measured
    network and minibatch size (:data:`LEARNER_MS`)."""
    cpu_ms, gpu_ms = LEARNER_MS[nearest_measurement(hidden, minibatch)]
    return cpu_ms >= GPU_SPEEDUP * gpu_ms


def learner_gpus(res: Resources, hidden_size: int, minibatch: int) -> float:
    """The GPU share of a trial's learner (0.0: on CPU) by ``resources.learner_device``: ``cpu``
    never; ``gpu`` always (the launch's share, or a whole GPU); ``auto`` where a GPU was measured
    clearly faster at the trial's network and minibatch size (:func:`gpu_pays`) and the launch
    found GPUs (``num_gpus_per_learner`` > 0)."""
    if res.learner_device == "cpu":
        return 0.0
    if res.learner_device == "gpu":
        return res.num_gpus_per_learner or 1.0
    return res.num_gpus_per_learner if res.num_gpus_per_learner and gpu_pays(hidden_size, minibatch) else 0.0
