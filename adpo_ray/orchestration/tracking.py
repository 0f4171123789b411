"""MLflow tracking of a grid, as a Tune callback running on the driver.

* one MLflow experiment per spec name, one *parent* run per launch, one *child* run per trial
  (``mlflow.parentRunId``; each member of a trial pack has its own, tagged ``pack``,
  ``pack_member`` and, once the pack ended, ``pack_checkpoint``), tagged with
  the trial's coordinates so the MLflow UI can filter and group by scenario, noise type,
  severity, anchor mode, hidden size, env, seed and algorithm;
* params: each trial's effective settings (``spec.knobs(trial)``); curated metrics, logged in
  batches with the env-step count as the step;
* artifacts: the resolved spec on the parent; the metrics CSV and final checkpoint on each child.

Nothing here waits on MLflow: every write goes to the launch's spool
(:mod:`adpo_ray.orchestration.spool`), which a sender thread delivers with short timeouts and
retries. A tracking store that goes away never fails a trial or the grid, and never holds Tune
up; what could not be sent by the grid's end is reported and delivered by `adpo-ray sync RUN_DIR`
(or `adpo-ray resume`), exactly once. Resuming re-attaches: runs are found again by their run
key, metric steps already recorded are not recorded twice (the first attempt of a step wins, as
in the report read from Tune's folder), so every trial has one child run and one history.

Tune's experiment snapshot, not MLflow, says which trials exist, how far each trained and which
are done; MLflow mirrors it. A trial's records wait (held on disk) until the snapshot in the results
folder holds the trial (a trial Tune never snapshotted is created again by a resume, under a new
id), its metric steps until the snapshot holds their iteration (a resume trains later iterations
again, and Tune's folder keeps what the snapshot holds: so MLflow and the folder keep the same
value of every step; MLflow shows a step one or two snapshots late, every 5 s by default), and its
terminal records (FINISHED or FAILED, metrics.csv, checkpoint) until the snapshot holds it as ended,
so a driver killed in between never leaves MLflow calling a trial finished that a resume then
trains again. A resume lets out what a killed driver held up to its snapshot, and logs any step
the trial folder holds that the spool lacks. An interrupted launch (Ctrl-C) marks its parent run
and the trials it stopped KILLED.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

from ray import tune

from adpo_ray.metrics import (
    ENV_STEPS,
    TRAINING_ITERATION,
    is_metric_key,
    member_results,
    whole_lines,
)
from adpo_ray.orchestration import storage
from adpo_ray.orchestration.mlflow_store import mlflow_key
from adpo_ray.orchestration.spool import REJECTED, SPOOL_DIR, Sender, Spool
from adpo_ray.spec import ExperimentSpec, TrialSpec, init_slot, trials_of, unit_name

PARENT_FILE = "adpo_mlflow_parent.json"
#: The child-run tag of a trial pack's member: the Tune trial id of the pack that ran it.
PACK_TAG = "pack"
#: A pack member's run tags: its index in the pack (``0 .. K-1``, ``adpo-ray evaluate --member``)
#: and, once the pack ended, where the pack's final checkpoint is (a local path or a URI).
PACK_MEMBER_TAG = "pack_member"
PACK_CHECKPOINT_TAG = "pack_checkpoint"
#: Tune's results in each trial folder: one row per result (a solo trial's steps are read here)
#: and one JSON line per result (a pack's: its progress.csv holds the members' list as one cell).
PROGRESS_FILE = "progress.csv"
RESULT_FILE = "result.json"
#: Parent-run tags ``method_label/<name>``: the method label behind each summary metric's name.
LABEL_TAG = "method_label"
#: The experiment's description in the MLflow UI: how to compare anchor strategies there.
EXPERIMENT_NOTE = (  # plain words: the UI renders it as Markdown (angle brackets would vanish as tags)
    "Compare anchor strategies: each launch is a parent run; its `summary/ENV/METHOD/METRIC_mean` (and _iqm, "
    "_ci_low, _ci_high) metrics rank the methods (sort, filter, or open several launches in Compare).\n"
    "Expand a launch for its child runs, one per trial, tagged scenario, noise_type, severity, anchor_mode, "
    "method, hidden_size, env, seed.\n"
    "Filter children by tags.scenario, group or colour by anchor_mode, and chart eval/winmass (bandit) or "
    "eval/return_mean (MuJoCo) against env steps."
)
#: Seconds the end of a grid waits for the spool to drain before it reports what is pending.
FLUSH_TIMEOUT_S = float(os.environ.get("ADPO_RAY_MLFLOW_FLUSH_S", "60"))


def write_parent_note(run_dir: str, run_id: str, experiment_id: str | None) -> None:
    """Note the launch's parent MLflow run in its results folder (read by status and the report)."""
    storage.write_text(storage.join(run_dir, PARENT_FILE), json.dumps({"run_id": run_id, "experiment_id": experiment_id}))


