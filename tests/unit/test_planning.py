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


def test_an_env_without_measured_figures_is_priced_as_the_slowest_of_its_kind(monkeypatch):
    from adpo_ray.envs import ENVIRONMENTS
    from adpo_ray.orchestration.planning import (
        PACK_SPEEDUP,
        STARTUP_S,
        THROUGHPUT,
        env_figure,
        pack_speedup,
    )

    monkeypatch.setitem(ENVIRONMENTS, "Walker2d-v5", {"kind": "mujoco", "list_source": "batch"})
    assert env_figure(THROUGHPUT, "Hopper-v5") == (THROUGHPUT["Hopper-v5"], None)
    slowest = min(("HalfCheetah-v5", "Hopper-v5"), key=THROUGHPUT.__getitem__)
    assert env_figure(THROUGHPUT, "Walker2d-v5") == (THROUGHPUT[slowest], f"Walker2d-v5: not measured, priced as {slowest}")
    # its packs are priced as that env's packs: the speed-up is over that env's solo figure
    assert pack_speedup("Walker2d-v5", 256, 16) == PACK_SPEEDUP[slowest][256][16]
    longest = max(("HalfCheetah-v5", "Hopper-v5"), key=STARTUP_S.__getitem__)
    assert env_figure(STARTUP_S, "Walker2d-v5", slowest=max)[0] == STARTUP_S[longest]
    # an env of no measured kind: the slowest of every measured env
    assert env_figure({"PreferenceBandit": 5.0, "Hopper-v5": 2.0}, "Unlisted-v0") == (2.0, "Unlisted-v0: not measured, priced as Hopper-v5")


def test_dry_run_of_an_env_added_to_the_list_prices_it_and_says_so(tmp_path):
    """docs/extending.md: add an env to ENVIRONMENTS (one list; the spec reads it) and dry-run it
    first. Here in a fresh process, the env added before the spec is imported."""
    import subprocess
    import sys

    import yaml

    spec = tmp_path / "walker.yaml"
    spec.write_text(yaml.safe_dump({"name": "walker", "environments": ["Walker2d-v5"], "scenarios": ["gaussian-low"],
                                    "algorithms": ["adpo"], "budget": {"env_steps": 20000}}))
    code = (
        "import sys; from adpo_ray.envs import ENVIRONMENTS, mujoco; "
        "ENVIRONMENTS['Walker2d-v5'] = {'kind': 'mujoco', 'list_source': 'batch'}; "
        "mujoco.REWARD_SCALE['Walker2d-v5'] = 1.0; from adpo_ray.cli import main; "
        f"sys.exit(main(['grid', '--config', '{spec}', '--dry-run', '--storage-path', '{tmp_path / 'rr'}']))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "Walker2d-v5: not measured, priced as " in res.stdout and "estimated wall time:" in res.stdout
    assert not (tmp_path / "rr").exists()
