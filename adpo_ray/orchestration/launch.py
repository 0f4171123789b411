"""Launch and resume a grid on Ray Tune, tracked in MLflow; both end the same way: the summary of
every trial (``summary.csv`` in the grid's folder) and the report.

Everything that can be checked is checked before Ray or MLflow start: the spec (pydantic), every
trial's RLlib config (:func:`~adpo_ray.orchestration.planning.plan_trials`), the tracking store,
and — once connected — that each trial's placement group fits the cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adpo_ray.orchestration import _ray_private, storage
from adpo_ray.orchestration.cluster import autoscaler_config, cluster_capacity, connect  # noqa: F401 - re-exported
from adpo_ray.orchestration.mlflow_store import check_tracking
from adpo_ray.orchestration.planning import (
    TrialPlan,
    check_fits,
    max_concurrent,
    plan_trials,
    resolve_learner_gpus,
)
from adpo_ray.orchestration.run_folder import (  # noqa: F401 - re-exported: the options of a launch
    GRID_FILE,
    LOCK_FILE,
    NAME_PATTERN,
    GridOptions,
    check_name,
    check_storage_path,
    claim_folder,
    load_grid_file,
    read_grid_file,
    release_folder,
    resolve_options,
    resolve_run_dir,
    write_grid_file,
)
from adpo_ray.orchestration.tune_setup import (  # noqa: F401 - re-exported
    grid_trainable,
    max_iterations,
    param_space,
    progress_reporter,
    search_config,
    search_space,
    trial_name,
    tuner_env,
)
from adpo_ray.spec import ExperimentSpec

# Tune pickles the trial-name creator into its experiment snapshot: a grid launched when it lived
# here under this name resumes only if the name still imports.
_trial_name = trial_name

#: The end-of-grid table of every trial, next to Tune's results.
SUMMARY_FILE = "summary.csv"


@dataclass
class GridRun:
    """What a launch or a resume leaves: Tune's ``results`` (a ResultGrid), the ``spec`` and
    ``options`` it ran with, ``summary`` (one row per trial, see
    :func:`~adpo_ray.report.summary.summary_frame`; also in ``<run_dir>/summary.csv``),
    ``mlflow_pending`` (MLflow writes not yet delivered at the end, see `adpo-ray sync`; None
    when unknown), ``interrupted`` (stopped by Ctrl-C: no report), ``report`` (the report's
    files by name, ``report.html`` among them; None when none was made) and ``notes`` (why the
    report was read from Tune's folder, or skipped). Like the ResultGrid, it holds one Tune
    Result per trial: ``len``, iteration and indexing reach them."""

    results: Any
    spec: ExperimentSpec
    options: GridOptions
    summary: Any
    mlflow_pending: int | None
    interrupted: bool
    report: dict[str, Path] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list:
        """The errors of the trials that failed for good."""
        return self.results.errors

    @property
    def unfinished(self) -> int:
        """How many trials ended neither at their budget nor with an error (``UNFINISHED`` in
        :attr:`summary`): an interrupted grid's stopped trials, or trials Tune gave up on without
        an error file (a resume finishes them)."""
        return int((self.summary["status"] == "UNFINISHED").sum()) if len(self.summary) else 0

    def __len__(self) -> int:
        """The number of trials."""
        return len(self.results)

    def __iter__(self):
        return iter(self.results)

    def __getitem__(self, i: int):
        """The Tune Result of the ``i``-th trial."""
        return self.results[i]


def run_grid(spec: ExperimentSpec, options: GridOptions, *, trainable=None, verbose: int = 1,
             plans: list[TrialPlan] | None = None, report: bool = True) -> GridRun:
    """Launch the grid of ``spec`` in ``options.run_dir``, then write its ``summary.csv`` and,
    unless ``report`` is False or the grid was interrupted, its report (see :func:`finish`).
    ``plans``: from :func:`plan_trials`, if the caller has them already. Raises before anything
    starts: ValueError (a trial's RLlib config), TrackingError (the store), FileExistsError (the
    folder holds a grid or is claimed), ResourceError (a trial does not fit the cluster)."""
    from ray import tune

    plans = plans or plan_trials(spec)  # validates every trial's RLlib config before anything starts
    check_tracking(options.tracking_uri)
    run_dir = options.run_dir
    if tune.Tuner.can_restore(run_dir) or storage.exists(storage.join(run_dir, GRID_FILE)):
        raise FileExistsError(f"{run_dir} already holds a grid; resume it with `adpo-ray resume {run_dir}` or pick another --name")
    claim_folder(run_dir, options.name)
    try:
        spec, prepared = _prepare(spec, options, plans, verbose)
    except BaseException:
        release_folder(run_dir)  # nothing was recorded: the name is free again
        raise
    write_grid_file(run_dir, spec, options, prepared)
    return _run(spec, options, prepared, trainable=trainable, verbose=verbose, report=report)


def resume_grid(run_dir: str | Path, *, address: str | None = None, trainable=None, verbose: int = 1,
                report: bool = True) -> GridRun:
    """Finish an interrupted grid (``run_dir``: a folder or a URI, see :func:`resolve_run_dir`):
    unfinished and errored trials resume from their checkpoints; finished trials are not re-run;
    MLflow runs are re-attached, never duplicated, and MLflow writes still pending are delivered.
    A grid killed before Tune's first snapshot starts again in its folder. Ends like
    :func:`run_grid`. Raises FileNotFoundError (no grid there), FileExistsError (a live launch
    holds it), ValueError (a malformed URI)."""
    run_dir = resolve_run_dir(run_dir)
    data = read_grid_file(run_dir)
    spec, options = load_grid_file(run_dir)
    # the folder may have moved since launch: everything follows the folder given here
    options.storage_path, _, options.name = run_dir.rpartition("/")
    claim_folder(run_dir, options.name, take_over=True)
    if not storage.is_uri(run_dir):
        try:
            repair_tune_state(run_dir)
            repair_trial_logs(run_dir)
            follow_moved_folder(run_dir)
        except BaseException:
            release_folder(run_dir)
            raise
    return _run(spec, options, data, address=address or options.address, resume=True,
                trainable=trainable, verbose=verbose, report=report)


#: Tune's state files in a results folder that a restore reads (the newest of each pattern): the
#: experiment snapshot, the grid's variant generator, a search algorithm's state.
TUNE_STATE_FILES = ("experiment_state-*.json", "basic-variant-state-*.json", "search_gen_state-*.json",
                    "searcher-state-*.pkl")
#: Those of them that create the trials still to come (see :func:`follow_moved_folder`).
TRIAL_CREATING_FILES = ("basic-variant-state-*.json", "search_gen_state-*.json")


def repair_tune_state(run_dir: str) -> list[str]:
    """Make Tune's state files in the local folder ``run_dir`` whole before a restore.

    Tune copies them into the results folder with each snapshot, not atomically: a driver killed
    during the copy leaves one cut short, and Tune's restore then drops the grid's trials and
    starts them again under new ids. A cut-short file is replaced by Tune's own copy in the
    driver's staging folder on this machine (written atomically) when one is readable.

    Returns:
        The files replaced (paths).

    Raises:
        ValueError: a file is cut short and this machine holds no readable copy of it; it names
            the file, as a resume would otherwise start trials again.
    """
    replaced = []
    for pattern in TUNE_STATE_FILES:
        newest = _newest(Path(run_dir), pattern)
        if newest is None or _readable(newest):
            continue
        copies = _ray_private.driver_staging_copies(Path(run_dir).name, newest.name)
        # a copy's bytes are read once: what is checked is what is written
        found = next(((c, data) for c in copies if (data := _read(Path(c))) is not None and _loads(newest.name, data)),
                     None)
        if found is None:
            raise ValueError(
                f"{newest} is cut short (the driver was killed while Tune copied it into the folder) and "
                "this machine holds no copy of it: a resume would start the grid's trials again under new "
                "ids. Resume on the machine that ran the driver, or restore the file from a backup")
        copy, data = found
        _write_atomically(newest, data)
        replaced.append(str(newest))
        print(f"{newest.name} was cut short by the kill; restored from Tune's copy {copy}", flush=True)
    return replaced


def repair_trial_logs(run_dir: str) -> list[str]:
    """Make each trial's ``result.json`` and ``progress.csv`` in the local folder ``run_dir`` hold
    every result its killed driver logged, each on a line of its own, before a restore.

    Tune's driver appends each result to these files in its staging folder and copies them into
    the results folder with each snapshot, several files at once and not atomically. A driver
    killed during a copy can leave a trial's file cut short mid-line, or as of an earlier
    snapshot than the one a restore reads. The restored trial appends only the results it trains
    again after its checkpoint: the results between the file's end and that checkpoint would be
    missing from the folder, and the first appended one joined to the cut line. So a file is
    replaced by the same driver's copy on this machine (the staging folder that holds the same
    snapshot file) where that copy extends it; with none, a cut last line is dropped, so the
    next result starts a line of its own. A trial with no checkpoint starts over and rewrites
    its files.

    Returns:
        The files rewritten (paths).
    """
    from adpo_ray.metrics import whole_lines
    from adpo_ray.orchestration.tracking import PROGRESS_FILE, RESULT_FILE

    folder = Path(run_dir)
    snapshot = _newest(folder, "experiment_state-*.json")
    if snapshot is None:
        return []  # killed before Tune's first snapshot: the grid starts over
    stagings = [Path(copy).parent for copy in _ray_private.driver_staging_copies(folder.name, snapshot.name)]
    rewritten = []
    for log in sorted(path for name in (RESULT_FILE, PROGRESS_FILE) for path in folder.glob(f"*/{name}")):
        data = _read(log)
        if data is None:
            continue
        kept, source = whole_lines(data), None
        for staging in stagings:
            copy = _read(staging / log.parent.name / log.name)
            if copy is not None and copy.startswith(kept) and len(whole_lines(copy)) > len(kept):
                kept, source = whole_lines(copy), staging
        if kept == data:
            continue
        _write_atomically(log, kept)
        rewritten.append(str(log))
        how = f"completed from Tune's copy in {source}" if source else "its cut last line dropped"
        print(f"{log.parent.name}/{log.name} was cut short by the kill; {how}", flush=True)
    return rewritten


def follow_moved_folder(run_dir: str) -> list[str]:
    """Make the trials a grid has yet to create, in the local folder ``run_dir``, write there:
    a folder moved between a kill and ``adpo-ray resume`` (another disk, another machine) still
    holds the old folder in the state Tune restores its variant generator or search from (see
    :func:`adpo_ray.orchestration._ray_private.follow_moved_folder`). The newest such file, the
    one Tune reads, is rewritten atomically where it names another folder.

    Returns:
        The files rewritten (paths).
    """
    import ray.cloudpickle as cloudpickle

    folder = Path(run_dir).resolve()
    rewritten = []
    for pattern in TRIAL_CREATING_FILES:
        newest = _newest(folder, pattern)
        if newest is None:
            continue
        state = cloudpickle.loads(newest.read_bytes())
        if _ray_private.follow_moved_folder(state, str(folder.parent), folder.name):
            _write_atomically(newest, cloudpickle.dumps(state))
            rewritten.append(str(newest))
    return rewritten


def _newest(folder: Path, pattern: str) -> Path | None:
    """The newest of Tune's state files ``pattern`` in ``folder``, the one a restore reads (their
    names end in the time they were written); None when there is none."""
    return max(folder.glob(pattern), default=None)


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path``'s contents with ``data``: a reader sees the old file or the new, never part."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _read(path: Path) -> bytes | None:
    """The bytes of ``path``; None where it cannot be read (e.g. removed since it was listed)."""
    try:
        return path.read_bytes()
    except OSError:
        return None


def _readable(path: Path) -> bool:
    """Whether the Tune state file at ``path`` can be read and loads."""
    data = _read(path)
    return data is not None and _loads(path.name, data)


def _loads(name: str, data: bytes) -> bool:
    """Whether ``data``, the bytes of Tune state file ``name``, loads (JSON, or a pickle)."""
    import ray.cloudpickle as cloudpickle

    try:
        if name.endswith(".json") and name.startswith("experiment_state"):
            json.loads(data)
        else:
            cloudpickle.loads(data)
    except Exception:  # noqa: BLE001 - any way of being cut short
        return False
    return True


def _start(address: str | None) -> None:
    """The prelude of a launch and of a resume: Tune's environment, then Ray."""
    tuner_env()
    connect(address)


