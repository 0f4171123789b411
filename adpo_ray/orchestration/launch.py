"""Launch and resume a grid on Ray Tune, tracked in MLflow.

Everything that can be checked is checked before Ray or MLflow start: the spec (pydantic), every
trial's RLlib config (:func:`~adpo_ray.orchestration.planning.plan_trials`), the tracking store,
and — once connected — that each trial's placement group fits the cluster.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adpo_ray.envs import ENVIRONMENTS
from adpo_ray.metrics import ENV_STEPS, EVAL_RETURN, EVAL_WINMASS, TRAINING_ITERATION
from adpo_ray.orchestration import _ray_private, storage
from adpo_ray.orchestration.mlflow_store import (
    check_tracking,
    default_artifact_location,
    default_tracking_uri,
)
from adpo_ray.orchestration.planning import (
    Capacity,
    TrialPlan,
    capacity_from_cluster_config,
    capacity_from_nodes,
    check_fits,
    max_concurrent,
    plan_trials,
    resolve_learner_gpus,
)
from adpo_ray.spec import ExperimentSpec, TrialSpec

GRID_FILE = "adpo_grid.json"


def param_space(spec: ExperimentSpec, tracking_uri: str, distill_runs: dict[str, str] | None = None,
                init_runs: dict[str, str] | None = None) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {"spec": spec.model_dump(mode="json", by_alias=True)}
    if spec.search is None:
        space["trial"] = tune.grid_search([t.as_dict() for t in spec.trials()])
    else:  # one base trial; the search algorithm samples its sweep point
        (base,) = spec.trials()
        space["trial"] = base.as_dict()
        space["sweep"] = search_space(spec)
    if spec.distill is not None:  # students find their pinned teacher and its datasets there
        space["tracking_uri"] = tracking_uri
        space["distill_runs"] = dict(distill_runs or {})
    if init_runs:  # trials find their pinned pretrained starting policy there
        space["tracking_uri"] = tracking_uri
        space["init_runs"] = dict(init_runs)
    return space


def search_space(spec: ExperimentSpec) -> dict[str, Any]:
    """The sweep as Tune's search space: grid axes stay grids for Tune's own generator (every
    axis value, ``num_samples`` times each) and become categorical for Optuna."""
    from ray import tune

    out: dict[str, Any] = {}
    for path, value in spec.sweep.items():
        if isinstance(value, list):
            out[path] = tune.choice(value) if spec.search.algorithm == "optuna" else tune.grid_search(value)
        elif value.kind == "uniform":
            out[path] = tune.uniform(*value.uniform)
        elif value.kind == "loguniform":
            out[path] = tune.loguniform(*value.loguniform)
        elif value.kind == "randint":
            out[path] = tune.randint(value.randint[0], value.randint[1] + 1)  # Tune excludes the upper end
        else:
            out[path] = tune.choice(list(value.choice))
    return out


def search_config(spec: ExperimentSpec, record: str | None = None) -> dict[str, Any]:
    """TuneConfig arguments of a search: metric, mode, samples, search algorithm, scheduler.
    ``record``: where ASHA writes its decisions (see :mod:`~adpo_ray.orchestration.scheduling`);
    without one, Tune's own ASHA, whose rungs a resume does not restore."""
    from adpo_ray.orchestration.trainable import search_key

    search = spec.search
    if search is None:
        return {}
    kwargs: dict[str, Any] = {"metric": search_key(search.metric), "mode": search.mode,
                              "num_samples": search.num_samples}
    if search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        kwargs["search_alg"] = OptunaSearch(seed=search.seed)
    elif search.seed is not None:
        from ray.tune.search import BasicVariantGenerator

        kwargs["search_alg"] = BasicVariantGenerator(random_state=search.seed)
    if search.asha is not None:
        from ray.tune.schedulers import ASHAScheduler

        from adpo_ray.orchestration.scheduling import RecordedASHA

        asha = dict(time_attr=TRAINING_ITERATION, max_t=max_iterations(spec),
                    grace_period=search.asha.grace_period, reduction_factor=search.asha.reduction_factor)
        kwargs["scheduler"] = RecordedASHA(**asha, record=record) if record else ASHAScheduler(**asha)
    return kwargs


