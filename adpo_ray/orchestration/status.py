"""Where a grid stands, read from its results folder alone (`adpo-ray status RUN_DIR`): works
while the grid runs and after it ends, without Ray and without reaching MLflow. Given an MLflow
run id instead (`adpo-ray status RUN_ID`: a trial's child run, a trial pack member's included, or
a launch's parent run), the run's own record in MLflow leads to its launch's folder."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from adpo_ray.metrics import ENV_STEPS, MEMBERS, member_ended
from adpo_ray.orchestration.planning import trial_env_steps
from adpo_ray.orchestration.run_folder import LOCK_FILE, load_grid_file, local_run_dir
from adpo_ray.orchestration.spool import Spool
from adpo_ray.orchestration.tracking import PARENT_FILE, spool_folder
from adpo_ray.orchestration.tune_setup import packed
from adpo_ray.report.data import read_progress
from adpo_ray.spec import TrialSpec, pack_dirname

#: Trial states: ``running`` while the launch is alive, ``stopped`` when it is not (resume it).
STATES = ("finished", "running", "stopped", "errored", "not started")


@dataclass
class EnvProgress:
    trials: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    steps_done: int = 0
    steps_budget: int = 0


@dataclass
class GridStatus:
    run_dir: str
    launch: str
    alive: bool
    started: float
    envs: dict[str, EnvProgress]
    parent_run_id: str | None
    experiment_id: str | None
    tracking_uri: str
    mlflow_pending: int | None
    #: every trial by its tag: (state, env steps budget), as counted in ``envs``
    by_trial: dict[str, tuple[str, int]] = field(default_factory=dict, repr=False)

    @property
    def trials(self) -> dict[str, int]:
        return {s: sum(e.trials[s] for e in self.envs.values()) for s in STATES}

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the pace so far (None when nothing ran yet or nothing is left)."""
        done = sum(e.steps_done for e in self.envs.values())
        left = sum(e.steps_budget for e in self.envs.values()) - done
        elapsed = time.time() - self.started
        if not self.alive or done <= 0 or left <= 0 or elapsed <= 0:
            return None
        return left * elapsed / done

    @property
    def ui_link(self) -> str | None:
        if not self.parent_run_id or not self.experiment_id:
            return None
        base = self.tracking_uri if self.tracking_uri.startswith("http") else "http://127.0.0.1:5000"
        return f"{base.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.parent_run_id}"


def _trial_state(folder: Path) -> tuple[str, int]:
    progress = folder / "progress.csv"
    rows = read_progress(folder)
    steps = int(rows[ENV_STEPS].max()) if ENV_STEPS in rows and len(rows) else 0
    if "done" in rows and len(rows) and bool(rows["done"].iloc[-1]):
        return "finished", steps
    errored = (folder / "error.txt").exists() and (
        not progress.exists() or (folder / "error.txt").stat().st_mtime > progress.stat().st_mtime)
    if errored:
        return "errored", steps
    return ("started" if folder.exists() else "not started"), steps


def member_progress(folder: Path, members: int, tail_bytes: int = 1 << 16) -> list[tuple[int, bool]] | None:
    """Each member's (env steps, ended: :func:`~adpo_ray.metrics.member_ended`) in a trial pack's
    Tune ``folder``, from the last whole result in its ``result.json``: read from the end,
    ``tail_bytes`` first and twice as much while no whole result is found, so a long run's file
    (about 14 KB an iteration for a pack of 16) is not read whole. None before a result of
    ``members`` members (no file, a torn line only, another pack size)."""
    path = folder / "result.json"
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            while True:
                f.seek(max(0, size - tail_bytes))
                found = _last_members(f.read().decode("utf-8", errors="replace").splitlines(), members)
                if found is not None or tail_bytes >= size:
                    return found
                tail_bytes *= 2
    except OSError:
        return None


def _last_members(lines: list[str], members: int) -> list[tuple[int, bool]] | None:
    for line in reversed(lines):
        try:
            result = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill, or the first one cut by the tail
        found = result.get(MEMBERS) if isinstance(result, dict) else None
        if isinstance(found, list) and len(found) == members and all(isinstance(m, dict) for m in found):
            return [(int(m.get(ENV_STEPS) or 0), member_ended(result, m)) for m in found]
    return None


def _trial_states(spec, root: Path, alive: bool) -> dict[str, tuple[TrialSpec, str, int, int]]:
    """Every trial of ``spec`` by its tag: (trial, state, env steps done, env steps budget), read
    from its Tune folder in ``root``. A trial pack's members share the pack's folder and state,
    but each has its own env steps and ends at its own budget (:func:`member_progress`; before the
    pack's first result, the pack's steps divided among them)."""
    out = {}
    for pack in (spec.packs() if packed(spec) else [[t] for t in spec.trials()]):
        folder = pack_dirname(pack) if len(pack) > 1 else pack[0].dirname
        state, steps = _trial_state(root / folder)
        if state == "started":
            state = "running" if alive else "stopped"
        members = member_progress(root / folder, len(pack)) if len(pack) > 1 else None
        for k, trial in enumerate(pack):
            budget = trial_env_steps(spec.knobs(trial))
            own_state, own_steps = state, steps // len(pack)
            if members is not None:
                own_steps, ended = members[k]
                own_state = "finished" if ended else state
            out[trial.tag] = (trial, own_state, min(own_steps, budget), budget)
    return out


