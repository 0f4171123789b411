"""Sweeps and searches on real Tune, RLlib and MLflow: a grid sweep's trials, names, params and
report; an Optuna search with ASHA that stops trials early, killed and resumed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from adpo_ray.orchestration.launch import run_grid
from adpo_ray.report.data import load_mlflow, load_tune_folder
from adpo_ray.spec import parse_spec

from ..helpers.grid import BANDIT_ENVS, LONG, children, new_store, options, steps
from ..helpers.resume import (
    assert_same_curves,
    kill_when,
    launch,
    resume,
    trials_held,
    tune_progress,
    tune_snapshot,
)

pytestmark = pytest.mark.slow

BANDIT = {
    "name": "sweep",
    "environments": ["PreferenceBandit"],
    "scenarios": ["clean"],
    "anchors": {"modes": ["dynamic"]},
    "budget": {"iterations": 2},
    "train": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 2},
    "resources": {**BANDIT_ENVS},
}


def test_grid_sweep_trials_names_params_and_report(ray_local, tmp_path):
    # solo: a Tune trial, and its folder, per sweep point
    spec = parse_spec({**BANDIT, "sweep": {"adpo.beta_q": [0.5, 2.0], "train.lr": [0.001, 0.003]},
                       "resources": {**BANDIT["resources"], "pack": 1}})
    new_store(tmp_path)
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
    spec = parse_spec({**BANDIT, "name": "ident", "hidden_sizes": [16],
                       "sweep": {**LONG, "train.lr": [0.0030001, 0.0030004]}, "resources": {**BANDIT["resources"], "pack": 1}})
    trials = spec.trials()
    assert len(trials) == 2 and all(len(t.tag) > 255 for t in trials)
    new_store(tmp_path)
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
    from adpo_ray.orchestration.mlflow_store import mlflow_key
    from adpo_ray.orchestration.tracking import method_names

    (parent,) = parents
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED"
    for name, label in method_names(t.method for t in trials).items():
        # a name this long is cut with a digest of the whole key, as every key built from labels is
        assert mlflow_key(f"summary/PreferenceBandit/{name}/winmass_n") in parent.data.metrics
        assert parent.data.tags[mlflow_key(f"method_label/{name}")] == label


SEARCH = {
    **BANDIT,
    "name": "search",
    "budget": {"iterations": 8, "checkpoint_every": 2},  # rungs at 1, 2 and 4; four iterations past the last
    # one sample at a time: ASHA's cutoffs depend on the order in which results arrive
    "resources": {**BANDIT["resources"], "max_concurrent_trials": 1},
    "sweep": {"train.lr": {"loguniform": [0.00001, 0.03]}, "adpo.beta_q": {"uniform": [0.1, 5.0]}},
    "search": {"algorithm": "optuna", "metric": "eval/winmass", "mode": "max", "num_samples": 8, "seed": 3,
               "asha": {"grace_period": 1, "reduction_factor": 2}},
}


def asha_record(run_dir: Path) -> dict[str, list[dict]]:
    """Trial id -> its entries in the launch's ASHA decision record (complete lines)."""
    import json

    from adpo_ray.orchestration.scheduling import RECORD_FILE

    out: dict[str, list[dict]] = {}
    path = Path(run_dir) / RECORD_FILE
    if path.exists():
        for line in path.read_text().splitlines(keepends=True):
            if line.endswith("\n"):
                entry = json.loads(line)
                out.setdefault(entry["trial"], []).append(entry)
    return out


def iterations_by_point(client: MlflowClient, experiment: str) -> dict[tuple[str, str], int]:
    _, kids = children(client, experiment)
    return {(k.data.params["lr"], k.data.params["beta_q"]): len(steps(client, k.info.run_id)) for k in kids}


