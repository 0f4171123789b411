"""Launch and resume a grid on Ray Tune, tracked in MLflow.

Everything that can be checked is checked before Ray or MLflow start: the spec (pydantic), every
trial's RLlib config (:func:`~adpo_ray.orchestration.planning.plan_trials`), the tracking store,
and — once connected — that each trial's placement group fits the cluster.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adpo_ray.envs import ENVIRONMENTS
from adpo_ray.metrics import ENV_STEPS, EVAL_RETURN, EVAL_WINMASS, TRAINING_ITERATION
from adpo_ray.orchestration import storage
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


def param_space(spec: ExperimentSpec, tracking_uri: str) -> dict[str, Any]:
    from ray import tune

    space = {
        "spec": spec.model_dump(mode="json", by_alias=True),
        "trial": tune.grid_search([t.as_dict() for t in spec.trials()]),
    }
    if spec.distill is not None:  # students look their teacher and dataset up there
        space["tracking_uri"] = tracking_uri
    return space


# -- progress table ----------------------------------------------------------------------------
def progress_reporter(spec: ExperimentSpec):
    from ray import tune

    metrics = {TRAINING_ITERATION: "iter", ENV_STEPS: "env steps"}
    kinds = {ENVIRONMENTS[e]["kind"] for e in spec.environments}
    if "bandit" in kinds:
        metrics[EVAL_WINMASS] = "WinMass"
    if "mujoco" in kinds:
        metrics[EVAL_RETURN] = "eval return"
    return tune.CLIReporter(
        metric_columns=metrics,
        parameter_columns={
            "trial/env": "env",
            "trial/scenario": "scenario",
            "trial/algorithm": "algo",
            "trial/anchor_mode": "anchor",
            "trial/hidden_size": "hidden",
            "trial/seed": "seed",
        },
        max_report_frequency=20,
        max_progress_rows=30,
        max_error_rows=10,
        sort_by_metric=False,
    )


def _trial_name(trial) -> str:
    return TrialSpec(**trial.config["trial"]).tag


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
    path = storage_path or os.path.abspath("ray_results")
    if not storage.is_uri(path):
        path = os.path.abspath(path)
    return GridOptions(
        tracking_uri=uri,
        artifact_location=artifacts,
        storage_path=path,
        name=name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
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
        ray.init(include_dashboard=False, log_to_driver=False)


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
    from ray.experimental import internal_kv

    try:
        raw = internal_kv._internal_kv_get("__autoscaling_status")
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


def _tuner_env() -> None:
    # The compact progress table (legacy reporter) and frequent experiment snapshots, so a
    # killed driver resumes close to where it was.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def _start(address: str | None) -> None:
    """The prelude of a launch and of a resume: Tune's environment, then Ray."""
    _tuner_env()
    connect(address)


def run_grid(spec: ExperimentSpec, options: GridOptions, *, trainable=None, verbose: int = 1,
             plans: list[TrialPlan] | None = None):
    """Launch the grid of ``spec`` and return Tune's ResultGrid (``plans``: from
    :func:`plan_trials`, if the caller has them already)."""
    plans = plans or plan_trials(spec)  # validates every trial's RLlib config before anything starts
    check_tracking(options.tracking_uri)
    _start(options.address)
    from ray import tune

    from adpo_ray.orchestration.tracking import MLflowTracker
    from adpo_ray.orchestration.trainable import GridTrainable

    trainable = trainable or GridTrainable
    capacity = cluster_capacity(options.address)
    resolved = resolve_learner_gpus(spec, capacity)
    if resolved is not spec:  # GPU learners take a share chosen for this cluster
        spec, plans = resolved, plan_trials(resolved)
    check_fits(plans, capacity)
    concurrency = max_concurrent(plans, capacity, options.max_concurrent or spec.resources.max_concurrent_trials)
    if verbose:
        print(f"cluster at full scale: {capacity.describe()}; up to {concurrency} trial(s) at once")

    run_dir = options.run_dir
    if tune.Tuner.can_restore(run_dir) or storage.exists(storage.join(run_dir, GRID_FILE)):
        raise FileExistsError(f"{run_dir} already holds a grid; resume it with `adpo-ray resume {run_dir}` or pick another --name")
    if spec.distill is not None:  # teachers and datasets first: found in MLflow or made now
        from adpo_ray.orchestration.distill import prepare

        prepare(spec, options.tracking_uri, options.artifact_location)
    storage.write_text(storage.join(run_dir, GRID_FILE), json.dumps({
        "spec": spec.model_dump(mode="json", by_alias=True),
        "options": options.__dict__,
    }, indent=2))

    tracker = MLflowTracker(spec, options.tracking_uri, options.artifact_location, run_dir, options.name)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(spec, options.tracking_uri),
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrency,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=options.name,
            storage_path=options.storage_path,
            # Each trial stops itself at its env's budget and asks for periodic checkpoints.
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_at_end=True,
                num_to_keep=2,
            ),
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
            callbacks=[tracker],
            progress_reporter=progress_reporter(spec),
            verbose=verbose,
        ),
    )
    return tuner.fit()


def load_grid_file(run_dir: str) -> tuple[ExperimentSpec, GridOptions]:
    path = storage.join(str(run_dir), GRID_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(f"{run_dir} is not an adpo-ray grid folder (no {GRID_FILE})")
    data = json.loads(storage.read_text(path))
    return ExperimentSpec.model_validate(data["spec"]), GridOptions(**data["options"])


def resume_grid(run_dir: str | Path, *, address: str | None = None, trainable=None):
    """Finish an interrupted grid: unfinished and errored trials resume from their checkpoints;
    finished trials are not re-run; MLflow runs are re-attached, never duplicated."""
    from ray import tune

    from adpo_ray.orchestration.tracking import MLflowTracker
    from adpo_ray.orchestration.trainable import GridTrainable

    run_dir = str(run_dir).rstrip("/") if storage.is_uri(str(run_dir)) else str(Path(run_dir).resolve())
    spec, options = load_grid_file(run_dir)
    if not tune.Tuner.can_restore(run_dir):
        raise FileNotFoundError(f"{run_dir} has no Tune experiment state to resume")
    # the folder may have moved since launch: everything follows the folder given here
    options.storage_path, _, options.name = run_dir.rpartition("/")
    _start(address or options.address)
    tuner = tune.Tuner.restore(
        run_dir,
        trainable=trainable or GridTrainable,
        resume_unfinished=True,
        resume_errored=True,
        param_space=param_space(spec, options.tracking_uri),
    )
    # Tune restores the callbacks pickled at launch; point the tracker at the folder as it is now
    # (Tune 2.60 has no public way to pass callbacks to a restore).
    for callback in tuner._local_tuner.get_run_config().callbacks or []:
        if isinstance(callback, MLflowTracker):
            callback.run_dir = run_dir
    return tuner.fit(), spec, options
