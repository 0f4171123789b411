"""Sweeps and searches on real Tune, RLlib and MLflow: a grid sweep's trials, names, params and
report; an Optuna search with ASHA that stops trials early, killed and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from adpo_ray.orchestration.launch import run_grid
from adpo_ray.report.data import load_mlflow, load_tune_folder
from adpo_ray.spec import parse_spec

from .test_grid import ROOT, _run, children, options, steps

pytestmark = pytest.mark.slow

BANDIT = {
    "name": "sweep",
    "environments": ["PreferenceBandit"],
    "scenarios": ["clean"],
    "anchors": {"modes": ["dynamic"]},
    "budget": {"iterations": 2},
    "train": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 2},
}


def test_grid_sweep_trials_names_params_and_report(ray_local, tmp_path):
    spec = parse_spec({**BANDIT, "sweep": {"adpo.beta_q": [0.5, 2.0], "train.lr": [0.001, 0.003]}})
    opts = options(tmp_path, "sw")
    results = run_grid(spec, opts)
    assert len(results) == 4 and not results.errors
    names = sorted(Path(r.path).name for r in results)
    assert names == sorted(t.tag for t in spec.trials())
    assert any(n.endswith("adpo.beta_q=2,train.lr=0.003") for n in names)
    client = MlflowClient(opts.tracking_uri)
    _, kids = children(client, "sweep")
    assert len(kids) == 4
    points = set()
    for kid in kids:
        tags, params = kid.data.tags, kid.data.params
        point = (float(tags["sweep.adpo.beta_q"]), float(tags["sweep.train.lr"]))
        assert (float(params["beta_q"]), float(params["lr"])) == point  # the knobs that trained
        assert tags["method"] == f"adpo-dynamic (adpo.beta_q={point[0]:g},train.lr={point[1]:g})"
        points.add(point)
    assert points == {(b, lr) for b in (0.5, 2.0) for lr in (0.001, 0.003)}
    data = load_mlflow(opts.tracking_uri, "sweep")
    assert sorted(data.trials["method"]) == sorted(t.method for t in spec.trials())  # the report's groups
    tune_data = load_tune_folder(opts.run_dir)
    assert sorted(tune_data.trials["method"]) == sorted(data.trials["method"])


def test_close_values_and_a_long_sweep_keep_one_identity_per_trial(ray_local, tmp_path):
    """train.lr 0.0030001 and 0.0030004 (one label, one MLflow run and one report group at 4
    significant digits) with 14 knobs more at one value each (a name longer than a folder name
    may be): two trials in two folders of at most 200 bytes, two child runs with the exact values
    and the full names, two methods in the report, the launch summary delivered to MLflow."""
    from ..unit.test_identity import LONG

    spec = parse_spec({**BANDIT, "name": "ident", "hidden_sizes": [16],
                       "sweep": {**LONG, "train.lr": [0.0030001, 0.0030004]}})
    trials = spec.trials()
    assert len(trials) == 2 and all(len(t.tag) > 255 for t in trials)
    opts = options(tmp_path, "id")
    results = run_grid(spec, opts)
    assert len(results) == 2 and not results.errors and results.mlflow_pending == 0
    folders = sorted(Path(r.path).name for r in results)
    assert folders == sorted(t.dirname for t in trials) and all(len(f.encode()) <= 200 for f in folders)
    from adpo_ray.orchestration.status import grid_status

    assert grid_status(opts.run_dir).trials["finished"] == 2  # `adpo-ray status` finds the folders
    client = MlflowClient(opts.tracking_uri)
    parents, kids = children(client, "ident")
    assert len(kids) == 2
    by_lr = {k.data.tags["sweep.train.lr"]: k for k in kids}
    assert sorted(by_lr) == ["0.0030001", "0.0030004"]
    for t in trials:
        kid = by_lr[repr(dict(t.sweep)["train.lr"])]
        assert kid.data.params["lr"] == kid.data.tags["sweep.train.lr"]  # the knob that trained
        assert (kid.data.tags["trial"], kid.data.tags["method"]) == (t.tag, t.method)
        assert kid.info.run_name == t.dirname and kid.info.status == "FINISHED"
    data = load_mlflow(opts.tracking_uri, "ident")
    assert sorted(data.trials["method"]) == sorted(t.method for t in trials)  # two groups of one
    assert sorted(load_tune_folder(opts.run_dir).trials["method"]) == sorted(data.trials["method"])
    from adpo_ray.orchestration.tracking import method_names

    (parent,) = parents
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED"
    for name, label in method_names(t.method for t in trials).items():
        assert f"summary/PreferenceBandit/{name}/winmass_n" in parent.data.metrics
        assert parent.data.tags[f"method_label/{name}"] == label


SEARCH = {
    **BANDIT,
    "name": "search",
    "budget": {"iterations": 6, "checkpoint_every": 2},
    "sweep": {"train.lr": {"loguniform": [0.00001, 0.03]}, "adpo.beta_q": {"uniform": [0.1, 5.0]}},
    "search": {"algorithm": "optuna", "metric": "eval/winmass", "mode": "max", "num_samples": 8, "seed": 3,
               "asha": {"grace_period": 1, "reduction_factor": 2}},
}


def test_optuna_search_with_asha_killed_and_resumed(tmp_path):
    """8 Optuna samples with ASHA on the bandit, the driver killed once some have finished, then
    resumed: 8 children with 8 distinct sampled points, each run's params its sample, at least
    one stopped early by ASHA, finished samples not re-run."""
    spec_file = tmp_path / "search.yaml"
    spec_file.write_text(yaml.safe_dump(SEARCH))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "ray_results"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_grid.py"), "--config", str(spec_file), "--tracking-uri", uri,
         "--storage-path", str(storage), "--name", "s", "--no-report"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    client = MlflowClient(uri)
    deadline = time.time() + 400
    try:
        while time.time() < deadline:
            time.sleep(2)
            assert proc.poll() is None, "the search ended before it could be killed"
            try:
                _, kids = children(client, "search")
            except Exception:
                continue
            if sum(k.info.status == "FINISHED" for k in kids) >= 3:
                break
        else:
            pytest.fail("the search made no progress")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _, kids = children(client, "search")
    finished_before = {k.data.tags["trial"]: k.info.end_time for k in kids if k.info.status == "FINISHED"}
    assert 3 <= len(finished_before) < 8

    res = _run("-m", "adpo_ray.cli", "resume", str(storage / "s"), cwd=tmp_path, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    _, kids = children(client, "search")
    assert len(kids) == 8, sorted(k.data.tags["trial"] for k in kids)
    points = {(k.data.params["lr"], k.data.params["beta_q"]) for k in kids}
    assert len(points) == 8  # no sample repeated
    iterations = []
    for k in kids:
        assert k.info.status == "FINISHED"
        assert k.data.params["lr"] == k.data.tags["sweep.train.lr"] or float(k.data.params["lr"]) == pytest.approx(
            float(k.data.tags["sweep.train.lr"]))
        assert 1e-5 <= float(k.data.params["lr"]) <= 0.03 and 0.1 <= float(k.data.params["beta_q"]) <= 5.0
        iterations.append(len(steps(client, k.info.run_id)))
        if k.data.tags["trial"] in finished_before:
            assert k.info.end_time == finished_before[k.data.tags["trial"]]  # not re-run
    assert min(iterations) < 6 <= max(iterations), iterations  # ASHA stopped some, others ran out their budget
