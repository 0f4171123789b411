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
from adpo_ray.orchestration.planning import TrialPlan, check_fits, max_concurrent, plan_trials
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
    )


def connect(address: str | None):
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False)


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
    import ray
    from ray import tune

    from adpo_ray.orchestration.tracking import MLflowTracker
    from adpo_ray.orchestration.trainable import GridTrainable

    trainable = trainable or GridTrainable
    check_fits(plans, ray.nodes())
    concurrency = max_concurrent(plans, ray.cluster_resources(), spec)

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
