"""The curated metrics: one list, read out of RLlib's ~300-key result."""

from __future__ import annotations

import math
from typing import Any

from ray.rllib.core import DEFAULT_MODULE_ID

#: Curated metric name -> path in an RLlib result (first path found wins).
CURATED: dict[str, tuple[tuple[str, ...], ...]] = {
    # distillation students count the dataset states they trained on
    "env_steps": (("distill", "states_trained"), ("num_env_steps_sampled_lifetime",),
                  ("env_runners", "num_env_steps_sampled_lifetime")),
    "eval/winmass": (("eval", "winmass"),),
    "eval/return_mean": (("evaluation", "env_runners", "episode_return_mean"), ("distill", "eval_return_mean")),
    "eval/return_over_teacher": (("distill", "eval_return_over_teacher"),),
    "distill/kl_teacher": (("distill", "kl_teacher"),),
    "distill/train_kl_teacher": (("learners", DEFAULT_MODULE_ID, "distill/train_kl_teacher"),),
    "loss/distill": (("learners", DEFAULT_MODULE_ID, "loss/distill"),),
    "train/return_mean": (("env_runners", "train_clean_return"),),
    "train/return_noisy_mean": (("env_runners", "episode_return_mean"),),
    "adpo/anchor_kl": (("learners", DEFAULT_MODULE_ID, "adpo/anchor_kl"),),
    "adpo/anchor_refreshes": (("learners", DEFAULT_MODULE_ID, "adpo/anchor_refreshes"),),
    "adpo/last_refresh_step": (("learners", DEFAULT_MODULE_ID, "adpo/last_refresh_step"),),
    "loss/adpo": (("learners", DEFAULT_MODULE_ID, "loss/adpo"),),
    "loss/policy": (("learners", DEFAULT_MODULE_ID, "policy_loss"),),
    "loss/vf": (("learners", DEFAULT_MODULE_ID, "vf_loss"),),
    "policy/entropy": (("learners", DEFAULT_MODULE_ID, "entropy"), ("learners", DEFAULT_MODULE_ID, "policy/entropy")),
    "time/sample_s": (("timers", "env_runner_sampling_timer"),),
    "time/learn_s": (("timers", "learner_update_timer"),),
}


def _get(result: dict[str, Any], path: tuple[str, ...]) -> Any:
    cur: Any = result
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return cur


def curate(result: dict[str, Any]) -> dict[str, float]:
    """The curated metrics present in an RLlib result, as finite floats."""
    out: dict[str, float] = {}
    for name, paths in CURATED.items():
        for path in paths:
            value = _get(result, path)
            if value is None:
                continue
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                out[name] = value
                break
    return out