def spool_folder(run_dir: str, launch_name: str) -> str:
    """The launch's spool: in its results folder; for results on remote storage (``s3://``...),
    which allows no appends, in ``$ADPO_RAY_SPOOL_DIR`` (default ``~/.cache/adpo-ray/spool``) on
    the driver's machine, one folder per results URI."""
    if storage.is_uri(run_dir):
        import hashlib

        root = os.environ.get("ADPO_RAY_SPOOL_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "adpo-ray", "spool")
        digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:12]
        return os.path.join(root, f"{launch_name}-{digest}")
    return os.path.join(run_dir, SPOOL_DIR)


def run_tags(trial: TrialSpec, grid: str) -> dict[str, str]:
    return {
        "trial": trial.tag,
        "grid": grid,
        "env": trial.env,
        "scenario": trial.scenario,
        "noise_type": trial.noise_type,
        "severity": trial.severity,
        "algorithm": trial.algorithm,
        "anchor_mode": trial.anchor_mode,
        "method": trial.method,
        "hidden_size": str(trial.hidden_size),
        "seed": str(trial.seed),
        **{mlflow_key(f"sweep.{path}"): str(value) for path, value in trial.sweep},
        **({"sample": trial.sample} if trial.sample else {}),
    }


def software_tags() -> dict[str, str]:
    import mlflow
    import ray
    import torch

    import adpo_ray

    tags = {
        "version.adpo_ray": adpo_ray.__version__,
        "version.ray": ray.__version__,
        "version.torch": torch.__version__,
        "version.mlflow": mlflow.__version__,
    }
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    return tags


