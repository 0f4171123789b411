"""A trial pack under a real ``tune.Tuner``: one trial, the placement group of its solo trials
(an env runner in a bundle of its own), K members whose results are shaped exactly as solo
GridTrainable trials' results."""

from __future__ import annotations

import pytest
import torch
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
    "train": {"train_batch_size": 128, "minibatch_size": 32, "num_epochs": 1},
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
        # what a solo trial's result holds: the curated metrics present, timesteps_total,
        # training_iteration and done (Tune's, on a solo trial's result)
        solo_keys = {key for key in solo if key in CURATED} | {"timesteps_total", "training_iteration", "done"}
        assert {EVAL_WINMASS, TRAIN_RETURN, ENV_STEPS} <= solo_keys and solo["done"] is True
        assert set(member) == solo_keys, (k, set(member) ^ solo_keys)
        assert member["done"] is True  # it ended at its budget
        assert member[ENV_STEPS] == solo[ENV_STEPS]  # each member ran its solo trial's budget
        assert member["timesteps_total"] == solo["timesteps_total"]
        assert member["training_iteration"] == 2
    assert pack.metrics[ENV_STEPS] == 3 * members[0][ENV_STEPS]
    assert len({m[EVAL_WINMASS] for m in members}) == 3  # the members' own policies
    assert pack.checkpoint is not None


def _member_state(trainable, k: int) -> dict:
    """Member ``k``'s whole training state in a pack trainable: its parameters and anchor, Adam
    moments and steps, anchor schedule, shuffle generator, env-step count and observation filter."""
    from adpo_ray.rllib import _ray_private as rp
    from adpo_ray.rllib.packed import PackedMeanStdFilter

    lrn = rp.local_learner(trainable.algo.learner_group)
    module, opt = lrn.pack_module, lrn.optimizer
    (filt,) = [c for c in rp.env_to_module(trainable.algo.env_runner_group.local_env_runner).connectors
               if isinstance(c, PackedMeanStdFilter)]
    return {"theta": module.theta[k].detach().clone(), "anchor": module.anchor[k].clone(),
            "exp_avg": opt.exp_avg[k].clone(), "exp_avg_sq": opt.exp_avg_sq[k].clone(), "steps": float(opt.steps[k]),
            "schedule": lrn.schedules[k].state_dict(), "shuffle": lrn.shuffles[k].get_state().clone(),
            "env_steps": int(lrn.member_env_steps[k]),
            "filter": PackedMeanStdFilter.member_states(filt.get_state())[k]}


def _assert_same_state(got: dict, want: dict) -> None:
    import numpy as np
    import torch

    for name in ("theta", "anchor", "exp_avg", "exp_avg_sq", "shuffle"):
        assert torch.equal(got[name], want[name]), name
    assert (got["steps"], got["schedule"], got["env_steps"]) == (want["steps"], want["schedule"], want["env_steps"])
    np.testing.assert_equal(got["filter"], want["filter"])


def test_each_member_stops_at_its_own_env_step_budget(ray_local, tmp_path):
    """Hopper's members sample a few env steps more or fewer than each other (episodes end at
    different steps), so with an env-step budget they reach it at different iterations. Each
    member ends on the iteration its own steps reach the budget, as its solo trial does: ``done``
    in its result, with a clean evaluation; from then on its result is repeated unchanged and its
    whole training state stays as it was (parameters, EMA anchor, Adam, schedule, shuffles,
    observation filter), also after a restore, while the others train on; the pack ends with its
    last member."""
    from adpo_ray.metrics import EVAL_RETURN

    spec = {"name": "pack-budget", "environments": ["Hopper-v5"], "scenarios": ["clean"], "seeds": [0, 1, 2],
            "algorithms": ["adpo"], "anchors": {"modes": ["ema"]}, "hidden_sizes": [16],
            "budget": {"env_steps": 10**6, "checkpoint_every": 1}, "evaluation": {"interval": 2, "episodes": 1},
            "train": {"train_batch_size": 256, "minibatch_size": 64, "num_epochs": 1},
            "resources": {"num_env_runners": 0, "num_envs_per_env_runner": 1}}
    trials = parse_spec(spec).trials()
    assert len(trials) == 3

    def trainable(budget: int) -> PackTrainable:
        dump = parse_spec({**spec, "budget": {"env_steps": budget, "checkpoint_every": 1}}).model_dump(
            mode="json", by_alias=True)
        return PackTrainable(config={"spec": dump, "trials": [t.as_dict() for t in trials]})

    probe = trainable(10**6)
    try:
        first = [m[ENV_STEPS] for m in probe.train()[MEMBERS]]
    finally:
        probe.stop()
    assert min(first) < max(first), first  # the members' steps differ (else nothing stops early)
    budget = max(first)
    early = [k for k, n in enumerate(first) if n >= budget]
    late = [k for k in range(3) if k not in early]

    pack = trainable(budget)
    restored = None
    try:
        r1 = pack.train()
        assert [m[ENV_STEPS] for m in r1[MEMBERS]] == first  # seeded: the probe's first iteration again
        assert not r1.get("done")
        for k in early:  # ended, with a clean evaluation (the schedule's is at iteration 2)
            assert r1[MEMBERS][k].get("done") is True and EVAL_RETURN in r1[MEMBERS][k]
        for k in late:
            assert not r1[MEMBERS][k].get("done") and EVAL_RETURN not in r1[MEMBERS][k]
        ended = {k: _member_state(pack, k) for k in early}
        before = {k: _member_state(pack, k) for k in late}
        saved = pack.save(str(tmp_path / "ckpt"))

        results = [r1]
        while not results[-1].get("done"):
            assert len(results) < 6, "the pack should end once its last member reaches the budget"
            results.append(pack.train())
            for k in early:
                assert results[-1][MEMBERS][k] == r1[MEMBERS][k]  # repeated unchanged
                _assert_same_state(_member_state(pack, k), ended[k])
        for k in late:  # each ended on the first iteration its own steps reached the budget
            steps = [r[MEMBERS][k][ENV_STEPS] for r in results]
            stop = next(i for i, n in enumerate(steps) if n >= budget)
            assert results[stop][MEMBERS][k]["done"] is True and EVAL_RETURN in results[stop][MEMBERS][k]
            assert results[-1][MEMBERS][k] == results[stop][MEMBERS][k]
            assert not torch.equal(_member_state(pack, k)["theta"], before[k]["theta"])  # it trained on

        # restored from the checkpoint of iteration 1, the ended members stay frozen
        restored = trainable(budget)
        restored.restore(saved)
        again = restored.train()
        for k in early:
            assert again[MEMBERS][k] == r1[MEMBERS][k]
            _assert_same_state(_member_state(restored, k), ended[k])
    finally:
        pack.stop()
        if restored is not None:
            restored.stop()
