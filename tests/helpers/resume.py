"""The kill/resume harness of the integration tests: launch a grid in its own process group, kill
it (SIGKILL) once a condition holds, judge what had finished from Tune's own experiment snapshot
in the results folder (what a resume restores), and resume it, checking which way it resumed."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from .grid import ROOT, run_py


def launch(spec_dict: dict, tmp_path: Path, uri: str, name: str, *args: str, env=None,
           **popen) -> subprocess.Popen:
    """`run_grid.py` on ``spec_dict`` (results in ``tmp_path/ray_results/name``), in a new process
    group so that a kill reaches its Ray workers too."""
    spec_file = tmp_path / f"{name}.yaml"
    spec_file.write_text(yaml.safe_dump(spec_dict, sort_keys=False))  # a search's axes in their order
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run_grid.py"), "--config", str(spec_file), "--tracking-uri", uri,
         "--storage-path", str(tmp_path / "ray_results"), "--name", name, *args],
        cwd=tmp_path, env=env, start_new_session=True, text=True, **popen,
    )


@dataclass
class Snapshot:
    """Tune's newest experiment snapshot in a results folder: per trial id, its status, its last
    result (``{}`` before the first) and the iteration of the checkpoint a restore starts from
    (0: none, the trial starts over)."""

    file: str
    status: dict[str, str]
    last_result: dict[str, dict]
    dirname: dict[str, str]  # the trial's folder in the results folder
    checkpoint_iteration: dict[str, int]

    @property
    def finished(self) -> set[str]:
        """Trials that ran to their end (Tune also marks trials cut short by Ctrl-C TERMINATED,
        but their last result is not ``done``)."""
        return {i for i, s in self.status.items() if s == "TERMINATED" and self.last_result[i].get("done")}


def tune_snapshot(run_dir: Path) -> Snapshot | None:
    """The newest ``experiment_state-*.json`` in ``run_dir``, or None when there is none.

    Raises ValueError while Tune copies the snapshot there (it copies its driver's logs and
    snapshot into the results folder with each snapshot, not as each result comes)."""
    files = sorted(Path(run_dir).glob("experiment_state-*.json"))
    if not files:
        return None
    stat = files[-1].stat()
    return _parse_snapshot(files[-1], stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _parse_snapshot(file: Path, mtime_ns: int, size: int) -> Snapshot:
    """One snapshot file as it was at ``mtime_ns`` (the kill conditions poll every 0.1 s; Tune
    writes a snapshot every 0.5 to 2 s, and parsing one takes about 25 ms)."""
    from ray.tune.utils.serialization import TuneFunctionDecoder

    state = json.loads(file.read_text())
    status, last, dirname, checkpoint = {}, {}, {}, {}
    for trial_json, metadata_json in state["trial_data"]:
        trial = json.loads(trial_json)
        # the trial's checkpoint manager is pickled into the snapshot, which the test itself made
        metadata = json.loads(metadata_json, cls=TuneFunctionDecoder, allow_cloudpickle=True)
        trial_id = trial["trial_id"]
        status[trial_id] = trial["status"]
        last[trial_id] = metadata.get("last_result") or {}
        dirname[trial_id] = trial["relative_logdir"]
        newest = getattr(metadata.get("checkpoint_manager"), "latest_checkpoint_result", None)
        checkpoint[trial_id] = newest.metrics["training_iteration"] if newest else 0
    return Snapshot(file.name, status, last, dirname, checkpoint)


def wait_until(proc: subprocess.Popen, condition, *, timeout: float = 400, poll: float = 0.1,
               what: str = "the kill point") -> None:
    """Poll ``condition()`` every ``poll`` s until it holds, while ``proc`` runs; fails (and kills
    ``proc``'s process group) if the grid ends first or the condition never holds."""
    deadline = time.time() + timeout
    try:
        while not condition():
            assert proc.poll() is None, f"the grid ended before {what}"
            if time.time() > deadline:
                pytest.fail(f"never reached {what}")
            time.sleep(poll)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):  # the grid may have ended by itself
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def kill_when(proc: subprocess.Popen, condition, *, timeout: float = 400, poll: float = 0.1,
              signal_: int = signal.SIGKILL, group: bool = True, what: str = "the kill point") -> None:
    """As soon as ``condition()`` holds (see :func:`wait_until`), SIGKILL ``proc``'s process group
    and wait for it; or send ``signal_`` to ``proc`` alone (``group=False``: e.g. SIGINT, which the
    caller then waits out).

    For the group, ``condition()`` is judged again with the group stopped (SIGSTOP): what it read
    (Tune's snapshot, MLflow's store) cannot change between that judgement and the kill, however
    fast the grid runs. If it no longer holds, the group goes on (SIGCONT) and so does the polling."""
    if not group:
        wait_until(proc, condition, timeout=timeout, poll=poll, what=what)
        os.kill(proc.pid, signal_)
        return

    def holds_while_stopped() -> bool:
        if not condition():
            return False
        os.killpg(proc.pid, signal.SIGSTOP)
        if condition():
            return True
        os.killpg(proc.pid, signal.SIGCONT)
        return False

    wait_until(proc, holds_while_stopped, timeout=timeout, poll=poll, what=what)
    os.killpg(proc.pid, signal_)
    proc.wait()