def _git_commit() -> str | None:
    """The commit of this checkout, or of the image it was built into (``ADPO_RAY_GIT_COMMIT``,
    set by docker/Dockerfile's GIT_COMMIT build arg: an image has no .git)."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    baked = os.environ.get("ADPO_RAY_GIT_COMMIT", "")
    return baked if baked and baked != "unknown" else None


class MLflowTracker(tune.Callback):
    """Tune callback logging a grid to MLflow through a spool (see the module docstring)."""

    def __init__(
        self,
        spec: ExperimentSpec,
        tracking_uri: str,
        artifact_location: str | None,
        run_dir: str,
        launch_name: str,
    ):
        self.spec_dict = spec.model_dump(mode="json", by_alias=True)
        self.tracking_uri = tracking_uri
        self.artifact_location = artifact_location
        self.run_dir = str(run_dir)
        self.launch_name = launch_name
        self.pending_at_end: int | None = None
        self.rejected_at_end: int | None = None
        self._spool: Spool | None = None
        self._sender: Sender | None = None
        self._state: dict[str, Any] = {}
        self._spec: ExperimentSpec | None = None
        #: trial ids in the newest experiment snapshot in the results folder
        self._durable: set[str] = set()
        #: trial id -> records of a trial not yet in that snapshot
        self._unborn: dict[str, list[dict[str, Any]]] = {}
        #: trial id -> (child key, terminal records, the Tune statuses that let them out)
        self._deferred: dict[str, tuple[str, list[dict[str, Any]], tuple[str, ...]]] = {}
        self._reconciled = False
        #: the experiment snapshot's trial entries last read (:func:`snapshot_trials`)
        self._snapshot_cache: dict[tuple[str, str], Any] = {}
        #: set at the end: whether the launch stopped before every trial had ended (Ctrl-C)
        self.interrupted = False

    # The spool's file, the sender's thread and the validated spec are this process's: never
    # pickled with the Tuner (the spec travels as its dict).
    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_spool=None, _sender=None, _state={}, _spec=None, _durable=set(), _unborn={}, _deferred={},
                     _reconciled=False, interrupted=False, _snapshot_cache={})
        return state

    @property
    def spec(self) -> ExperimentSpec:
        """The launch's spec, validated once per process (every new trial reads it)."""
        if getattr(self, "_spec", None) is None:  # a tracker unpickled from an older Tuner has none
            self._spec = ExperimentSpec.model_validate(self.spec_dict)
        return self._spec

    @property
    def parent_key(self) -> str:
        return self.launch_name

    def child_key(self, trial: TrialSpec) -> str:
        return f"{self.launch_name}/{trial.tag}"

    # -- parent run ------------------------------------------------------------------------
    def setup(self, **info) -> None:
        spec = self.spec
        self._spool = Spool(spool_folder(self.run_dir, self.launch_name), header={
            "tracking_uri": self.tracking_uri, "experiment": spec.experiment_name,
            "artifact_location": self.artifact_location, "launch": self.launch_name,
            "experiment_note": EXPERIMENT_NOTE,
        })
        self._snapshot_cache = {}  # set here too: a tracker unpickled from an older Tuner has none
        snapshot = snapshot_trials(self.run_dir, self._snapshot_cache)  # what a resume restores, and how far
        self._durable = set(snapshot)
        recover_held(self._spool, {trial_id: through for trial_id, (_, through) in snapshot.items()})
        self._state = replay_state(self._spool)
        self._software_tags = software_tags()
        if self.parent_key not in self._state["runs"]:
            self._spool.append("run", key=self.parent_key, name=self.launch_name, parent=None, tags={
                "grid": spec.name, "run_dir": self.run_dir, "kind": "grid", **self._software_tags,
            }, params={
                "grid.trials": str(len(spec.trials())),
                "grid.environments": ",".join(spec.environments),
                "grid.scenarios": ",".join(spec.scenario_names)[:6000],
                "grid.algorithms": ",".join(spec.algorithms),
                "grid.anchor_modes": ",".join(spec.anchors.modes),
                "grid.hidden_sizes": ",".join(map(str, spec.hidden_sizes)),
                "grid.seeds": ",".join(map(str, spec.seeds)),
                **spec_params(self.spec_dict),
            })
            import yaml

            path = self._spool.folder / "files" / "spec.yaml"
            path.write_text(yaml.safe_dump(self.spec_dict, sort_keys=False))
            self._spool.append("artifact", key=self.parent_key, path=self._spool.relative(str(path)), artifact_path=None)
            self._state["runs"].add(self.parent_key)
        else:
            self._spool.append("status", key=self.parent_key, status="RUNNING")
            self._spool.append("tag", key=self.parent_key, name="resumed", value="true")
        self._sender = Sender(self._spool, on_run=self._on_run)
        self._sender.start()

    def _on_run(self, key: str, run_id: str, experiment_id: str | None) -> None:
        """The sender knows the parent's MLflow run: note it in the results folder."""
        if key == self.parent_key:
            write_parent_note(self.run_dir, run_id, experiment_id)

    # -- child runs: one per grid trial, a pack's members each their own ------------------------
    def _children(self, trial) -> list[tuple[TrialSpec, str]]:
        """The grid trials of a Tune ``trial`` (a pack's members, or its one trial) and their
        child run keys; a child run not made yet is made (a pack's members tagged ``pack``: the
        pack's Tune trial id)."""
        members = trials_of(trial.config, trial.trial_id)
        out = []
        for k, t in enumerate(members):
            pack = {PACK_TAG: trial.trial_id, PACK_MEMBER_TAG: str(k)} if len(members) > 1 else {}
            key = self.child_key(t)
            if key not in self._state["runs"]:
                params = self.spec.knobs(t).params()
                teacher = (trial.config.get("distill_runs") or {}).get(t.env)
                if teacher:  # the teacher run pinned at launch, which this student learns from
                    params["distill.teacher_run_id"] = teacher
                start = (trial.config.get("init_runs") or {}).get(init_slot(t.env, t.hidden_size))
                if start:  # the pretrained run this trial (and its anchor) started from
                    params["anchors.init.run_id"] = start
                self._emit(trial, "run", key=key, name=t.dirname, parent=self.parent_key, tags={
                    "tune_trial_id": trial.trial_id, **pack, **run_tags(t, self.spec.name), **self._software_tags,
                }, params={mlflow_key(k): v for k, v in params.items()})
                self._state["runs"].add(key)
            out.append((t, key))
        return out

    # -- records wait for Tune's snapshot ------------------------------------------------------
    def _emit(self, trial, op: str, iteration: int | None = None, **fields) -> None:
        """Spool a record of ``trial`` now if Tune's snapshot in the results folder holds the
        trial, else once it does; a metric step of training ``iteration`` once the snapshot
        holds that iteration (what a resume restores, and what Tune's folder keeps)."""
        trial_id = trial.trial_id
        if trial_id in self._durable and iteration is None and not self._unborn.get(trial_id):
            self._spool.append(op, **fields)
        else:  # on disk too: the snapshot that lets it out may be the last one before a kill
            record = {"op": op, **fields}
            self._spool.hold(trial_id, record, iteration)
            self._unborn.setdefault(trial_id, []).append((iteration, record))

    def _defer(self, trial, keys: list[str], records: list[dict[str, Any]], statuses: tuple[str, ...]) -> None:
        self._deferred[trial.trial_id] = (keys, records, statuses)

    def _release(self) -> None:
        """Spool the records that the newest experiment snapshot in the results folder (the one
        a resume would read) allows: those of the trials it holds up to the iteration it holds
        of each, then the terminal records of those it holds as ended."""
        if not self._deferred and not self._unborn:
            return
        snapshot = snapshot_trials(self.run_dir, self._snapshot_cache)
        self._durable |= set(snapshot)
        for trial_id in [i for i in self._unborn if i in snapshot]:
            entries, through = self._unborn[trial_id], snapshot[trial_id][1]
            n = next((i for i, (iteration, _) in enumerate(entries) if iteration is not None and iteration > through),
                     len(entries))
            for _, record in entries[:n]:
                self._spool.append(**record)
            if n:
                self._spool.release(trial_id, n)
            if n == len(entries):
                del self._unborn[trial_id]
            else:
                self._unborn[trial_id] = entries[n:]
        for trial_id, (keys, records, statuses) in list(self._deferred.items()):
            if snapshot.get(trial_id, ("",))[0] in statuses and not self._unborn.get(trial_id):
                for record in records:
                    self._spool.append(**record)
                self._state["ended"].update(keys)
                del self._deferred[trial_id]
        self._sender.wake()

    def get_state(self) -> None:
        # Tune calls this inside each snapshot, after writing the trial states to its staging
        # folder; the copy in the results folder is the previous snapshot's (or older).
        self._release()
        return None

    def _finish_records(self, trial, children: list[tuple[TrialSpec, str]]) -> list[dict[str, Any]]:
        """The terminal records of ``children`` (a Tune trial's members and keys): each one's
        metrics.csv and FINISHED; a solo trial's checkpoint too (a pack's checkpoint holds all
        its members: it stays in the pack's Tune folder, and each member's run names where)."""
        records = []
        for t, key in children:
            history = self._state["history"].pop(key, {})
            if history:
                path = self._spool.folder / "files" / t.dirname / "metrics.csv"
                write_history_csv(path, history)
                records.append({"op": "artifact", "key": key, "path": self._spool.relative(str(path)),
                                "artifact_path": None})
            checkpoint = trial.checkpoint
            if checkpoint is not None and len(children) == 1:
                records.append({"op": "artifact", "key": key, "artifact_path": "checkpoint",
                                "path": self._spool.relative(checkpoint_location(checkpoint, self.run_dir))})
            elif checkpoint is not None:
                records.append({"op": "tag", "key": key, "name": PACK_CHECKPOINT_TAG,
                                "value": checkpoint_location(checkpoint, self.run_dir)})
            records.append({"op": "status", "key": key, "status": "FINISHED"})
        return records

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self._reconciled:
            return
        self._reconciled = True
        # A resume: steps of a restored trial that Tune's folder holds and the spool does not
        # (Tune's loggers write a result before this callback hears of it, and the driver died in
        # between) are logged from the folder, so both keep the same first attempt of each step.
        for trial in trials:
            if trial.trial_id in self._durable:
                self._recover_steps(trial)
        # Trials the snapshot holds as finished whose terminal records were lost (the driver
        # died before it let them out) get them now, once.
        for trial in trials:
            keys = [self.child_key(t) for t in trials_of(trial.config, trial.trial_id)]
            if finished(trial) and any(key not in self._state["ended"] for key in keys):
                children = [(t, key) for t, key in self._children(trial) if key not in self._state["ended"]]
                for record in self._finish_records(trial, children):
                    self._emit(trial, **record)
                self._state["ended"].update(key for _, key in children)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        for _, key in self._children(trial):
            if trial.num_failures or key in self._state["ended"]:
                self._emit(trial, "status", key=key, status="RUNNING")
                self._state["ended"].discard(key)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        for (t, key), member in zip(self._children(trial), member_results(trial.config, result), strict=True):
            metrics = {k: float(v) for k, v in member.items()
                       if is_metric_key(k) and isinstance(v, (int, float)) and not isinstance(v, bool)}
            self._log_step(trial, t, key, result_step(member), metrics, time.time(),
                           int(result.get(TRAINING_ITERATION) or 0))
        self._sender.wake()

    def _log_step(self, trial, t: TrialSpec, key: str, step: int, metrics: dict[str, float], when: float,
                  iteration: int | None) -> None:
        """Log one metric step of ``trial``'s member ``t`` (its run ``key``), held until Tune's
        snapshot holds training ``iteration`` (None: now, e.g. a step read from Tune's folder)."""
        if step <= self._state["last_step"].get(key, -1):
            return  # a step replayed after a restore: the first attempt is the record
        self._state["final"][key] = (t.env, t.method, metrics)
        self._emit(trial, "metrics", iteration, key=key, step=step, time=when, metrics=metrics)
        self._state["last_step"][key] = step
        self._state["history"].setdefault(key, {})[step] = metrics

    def _recover_steps(self, trial) -> None:
        """Log the steps in ``trial``'s folder that the spool lacks, as :meth:`on_trial_result`
        would have, from the file the report reads: a solo trial's ``progress.csv``, a pack's
        ``result.json`` (a folder that cannot be read: none)."""
        children = self._children(trial)
        folder = storage.join(self.run_dir, unit_name(trial.config, trial.trial_id))
        try:
            if len(children) == 1:
                rows = [{k: _number(v) for k, v in row.items() if k}
                        for row in csv.DictReader(whole_lines(storage.read_text(storage.join(folder, PROGRESS_FILE))).splitlines())]
                members = [[row] for row in rows]
            else:
                members = []
                for line in storage.read_text(storage.join(folder, RESULT_FILE)).splitlines():
                    try:
                        members.append(member_results(trial.config, json.loads(line)))
                    except ValueError:
                        continue  # a line torn by the kill
        except (OSError, ValueError):
            return
        for results in members:
            for (t, key), values in zip(children, results, strict=False):
                if values.get(ENV_STEPS) is None and values.get(TRAINING_ITERATION) is None:
                    continue  # a row torn by the kill
                metrics = {k: float(v) for k, v in values.items() if is_metric_key(k)
                           and isinstance(v, (int, float)) and not isinstance(v, bool)}
                self._log_step(trial, t, key, result_step(values), metrics, values.get("timestamp") or time.time(),
                               None)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        for _, key in self._children(trial):
            self._emit(trial, "tag", key=key, name="num_failures", value=str(trial.num_failures))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        children = self._children(trial)
        self._defer(trial, [key for _, key in children], self._finish_records(trial, children), ("TERMINATED",))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        children = self._children(trial)
        records = []
        for t, key in children:
            if trial.error_file and Path(trial.error_file).exists():
                path = self._spool.keep_file(trial.error_file, f"{t.dirname}/error.txt")
                records.append({"op": "artifact", "key": key, "path": self._spool.relative(path), "artifact_path": None})
            records.append({"op": "status", "key": key, "status": "FAILED"})
        self._defer(trial, [key for _, key in children], records, ("ERROR",))

    def on_experiment_end(self, trials, **info) -> None:
        # Tune forced (and waited for) a last snapshot just before: everything it holds as
        # ended is let out; what it does not hold stays out of MLflow, as it will be run again.
        self._release()
        stopped = [t for t in trials if t.status != "ERROR" and not finished(t)]
        self.interrupted = bool(stopped)
        for trial in stopped:  # Ctrl-C: the trials it cut short (a resume goes on with them)
            for t in trials_of(trial.config, trial.trial_id):
                key = self.child_key(t)
                if key in self._state["runs"] and key not in self._state["ended"]:
                    self._emit(trial, "status", key=key, status="KILLED")
                    self._state["ended"].add(key)
        finals = list(self._state["final"].values())
        summary = {} if self.interrupted else launch_summary(finals)
        if summary:  # the launch's per-method numbers, on its parent run (never over a partial launch)
            for name, label in method_names(method for _, method, _ in finals).items():
                self._spool.append("tag", key=self.parent_key, name=mlflow_key(f"{LABEL_TAG}/{name}"), value=label)
            steps = int(sum(m.get(ENV_STEPS, 0) for _, _, m in finals))
            self._spool.append("metrics", key=self.parent_key, step=steps, time=time.time(),
                               metrics={**summary, ENV_STEPS: steps})
        ok = all(t.status == "TERMINATED" for t in trials)
        self._spool.append("status", key=self.parent_key,
                           status="KILLED" if self.interrupted else "FINISHED" if ok else "FAILED")
        self.pending_at_end = self._sender.stop(flush_timeout=FLUSH_TIMEOUT_S)
        self.rejected_at_end = len(self._spool.rejected())
        parent = self._sender.known_run(self.parent_key)
        if parent:  # (re)write the note of the parent run, whatever became of it since launch
            write_parent_note(self.run_dir, parent, self._sender.experiment_id)
        if self.rejected_at_end:
            print(f"MLflow: {self.rejected_at_end} write(s) refused by {self.tracking_uri} for good; "
                  f"they are kept with MLflow's reasons in {self._spool.folder / REJECTED}")
        if self.pending_at_end:
            print(f"MLflow: {self.pending_at_end} write(s) not delivered to {self.tracking_uri} "
                  f"({self._sender.last_error}); they are kept in {self._spool.folder}. Once the "
                  f"tracking store answers: adpo-ray sync {self.run_dir}")


