"""The MLflow spool and its sender, against a real MLflow store (sqlite, no Ray): records go out
in order, exactly once however often delivery is retried, a torn line is skipped, a moved
folder still finds its files, and an unreachable store keeps everything pending."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

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


# -- writes MLflow refuses for good ------------------------------------------------------------

def rejected(spool: Spool) -> list[dict]:
    path = spool.folder / "rejected.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def runs_by_name(client, experiment: str) -> dict:
    exp = client.get_experiment_by_name(experiment)
    return {r.data.tags["mlflow.runName"]: r for r in client.search_runs([exp.experiment_id])}


def test_refused_writes_are_set_aside_and_block_nothing(tmp_path, store):
    """Each kind of write the store refuses is set aside once with MLflow's reason; every record
    behind it is delivered; NaN and inf are not refusals."""
    spool = Spool(tmp_path / "s", header={"tracking_uri": store, "experiment": "refused",
                                          "artifact_location": str(tmp_path / "artifacts")})
    spool.append("run", key="L", name="launch", parent=None, tags={}, params={"p": "1"})
    spool.append("run", key="L/t", name="t", parent="L", tags={"trial": "t"}, params={})
    spool.append("metrics", key="L/t", step=10, time=1.0, metrics={"env_steps": 10, "x (a=1)": 1.0})  # bad name
    spool.append("metrics", key="L/t", step=20, time=1.0, metrics={"env_steps": 20, "x": 2.0, "n": float("nan"),
                                                                     "i": float("inf")})
    spool.append("tag", key="L/t", name="sweep.a,b", value="1")  # bad tag key
    spool.append("tag", key="L/t", name="k" * 300, value="1")  # key too long
    spool.append("run", key="L", name="launch", parent=None, tags={},
                 params={"p": "2", "q": "3"})  # p re-logged with another value; q is new
    spool.append("run", key="L/bad", name="bad", parent="L", tags={"mlflow.runName": "other"},
                 params={})  # creation refused: two run names
    spool.append("metrics", key="L/bad", step=10, time=1.0, metrics={"env_steps": 10, "x": 1.0})
    spool.append("status", key="L/bad", status="FINISHED")
    spool.append("metrics", key="L/t", step=30, time=1.0, metrics={"env_steps": 30, "x": 3.0})
    spool.append("status", key="L/t", status="FINISHED")
    spool.append("status", key="L", status="FINISHED")
    sender = Sender(spool)
    assert sender.drain() and spool.pending() == 0
    out = rejected(spool)
    assert [(e["record"]["op"], e["record"]["key"]) for e in out] == [
        ("metrics", "L/t"), ("tag", "L/t"), ("tag", "L/t"), ("run", "L"), ("run", "L/bad"), ("metrics", "L/bad"),
        ("status", "L/bad")]
    reasons = [e["reason"] for e in out]
    assert "INVALID_PARAMETER_VALUE" in reasons[0] and "x (a=1)" in reasons[0]
    assert "INVALID_PARAMETER_VALUE" in reasons[1] and "sweep.a,b" in reasons[1]
    assert "exceeds the maximum length" in reasons[2]
    assert "1 param(s) refused: p:" in reasons[3] and "Changing param values is not allowed" in reasons[3]
    assert "INVALID_PARAMETER_VALUE" in reasons[4] and "different values" in reasons[4]
    assert all("the run of 'L/bad' was never created" in r and "different values" in r for r in reasons[5:])
    client = MlflowClient(store)
    runs = runs_by_name(client, "refused")
    assert set(runs) == {"launch", "t"}
    t = runs["t"]
    assert history(client, t.info.run_id) == [(20, 2.0), (30, 3.0)] and t.info.status == "FINISHED"
    assert math.isnan(t.data.metrics["n"]) and t.data.metrics["i"] > 1e300  # MLflow stores inf as the largest float
    assert runs["launch"].data.params == {"p": "1", "q": "3"} and runs["launch"].info.status == "FINISHED"
    # a sender started again (sync) sends nothing twice and rejects nothing twice
    (spool.folder / SENT).unlink()
    again = Sender(spool)
    assert again.drain() and len(Spool(spool.folder).rejected()) == 7
    assert history(client, t.info.run_id) == [(20, 2.0), (30, 3.0)]


def test_run_deleted_mid_delivery_is_restored(tmp_path, store):
    """A child and the parent deleted in the UI while writes for them are pending: both are
    restored (same ids, history kept), for the running sender and for a new one that only finds
    them by their run key."""
    spool = Spool(tmp_path / "s", header={"tracking_uri": store, "experiment": "deleted",
                                          "artifact_location": str(tmp_path / "artifacts")})
    spool.append("run", key="L", name="launch", parent=None, tags={}, params={})
    for t in ("t1", "t2"):
        spool.append("run", key=f"L/{t}", name=t, parent="L", tags={}, params={})
        spool.append("metrics", key=f"L/{t}", step=10, time=1.0, metrics={"env_steps": 10, "x": 1.0})
    runs: dict[str, str] = {}
    sender = Sender(spool, on_run=lambda key, run_id, exp: runs.setdefault(key, run_id))
    assert sender.drain()
    client = MlflowClient(store)
    client.delete_run(runs["L/t1"])
    spool.append("metrics", key="L/t1", step=20, time=1.0, metrics={"env_steps": 20, "x": 2.0})
    spool.append("status", key="L/t1", status="FINISHED")
    assert sender.drain()  # the sender that knows the run's id
    client.delete_run(runs["L"])
    client.delete_run(runs["L/t2"])
    spool.append("metrics", key="L/t2", step=20, time=1.0, metrics={"env_steps": 20, "x": 2.0})
    spool.append("status", key="L/t2", status="FINISHED")
    spool.append("status", key="L", status="FINISHED")
    assert Sender(spool).drain()  # a new sender (`adpo-ray sync`) finds the deleted runs by key
    assert not rejected(spool)
    by_name = runs_by_name(client, "deleted")
    assert {n: r.info.run_id for n, r in by_name.items()} == {"launch": runs["L"], "t1": runs["L/t1"], "t2": runs["L/t2"]}
    for name in ("t1", "t2"):
        assert history(client, by_name[name].info.run_id) == [(10, 1.0), (20, 2.0)]
        assert by_name[name].info.status == "FINISHED" and by_name[name].data.tags["mlflow.parentRunId"] == runs["L"]
    assert by_name["launch"].info.status == "FINISHED"


def test_run_purged_mid_delivery_is_created_again(tmp_path, store):
    """A child deleted and purged (`mlflow gc`) while writes for it are pending: created again
    from its run record, linked to its parent; the writes after the purge land there."""
    spool = Spool(tmp_path / "s", header={"tracking_uri": store, "experiment": "purged",
                                          "artifact_location": str(tmp_path / "artifacts")})
    spool.append("run", key="L", name="launch", parent=None, tags={}, params={})
    spool.append("run", key="L/t", name="t", parent="L", tags={"trial": "t"}, params={"lr": "0.1"})
    spool.append("metrics", key="L/t", step=10, time=1.0, metrics={"env_steps": 10, "x": 1.0})
    runs: dict[str, str] = {}
    sender = Sender(spool, on_run=lambda key, run_id, exp: runs.__setitem__(key, run_id))
    assert sender.drain()
    old = runs["L/t"]
    client = MlflowClient(store)
    client.delete_run(old)
    gc = subprocess.run([str(Path(sys.executable).parent / "mlflow"), "gc", "--backend-store-uri", store,
                         "--tracking-uri", store, "--run-ids", old], capture_output=True, text=True)
    assert gc.returncode == 0, gc.stderr[-2000:]
    spool.append("metrics", key="L/t", step=20, time=1.0, metrics={"env_steps": 20, "x": 2.0})
    spool.append("status", key="L/t", status="FINISHED")
    assert sender.drain() and not rejected(spool)
    t = runs_by_name(client, "purged")["t"]
    assert t.info.run_id == runs["L/t"] != old
    assert t.data.tags["mlflow.parentRunId"] == runs["L"] and t.data.params == {"lr": "0.1"}
    assert history(client, t.info.run_id) == [(20, 2.0)] and t.info.status == "FINISHED"


def test_sync_counts_delivered_pending_and_rejected(tmp_path, store):
    from adpo_ray.orchestration.tracking import spool_folder, sync

    run_dir = tmp_path / "run"
    spool = Spool(spool_folder(str(run_dir), "L"), header={"tracking_uri": store, "experiment": "synced",
                                                           "artifact_location": str(tmp_path / "artifacts")})
    spool.append("run", key="L", name="L", parent=None, tags={}, params={})
    spool.append("metrics", key="L", step=1, time=1.0, metrics={"env_steps": 1, "summary/a (b)/m": 1.0})
    spool.append("status", key="L", status="FINISHED")
    res = sync(str(run_dir), "L", timeout_s=300)
    assert (res.delivered, res.pending, res.rejected, res.rejected_total) == (2, 0, 1, 1)
    assert res.rejected_file == str(spool.folder / "rejected.jsonl")
    again = sync(str(run_dir), "L", timeout_s=300)
    assert (again.delivered, again.pending, again.rejected, again.rejected_total) == (0, 0, 0, 1)


@pytest.mark.parametrize(("payload", "permanent"), [
    ({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad name"}, True),
    ({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}, True),
    ({"error_code": "INVALID_STATE", "message": "run is deleted"}, True),
    ({"error_code": "BAD_REQUEST", "message": "malformed"}, True),
    ({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}, False),
    ({"error_code": "INTERNAL_ERROR", "message": "db locked"}, False),
    ({"error_code": "503", "message": "from a proxy"}, False),
    ({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}, False),
    ({"error_code": "PERMISSION_DENIED", "message": "token expired"}, False),
])
def test_rest_errors_sorted_into_permanent_and_transient(payload, permanent):
    """What the REST client raises for a server's JSON error (RestException with the code)."""
    from mlflow.exceptions import RestException

    from adpo_ray.orchestration.spool import is_permanent

    assert is_permanent(RestException(payload)) is permanent


