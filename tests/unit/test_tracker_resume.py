"""What a resumed tracker recovers from a killed driver's results folder, before the first result
of the resume: records it held for trials Tune's snapshot restored, and steps Tune's loggers wrote
to a trial's ``progress.csv`` before the driver died, which the spool never got. A real tracker
on a real sqlite store; the trial is Tune's restored trial as the callback sees it. No Ray start."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from adpo_ray.orchestration.tracking import MLflowTracker
from adpo_ray.spec import parse_spec

SPEC = {"name": "t", "environments": ["PreferenceBandit"], "scenarios": ["clean"], "algorithms": ["adpo"],
        "anchors": {"modes": ["fixed"]}, "hidden_sizes": [16], "seeds": [0], "budget": {"iterations": 4}}


def restored_trial(spec, trial_id: str):
    (t,) = spec.trials()
    config = {"spec": spec.model_dump(mode="json", by_alias=True), "trial": t.as_dict()}
    return t, SimpleNamespace(trial_id=trial_id, config=config, status="PENDING", last_result={},
                              num_failures=0, checkpoint=None)


def snapshot(run_dir, statuses: dict[str, str]) -> None:
    data = [[json.dumps({"trial_id": i, "status": s}), "{}"] for i, s in statuses.items()]
    (run_dir / "experiment_state-2026-11-30_00-00-00.json").write_text(json.dumps({"trial_data": data}))


def test_a_resume_logs_the_steps_tunes_folder_holds_and_the_spool_lacks(tmp_path):
    spec = parse_spec(SPEC)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    t, trial = restored_trial(spec, "abc")
    snapshot(run_dir, {"abc": "RUNNING"})

    # the killed launch: step 100 reached the spool; 200 reached Tune's progress.csv only
    first = MLflowTracker(spec, uri, str(tmp_path / "art"), str(run_dir), "g")
    first.setup()
    first.on_trial_start(0, [trial], trial)
    first.on_trial_result(0, [trial], trial, {"env_steps": 100, "training_iteration": 1, "eval/winmass": 0.25})
    first._sender.stop(flush_timeout=30)
    folder = run_dir / t.dirname
    folder.mkdir()
    with open(folder / "progress.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["eval/winmass", "env_steps", "training_iteration", "done", "timestamp"])
        w.writeheader()
        w.writerow({"eval/winmass": 0.25, "env_steps": 100, "training_iteration": 1, "done": False, "timestamp": 1})
        w.writerow({"eval/winmass": 0.5, "env_steps": 200, "training_iteration": 2, "done": False, "timestamp": 2})
        f.write("0.75,30")  # a row torn by the kill

    again = MLflowTracker(spec, uri, str(tmp_path / "art"), str(run_dir), "g")
    again.setup()
    again.on_step_begin(0, [trial])
    # the resume replays step 200 from the checkpoint of step 100: other values, not the record
    again.on_trial_result(0, [trial], trial, {"env_steps": 200, "training_iteration": 2, "eval/winmass": 0.9})
    again.on_trial_result(0, [trial], trial, {"env_steps": 300, "training_iteration": 3, "eval/winmass": 0.6})
    assert again._sender.stop(flush_timeout=30) == 0
    client = MlflowClient(uri)
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("t").experiment_id])
              if r.data.tags.get("trial") == t.tag]
    history = client.get_metric_history(run.info.run_id, "eval/winmass")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(100, 0.25), (200, 0.5), (300, 0.6)]


def test_a_resume_lets_out_records_held_for_a_trial_the_snapshot_restored(tmp_path):
    spec = parse_spec(SPEC)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    t, trial = restored_trial(spec, "abc")

    # the killed launch: the trial was not in a snapshot yet, so its records were held
    first = MLflowTracker(spec, uri, str(tmp_path / "art"), str(run_dir), "g")
    first.setup()
    first.on_trial_start(0, [trial], trial)
    first.on_trial_result(0, [trial], trial, {"env_steps": 100, "training_iteration": 1, "eval/winmass": 0.25})
    first._sender.stop(flush_timeout=30)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("t")
    assert [r.data.tags.get("trial") for r in client.search_runs([exp.experiment_id])] == [None]  # the parent only
    # ... then the snapshot that holds it was written, and the driver died before letting them out
    snapshot(run_dir, {"abc": "RUNNING"})

    again = MLflowTracker(spec, uri, str(tmp_path / "art"), str(run_dir), "g")
    again.setup()
    again.on_step_begin(0, [trial])
    again.on_trial_result(0, [trial], trial, {"env_steps": 200, "training_iteration": 2, "eval/winmass": 0.5})
    assert again._sender.stop(flush_timeout=30) == 0
    (run,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("trial") == t.tag]
    history = client.get_metric_history(run.info.run_id, "eval/winmass")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(100, 0.25), (200, 0.5)]
