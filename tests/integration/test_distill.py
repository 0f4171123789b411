"""Offline distillation on real RLlib, Tune and MLflow: each student method trains and logs its
metrics, KD closes the KL to its teacher, and a second launch reuses the teacher and datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from adpo_ray.core.distill import random_order_ndcg
from adpo_ray.metrics import curate
from adpo_ray.orchestration.datasets import DATASET_TAG_PREFIX
from adpo_ray.orchestration.launch import run_grid
from adpo_ray.orchestration.policies import TEACHER_TAG
from adpo_ray.report.build import build_report
from adpo_ray.report.data import load_mlflow
from adpo_ray.rllib._ray_private import local_learner
from adpo_ray.rllib.factory import build_distill_config
from adpo_ray.spec import TrialSpec, dataset_key, parse_spec, teacher_key

from ..helpers.distill import DISTILL, synthetic_dataset
from ..helpers.grid import new_store, options

pytestmark = pytest.mark.slow


def heldout_ndcg(algo, data) -> float:
    """The mean NDCG of the student's ranking of the held-out candidates against their clean
    signal, from its module's Gaussian and the core functions."""
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.core.columns import Columns

    from adpo_ray.core.distill import diag_gaussian_logp, ndcg

    held = data["heldout"]
    module = local_learner(algo.learner_group).module[DEFAULT_MODULE_ID]
    with torch.no_grad():
        out = module.forward_inference({Columns.OBS: torch.as_tensor(data["obs"][held])})[Columns.ACTION_DIST_INPUTS]
        mean, log_std = out.chunk(2, dim=-1)
        logp = diag_gaussian_logp(torch.as_tensor(data["actions"][held]), mean[:, None], log_std[:, None])
        return float(ndcg(logp, torch.as_tensor(data["rewards_clean"][held])).nanmean())


@pytest.mark.parametrize("algorithm,anchor", [("adpo", "fixed"), ("adpo", "dynamic"), ("kd", "none"), ("bc", "none")])
def test_student_trains_and_logs(ray_local, algorithm, anchor):
    spec = parse_spec({**DISTILL, "budget": {"iterations": 3}, "train": {"lr": 0.003}})
    trial = TrialSpec("Hopper-v5", "clean", algorithm, anchor, 32, 0)
    norm = {"mean": [0.0] * 11, "std": [1.0] * 11, "clip": 10.0}
    data = synthetic_dataset()
    algo = build_distill_config(spec.knobs(trial), dataset=data, obs_norm=norm, teacher_return=50.0).build_algo()
    try:
        results = [curate(algo.train()) for _ in range(3)]
        # every student logs the NDCG of its own ranking of the held-out candidates (clean signal)
        assert results[-1]["distill/ndcg"] == pytest.approx(heldout_ndcg(algo, data), abs=1e-6)
        # beside it, what a random order of the same held-out lists scores, every iteration
        rewards = torch.as_tensor(data["rewards_clean"][data["heldout"]])
        level = float(random_order_ndcg(rewards).nanmean())
        assert 0.5 < level < 1.0 and all(r["distill/ndcg_random"] == pytest.approx(level, abs=1e-12) for r in results)
    finally:
        algo.stop()
    for i, r in enumerate(results):
        for key in ("distill/kl_teacher", "loss/distill", "policy/entropy"):
            assert np.isfinite(r[key]), (key, r)
        assert 0.0 <= r["distill/ndcg"] <= 1.0
        assert r["env_steps"] == (i + 1) * 128  # dataset states trained on
    # evaluated at the interval (2) and at the last iteration (3), not before
    assert "eval/return_mean" not in results[0] and "eval/return_mean" in results[1]
    assert algo.last_eval_iteration == 3
    assert results[2]["eval/return_over_teacher"] == pytest.approx(results[2]["eval/return_mean"] / 50.0)
    kl = [r["distill/kl_teacher"] for r in results]
    if algorithm == "kd":
        assert kl[0] > kl[1] > kl[2] and kl[2] < 0.9 * kl[0], kl  # KD closes the gap to its teacher
    if algorithm == "adpo" and anchor == "dynamic":
        assert results[-1]["adpo/anchor_refreshes"] == 3