def result_step(result: dict[str, Any]) -> int:
    """The MLflow step of a trial's result: its env steps (its iteration where it has none)."""
    step = result.get(ENV_STEPS)
    return int(step if step is not None else result.get(TRAINING_ITERATION) or 0)


def _number(text: str | None) -> float | None:
    """A CSV cell as the float it was written from; None for an empty cell or a non-number
    (``True``, a string)."""
    if text in (None, "", "True", "False"):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def finished(trial) -> bool:
    """Whether a Tune trial ran to its end: stopped by its budget or by the scheduler (its last
    result says ``done``), not cut short by an interrupted launch (Tune marks those TERMINATED
    too, without ``done``)."""
    return trial.status == "TERMINATED" and bool((trial.last_result or {}).get("done"))


def snapshot_trials(run_dir: str, cache: dict | None = None) -> dict[str, tuple[str, int]]:
    """Trial id -> (Tune status: ``TERMINATED``, ``ERROR``, ``PENDING``...; the training iteration
    of its last result, 0 before one) in the newest experiment snapshot in ``run_dir`` (the one
    `Tuner.restore` reads); empty when there is none yet, or when it is being copied there right
    now (it is read again at the next snapshot).

    ``cache``: a dict kept between calls (the tracker's), which this call fills with this
    snapshot's trials keyed by their JSON text: only the trials whose state changed since the
    last call are decoded. Tune writes every trial's state into each snapshot, about 100 KB per
    trial pack, so at a few hundred trials most of a read's CPU went into decoding states that had
    not changed."""
    from adpo_ray.orchestration._ray_private import newest_experiment_state

    try:
        newest = newest_experiment_state(str(run_dir))
        if newest is None:
            return {}
        filesystem, _ = storage._resolve(str(run_dir))
        with filesystem.open_input_stream(newest) as f:
            state = json.loads(f.read())
        known = cache if cache is not None else {}
        entries, out = {}, {}
        for trial_json, metadata_json in state["trial_data"]:
            key = (trial_json, metadata_json)
            entry = known.get(key)
            if entry is None:
                trial = json.loads(trial_json)
                last = (json.loads(metadata_json) if metadata_json else {}).get("last_result") or {}
                entry = (trial["trial_id"], (trial["status"], int(last.get(TRAINING_ITERATION) or 0)))
            entries[key] = entry
            out[entry[0]] = entry[1]
        if cache is not None:  # this snapshot's trials only: older states are let go
            cache.clear()
            cache.update(entries)
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def checkpoint_location(checkpoint, run_dir: str) -> str:
    """Where a Tune checkpoint lives: a local path, or a URI on remote storage (with the
    storage URI's query string, e.g. ``?region=...``), for the sender to upload later."""
    from pyarrow import fs as pafs

    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        return checkpoint.path
    scheme = {"gcs": "gs"}.get(checkpoint.filesystem.type_name, checkpoint.filesystem.type_name)
    query = str(run_dir).partition("?")[2]
    return f"{scheme}://{checkpoint.path}" + (f"?{query}" if query else "")