def grid_status(run_dir: str | os.PathLike) -> GridStatus:
    """Where the grid in ``run_dir`` stands (a folder on this machine, resolved by
    :func:`~adpo_ray.orchestration.run_folder.resolve_run_dir`; ``GridStatus.run_dir`` is the
    resolved folder). Raises ValueError for a URI (local folders only), FileNotFoundError when
    the folder holds no grid."""
    run_dir = local_run_dir(run_dir, "RUN_DIR", "adpo-ray status")
    spec, options = load_grid_file(run_dir)
    root = Path(run_dir)
    alive = _alive(root)
    envs: dict[str, EnvProgress] = {}
    by_trial = {}
    for tag, (trial, state, steps, budget) in _trial_states(spec, root, alive).items():
        by_trial[tag] = (state, budget)
        progress = envs.setdefault(trial.env, EnvProgress())
        progress.trials[state] += 1
        progress.steps_done += steps
        progress.steps_budget += budget
    parent = {}
    if (root / PARENT_FILE).exists():
        try:
            parent = json.loads((root / PARENT_FILE).read_text())
        except ValueError:
            parent = {}
    folder = spool_folder(run_dir, options.name)
    pending = Spool(folder).pending() if os.path.exists(os.path.join(folder, "spool.json")) else None
    return GridStatus(
        run_dir=run_dir, launch=options.name, alive=alive,
        started=(root / "adpo_grid.json").stat().st_mtime, envs=envs,
        parent_run_id=parent.get("run_id"), experiment_id=parent.get("experiment_id"),
        tracking_uri=options.tracking_uri, mlflow_pending=pending, by_trial=by_trial,
    )


def _alive(root: Path) -> bool:
    """Whether the launch holding the folder is running (on this host)."""
    import socket

    import psutil

    try:
        holder = json.loads((root / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return False
    return holder.get("host") == socket.gethostname() and psutil.pid_exists(int(holder.get("pid", 0) or 0))


@dataclass
class TrialStatus:
    """One trial, as its MLflow child run and its launch's folder record it."""

    run_id: str
    trial: str  # the trial's tag (its child run's ``trial`` tag)
    method: str
    env: str
    scenario: str
    run_status: str  # MLflow's: RUNNING, FINISHED, KILLED, FAILED
    logged_steps: int  # the run's last ``env_steps`` (a pack member's own), 0 before its first result
    pack: str | None = None  # the trial pack's Tune trial id, for a member
    member: int | None = None  # its place in the pack, from 0
    state: str | None = None  # one of STATES, from the launch's folder (None when not on this machine)
    steps_budget: int | None = None  # from the launch's folder


@dataclass
class RunStatus:
    """Where the run ``adpo-ray status RUN_ID`` was given stands: its launch's folder, that
    grid's status when the folder is on this machine, and the trial when the run is a trial's."""

    run_dir: str | None
    grid: GridStatus | None
    trial: TrialStatus | None
    note: str | None = None  # why ``grid`` is None


def run_status(run_id: str, tracking_uri: str) -> RunStatus:
    """The status of a grid's MLflow run at ``tracking_uri``: a trial's child run (a solo trial's
    or a trial pack member's) or a launch's parent run. The launch's folder is the parent run's
    ``run_dir`` tag; where it is not a folder on this machine, ``RunStatus.grid`` is None and
    ``note`` says why (the trial's progress then comes from MLflow alone).

    Raises:
        FileNotFoundError: no run ``run_id`` at ``tracking_uri`` (or the store does not answer).
        ValueError: the run is not a grid's (a stored teacher or pretrained policy, say).
    """
    from adpo_ray.orchestration.mlflow_store import client, existing_store
    from adpo_ray.orchestration.tracking import PACK_MEMBER_TAG, PACK_TAG

    store = client(existing_store(tracking_uri))
    try:
        run = store.get_run(run_id)
    except Exception as e:  # noqa: BLE001 - no such run, or the store is away: say which
        raise FileNotFoundError(f"{run_id!r} is neither a results folder nor a run at {tracking_uri} ({e})") from None
    tags = run.data.tags
    trial = None
    launch = run
    if "trial" in tags:
        parent = tags.get("mlflow.parentRunId")
        launch = store.get_run(parent) if parent else None
        member = tags.get(PACK_MEMBER_TAG)
        trial = TrialStatus(
            run_id=run_id, trial=tags["trial"], method=tags.get("method", ""), env=tags.get("env", ""),
            scenario=tags.get("scenario", ""), run_status=run.info.status,
            logged_steps=int(run.data.metrics.get(ENV_STEPS, 0)), pack=tags.get(PACK_TAG),
            member=int(member) if member is not None else None)
    elif tags.get("kind") != "grid":
        raise ValueError(f"run {run_id} is neither a grid's launch (parent) run nor one of its trials' child runs "
                         f"(tags: {', '.join(sorted(k for k in tags if not k.startswith('mlflow.'))) or 'none'})")
    run_dir = launch.data.tags.get("run_dir") if launch is not None else None
    if not run_dir:
        return RunStatus(None, None, trial, "its launch's run names no results folder")
    try:
        grid = grid_status(run_dir)
    except (FileNotFoundError, ValueError) as e:
        return RunStatus(run_dir, None, trial, str(e))
    if trial is not None and trial.trial in grid.by_trial:
        trial.state, trial.steps_budget = grid.by_trial[trial.trial]
    return RunStatus(grid.run_dir, grid, trial)