@pytest.mark.long_running
def test_optuna_search_with_asha_killed_and_resumed(ray_local, tmp_path):
    """8 Optuna samples with ASHA on the bandit, the driver killed (SIGKILL) during a sample past
    its last rung once two samples have ended, then resumed: the same 8 points, each trained for as many iterations as
    in an uninterrupted search with the same seed (ASHA's rungs and stops repeated), one FINISHED
    child each with its sample's params; MLflow never called a sample finished that Tune's
    snapshot did not, a finished sample is neither trained again nor finished again, and MLflow
    and Tune's folder agree on every step."""
    reference = tmp_path / "reference"
    reference.mkdir()
    new_store(reference)
    run_grid(parse_spec(SEARCH), options(reference, "ref"), verbose=0)
    expected = iterations_by_point(MlflowClient(f"sqlite:///{reference / 'mlflow.db'}"), "search")
    assert len(expected) == 8 and min(expected.values()) < 8 <= max(expected.values()), expected

    uri = new_store(tmp_path)
    run_dir = tmp_path / "ray_results" / "s"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}  # the held sample is in a snapshot soon
    proc = launch(SEARCH, tmp_path, uri, "s", env=env)

    def past_last_rung_after_two() -> set[str]:
        # two samples ended and a third under way past its last rung (t=4: ASHA's decision for it
        # is recorded; the driver writes the record as it decides). Past its last rung, because a
        # sample resumed from an older checkpoint need not repeat its values bit for bit: a rung
        # value it had not reached before the kill could move the cutoffs of later samples, and no
        # uninterrupted run is then the reference. The resume replays its iterations with the
        # decisions recorded for them.
        record = asha_record(run_dir)
        ended = {t for t, entries in record.items() if any(e.get("action") in ("STOP", "COMPLETE") for e in entries)}
        if len(ended) < 2:
            return set()
        return {t for t, entries in record.items()
                if t not in ended and any(e.get("t") == 4 and e.get("action") == "CONTINUE" for e in entries)}

    def in_snapshot() -> bool:
        # that sample is in Tune's snapshot (a sample Tune never snapshotted is drawn again under
        # a new id)
        try:
            snapshot = tune_snapshot(run_dir)
        except ValueError:  # being copied there right now
            return False
        return snapshot is not None and bool(past_last_rung_after_two() & set(snapshot.status))

    # the samples held from there on: the one past its last rung cannot end before the kill
    with trials_held(proc, lambda: bool(past_last_rung_after_two()), timeout=400):
        kill_when(proc, in_snapshot, timeout=120)
    snapshot = tune_snapshot(run_dir)
    client = MlflowClient(uri)
    _, kids = children(client, "search")
    finished_before = {k.data.tags["tune_trial_id"]: k.info.end_time for k in kids if k.info.status == "FINISHED"}
    assert set(finished_before) <= snapshot.finished, (finished_before, snapshot.status)

    resume(run_dir, "--no-report", expect="restore", cwd=tmp_path, env=env)  # its data, not its report
    _, kids = children(client, "search")
    assert len(kids) == 8, sorted(k.data.tags["trial"] for k in kids)
    for k in kids:
        assert k.info.status == "FINISHED"
        assert float(k.data.params["lr"]) == pytest.approx(float(k.data.tags["sweep.train.lr"]))
        assert 1e-5 <= float(k.data.params["lr"]) <= 0.03 and 0.1 <= float(k.data.params["beta_q"]) <= 5.0
        if k.data.tags["tune_trial_id"] in finished_before:  # not finished again
            assert k.info.end_time == finished_before[k.data.tags["tune_trial_id"]]
    assert iterations_by_point(client, "search") == expected  # the same points, rungs and stops
    progress = tune_progress(run_dir)
    for trial_id in snapshot.finished:  # not trained again: each step once in Tune's folder
        rows = progress[snapshot.dirname[trial_id]]
        assert len(rows) == len({r["env_steps"] for r in rows}), snapshot.dirname[trial_id]
    assert_same_curves(uri, "search", run_dir)
