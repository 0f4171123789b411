"""Where a grid stands, read from its results folder alone (`adpo-ray status RUN_DIR`): works
while the grid runs and after it ends, without Ray and without reaching MLflow."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from adpo_ray.metrics import ENV_STEPS
from adpo_ray.orchestration.planning import trial_env_steps
from adpo_ray.orchestration.run_folder import LOCK_FILE, load_grid_file, local_run_dir
from adpo_ray.orchestration.spool import Spool
from adpo_ray.orchestration.tracking import PARENT_FILE, spool_folder
from adpo_ray.orchestration.tune_setup import packed
from adpo_ray.spec import pack_dirname

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
    rows = pd.read_csv(progress) if progress.exists() and progress.stat().st_size else pd.DataFrame()
    steps = int(rows[ENV_STEPS].max()) if ENV_STEPS in rows and len(rows) else 0
    if "done" in rows and len(rows) and bool(rows["done"].iloc[-1]):
        return "finished", steps
    errored = (folder / "error.txt").exists() and (
        not progress.exists() or (folder / "error.txt").stat().st_mtime > progress.stat().st_mtime)
    if errored:
        return "errored", steps
    return ("started" if folder.exists() else "not started"), steps


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
    for pack in (spec.packs() if packed(spec) else [[t] for t in spec.trials()]):
        # a trial pack's folder: its members share its state; its env steps are all members'
        folder = pack_dirname(pack) if len(pack) > 1 else pack[0].dirname
        state, steps = _trial_state(root / folder)
        if state == "started":
            state = "running" if alive else "stopped"
        for trial in pack:
            progress = envs.setdefault(trial.env, EnvProgress())
            budget = trial_env_steps(spec.knobs(trial))
            progress.trials[state] += 1
            progress.steps_done += min(steps // len(pack), budget)
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
        tracking_uri=options.tracking_uri, mlflow_pending=pending,
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