def _prepare(spec: ExperimentSpec, options: GridOptions, plans: list[TrialPlan], verbose: int):
    """Ray, the cluster's capacity, the fit check, the concurrency, distillation inputs and
    pretrained starting policies: (the spec as it runs on this cluster, what the grid file records)."""
    _start(options.address)
    capacity = cluster_capacity(options.address)
    resolved = resolve_learner_gpus(spec, capacity)
    if resolved is not spec:  # GPU learners take a share chosen for this cluster
        spec, plans = resolved, plan_trials(resolved)
    check_fits(plans, capacity)
    concurrency = max_concurrent(plans, capacity, options.max_concurrent or spec.resources.max_concurrent_trials)
    if verbose:
        print(f"cluster at full scale: {capacity.describe()}; up to {concurrency} trial(s) at once")
    distill_runs = None
    if spec.distill is not None:  # teachers and datasets first: found in MLflow or made now
        from adpo_ray.orchestration.datasets import prepare
        from adpo_ray.orchestration.policies import check_shared_tracking

        check_shared_tracking(options.tracking_uri, capacity)
        distill_runs = {env: v["run_id"] for env, v in prepare(spec, options.tracking_uri, options.artifact_location).items()}
    init_runs = None
    if spec.anchors.init is not None and spec.anchors.init.pretrain is not None:
        from adpo_ray.orchestration.policies import check_shared_tracking, prepare_init

        check_shared_tracking(options.tracking_uri, capacity)
        init_runs = prepare_init(spec, options.tracking_uri, options.artifact_location)
    return spec, {"concurrency": concurrency, "distill_runs": distill_runs, "init_runs": init_runs}


