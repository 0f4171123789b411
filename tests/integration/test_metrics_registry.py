"""Every key that this project's RLlib parts (learners, callbacks, the distillation algorithm)
log into an RLlib result is the source of a curated metric or explicitly excluded, so nothing a
learner measures silently misses MLflow; and every curated metric is found in a real result."""

from __future__ import annotations

import pytest
from ray.rllib.core import DEFAULT_MODULE_ID

from adpo_ray import metrics
from adpo_ray.rllib.factory import build_algo_config, build_distill_config
from adpo_ray.spec import TrialSpec, parse_spec

from ..helpers.distill import DISTILL, synthetic_dataset
from ..helpers.grid import BANDIT_ENVS

pytestmark = pytest.mark.slow

ONLINE = {
    "name": "registry",
    "environments": ["PreferenceBandit", "Hopper-v5"],
    "algorithms": ["adpo", "ppo", "ppo_kl"],
    "budget": {"iterations": 2},
    "train": {"train_batch_size": 256, "minibatch_size": 128, "num_epochs": 1},
    "evaluation": {"interval": 1, "episodes": 1},
    "resources": {**BANDIT_ENVS},
}
#: Groups of an RLlib result where our parts log; RLlib's own keys elsewhere are not ours.
OURS = (("learners", DEFAULT_MODULE_ID), ("env_runners",), (metrics.EVAL_GROUP,), (metrics.DISTILL_GROUP,))


def paths(result: dict, prefix: tuple = ()) -> set[tuple[str, ...]]:
    out = set()
    for key, value in result.items():
        if isinstance(value, dict):
            out |= paths(value, (*prefix, key))
        else:
            out.add((*prefix, key))
    return out


def train(config, iterations: int = 2) -> dict:
    algo = config.build_algo()
    try:
        return [algo.train() for _ in range(iterations)][-1]
    finally:
        algo.stop()


def test_module_id_matches_rllib():
    assert metrics.MODULE == DEFAULT_MODULE_ID


def test_every_key_we_log_is_curated_or_excluded(ray_local):
    online = parse_spec(ONLINE)
    offline = parse_spec({**DISTILL, "budget": {"iterations": 2}})

    def online_result(env, algorithm, mode):
        return train(build_algo_config(online.knobs(TrialSpec(env, "gaussian-high", algorithm, mode, 32, 0))))

    def student_result(algorithm, mode):
        knobs = offline.knobs(TrialSpec("Hopper-v5", "clean", algorithm, mode, 32, 0))
        norm = {"mean": [0.0] * 11, "std": [1.0] * 11, "clip": 10.0}
        return train(build_distill_config(knobs, dataset=synthetic_dataset(), obs_norm=norm, teacher_return=50.0))

    # RLlib's own keys: stock PPO on the same envs, through the same factory
    stock = paths(online_result("PreferenceBandit", "ppo", "none")) | paths(online_result("Hopper-v5", "ppo", "none"))
    ours = {
        "adpo bandit": online_result("PreferenceBandit", "adpo", "kl_triggered"),
        "adpo hopper": online_result("Hopper-v5", "adpo", "dynamic"),
        "ppo_kl bandit": online_result("PreferenceBandit", "ppo_kl", "none"),
        "adpo student": student_result("adpo", "dynamic"),
        "kd student": student_result("kd", "none"),
    }
    sources, excluded = metrics.source_paths(), set(metrics.EXCLUDED)
    found: set[str] = set()
    for name, result in ours.items():
        logged = {p for p in paths(result) - stock if any(p[:len(g)] == g for g in OURS)}
        stray = logged - sources - excluded
        assert not stray, f"{name}: logged but neither curated nor excluded in adpo_ray.metrics: {sorted(stray)}"
        found |= set(metrics.curate(result))
    found |= set(metrics.curate(online_result("PreferenceBandit", "ppo", "none")))
    # every curated metric is produced by some method (the registry holds no dead names)
    assert set(metrics.CURATED) <= found, set(metrics.CURATED) - found
    # the refresh KL reaches the curated result (it used to be logged and dropped)
    assert metrics.LAST_REFRESH_KL in metrics.curate(ours["adpo hopper"])