def test_unreachable_server_is_transient(monkeypatch):
    from adpo_ray.orchestration.spool import is_permanent

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(Exception) as info:  # noqa: PT011 - whatever MLflow raises for a refused connection
        MlflowClient("http://127.0.0.1:9").get_run("0" * 32)  # nothing listens on port 9
    assert not is_permanent(info.value)


def test_summary_names_are_valid_keys_and_labels_are_kept():
    from mlflow.utils.validation import _validate_metric_name, _validate_tag_name

    from adpo_ray.orchestration.mlflow_store import mlflow_key
    from adpo_ray.orchestration.tracking import LABEL_TAG, launch_summary, method_names

    finals = [("PreferenceBandit", "adpo-dynamic (adpo.beta_q=0.5)", {"eval/winmass": 0.6}),
              ("PreferenceBandit", "adpo-dynamic (adpo.beta_q=0.5)", {"eval/winmass": 0.8}),
              ("PreferenceBandit", "adpo-dynamic (adpo.beta_q=2)", {"eval/winmass": 0.5}),
              ("PreferenceBandit", "ppo", {"eval/winmass": 0.4})]
    summary = launch_summary(finals)
    assert summary["summary/PreferenceBandit/adpo-dynamic _adpo.beta_q_0.5/winmass_mean"] == pytest.approx(0.7)
    assert summary["summary/PreferenceBandit/adpo-dynamic _adpo.beta_q_2/winmass_n"] == 1
    assert summary["summary/PreferenceBandit/ppo/winmass_mean"] == pytest.approx(0.4)
    for key in summary:
        _validate_metric_name(key)
    names = method_names(m for _, m, _ in finals)
    assert names == {"adpo-dynamic _adpo.beta_q_0.5": "adpo-dynamic (adpo.beta_q=0.5)",
                     "adpo-dynamic _adpo.beta_q_2": "adpo-dynamic (adpo.beta_q=2)", "ppo": "ppo"}
    for name in names:
        _validate_tag_name(mlflow_key(f"{LABEL_TAG}/{name}"))
    # two labels that would share a name stay apart
    twins = method_names(["m (a=1)", "m [a=1]"])
    assert len(twins) == 2 and set(twins.values()) == {"m (a=1)", "m [a=1]"}
    assert mlflow_key("eval/winmass") == "eval/winmass" and len(mlflow_key("k" * 300)) == 250
    assert mlflow_key("k" * 300) != mlflow_key("k" * 301)


