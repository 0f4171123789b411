"""A trial pack under a real ``tune.Tuner``: one trial, the placement group of its solo trials
(an env runner in a bundle of its own), K members whose results are shaped exactly as solo
GridTrainable trials' results."""

from __future__ import annotations

import pytest
from ray import tune

from adpo_ray.metrics import CURATED, ENV_STEPS, EVAL_WINMASS, TRAIN_RETURN
from adpo_ray.orchestration.pack_trainable import MEMBERS, PackTrainable
from adpo_ray.orchestration.trainable import GridTrainable
from adpo_ray.spec import parse_spec

pytestmark = pytest.mark.slow

SPEC = {
    "name": "pack-tune",
    "environments": ["PreferenceBandit"],
    "scenarios": ["clean", "flip-high"],
    "seeds": [0, 1],
    "anchors": {"modes": ["fixed", "dynamic"]},
    "budget": {"iterations": 2, "checkpoint_every": 1},
    "adpo": {"train_batch_size": 128, "minibatch_size": 32, "num_epochs": 1},
    # an env runner of its own: RLlib places it in bundle 1 of the trial's placement group
    "resources": {"num_env_runners": 1, "num_envs_per_env_runner": 2},
}


def fit(trainable, param_space, tmp_path, name):
    tuner = tune.Tuner(trainable, param_space=param_space,
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name=name, verbose=0))
    grid = tuner.fit()
    assert not grid.errors, grid.errors
    return [grid[i] for i in range(len(grid))]


def test_pack_under_tune_reports_each_member_as_a_solo_trial(ray_local, tmp_path):
    spec = parse_spec(SPEC)
    trials = [t for t in spec.trials() if t.algorithm == "adpo"][:3]
    assert len({(t.scenario, t.anchor_mode, t.seed) for t in trials}) == 3
    dump = spec.model_dump(mode="json", by_alias=True)
    space = {"spec": dump, "trials": [t.as_dict() for t in trials]}
    request = PackTrainable.default_resource_request(space)
    solo = GridTrainable.default_resource_request({"spec": dump, "trial": trials[0].as_dict()})
    assert request.bundles == solo.bundles and len(request.bundles) == 2  # main + learner, the runner
    assert request.strategy == solo.strategy

    (pack,) = fit(PackTrainable, space, tmp_path, "pack")
    # one solo trial per anchor mode is the reference for the members of that mode (the keys a
    # result holds depend on the mode; every member runs the same budget); what tells the members
    # apart, their own policies, is checked on the pack alone
    by_mode = {t.anchor_mode: t for t in trials}
    assert len(by_mode) == 2
    solos = fit(GridTrainable, {"spec": dump, "trial": tune.grid_search([t.as_dict() for t in by_mode.values()])},
                tmp_path, "solo")
    solos = {r.config["trial"]["anchor_mode"]: r.metrics for r in solos}

    assert pack.metrics["training_iteration"] == 2
    members = pack.metrics[MEMBERS]
    assert len(members) == 3
    for k, (trial, member) in enumerate(zip(trials, members, strict=True)):
        solo = solos[trial.anchor_mode]
        assert solo["training_iteration"] == 2
        # what a solo trial's result holds: the curated metrics present, timesteps_total and
        # training_iteration (Tune's, on a solo trial's result)
        solo_keys = {key for key in solo if key in CURATED} | {"timesteps_total", "training_iteration"}
        assert {EVAL_WINMASS, TRAIN_RETURN, ENV_STEPS} <= solo_keys
        assert set(member) == solo_keys, (k, set(member) ^ solo_keys)
        assert member[ENV_STEPS] == solo[ENV_STEPS]  # each member ran its solo trial's budget
        assert member["timesteps_total"] == solo["timesteps_total"]
        assert member["training_iteration"] == 2
    assert pack.metrics[ENV_STEPS] == 3 * members[0][ENV_STEPS]
    assert len({m[EVAL_WINMASS] for m in members}) == 3  # the members' own policies
    assert pack.checkpoint is not None