def results_seen(run_dir: Path, name: str) -> dict[str, int]:
    """Per Tune trial id, the newest training iteration its driver has taken in, as the
    launch's tracker records it (each result's metric records go to its spool's held file as
    they come, before Tune's snapshot lets them out): ahead of Tune's snapshot and logs in the
    results folder, which are copied there only with each snapshot."""
    from adpo_ray.orchestration.spool import HELD
    from adpo_ray.orchestration.tracking import spool_folder

    seen: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in (Path(spool_folder(str(run_dir), name)) / HELD).read_text().splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                entry = json.loads(line)
                if entry.get("iteration") is not None:
                    trial_id = entry["trial_id"]
                    seen[trial_id] = max(seen.get(trial_id, 0), int(entry["iteration"]))
    return seen


#: A trial's process: Ray names an actor's process after its class (``ray::GridTrainable``, and
#: ``ray::GridTrainable.train`` while a call runs); Ray's own processes and idle workers differ.
TRIAL_PROCESS = re.compile(r"ray::\w*Trainable\b")


def trial_processes(proc: subprocess.Popen) -> list[psutil.Process]:
    """The processes of the grid ``proc`` (a driver this test started) that run a trial. Ray
    starts them under its raylet, in process groups of their own: a kill of the driver's group
    does not reach them (they end once they notice their raylet gone)."""
    try:
        below = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in below:
        with contextlib.suppress(psutil.Error):
            if TRIAL_PROCESS.match(" ".join(p.cmdline())):
                out.append(p)
    return out


def _signal(processes: list[psutil.Process], signal_: int) -> None:
    for p in processes:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal_)


@contextlib.contextmanager
def trials_held(proc: subprocess.Popen, reached, *, timeout: float = 400, poll: float = 0.1,
                what: str = "the hold point"):
    """Hold the grid's trials still at a point, however fast they run, while its driver goes on.

    Once ``reached()`` holds (polled as :func:`wait_until` does), every trial process of the grid
    is stopped (SIGSTOP) and ``reached()`` judged again: if a trial moved past the point in
    between, or no trial process was found, they go on (SIGCONT) and so does the polling. Inside
    the block no trial trains, reports or ends, so the grid cannot end either, while Tune's driver
    still takes in the results it had, writes its snapshots and the tracker its MLflow writes: the
    test waits for those, then kills the grid (:func:`kill_when`) or lets the trials go on. On
    leaving the block the trials go on (SIGCONT), or are killed (SIGKILL) if the grid has ended: a
    stopped process would never notice its raylet gone.

    A trial may be stopped in the middle of anything, a checkpoint's save included (Tune then
    waits for the save, and does not end the trial, until the trial goes on): a point that needs
    a trial to have ended is judged by what comes after its end, e.g. the next trial's first
    result (:func:`results_seen`)."""
    held: list[psutil.Process] = []

    def stop() -> bool:
        held[:] = trial_processes(proc)
        if not held:  # between two trials' processes (or none started yet): a hold would hold nothing
            return False
        _signal(held, signal.SIGSTOP)
        if reached():
            return True
        _signal(held, signal.SIGCONT)
        return False

    try:
        wait_until(proc, lambda: reached() and stop(), timeout=timeout, poll=poll, what=what)
        yield held
    finally:
        _signal(held, signal.SIGKILL if proc.poll() is not None else signal.SIGCONT)