def max_iterations(spec: ExperimentSpec) -> int:
    """The most iterations a trial of ``spec`` trains (its budget in iterations)."""
    import math

    (trial,) = spec.trials()[:1]
    knobs = spec.knobs(trial)
    if knobs.iterations:
        return knobs.iterations
    return math.ceil(knobs.env_steps / (knobs.train_batch_size or 1))


# -- progress table ----------------------------------------------------------------------------
def progress_reporter(spec: ExperimentSpec):
    from ray import tune

    metrics = {TRAINING_ITERATION: "iter", ENV_STEPS: "env steps"}
    kinds = {ENVIRONMENTS[e]["kind"] for e in spec.environments}
    if "bandit" in kinds:
        metrics[EVAL_WINMASS] = "WinMass"
    if "mujoco" in kinds:
        metrics[EVAL_RETURN] = "eval return"
    columns = {
        "trial/env": "env",
        "trial/scenario": "scenario",
        "trial/algorithm": "algo",
        "trial/anchor_mode": "anchor",
        "trial/hidden_size": "hidden",
        "trial/seed": "seed",
    }
    if spec.search is not None:
        from adpo_ray.orchestration.trainable import search_key

        metrics[search_key(spec.search.metric)] = f"{spec.search.metric} (search)"
        columns.update({f"sweep/{path}": path for path in spec.sweep})
    elif spec.sweep:
        columns["trial/sweep"] = "sweep"
    return tune.CLIReporter(
        metric_columns=metrics,
        parameter_columns=columns,
        max_report_frequency=20,
        max_progress_rows=30,
        max_error_rows=10,
        sort_by_metric=False,
    )


def _trial_name(trial) -> str:
    """Tune's name and folder of a trial: its tag, shortened where a folder name could not hold it
    (:attr:`TrialSpec.dirname`)."""
    return TrialSpec.from_config(trial.config, trial.trial_id).dirname


# -- launch ------------------------------------------------------------------------------------
@dataclass
class GridOptions:
    tracking_uri: str
    artifact_location: str | None
    storage_path: str
    name: str
    address: str | None = None
    max_concurrent: int | None = None  # --max-concurrent

    @property
    def run_dir(self) -> str:
        return storage.join(self.storage_path, self.name)