def _run(spec: ExperimentSpec, options: GridOptions, prepared: dict, *, address: str | None = None,
         resume: bool = False, trainable=None, verbose: int = 1, report: bool = True) -> GridRun:
    """The tail of a launch and of a resume: the Tuner and its MLflow tracker (a new one, or the
    one restored from Tune's snapshot), the fit, then :func:`finish`."""
    from ray import tune

    if resume:
        _start(address)
    # tuner.pkl is Tune's mark of a snapshot; a driver killed while Tune wrote it leaves it empty,
    # which counts as none (Tuner.restore could not read it)
    if resume and tune.Tuner.can_restore(options.run_dir) and storage.size(storage.join(options.run_dir, "tuner.pkl")):
        tuner, tracker = _restored_tuner(spec, options, prepared, trainable)
    else:  # a launch, or a resume killed before Tune's first snapshot: starts over in its folder
        concurrency = prepared.get("concurrency") or max_concurrent(
            plan_trials(spec), cluster_capacity(options.address), options.max_concurrent)
        tuner, tracker = _new_tuner(spec, options, prepared, concurrency, trainable, verbose)
    results = tuner.fit()
    return finish(spec, options, results,
                  mlflow_pending=tracker.pending_at_end if tracker else None,
                  interrupted=tracker.interrupted if tracker else False, report=report)