def resume(run_dir: Path, *args: str, expect: str, cwd: Path, env=None, timeout: float = 900) -> subprocess.CompletedProcess:
    """`adpo-ray resume run_dir *args`, asserting it succeeded and resumed the way ``expect`` says:
    ``"restore"`` (Tune restores its snapshot: every trial in it goes on under its id) or
    ``"start-over"`` (killed before Tune's first snapshot: the grid starts again)."""
    assert expect in ("restore", "start-over"), expect
    before = tune_snapshot(run_dir)
    assert (before is not None) == (expect == "restore"), f"expected a {expect}, snapshot: {before}"
    res = run_py("-m", "adpo_ray.cli", "resume", str(run_dir), *args, cwd=cwd, env=env, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    after = tune_snapshot(run_dir)
    assert after is not None
    if before is not None:
        assert after.file != before.file and set(before.status) <= set(after.status)
    return res


def assert_same_curves(tracking_uri: str, experiment: str, run_dir: Path) -> None:
    """The report's tables read from MLflow and from Tune's folder agree: the same trials, the
    same steps of every curve, the same values (the first attempt of a replayed step, in both)."""
    import numpy as np

    from adpo_ray.report.data import load_mlflow, load_tune_folder

    a, b = load_mlflow(tracking_uri, experiment), load_tune_folder(run_dir)
    assert sorted(a.trials["trial"]) == sorted(b.trials["trial"])
    key = ["trial", "metric", "env_steps"]
    ca = a.curves.sort_values(key).reset_index(drop=True)
    cb = b.curves.sort_values(key).reset_index(drop=True)
    rows_a, rows_b = ca[key].values.tolist(), cb[key].values.tolist()
    if rows_a != rows_b:  # say which steps differ, not just that they do
        only_a = sorted(set(map(tuple, rows_a)) - set(map(tuple, rows_b)))
        only_b = sorted(set(map(tuple, rows_b)) - set(map(tuple, rows_a)))
        raise AssertionError(f"curves differ: {len(rows_a)} steps in MLflow, {len(rows_b)} in Tune's folder; "
                             f"only in MLflow {only_a[:20]}, only in Tune's folder {only_b[:20]}")
    np.testing.assert_allclose(ca["value"].to_numpy(), cb["value"].to_numpy(), rtol=1e-6)


def tune_progress(run_dir: Path) -> dict[str, list[dict[str, str]]]:
    """Each trial folder's progress.csv rows: Tune's driver writes one per result in its own
    staging folder and copies them into ``run_dir`` with each snapshot."""
    import csv

    out = {}
    for path in Path(run_dir).glob("*/progress.csv"):
        with open(path, newline="") as f:
            out[path.parent.name] = list(csv.DictReader(f))
    return out


def checkpoints_written(run_dir: Path) -> dict[str, int]:
    """Per trial folder, how many checkpoints its trial has saved (the newest one's index + 1;
    Tune keeps only the newest few). Each goes straight into the results folder as it is saved;
    Tune's logs and snapshot are copied there only with each snapshot, so they lag behind."""
    counts = {}
    for path in Path(run_dir).glob("*/checkpoint_*"):
        index = int(path.name.rpartition("_")[2]) + 1
        counts[path.parent.name] = max(index, counts.get(path.parent.name, 0))
    return counts


def done_in_folder(run_dir: Path) -> set[str]:
    """Trial folders whose last result in ``run_dir`` says ``done`` (as of the last copy there,
    see :func:`tune_progress`)."""
    return {name for name, rows in tune_progress(run_dir).items() if rows and rows[-1].get("done") == "True"}