def spec_params(spec_dict: dict) -> dict[str, str]:
    """The spec's knobs as flat ``spec.<section>.<key>`` params of the parent run, so launches can
    be sorted, filtered and compared by them in the MLflow UI."""
    out: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif value is not None:
            out[mlflow_key(prefix)] = (",".join(map(str, value)) if isinstance(value, list) else str(value))[:6000]

    for section in ("train", "adpo", "ppo", "ppo_kl", "bandit", "budget", "evaluation", "resources", "env_overrides",
                    "distill"):
        walk(f"spec.{section}", spec_dict.get(section))
    walk("spec.anchors.params", spec_dict.get("anchors", {}).get("params"))
    return out


def method_names(methods) -> dict[str, str]:
    """Each method label's name in MLflow keys (:func:`mlflow_key`), as ``{name: label}``: a
    sweep point's label (``adpo-dynamic (adpo.beta_q=0.5)``) holds characters MLflow refuses in
    keys. Two labels that would share a name both get a hash of their label appended."""
    labels = sorted(set(methods))
    names = {label: mlflow_key(label) for label in labels}
    taken: dict[str, int] = {}
    for name in names.values():
        taken[name] = taken.get(name, 0) + 1
    for label, name in names.items():
        if taken[name] > 1:
            names[label] = mlflow_key(f"{name}-{hashlib.sha256(label.encode()).hexdigest()[:6]}")
    return {name: label for label, name in names.items()}