@pytest.mark.parametrize("mode,params,moves", [
    ("dynamic", {"every": 2}, lambda i, prev, pol: pol if i % 2 == 0 else prev),
    ("ema", {"rate": 0.25}, lambda i, prev, pol: 0.75 * prev + 0.25 * pol),
    ("kl_triggered", {"threshold": 1e-9, "window": 1}, lambda i, prev, pol: pol),  # any KL triggers
    ("kl_triggered", {"threshold": 1e9, "window": 1}, lambda i, prev, pol: prev),  # none does
    ("adpo_ray.core.anchors:EMA", {"rate": 0.5}, lambda i, prev, pol: 0.5 * prev + 0.5 * pol),  # import path
])
def test_self_anchored_student_moves_its_anchor_by_its_schedule(ray_local, mode, params, moves):
    """A self-anchored student's anchor starts as a copy of the student and, after each
    iteration, is where its mode's schedule puts it."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    spec = parse_spec({**DISTILL, "anchors": {"modes": [mode], "params": {mode: params}},
                       "budget": {"iterations": 3}, "train": {"lr": 0.003}})
    trial = TrialSpec("Hopper-v5", "clean", "adpo", mode, 32, 0)
    assert trial.method == f"adpo-{mode}"
    norm = {"mean": [0.0] * 11, "std": [1.0] * 11, "clip": 10.0}
    algo = build_distill_config(spec.knobs(trial), dataset=synthetic_dataset(), obs_norm=norm).build_algo()
    try:
        module = local_learner(algo.learner_group).module[DEFAULT_MODULE_ID]

        def params_of(ps):
            return torch.cat([p.detach().flatten() for p in ps]).clone()

        anchor = params_of(module.anchor_parameters())
        assert torch.equal(anchor, params_of(module.policy_parameters()))  # a copy of the student
        refreshes = 0
        for i in range(1, 4):
            r = curate(algo.train())
            policy, now = params_of(module.policy_parameters()), params_of(module.anchor_parameters())
            expected = moves(i, anchor, policy)
            torch.testing.assert_close(now, expected, rtol=1e-5, atol=1e-6)
            refreshes += int(not torch.equal(expected, anchor))
            assert r["adpo/anchor_refreshes"] == refreshes
            anchor = now
    finally:
        algo.stop()


def test_fixed_anchor_student_is_anchored_to_the_teacher(ray_local):
    """``fixed``: no anchor copy and no schedule; the anchor scores are the teacher's stored
    log-probs, before and after training."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    spec = parse_spec({**DISTILL, "anchors": {"modes": ["fixed"]}, "budget": {"iterations": 2}})
    trial = TrialSpec("Hopper-v5", "clean", "adpo", "fixed", 32, 0)
    norm = {"mean": [0.0] * 11, "std": [1.0] * 11, "clip": 10.0}
    data = synthetic_dataset()
    algo = build_distill_config(spec.knobs(trial), dataset=data, obs_norm=norm).build_algo()
    try:
        learner = local_learner(algo.learner_group)
        batch = {"teacher_logp": torch.as_tensor(data["teacher_logp"][:4]), "actions": torch.as_tensor(data["actions"][:4])}
        for _ in range(2):
            r = curate(algo.train())
            assert "adpo/anchor_refreshes" not in r and not learner._schedules
            got = learner.anchor_logp(DEFAULT_MODULE_ID, algo.config, batch, None, None)
            assert torch.equal(got, torch.as_tensor(data["teacher_logp"][:4]))
        assert not hasattr(learner.module[DEFAULT_MODULE_ID], "_anchor_pi")
    finally:
        algo.stop()