#: A launch name: one folder name under --storage-path, never a path.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def check_name(name: str) -> str:
    """``name``, or a ValueError: letters, digits, ``_.-``, 1-128 characters, starting with a
    letter or digit (so it can never leave --storage-path: no ``/``, no ``..``)."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"--name {name!r}: use 1-128 letters, digits, '_', '.' or '-', starting with a "
                         "letter or digit (it names one folder under --storage-path)")
    return name


def check_storage_path(path: str) -> str:
    """``path`` (a folder, or a URI such as ``s3://bucket/dir``), or a ValueError for a URI that
    is malformed, e.g. ``s3:/bucket/x``, which would otherwise become a local folder named ``s3:``."""
    match = _SCHEME.match(path)
    if match and len(match.group(1)) > 1:  # a scheme (one letter would be a Windows drive)
        scheme, rest = match.group(1), path[match.end():]
        if not rest.startswith("//"):
            raise ValueError(f"--storage-path {path!r}: a URI needs '://' after its scheme, e.g. "
                             f"{scheme}://{rest.lstrip('/')}")
        if scheme != "file" and not rest[2:].split("/")[0].split("?")[0]:
            raise ValueError(f"--storage-path {path!r}: no bucket or host after {scheme}://")
        if scheme == "file" and not rest[2:].startswith("/"):
            raise ValueError(f"--storage-path {path!r}: a file:// URI takes an absolute path, file:///dir")
    elif "://" in path:
        raise ValueError(f"--storage-path {path!r}: not a folder, and not a URI (scheme://...)")
    return path


def resolve_options(
    spec: ExperimentSpec,
    *,
    tracking_uri: str | None = None,
    storage_path: str | None = None,
    name: str | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
) -> GridOptions:
    uri = tracking_uri or spec.tracking.tracking_uri or default_tracking_uri()
    artifacts = spec.tracking.artifact_location
    if artifacts is None and uri.startswith("sqlite:"):
        artifacts = default_artifact_location()
    path = check_storage_path(storage_path) if storage_path else os.path.abspath("ray_results")
    if name is not None:
        check_name(name)
    if not storage.is_uri(path):
        path = os.path.abspath(path)
    return GridOptions(
        tracking_uri=uri,
        artifact_location=artifacts,
        storage_path=path,
        name=name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}",
        address=address or os.environ.get("RAY_ADDRESS"),
        max_concurrent=max_concurrent,
    )


def connect(address: str | None):
    import ray

    if ray.is_initialized():
        return
    if address:
        # A cluster started with a token (cluster/*.yaml) admits drivers that use it; Ray's
        # drivers use a token only in token mode, so a token on this machine turns that on.
        has_token = os.environ.get("RAY_AUTH_TOKEN") or os.path.exists(os.path.expanduser("~/.ray/auth_token"))
        if has_token and "RAY_AUTH_MODE" not in os.environ:
            os.environ["RAY_AUTH_MODE"] = "token"
        ray.init(address=address, log_to_driver=False)
    else:
        # an embedded Ray with its dashboard on this machine's loopback, to watch the grid
        context = ray.init(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
        url = getattr(context, "dashboard_url", None)
        if url:
            token = "" if os.environ.get("RAY_AUTH_MODE") == "disabled" else \
                " (sign in with the token `ray get-auth-token` prints)"
            print(f"Ray dashboard: http://{url}{token}", flush=True)


def _read_autoscaling_config(monitor_pid: int | None) -> dict | None:
    """On the head node: the autoscaler monitor's ``--autoscaling-config`` file (``ray up``
    writes ``~/ray_bootstrap_config.yaml``), parsed; None when the monitor runs without one."""
    import psutil
    import yaml

    path = None
    if monitor_pid:
        try:
            cmd = psutil.Process(monitor_pid).cmdline()
            path = next((a.split("=", 1)[1] for a in cmd if a.startswith("--autoscaling-config=")), None)
        except psutil.Error:
            path = None
    if path is None and os.path.exists(os.path.expanduser("~/ray_bootstrap_config.yaml")):
        path = "~/ray_bootstrap_config.yaml"
    if path is None:
        return None
    with open(os.path.expanduser(path)) as f:
        config = yaml.safe_load(f)  # JSON is YAML too
    return config if isinstance(config, dict) else None


def autoscaler_config() -> dict | None:
    """The node types of the connected cluster's autoscaler, or None (a fixed cluster, or an
    embedded Ray). Ray 2.60 keeps them in the monitor's config file on the head: a zero-CPU task
    pinned to the head reads it; the monitor's pid is in its status in Ray's internal KV."""
    import ray

    try:
        raw = _ray_private.autoscaling_status()
        pid = json.loads(raw).get("monitor_pid") if raw else None
        task = ray.remote(num_cpus=0, resources={"node:__internal_head__": 0.001})(_read_autoscaling_config)
        config = ray.get(task.remote(pid), timeout=60)
    except Exception:  # noqa: BLE001 - unknown: plan with the live nodes (or --max-concurrent)
        return None
    if not config or config.get("provider", {}).get("type") in (None, "readonly"):
        return None
    return config


def cluster_capacity(address: str | None) -> Capacity:
    """What the connected cluster can hold at full scale: its autoscaler's node types when it
    autoscales (so the grid does not stop at the nodes alive at launch), else its live nodes
    (an embedded Ray: this machine)."""
    import ray

    config = autoscaler_config() if address else None
    if config:
        try:
            capacity = capacity_from_cluster_config(config, "the cluster's autoscaler config")
        except Exception:  # noqa: BLE001 - a config we cannot read: count the live nodes
            capacity = None
        if capacity is not None and capacity.autoscaling:
            return capacity
    return capacity_from_nodes(ray.nodes(), "the cluster's live nodes")


class _NoRestoreHint(logging.Filter):
    """Drops Tune's advice to resume an interrupted run with ``Tuner.restore``: a grid resumes
    with `adpo-ray resume RUN_DIR`, which the CLI prints instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