def launch_summary(finals) -> dict[str, float]:
    """Per env and method over the launch's trials, the final headline metric's mean, IQM and 95%
    bootstrap CI, and the trial count: ``summary/<env>/<method>/<metric>_<statistic>``, with the
    method as :func:`method_names` names it (its label is the parent's ``method_label/...`` tag)."""
    from adpo_ray.envs import ENVIRONMENTS
    from adpo_ray.metrics import HEADLINE
    from adpo_ray.report.stats import summarize

    finals = list(finals)
    name_of = {label: name for name, label in method_names(method for _, method, _ in finals).items()}
    values: dict[tuple[str, str], list[float]] = {}
    for env, method, metrics in finals:
        metric = HEADLINE[ENVIRONMENTS[env]["kind"]]
        if metric in metrics:
            values.setdefault((env, method), []).append(metrics[metric])
    out: dict[str, float] = {}
    for (env, method), xs in sorted(values.items()):
        short = HEADLINE[ENVIRONMENTS[env]["kind"]].split("/")[-1]
        s = summarize(xs)
        for name, value in (("mean", s.mean), ("iqm", s.iqm), ("ci_low", s.ci_low), ("ci_high", s.ci_high), ("n", s.n)):
            if value == value:  # not NaN (one trial has no CI)
                out[mlflow_key(f"summary/{env}/{name_of[method]}/{short}_{name}")] = float(value)
    return out


