"""Where a learner pays: measured RLlib learner costs per minibatch, CPU cores vs one GPU.

Each row is one measurement of ``bench/learner.py --device cpu|cuda --hidden H --minibatch M`` on
an NVIDIA H100 machine with 16 CPU cores (HalfCheetah-v5, 10 epochs, this project's factory,
RLlib's learner; README "GPUs"). RLlib's GPU learner pays a fixed 12-17 ms per minibatch in
Python and host-device syncs, so a GPU wins only where the arithmetic is large.
"""

from __future__ import annotations

import math

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
