"""What a resumed tracker recovers from a killed driver's results folder, before the first result
of the resume: records it held for trials Tune's snapshot restored, and steps Tune's loggers wrote
to a trial's ``progress.csv`` before the driver died, which the spool never got. A real tracker
on a real sqlite store; the trial is Tune's restored trial as the callback sees it. No Ray start."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from adpo_ray.orchestration.tracking import MLflowTracker, snapshot_trials
from adpo_ray.spec import parse_spec

from ..helpers.grid import new_store

SPEC = {"name": "t", "environments": ["PreferenceBandit"], "scenarios": ["clean"], "algorithms": ["adpo"],
        "anchors": {"modes": ["fixed"]}, "hidden_sizes": [16], "seeds": [0], "budget": {"iterations": 4}}


def restored_trial(spec, trial_id: str):
    (t,) = spec.trials()
    config = {"spec": spec.model_dump(mode="json", by_alias=True), "trial": t.as_dict()}
    return t, SimpleNamespace(trial_id=trial_id, config=config, status="PENDING", last_result={},
                              num_failures=0, checkpoint=None)


def launch_folder(tmp_path):
    """(tracking URI, results folder, the trial, its Tune trial, a factory of the launch's trackers:
    a driver's, then its resume's) of a one-trial launch ``g`` in ``tmp_path``."""
    spec = parse_spec(SPEC)
    uri = new_store(tmp_path, "m.db")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    t, trial = restored_trial(spec, "abc")
    return uri, run_dir, t, trial, lambda: MLflowTracker(spec, uri, str(tmp_path / "art"), str(run_dir), "g")


def snapshot(run_dir, trials: dict[str, tuple[str, int]]) -> None:
    """An experiment snapshot in ``run_dir`` holding ``trials`` (id -> status, last iteration)."""
    data = [[json.dumps({"trial_id": i, "status": s}), json.dumps({"last_result": {"training_iteration": n}})]
            for i, (s, n) in trials.items()]
    (run_dir / "experiment_state-2026-11-30_00-00-00.json").write_text(json.dumps({"trial_data": data}))


def result(iteration: int, winmass: float) -> dict:
    return {"env_steps": 100 * iteration, "training_iteration": iteration, "eval/winmass": winmass}


def history(uri: str, t) -> list[tuple[int, float]]:
    client = MlflowClient(uri)
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("t").experiment_id])
              if r.data.tags.get("trial") == t.tag]
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, "eval/winmass"),
                                              key=lambda m: m.step)]


def test_metric_steps_wait_for_the_snapshot_and_a_resume_keeps_what_it_holds(tmp_path):
    """A step reaches MLflow once Tune's snapshot holds its iteration; a killed driver's held
    steps up to the snapshot it resumes from are let out, later ones are trained again, and MLflow
    keeps the values of the iterations the snapshot (and so Tune's folder) holds."""
    uri, run_dir, t, trial, tracker = launch_folder(tmp_path)
    snapshot(run_dir, {"abc": ("RUNNING", 1)})

    first = tracker()
    first.setup()
    first.on_trial_start(0, [trial], trial)
    for i, w in ((1, 0.25), (2, 0.5), (3, 0.75)):
        first.on_trial_result(0, [trial], trial, result(i, w))
    first.get_state()  # the snapshot in the folder holds iteration 1
    first._sender.stop(flush_timeout=30)
    assert history(uri, t) == [(100, 0.25)]
    snapshot(run_dir, {"abc": ("RUNNING", 2)})  # the last snapshot before the kill: iteration 2

    again = tracker()
    again.setup()
    again.on_step_begin(0, [trial])
    # restored from iteration 2, the trial trains iteration 3 again: other values, Tune's record
    again.on_trial_result(0, [trial], trial, result(3, 0.9))
    snapshot(run_dir, {"abc": ("RUNNING", 3)})
    again.get_state()
    assert again._sender.stop(flush_timeout=30) == 0
    assert history(uri, t) == [(100, 0.25), (200, 0.5), (300, 0.9)]


def test_a_resume_logs_the_steps_tunes_folder_holds_and_the_spool_lacks(tmp_path):
    """A step whose held line the kill tore is read from the trial folder's progress.csv."""
    uri, run_dir, t, trial, tracker = launch_folder(tmp_path)
    snapshot(run_dir, {"abc": ("RUNNING", 0)})

    first = tracker()
    first.setup()
    first.on_trial_start(0, [trial], trial)
    first.on_trial_result(0, [trial], trial, result(1, 0.25))
    snapshot(run_dir, {"abc": ("RUNNING", 1)})
    first.get_state()
    first._sender.stop(flush_timeout=30)
    with open(first._spool.folder / "held.jsonl", "a") as f:
        f.write('{"trial_id": "abc", "record": {"op": "metrics", "key": "g/')  # step 200, torn by the kill
    snapshot(run_dir, {"abc": ("RUNNING", 2)})
    folder = run_dir / t.dirname
    folder.mkdir()
    with open(folder / "progress.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["eval/winmass", "env_steps", "training_iteration", "done", "timestamp"])
        w.writeheader()
        w.writerow({"eval/winmass": 0.25, "env_steps": 100, "training_iteration": 1, "done": False, "timestamp": 1})
        w.writerow({"eval/winmass": 0.5, "env_steps": 200, "training_iteration": 2, "done": False, "timestamp": 2})
        f.write("0.75,30")  # a row torn by the kill

    again = tracker()
    again.setup()
    again.on_step_begin(0, [trial])
    again.on_trial_result(0, [trial], trial, result(2, 0.9))  # trained again from iteration 1: not the record
    assert again._sender.stop(flush_timeout=30) == 0
    assert history(uri, t) == [(100, 0.25), (200, 0.5)]


def test_a_resume_lets_out_records_held_for_a_trial_the_snapshot_restored(tmp_path):
    """The trial was in no snapshot while its first records were made; the snapshot that took it
    in was the last before the kill."""
    uri, run_dir, t, trial, tracker = launch_folder(tmp_path)

    first = tracker()
    first.setup()
    first.on_trial_start(0, [trial], trial)
    first.on_trial_result(0, [trial], trial, result(1, 0.25))
    first._sender.stop(flush_timeout=30)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t")
    assert [r.data.tags.get("trial") for r in client.search_runs([exp.experiment_id])] == [None]  # the parent only
    snapshot(run_dir, {"abc": ("RUNNING", 1)})

    again = tracker()
    again.setup()
    again.on_step_begin(0, [trial])
    again.on_trial_result(0, [trial], trial, result(2, 0.5))
    snapshot(run_dir, {"abc": ("TERMINATED", 2)})
    again.get_state()
    assert again._sender.stop(flush_timeout=30) == 0
    assert history(uri, t) == [(100, 0.25), (200, 0.5)]


def test_snapshot_trials_decodes_only_changed_trials_and_reads_as_without_its_cache(tmp_path, monkeypatch):
    """With a cache kept between reads, a trial whose state text did not change is not decoded
    again; what a read returns is what a read without the cache returns, and a trial gone from
    the snapshot is gone from the cache."""
    import adpo_ray.orchestration.tracking as tracking

    decoded = []
    real_loads = json.loads

    def counting_loads(text, *args, **kwargs):
        decoded.append(text)
        return real_loads(text, *args, **kwargs)

    cache: dict = {}
    snapshot(tmp_path, {"a": ("RUNNING", 3), "b": ("PENDING", 0), "c": ("TERMINATED", 5)})
    monkeypatch.setattr(tracking.json, "loads", counting_loads)
    first = snapshot_trials(str(tmp_path), cache)
    assert first == {"a": ("RUNNING", 3), "b": ("PENDING", 0), "c": ("TERMINATED", 5)}
    assert len(decoded) == 1 + 3 * 2  # the file, then each trial's two texts
    snapshot(tmp_path, {"a": ("RUNNING", 4), "b": ("PENDING", 0), "c": ("TERMINATED", 5)})
    decoded.clear()
    second = snapshot_trials(str(tmp_path), cache)
    assert second == snapshot_trials(str(tmp_path)) == {"a": ("RUNNING", 4), "b": ("PENDING", 0), "c": ("TERMINATED", 5)}
    assert len(decoded) == 1 + 2 + (1 + 3 * 2)  # the file and trial a's texts; then the read without the cache
    snapshot(tmp_path, {"a": ("TERMINATED", 5)})
    assert snapshot_trials(str(tmp_path), cache) == {"a": ("TERMINATED", 5)}
    assert [trial_id for trial_id, _ in cache.values()] == ["a"]
