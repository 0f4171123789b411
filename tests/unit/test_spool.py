"""The MLflow spool and its sender, against a real MLflow store (sqlite, no Ray): records go out
in order, exactly once however often delivery is retried, a torn line is skipped, a moved
folder still finds its files, and an unreachable store keeps everything pending."""

from __future__ import annotations

import json
import shutil

import pytest
from mlflow.tracking import MlflowClient

from adpo_ray.orchestration.spool import RECORDS, SENT, Sender, Spool


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One sqlite MLflow store for the module (making one takes seconds); tests use own experiments."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def make_spool(folder, uri: str, experiment: str = "spooled") -> Spool:
    artifacts = str(folder.parent / f"artifacts-{experiment}")  # never MLflow's default ./mlruns
    spool = Spool(folder, header={"tracking_uri": uri, "experiment": experiment, "artifact_location": artifacts,
                                  "experiment_note": "how to compare"})
    spool.append("run", key="L", name="launch", parent=None, tags={"kind": "grid"}, params={"a": "1"})
    spool.append("run", key="L/t1", name="t1", parent="L", tags={"trial": "t1"}, params={"lr": "0.1"})
    spool.append("run", key="L/t2", name="t2", parent="L", tags={"trial": "t2"}, params={})
    for step in (10, 20, 30):  # two trials' results interleaved, as Tune reports them
        for key in ("L/t1", "L/t2"):
            spool.append("metrics", key=key, step=step, time=1.0, metrics={"env_steps": step, "x": step / 10})
    path = spool.folder / "files" / "note.txt"
    path.write_text("hello")
    spool.append("artifact", key="L/t1", path=spool.relative(str(path)), artifact_path=None)
    spool.append("status", key="L/t1", status="FINISHED")
    return spool


def history(client, run_id, key="x"):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_delivered_in_order_and_exactly_once(tmp_path, store):
    uri = store
    spool = make_spool(tmp_path / "spool", uri)
    runs: dict[str, str] = {}
    sender = Sender(spool, on_run=lambda key, run_id, exp: runs.setdefault(key, run_id))
    assert spool.pending() == 11 and sender.drain() and spool.pending() == 0
    # delivery "crashes" before its watermark is written: everything is sent again
    (spool.folder / SENT).unlink()
    assert Sender(spool).drain()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("spooled")
    assert exp.tags["mlflow.note.content"] == "how to compare"
    all_runs = client.search_runs([exp.experiment_id])
    assert len(all_runs) == 3  # found again by run key, never created twice
    t1 = client.get_run(runs["L/t1"])
    assert t1.data.tags["mlflow.parentRunId"] == runs["L"] and t1.data.params["lr"] == "0.1"
    assert history(client, runs["L/t1"]) == [(10, 1.0), (20, 2.0), (30, 3.0)]  # once each
    assert history(client, runs["L/t2"]) == [(10, 1.0), (20, 2.0), (30, 3.0)]
    assert t1.info.status == "FINISHED" and [a.path for a in client.list_artifacts(t1.info.run_id)] == ["note.txt"]


def test_torn_line_moved_folder_and_unreachable_store(tmp_path, store, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast; the bounded default is 3
    spool = make_spool(tmp_path / "a", "http://127.0.0.1:9", experiment="moved")  # nothing listens on port 9
    with open(spool.folder / RECORDS, "a") as f:
        f.write('{"op": "metrics", "key": "L/t')  # a crash mid-write
    spool.close()
    reopened = Spool(tmp_path / "a")  # closes the torn line; new records start on their own line
    reopened.append("status", key="L/t2", status="FINISHED")
    sender = Sender(reopened)
    assert not sender.drain() and sender.last_error  # store away: nothing lost, nothing sent
    assert reopened.pending() == 12 and json.loads((reopened.folder / RECORDS).read_text().splitlines()[-1])["key"] == "L/t2"
    # the folder moves, the header is pointed at a store that answers: all of it arrives
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = Spool(tmp_path / "b")
    header = moved.header | {"tracking_uri": store}
    (moved.folder / "spool.json").write_text(json.dumps(header))
    assert Sender(moved).drain() and moved.pending() == 0
    client = MlflowClient(header["tracking_uri"])
    runs = {r.data.tags["mlflow.runName"]: r for r in client.search_runs([client.get_experiment_by_name("moved").experiment_id])}
    assert runs["t2"].info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(runs["t1"].info.run_id)] == ["note.txt"]  # found after the move


@pytest.mark.parametrize("n", [1, 7])
def test_batches_whole_steps(tmp_path, store, n):
    """A backlog goes out in few requests, and never with a step split over two of them."""
    spool = Spool(tmp_path / "s", header={"tracking_uri": store, "experiment": f"big{n}",
                                          "artifact_location": str(tmp_path / "artifacts")})
    spool.append("run", key="k", name="k", parent=None, tags={}, params={})
    for step in range(1, 41):
        spool.append("metrics", key="k", step=step, time=1.0, metrics={f"m{i}": float(step) for i in range(60 * n)})
    sender = Sender(spool)
    calls = []
    original = sender._log_steps
    sender._log_steps = lambda run_id, metrics: (calls.append({m.step for m in metrics}), original(run_id, metrics))
    assert sender.drain()
    assert sum(len(c) for c in calls) == 40 and len(calls) < 40 and all(len(c) * 60 * n <= 1000 or len(c) == 1 for c in calls)