def _new_tuner(spec: ExperimentSpec, options: GridOptions, prepared: dict, concurrency: int, trainable,
               verbose: int):
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from adpo_ray.orchestration.scheduling import record_path
    from adpo_ray.orchestration.tracking import MLflowTracker

    tracker = MLflowTracker(spec, options.tracking_uri, options.artifact_location, options.run_dir, options.name)
    tuner = tune.Tuner(
        trainable or grid_trainable(spec),
        param_space=param_space(spec, options.tracking_uri, prepared.get("distill_runs"), prepared.get("init_runs")),
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrency,
            reuse_actors=spec.resources.reuse_actors,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
            **search_config(spec, record_path(options.run_dir, options.name)),
        ),
        run_config=tune.RunConfig(
            name=options.name,
            storage_path=options.storage_path,
            # Each trial stops itself at its env's budget and asks for periodic checkpoints.
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_at_end=True,
                num_to_keep=3,  # a snapshot older than the newest checkpoint still finds its own
            ),
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
            # Tune's loggers before the tracker: a result is in the trial folder before MLflow's
            # spool, so a resume finds any step a killed driver had not spooled in the folder.
            callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), tracker],
            progress_reporter=progress_reporter(spec),
            verbose=verbose,
        ),
    )
    return tuner, tracker


