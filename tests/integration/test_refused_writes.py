"""Writes MLflow refuses, on real grids (real Ray, Tune, RLlib, MLflow): a sweep's method labels
become valid metric names on the parent run, and a child run deleted in the MLflow UI while its
trial runs is restored, holding the launch's other writes up not at all."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from mlflow.tracking import MlflowClient

from adpo_ray.orchestration.launch import run_grid
from adpo_ray.orchestration.spool import RUN_KEY_TAG
from adpo_ray.spec import parse_spec

from ..helpers.grid import SMALL, check_complete, children, mlflow_server, new_store, options
from ..helpers.resume import checkpoints_written, launch, trials_held, wait_until

pytestmark = pytest.mark.slow

SWEEP = {
    "name": "sweepnames",
    "environments": ["PreferenceBandit"],
    "scenarios": ["clean"],
    "algorithms": ["adpo"],
    "anchors": {"modes": ["dynamic"]},
    "hidden_sizes": [16],
    "seeds": [0],
    "budget": {"iterations": 2},
    "train": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 2},
    "sweep": {"adpo.beta_q": [0.5, 2.0]},
}


def test_sweep_summary_under_valid_names(ray_local, tmp_path, capsys):
    """The parent of a sweep ends FINISHED with its per-method summary under names MLflow takes,
    each name's label in a tag; nothing is refused, nothing pending; the report finds the runs.
    In this process, on the shared Ray: what it proves is in MLflow and the run folder."""
    new_store(tmp_path)
    opts = options(tmp_path, "sw")
    results = run_grid(parse_spec(SWEEP), opts, verbose=1)
    out = capsys.readouterr().out
    assert not results.errors, out[-4000:]  # the two points: one trial pack
    assert "not delivered" not in out and "refused" not in out, out[-3000:]
    # the progress table shows each point under its own name, its sweep point as its label
    final = out.split("== Status ==")[-1]
    for point in ("adpo.beta_q=0.5", "adpo.beta_q=2"):
        assert any(line.startswith(f"| PreferenceBandit_clean_adpo-dynamic_h16_s0_{point} ") and f"| {point} " in line
                   and "TERMINATED" in line for line in final.splitlines()), final
    client = MlflowClient(opts.tracking_uri)
    parents, kids = children(client, "sweepnames")
    assert len(parents) == 1 and len(kids) == 2 and all(k.info.status == "FINISHED" for k in kids)
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    winmass = {k.data.tags["sweep.adpo.beta_q"]: k.data.metrics["eval/winmass"] for k in kids}
    for value, name in (("0.5", "adpo-dynamic _adpo.beta_q_0.5"), ("2.0", "adpo-dynamic _adpo.beta_q_2")):
        metrics = parent.data.metrics
        assert metrics[f"summary/PreferenceBandit/{name}/winmass_mean"] == pytest.approx(winmass[value])
        assert metrics[f"summary/PreferenceBandit/{name}/winmass_n"] == 1
        assert parent.data.tags[f"method_label/{name}"] == f"adpo-dynamic (adpo.beta_q={float(value):.4g})"
    assert not (tmp_path / "ray_results" / "sw" / "mlflow_spool" / "rejected.jsonl").exists()
    report = (tmp_path / "ray_results" / "sw" / "report" / "report.md").read_text()
    assert "adpo-dynamic (adpo.beta_q=0.5)" in report and "adpo-dynamic (adpo.beta_q=2)" in report


#: Trials of 12 iterations (a few seconds each): a child run shows in MLflow (its writes reach
#: the server about once a second) well before its trial's last write; at 3 iterations, with one
#: process reused for trial after trial, every trial could end before its run was seen.
DELETED_ITERATIONS = 12
DELETED = {**SMALL, "name": "deletedchild", "scenarios": ["clean", "flip-high", "flip-low"],
           "anchors": {"modes": ["dynamic"]}, "hidden_sizes": [16],
           "budget": {"iterations": DELETED_ITERATIONS, "checkpoint_every": 4},
           # solo trials, one at a time: each run's writes end at its own time (a pack ends all at once)
           "resources": {**SMALL["resources"], "max_concurrent_trials": 1, "pack": 1}}


def _finished_in_spool(spool_records, key: str) -> bool:
    """Whether the tracker has already written the run's FINISHED status (its last write)."""
    if not spool_records.exists():
        return False
    for line in spool_records.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written
        if record.get("key") == key and record.get("op") == "status" and record.get("status") == "FINISHED":
            return True
    return False


@pytest.mark.long_running
def test_child_deleted_while_grid_runs_is_restored(tmp_path):
    """A child run deleted in the UI while its trial still has writes to come (a real `mlflow
    server`): the run is restored under its id, every trial ends up in MLflow with its full
    history, the parent FINISHED, nothing refused, nothing pending."""
    env = {**os.environ, "ADPO_RAY_MLFLOW_FLUSH_S": "120", "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    run_dir = tmp_path / "ray_results" / "d"
    records = run_dir / "mlflow_spool" / "records.jsonl"
    with mlflow_server(new_store(tmp_path, "server.db"), tmp_path / "server-artifacts") as uri:
        proc = launch(DELETED, tmp_path, uri, "d", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        client = MlflowClient(uri)

        def running_child() -> str | None:
            # a child run in MLflow whose FINISHED status, its trial's last write, is not yet
            # in the spool (append-only, written before anything is sent)
            try:
                _, kids = children(client, "deletedchild")
            except Exception:  # noqa: BLE001 - the experiment is not there yet
                return None
            return next((k.info.run_id for k in kids
                         if not _finished_in_spool(records, k.data.tags[RUN_KEY_TAG])), None)

        def a_trial_midway() -> bool:
            # it has saved a checkpoint, not its last (checkpoints go into the folder as saved)
            return any(n < DELETED_ITERATIONS // 4 for n in checkpoints_written(run_dir).values())

        # the trials held from then on: the run deleted has writes to come, however fast they run
        with trials_held(proc, a_trial_midway, timeout=600, what="a trial midway"):
            wait_until(proc, lambda: running_child() is not None, timeout=300, poll=0.2,
                       what="a child run of a running trial in MLflow")
            deleted = running_child()
            client.delete_run(deleted)
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-4000:]
        assert "not delivered" not in out and "refused" not in out, out[-3000:]
        client = MlflowClient(uri)
        assert client.get_run(deleted).info.lifecycle_stage == "active"  # restored, not made anew
        _, kids = children(client, "deletedchild")
        assert deleted in {k.info.run_id for k in kids}
        check_complete(client, "deletedchild", DELETED, DELETED_ITERATIONS, SMALL["train"]["train_batch_size"])
    assert not (records.parent / "rejected.jsonl").exists()