def test_held_records_of_a_killed_driver_are_let_out_once_up_to_what_its_snapshot_holds(tmp_path):
    """Records held for what Tune had not snapshotted when the driver died: a resume moves those of
    the trials its snapshot holds, metric steps up to the iteration it holds, into the records,
    without a run or a step written twice (the driver may die between letting records out and
    noting so), and forgets the rest (Tune trains those iterations again)."""
    from adpo_ray.orchestration.spool import HELD
    from adpo_ray.orchestration.tracking import recover_held, replay_state

    spool = Spool(tmp_path / "spool")
    run_a = {"op": "run", "key": "g/a", "name": "a", "parent": "g", "tags": {"env": "E", "method": "M"}, "params": {}}
    metrics = [{"op": "metrics", "key": "g/a", "step": s, "time": 0.0, "metrics": {"x": float(s)}} for s in (1, 2, 3, 4)]
    spool.hold("A", run_a)
    for i, record in enumerate(metrics, start=1):
        spool.hold("A", record, iteration=i)
    spool.hold("B", {"op": "run", "key": "g/b", "name": "b", "parent": "g", "tags": {}, "params": {}})
    spool.hold("C", {"op": "tag", "key": "g/c", "name": "n", "value": "1"})
    spool.release("C", 1)  # C's record went out before the kill
    # the driver let A's run and first step out, then died before noting so
    spool.append(**run_a)
    spool.append(**metrics[0])
    with open(tmp_path / "spool" / HELD, "a") as f:
        f.write('{"trial_id": "A", "rec')  # a line torn by the kill

    assert set(spool.held()) == {"A", "B"} and len(spool.held()["A"]) == 5
    again = Spool(tmp_path / "spool")  # the resumed driver's; its snapshot holds A to iteration 3
    assert recover_held(again, durable={"A": 3, "C": 0}) == 2
    records = [r for r, _ in again.records() if r is not None]
    assert [(r["op"], r.get("step")) for r in records] == [("run", None), ("metrics", 1), ("metrics", 2), ("metrics", 3)]
    state = replay_state(again)
    assert state["runs"] == {"g/a"} and sorted(state["history"]["g/a"]) == [1, 2, 3]
    assert again.held() == {} and not (tmp_path / "spool" / HELD).exists()
    assert recover_held(again, durable={"A": 9, "B": 0}) == 0  # the rest was forgotten: Tune runs it again
    again.hold("D", {"op": "tag", "key": "g/d", "name": "n", "value": "1"})  # holding goes on after
    again.hold("D", {"op": "tag", "key": "g/d", "name": "m", "value": "2"})
    again.release("D", 1)
    assert again.held() == {"D": [(None, {"op": "tag", "key": "g/d", "name": "m", "value": "2"})]}