_NO_RESTORE_HINT = _NoRestoreHint()  # one instance: addFilter adds it once however often it runs


def _tuner_env() -> None:
    logging.getLogger("ray.tune.tune").addFilter(_NO_RESTORE_HINT)
    # The compact progress table (legacy reporter) and frequent experiment snapshots, so a
    # killed driver resumes close to where it was.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def _start(address: str | None) -> None:
    """The prelude of a launch and of a resume: Tune's environment, then Ray."""
    _tuner_env()
    connect(address)


LOCK_FILE = ".adpo_launch.json"


def claim_folder(run_dir: str, name: str, *, take_over: bool = False) -> None:
    """Claim ``run_dir`` for this launch before anything is written there: an exclusive lock file
    (atomic on a local or shared file system; on object storage, a check then a write). A second
    launch with the same name gets a :class:`FileExistsError` naming the first. ``take_over``
    (resume): a claim by a process that is no longer alive on this host is taken over."""
    import socket

    me = {"launch": name, "host": socket.gethostname(), "pid": os.getpid(),
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = storage.join(run_dir, LOCK_FILE)
    if storage.is_uri(run_dir):
        if storage.exists(path) and not take_over:
            raise FileExistsError(_claimed(run_dir, storage.read_text(path)))
        storage.write_text(path, json.dumps(me))
        return
    os.makedirs(run_dir, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(Path(path).read_text())
            except (OSError, ValueError):
                holder = {}
            if take_over and not _alive_here(holder):
                os.unlink(path)
                continue
            raise FileExistsError(_claimed(run_dir, json.dumps(holder))) from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
        return


def _alive_here(holder: dict) -> bool:
    import socket

    import psutil

    return holder.get("host") == socket.gethostname() and holder.get("pid") != os.getpid() \
        and psutil.pid_exists(int(holder.get("pid", 0) or 0))


def _claimed(run_dir: str, holder: str) -> str:
    try:
        h = json.loads(holder)
        who = f"launch {h.get('launch')!r} (pid {h.get('pid')} on {h.get('host')}, since {h.get('since')})"
    except ValueError:
        who = "another launch"
    return (f"{run_dir} is taken by {who}; resume that grid with `adpo-ray resume {run_dir}` "
            f"once it has stopped, or pick another --name")


def run_grid(spec: ExperimentSpec, options: GridOptions, *, trainable=None, verbose: int = 1,
             plans: list[TrialPlan] | None = None):
    """Launch the grid of ``spec`` and return Tune's ResultGrid (``plans``: from
    :func:`plan_trials`, if the caller has them already). The results carry
    ``mlflow_pending``: MLflow writes not yet delivered at the end (see `adpo-ray sync`)."""
    from ray import tune

    plans = plans or plan_trials(spec)  # validates every trial's RLlib config before anything starts
    check_tracking(options.tracking_uri)
    run_dir = options.run_dir
    if tune.Tuner.can_restore(run_dir) or storage.exists(storage.join(run_dir, GRID_FILE)):
        raise FileExistsError(f"{run_dir} already holds a grid; resume it with `adpo-ray resume {run_dir}` or pick another --name")
    claim_folder(run_dir, options.name)
    try:
        spec, concurrency, distill_runs, init_runs = _prepare(spec, options, plans, verbose)
    except BaseException:
        release_folder(run_dir)  # nothing was recorded: the name is free again
        raise
    storage.write_text(storage.join(run_dir, GRID_FILE), json.dumps({
        "spec": spec.model_dump(mode="json", by_alias=True),
        "options": options.__dict__,
        "concurrency": concurrency,
        "distill_runs": distill_runs,
        "init_runs": init_runs,
    }, indent=2))
    return _fit(spec, options, concurrency, trainable, verbose, distill_runs, init_runs)


def _prepare(spec: ExperimentSpec, options: GridOptions, plans: list[TrialPlan], verbose: int):
    """Ray, the cluster's capacity, the fit check, the concurrency, distillation inputs and
    pretrained starting policies."""
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
    return spec, concurrency, distill_runs, init_runs


def release_folder(run_dir: str) -> None:
    """Give up this launch's claim on ``run_dir`` (a launch that stopped before recording anything)."""
    storage.delete(storage.join(run_dir, LOCK_FILE))


def _fit(spec: ExperimentSpec, options: GridOptions, concurrency: int, trainable, verbose: int,
         distill_runs: dict[str, str] | None = None, init_runs: dict[str, str] | None = None):
    from ray import tune

    from adpo_ray.orchestration.scheduling import record_path
    from adpo_ray.orchestration.tracking import MLflowTracker
    from adpo_ray.orchestration.trainable import GridTrainable

    tracker = MLflowTracker(spec, options.tracking_uri, options.artifact_location, options.run_dir, options.name)
    tuner = tune.Tuner(
        trainable or GridTrainable,
        param_space=param_space(spec, options.tracking_uri, distill_runs, init_runs),
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrency,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
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
            callbacks=[tracker],
            progress_reporter=progress_reporter(spec),
            verbose=verbose,
        ),
    )
    results = tuner.fit()
    results.mlflow_pending = tracker.pending_at_end
    results.interrupted = tracker.interrupted
    return results


def load_grid_file(run_dir: str) -> tuple[ExperimentSpec, GridOptions]:
    path = storage.join(str(run_dir), GRID_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(f"{run_dir} is not an adpo-ray grid folder (no {GRID_FILE})")
    data = json.loads(storage.read_text(path))
    return ExperimentSpec.model_validate(data["spec"]), GridOptions(**data["options"])


def resume_grid(run_dir: str | Path, *, address: str | None = None, trainable=None, verbose: int = 1):
    """Finish an interrupted grid: unfinished and errored trials resume from their checkpoints;
    finished trials are not re-run; MLflow runs are re-attached, never duplicated, and MLflow
    writes still pending are delivered. A grid killed before Tune's first snapshot starts again
    in its folder."""
    from ray import tune

    from adpo_ray.orchestration.scheduling import RecordedASHA, record_path
    from adpo_ray.orchestration.tracking import MLflowTracker
    from adpo_ray.orchestration.trainable import GridTrainable

    run_dir = str(run_dir).rstrip("/") if storage.is_uri(str(run_dir)) else str(Path(run_dir).resolve())
    spec, options = load_grid_file(run_dir)
    data = json.loads(storage.read_text(storage.join(run_dir, GRID_FILE)))
    # the folder may have moved since launch: everything follows the folder given here
    options.storage_path, _, options.name = run_dir.rpartition("/")
    claim_folder(run_dir, options.name, take_over=True)
    _start(address or options.address)
    if not tune.Tuner.can_restore(run_dir):  # killed before Tune's first snapshot: start over here
        concurrency = data.get("concurrency") or max_concurrent(
            plan_trials(spec), cluster_capacity(options.address), options.max_concurrent)
        return _fit(spec, options, concurrency, trainable, verbose, data.get("distill_runs"),
                    data.get("init_runs")), spec, options
    tuner = tune.Tuner.restore(
        run_dir,
        trainable=trainable or GridTrainable,
        resume_unfinished=True,
        resume_errored=True,
        param_space=param_space(spec, options.tracking_uri, data.get("distill_runs"), data.get("init_runs")),
    )
    # Tune restores the callbacks pickled at launch; point the tracker at the folder as it is now
    # (Tune 2.60 has no public way to pass callbacks to a restore).
    trackers = [c for c in _ray_private.tuner_run_config(tuner).callbacks or [] if isinstance(c, MLflowTracker)]
    for tracker in trackers:
        tracker.run_dir = run_dir
    scheduler = _ray_private.tuner_scheduler(tuner)
    if isinstance(scheduler, RecordedASHA):  # its record moved with the folder
        scheduler.record = record_path(run_dir, options.name)
    results = tuner.fit()
    results.mlflow_pending = trackers[0].pending_at_end if trackers else None
    results.interrupted = trackers[0].interrupted if trackers else False
    return results, spec, options