def _restored_tuner(spec: ExperimentSpec, options: GridOptions, prepared: dict, trainable):
    from ray import tune

    from adpo_ray.orchestration.scheduling import RecordedASHA, record_path
    from adpo_ray.orchestration.tracking import MLflowTracker

    run_dir = options.run_dir
    tuner = tune.Tuner.restore(
        run_dir,
        trainable=trainable or grid_trainable(spec),
        resume_unfinished=True,
        resume_errored=True,
        param_space=param_space(spec, options.tracking_uri, prepared.get("distill_runs"), prepared.get("init_runs")),
    )
    # Tune restores the callbacks pickled at launch; point the tracker at the folder as it is now
    # (Tune 2.60 has no public way to pass callbacks to a restore).
    trackers = [c for c in _ray_private.tuner_run_config(tuner).callbacks or [] if isinstance(c, MLflowTracker)]
    for tracker in trackers:
        tracker.run_dir = run_dir
    scheduler = _ray_private.tuner_scheduler(tuner)
    if isinstance(scheduler, RecordedASHA):  # its record moved with the folder
        scheduler.record = record_path(run_dir, options.name)
    return tuner, (trackers[0] if trackers else None)


def finish(spec: ExperimentSpec, options: GridOptions, results, *, mlflow_pending: int | None = None,
           interrupted: bool = False, report: bool = True) -> GridRun:
    """The end of a grid: the summary of Tune's ``results`` written to ``<run_dir>/summary.csv``,
    then, unless ``report`` is False or the grid was ``interrupted``, the report (see
    :func:`write_grid_report`)."""
    from adpo_ray.report.summary import summary_frame

    frame = summary_frame(results)
    storage.write_text(storage.join(options.run_dir, SUMMARY_FILE), frame.to_csv(index=False))
    run = GridRun(results, spec, options, frame, mlflow_pending, interrupted)
    if report and not interrupted:
        run.report, run.notes = write_grid_report(spec, options, mlflow_pending)
    return run


def report_folder(options: GridOptions) -> Path:
    """Where a launch's report goes: ``<run_dir>/report`` when the results are local, else
    ``./reports/<name>`` (it is logged to MLflow too)."""
    return Path(options.run_dir) / "report" if not storage.is_uri(options.run_dir) else Path("reports") / options.name


def write_grid_report(spec: ExperimentSpec, options: GridOptions,
                      mlflow_pending: int | None) -> tuple[dict[str, Path] | None, list[str]]:
    """The launch's report in :func:`report_folder`, from MLflow (and logged to the parent run
    there); from Tune's folder when MLflow still misses writes or cannot be read, so a tracking
    outage never costs the report. Returns (the report's files by name, or None when skipped;
    notes saying why it was read from Tune's folder or skipped)."""
    from adpo_ray.orchestration.tracking import PARENT_FILE
    from adpo_ray.report.build import build_report, log_report
    from adpo_ray.report.data import load_mlflow, load_tune_folder

    out, notes = report_folder(options), []
    if not mlflow_pending:
        try:
            parent = json.loads(storage.read_text(storage.join(options.run_dir, PARENT_FILE)))["run_id"]
            data = load_mlflow(options.tracking_uri, spec.experiment_name, parent)
            files = build_report(data, out)
            if data.parent_run_id:
                log_report(options.tracking_uri, data.parent_run_id, out)
            return files, notes
        except Exception as e:  # noqa: BLE001 - any tracking failure: fall back to Tune's folder
            notes.append(f"report: MLflow could not be read ({type(e).__name__}); reading the Tune folder instead")
    if storage.is_uri(options.run_dir):
        notes.append(f"report: skipped (MLflow incomplete; run `adpo-ray report --experiment {spec.experiment_name}` "
                     f"after `adpo-ray sync {options.run_dir}`)")
        return None, notes
    return build_report(load_tune_folder(options.run_dir), out), notes
