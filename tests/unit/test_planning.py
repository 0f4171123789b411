"""Pure orchestration helpers: trial plans, fit checks, concurrency, run tags, dataset chunks.
No Ray is started (RLlib configs are built to size the trials, not run)."""

from __future__ import annotations

import pytest

from adpo_ray.orchestration.datasets import chunk_sizes
from adpo_ray.orchestration.planning import plan_trials, trial_env_steps
from adpo_ray.orchestration.tracking import run_tags
from adpo_ray.spec import TrialSpec, parse_spec

SPEC = {
    "name": "plan",
    "environments": ["PreferenceBandit", "Hopper-v5"],
    "scenarios": ["clean", "gaussian-high"],
    "algorithms": ["adpo", "ppo"],
    "budget": {"iterations": 10},
    "env_overrides": {"Hopper-v5": {"budget": {"env_steps": 3000}, "train": {"train_batch_size": 1024}}},
}
T = TrialSpec("Hopper-v5", "flip-high", "adpo", "dynamic", 128, 7)


def test_plan_trials_bundles_and_budgets():
    spec = parse_spec({**SPEC, "resources": {"pack": 1}})  # a plan per trial
    plans = plan_trials(spec)
    assert [p.trial for p in plans] == spec.trials()
    for p in plans:
        assert p.required == {"CPU": 1.0}  # no env runners: the trial's main process only
        # bandit: 10 iterations x 512 steps; Hopper: 10 x 1024 capped by its 3,000 env steps
        assert p.env_steps == (5120 if p.trial.env == "PreferenceBandit" else 3000)


def test_plan_trials_count_env_runners_and_gpu_learners():
    spec = parse_spec({**SPEC, "resources": {"num_env_runners": 2, "num_learners": 1, "num_gpus_per_learner": 0.25}})
    p = plan_trials(spec)[0]
    # main + 2 env runners + 1 learner: hidden 64 is no size where a GPU learner pays (auto)
    assert p.bundles == [{"CPU": 1.0}] * 4 and p.required == {"CPU": 4.0}
    p = plan_trials(parse_spec({**SPEC, "resources": {"num_env_runners": 2, "num_learners": 1,
                                                      "learner_device": "gpu", "num_gpus_per_learner": 0.25}}))[0]
    # learner_device gpu: the learner takes its GPU share and no CPU of its own
    assert p.bundles == [{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0}, {"GPU": 0.25}]
    assert p.required == {"CPU": 3.0, "GPU": 0.25}


def test_trial_env_steps_whichever_limit_first():
    spec = parse_spec({**SPEC, "budget": {"iterations": 2, "env_steps": 700}})
    knobs = spec.knobs(TrialSpec("PreferenceBandit", "clean", "adpo", "fixed", 64, 0))
    assert trial_env_steps(knobs) == 700
    spec = parse_spec({**SPEC, "budget": {"iterations": 2}})
    assert trial_env_steps(spec.knobs(TrialSpec("PreferenceBandit", "clean", "adpo", "fixed", 64, 0))) == 1024


def test_run_tags_name_every_coordinate():
    tags = run_tags(T, "grid-a")
    assert tags == {
        "trial": T.tag, "grid": "grid-a", "env": "Hopper-v5", "scenario": "flip-high", "noise_type": "flip",
        "severity": "high", "algorithm": "adpo", "anchor_mode": "dynamic", "method": "adpo-dynamic",
        "hidden_size": "128", "seed": "7",
    }
    assert T.tag == "Hopper-v5_flip-high_adpo-dynamic_h128_s7"


@pytest.mark.parametrize("total,chunks,expected", [
    (10, 3, [4, 3, 3]), (9, 3, [3, 3, 3]), (2, 4, [1, 1]), (5, 1, [5]), (7, 0, [7]),
])
def test_chunk_sizes(total, chunks, expected):
    assert chunk_sizes(total, chunks) == expected
    assert sum(chunk_sizes(total, chunks)) == total
