"""Nothing lost, whatever fails (real Ray, Tune, RLlib, MLflow): a tracking server that dies
mid-grid, a driver killed at any point, a truncated state file, two launches with one name, a
trial restored from its final checkpoint, two launches needing one teacher."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from adpo_ray.orchestration.trainable import GridTrainable
from adpo_ray.spec import parse_spec

from ..helpers.grid import (
    SMALL,
    check_complete,
    children,
    free_port,
    mlflow_server,
    new_store,
    steps,
)
from ..helpers.resume import (
    checkpoints_written,
    kill_when,
    launch,
    resume,
    trials_held,
    tune_snapshot,
    wait_until,
)

pytestmark = pytest.mark.slow


def _cli(*args: str, cwd: Path, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adpo_ray.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.long_running
def test_tracking_server_dies_mid_grid_then_sync(tmp_path):
    """The server dies after the grid's first results and stays down: the grid still ends (exit
    0, no trial errors) and says what is pending; once the server is back, `adpo-ray sync`
    delivers every write exactly once."""
    iterations = 6
    spec_dict = {**SMALL, "name": "outage", "budget": {"iterations": iterations, "checkpoint_every": 3}}
    port = free_port()
    backend, artifacts = new_store(tmp_path, "server.db"), tmp_path / "server-artifacts"
    env = {**os.environ, "ADPO_RAY_MLFLOW_FLUSH_S": "1"}
    run_dir = tmp_path / "ray_results" / "o"

    def a_result_in_mlflow() -> bool:
        try:
            _, kids = children(client, "outage")
        except Exception:  # noqa: BLE001 - the experiment is not there yet
            return False
        return any("env_steps" in k.data.metrics for k in kids)

    with contextlib.ExitStack() as held:
        with mlflow_server(backend, artifacts, port=port) as uri:
            proc = launch(spec_dict, tmp_path, uri, "o", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            client = MlflowClient(uri)
            # the trials held from their first checkpoint until the server has died: their first
            # results reach it (once Tune's snapshot holds them), the rest cannot before it dies
            held.enter_context(trials_held(proc, lambda: bool(checkpoints_written(run_dir)), timeout=300,
                                           what="a checkpoint"))
            wait_until(proc, a_result_in_mlflow, timeout=300, poll=0.25, what="a result in MLflow")
        # the server is gone now, and stays gone until the grid has ended
        assert proc.poll() is None, "the grid ended before the server died: " + proc.stdout.read()[-3000:]
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    assert "write(s) not delivered" in out and "adpo-ray sync" in out, out[-3000:]
    summary = (tmp_path / "ray_results" / "o" / "summary.csv").read_text()
    assert "ERROR" not in summary and summary.count("TERMINATED") == 4
    assert (tmp_path / "ray_results" / "o" / "report" / "report.html").exists()  # from Tune's folder

    with mlflow_server(backend, artifacts, port=port) as uri:
        res = _cli("sync", str(tmp_path / "ray_results" / "o"), cwd=tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "nothing pending" in res.stdout
        again = _cli("sync", str(tmp_path / "ray_results" / "o"), cwd=tmp_path)
        assert again.returncode == 0 and "0 write(s) delivered" in again.stdout  # exactly once
        check_complete(MlflowClient(uri), "outage", spec_dict, iterations, SMALL["train"]["train_batch_size"])


KILLED = {**SMALL, "name": "killpoint", "scenarios": ["clean", "flip-high"],
          "budget": {"iterations": 6, "checkpoint_every": 3}}


@pytest.mark.long_running
def test_driver_killed_before_its_first_snapshot_then_while_its_resume_reports(tmp_path):
    """The driver killed as early as it can be caught (before Tune's first snapshot): the resume
    starts the grid over. That resume killed in turn once every trial has ended and its summary is
    written (while it writes the report, or just after: the kill is not timed closer): the next
    resume restores Tune's last snapshot and trains nothing again. The grid ends complete, each
    trial one child run with every step once."""
    uri = new_store(tmp_path)
    run_dir = tmp_path / "ray_results" / "k"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    proc = launch(KILLED, tmp_path, uri, "k", env=env)
    kill_when(proc, lambda: (run_dir / "adpo_grid.json").exists(), poll=0.02)
    assert tune_snapshot(run_dir) is None and not (run_dir / "summary.csv").exists()  # so it starts over
    log = tmp_path / "resume.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "adpo_ray.cli", "resume", str(run_dir)], cwd=tmp_path, env=env,
                                start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    try:
        kill_when(proc, lambda: (run_dir / "summary.csv").exists(), what="the resumed grid's summary")
    except AssertionError as e:  # the resume's own words say why it ended (exit code included)
        raise AssertionError(f"{e}; resume exited {proc.poll()}:\n{log.read_text()[-3000:]}") from e
    resume(run_dir, expect="restore", cwd=tmp_path, env=env)
    assert (run_dir / "report" / "report.html").exists()
    check_complete(MlflowClient(uri), "killpoint", KILLED, 6, SMALL["train"]["train_batch_size"])


@pytest.mark.long_running
def test_ctrl_c_then_resume(tmp_path):
    """SIGINT (Ctrl-C) to a 2-trial grid during its 2nd trial: the launch exits non-zero and names
    `adpo-ray resume`, not Tune's Tuner.restore; its parent run is KILLED with no summary metrics,
    the stopped trial's child KILLED, the finished one's FINISHED; the end-of-grid table calls no
    partial value final. The resume then finishes both, one child run each, every step once."""
    spec_dict = {**SMALL, "name": "interrupted", "anchors": {"modes": ["fixed"]},
                 "budget": {"iterations": 16, "checkpoint_every": 4},
                 "resources": {**SMALL["resources"], "max_concurrent_trials": 1, "pack": 1}}
    uri = new_store(tmp_path)
    run_dir = tmp_path / "ray_results" / "c"
    with open(tmp_path / "out.txt", "w") as out:
        proc = launch(spec_dict, tmp_path, uri, "c", stdout=out, stderr=subprocess.STDOUT)

        def second_trial_past_its_first_checkpoint() -> bool:
            # judged from the checkpoints (one every 4 iterations: 4 in a finished trial), which
            # go into the folder as they are saved: the 2nd trial has checkpointed iteration 4
            # (its driver had that result), the 1st has ended, the 2nd has 12 iterations to go
            written = sorted(checkpoints_written(run_dir).values())
            return len(written) == 2 and written[0] < 4 == written[1]

        try:
            kill_when(proc, second_trial_past_its_first_checkpoint, signal_=signal.SIGINT, group=False)
            code = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = (tmp_path / "out.txt").read_text()
    assert code == 130, text[-3000:]
    assert f"adpo-ray resume {run_dir}" in text and "Tuner.restore" not in text, text[-3000:]
    assert "trial(s) unfinished, left out of the table" in text
    # Tune's progress table, printed while the grid ran: a row per solo trial (the finished one
    # and the stopped one), under its name
    rows = {line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")}
    assert rows >= {t.dirname for t in parse_spec(spec_dict).trials()}, text[-3000:]
    summary = (run_dir / "summary.csv").read_text()
    assert "UNFINISHED" in summary and summary.count("TERMINATED") == 1, summary
    assert not (run_dir / "report").exists() and "report:" not in text  # no report of a cut-short grid
    client = MlflowClient(uri)
    parents, kids = children(client, "interrupted")
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    assert not [m for m in parents[0].data.metrics if m.startswith("summary/")]
    assert sorted(k.info.status for k in kids) == ["FINISHED", "KILLED"], [(k.data.tags["trial"], k.info.status) for k in kids]
    stopped = next(k for k in kids if k.info.status == "KILLED")
    assert 4 <= len(steps(client, stopped.info.run_id)) < 16

    resume(run_dir, "--no-report", expect="restore", cwd=tmp_path)  # its data, not its report
    parents, kids = children(client, "interrupted")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["summary/PreferenceBandit/adpo-fixed/winmass_n"] == 2
    assert stopped.info.run_id in {k.info.run_id for k in kids}  # the same child run goes on
    check_complete(client, "interrupted", spec_dict, 16, SMALL["train"]["train_batch_size"])


def test_two_launches_with_one_name(tmp_path):
    """Started together with the same --name: exactly one proceeds, the other is refused and names
    the first; nothing of the first is touched."""
    spec = {**SMALL, "name": "twins", "scenarios": ["clean"], "anchors": {"modes": ["fixed"]},
            "budget": {"iterations": 2}}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    a = launch(spec, tmp_path, uri, "same", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    b = launch(spec, tmp_path, uri, "same", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    outs = [p.communicate(timeout=600) for p in (a, b)]
    codes = sorted(p.returncode for p in (a, b))
    assert codes == [0, 2], outs
    refused = next(err for (out, err), p in zip(outs, (a, b), strict=True) if p.returncode == 2)
    assert "is taken by launch 'same'" in refused or "already holds a grid" in refused, refused
    parents, kids = children(MlflowClient(uri), "twins")
    assert len(parents) == 1 and len(kids) == 1 and kids[0].info.status == "FINISHED"


def test_restore_from_final_checkpoint_trains_no_more(ray_local, tmp_path):
    spec = parse_spec({**SMALL, "budget": {"iterations": 3, "checkpoint_every": 1}})
    config = {"spec": spec.model_dump(mode="json", by_alias=True), "trial": spec.trials()[0].as_dict()}
    trainable = GridTrainable(config)
    results = [trainable.train() for _ in range(3)]
    assert results[-1]["done"] and results[-1]["training_iteration"] == 3
    path = trainable.save(str(tmp_path / "final"))
    trainable.stop()
    again = GridTrainable(config)
    again.restore(path)
    result = again.train()
    assert result["done"] and result["env_steps"] == results[-1]["env_steps"]
    assert again.algo.iteration == 3  # no iteration past the budget
    assert result["eval/winmass"] == pytest.approx(results[-1]["eval/winmass"])
    again.stop()


def test_two_launches_needing_one_teacher_train_it_once(ray_local, tmp_path):
    from adpo_ray.orchestration.datasets import prepare
    from adpo_ray.orchestration.policies import TEACHER_TAG

    from ..helpers.distill import DISTILL

    spec = parse_spec({**DISTILL, "distill": {**DISTILL["distill"], "teacher": {"env_steps": 256, "hidden_size": 16,
                                                                                "seed": 9}}})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out: list = [None, None]

    def launch(i: int) -> None:
        out[i] = prepare(spec, uri, str(tmp_path / "mlartifacts"), log=lambda *_: None)

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    assert out[0] and out[1]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("adpo-ray-teachers").experiment_id])
    finished = [r for r in runs if r.info.status == "FINISHED" and TEACHER_TAG in r.data.tags]
    assert len(finished) == 1  # one teacher trained; a losing claim, if any, is KILLED, never trained
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)
    assert out[0]["Hopper-v5"]["run_id"] == out[1]["Hopper-v5"]["run_id"] == finished[0].info.run_id
    assert sum(o["Hopper-v5"]["trained"] for o in out) == 1