def replay_state(spool: Spool) -> dict[str, Any]:
    """What a spool already holds (after a resume): the runs, each run's last step, the metric
    history of unfinished runs (for their metrics.csv), the runs that ended, each trial's latest
    metrics (for the launch summary)."""
    state: dict[str, Any] = {"runs": set(), "last_step": {}, "history": {}, "ended": set(), "final": {}}
    coords: dict[str, tuple[str, str]] = {}
    for record, _ in spool.records():
        if record is None:
            continue
        key = record.get("key")
        if record["op"] == "run":
            state["runs"].add(key)
            if record.get("parent"):
                coords[key] = (record["tags"]["env"], record["tags"]["method"])
        elif record["op"] == "metrics":
            state["last_step"][key] = max(state["last_step"].get(key, -1), record["step"])
            state["history"].setdefault(key, {})[record["step"]] = record["metrics"]
            if key in coords:
                state["final"][key] = (*coords[key], record["metrics"])
        elif record["op"] == "status":
            if record["status"] in ("FINISHED", "FAILED", "KILLED"):
                state["ended"].add(key)
                if record["status"] == "FINISHED":
                    state["history"].pop(key, None)
            else:
                state["ended"].discard(key)
    return state


def recover_held(spool: Spool, durable: dict[str, int]) -> int:
    """A resume: move the records a killed driver held into the records, for the trials the
    snapshot it resumes from holds (``durable``: trial id -> the iteration it holds), each metric
    step up to that iteration; forget the others (Tune trains those iterations again, and runs a
    trial it never snapshotted again under a new id). A record the records already hold (a run, a
    metric step: the driver died between letting it out and noting so) is not written twice.
    Returns how many records were moved."""
    held = spool.held()
    if not held:
        spool.clear_held()
        return 0
    state = replay_state(spool)
    moved = 0
    for trial_id, entries in held.items():
        if trial_id not in durable:
            continue
        for iteration, record in entries:
            if iteration is not None and iteration > durable[trial_id]:
                continue
            key = record.get("key")
            if record["op"] == "run":
                if key in state["runs"]:
                    continue
                state["runs"].add(key)
            elif record["op"] == "metrics":
                if record["step"] <= state["last_step"].get(key, -1):
                    continue
                state["last_step"][key] = record["step"]
            spool.append(**record)
            moved += 1
    spool.clear_held()
    return moved