@pytest.mark.long_running
def test_distill_grid_logs_and_reuses_teacher(ray_local, tmp_path, capsys):
    spec = parse_spec(DISTILL)
    uri = new_store(tmp_path)
    opts = options(tmp_path, "first")
    results = run_grid(spec, opts, verbose=0)
    assert len(results) == 4 and not results.errors
    out = capsys.readouterr().out
    assert "training RLlib PPO" in out and "generating 240 states x 4 candidates" in out

    client = MlflowClient(uri)
    teachers = client.search_runs([client.get_experiment_by_name("adpo-ray-teachers").experiment_id])
    assert len(teachers) == 1
    teacher = teachers[0]
    key = dataset_key(spec, "Hopper-v5", "gaussian-high")
    assert teacher.info.status == "FINISHED" and teacher.data.tags[TEACHER_TAG] == teacher_key(spec, "Hopper-v5")
    assert teacher.data.tags[DATASET_TAG_PREFIX + key] == "complete"
    assert np.isfinite(teacher.data.metrics["teacher/return_mean"])
    top = {a.path for a in client.list_artifacts(teacher.info.run_id)}
    assert {"checkpoint", "teacher.json", "datasets"} <= top
    parts = client.list_artifacts(teacher.info.run_id, f"datasets/{key}")
    assert len(parts) == 2 and all(p.path.endswith(".parquet") for p in parts)

    exp = client.get_experiment_by_name("distill_small")
    kids = [r for r in client.search_runs([exp.experiment_id]) if "trial" in r.data.tags]
    assert {r.data.tags["method"] for r in kids} == {"adpo-fixed", "adpo-dynamic", "kd", "bc"}
    for k in kids:
        assert k.info.status == "FINISHED"
        kl = client.get_metric_history(k.info.run_id, "distill/kl_teacher")
        assert len(kl) == 4  # every iteration
        evals = client.get_metric_history(k.info.run_id, "eval/return_mean")
        assert len(evals) == 2  # iterations 2 and 4
        assert 0.5 < k.data.metrics["distill/ndcg_random"] < 1.0
        ratio = k.data.metrics["eval/return_over_teacher"]
        assert ratio == pytest.approx(k.data.metrics["eval/return_mean"] / teacher.data.metrics["teacher/return_mean"])
        assert k.data.params["distill.teacher_key"] == teacher.data.tags[TEACHER_TAG]
        assert k.data.params["distill.teacher_run_id"] == teacher.info.run_id  # pinned at launch

    # the report's distillation table and claim
    report = build_report(load_mlflow(uri, "distill_small"), tmp_path / "report")
    text = report["report.md"].read_text()
    assert "## Distillation students" in text and "NDCG, random order" in text and "KL(teacher ‖ KD student) / KL(teacher ‖ fixed-anchor student)" in text

    # a second launch (another grid of the same teacher) trains nothing new
    before = {a.path for a in client.list_artifacts(teacher.info.run_id, "datasets")}
    second = parse_spec({**DISTILL, "name": "distill_again", "algorithms": ["kd"]})
    opts2 = options(tmp_path, "second")
    assert not run_grid(second, opts2, verbose=0).errors
    out = capsys.readouterr().out
    assert f"reusing MLflow run {teacher.info.run_id}" in out
    assert "training RLlib PPO" not in out and "generating" not in out
    assert len(client.search_runs([client.get_experiment_by_name("adpo-ray-teachers").experiment_id])) == 1
    assert {a.path for a in client.list_artifacts(teacher.info.run_id, "datasets")} == before


def test_teacher_value_from_a_checkpoint_scores_q_lookahead(ray_local, tmp_path):
    """The teacher's value function, loaded from a real PPO checkpoint, is the one RLlib computes,
    and a q_lookahead dataset scores each candidate with it."""
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.core.columns import Columns

    from adpo_ray.envs.candidates import Signal, collect, probe, sim_state
    from adpo_ray.envs.mujoco import ObsNorm, make_mujoco
    from adpo_ray.orchestration.policies import teacher_callables
    from adpo_ray.rllib.factory import build_algo_config

    spec = parse_spec({"name": "t", "environments": ["Hopper-v5"], "scenarios": ["clean"], "algorithms": ["ppo"],
                       "budget": {"iterations": 1}, "train": {"train_batch_size": 256, "minibatch_size": 64}})
    algo = build_algo_config(spec.knobs(spec.trials()[0])).build_algo()
    try:
        algo.train()
        algo.save_to_path(str(tmp_path / "ckpt"))
        module = local_learner(algo.learner_group).module[DEFAULT_MODULE_ID]  # the env runner's has no value head
        obs = np.random.default_rng(0).normal(size=(5, 11)).astype(np.float32)
        with torch.no_grad():
            expected = module.compute_values({Columns.OBS: torch.as_tensor(obs)}).numpy()
    finally:
        algo.stop()
    policy, value = teacher_callables(tmp_path / "ckpt")
    np.testing.assert_allclose([value(o) for o in obs], expected, rtol=1e-5, atol=1e-6)
    norm = ObsNorm(np.zeros(11), np.ones(11), 10.0)
    data = collect("Hopper-v5", "clean", policy, norm, num_states=5, num_candidates=3, seed=0,
                   heldout_fraction=0.2, signal="q_lookahead", gamma=0.99, value=value)
    env = make_mujoco("Hopper-v5", {"scenario": "clean"})
    env.reset(seed=0)
    env.unwrapped.set_state(data["qpos"][0], data["qvel"][0])
    again = probe(env, data["actions"][0], Signal("q_lookahead", gamma=0.99, value=value, obs_norm=norm))
    np.testing.assert_allclose(data["rewards_clean"][0], again, rtol=1e-5)
    assert sim_state(env)[0].tolist() == data["qpos"][0].tolist()
