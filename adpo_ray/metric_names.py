"""Metric naming shared by tracking, summaries and reports (no Ray import)."""

from __future__ import annotations

#: The headline metric per environment kind (what summary tables and reports compare).
HEADLINE = {"bandit": "eval/winmass", "mujoco": "eval/return_mean"}

#: Result keys kept as metrics besides the curated ``group/name`` ones.
PLAIN_METRICS = ("env_steps", "training_iteration")


def is_metric_key(key: str) -> bool:
    """A curated metric (``eval/winmass``, ``loss/vf``...) or one of :data:`PLAIN_METRICS`."""
    return "/" in key or key in PLAIN_METRICS