def write_history_csv(path: Path, history: dict[int, dict[str, float]]) -> None:
    """A run's metric history as a table: one row per env step, one column per metric."""
    columns = sorted({k for metrics in history.values() for k in metrics} - {ENV_STEPS})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([ENV_STEPS, *columns])
        for step in sorted(history):
            writer.writerow([step, *(history[step].get(c, "") for c in columns)])


class SyncResult(NamedTuple):
    """What `adpo-ray sync` did: records ``delivered`` now, still ``pending`` (the store failed in
    a way that may pass: ``last_error``), ``rejected`` now by MLflow for good, ``rejected_total``
    over the launch, all kept with their reasons in ``rejected_file``."""

    delivered: int
    pending: int
    rejected: int
    rejected_total: int
    rejected_file: str
    last_error: str | None


def sync(run_dir: str, launch_name: str, *, timeout_s: float = 300.0) -> SyncResult:
    """Deliver a launch's pending MLflow writes (`adpo-ray sync`), retrying failures that may pass
    for up to ``timeout_s`` seconds; writes MLflow refuses for good are set aside at once (see
    :mod:`adpo_ray.orchestration.spool`). Raises FileNotFoundError when ``run_dir`` has no spool."""
    folder = spool_folder(str(run_dir), launch_name)
    if not os.path.exists(os.path.join(folder, "spool.json")):
        raise FileNotFoundError(f"{run_dir} has no MLflow spool ({folder})")
    spool = Spool(folder)
    before = spool.pending()
    sender = Sender(spool, on_run=lambda key, run_id, exp: (
        write_parent_note(str(run_dir), run_id, exp) if key == launch_name else None))
    deadline = time.time() + timeout_s
    while not sender.drain() and time.time() < deadline:
        time.sleep(2)
    after = spool.pending()
    total = len(spool.rejected())
    spool.close()
    return SyncResult(before - after - sender.rejected, after, sender.rejected, total,
                      str(spool.folder / REJECTED), sender.last_error)
