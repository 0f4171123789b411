"""Spec -> Tune grid: plan resources, launch (or resume) the Tuner, summarise.

Everything that can be checked is checked before Ray or MLflow start: the spec (pydantic), every
trial's RLlib config, and — once connected — that each trial's placement group fits a node.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adpo_ray.config import ExperimentSpec, TrialSpec
from adpo_ray.envs import ENVIRONMENTS
from adpo_ray.metric_names import HEADLINE, is_metric_key
from adpo_ray.orchestration import storage

GRID_FILE = "adpo_grid.json"


class ResourceError(RuntimeError):
    """A trial could never be scheduled on this cluster."""


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be reached."""


def check_tracking(uri: str) -> None:
    """Reach the tracking store once, quickly, before anything starts (MLflow's HTTP client would
    otherwise retry for minutes inside the running grid)."""
    from unittest import mock

    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):  # a local file: its folder must be there and writable
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise TrackingError(f"cannot create the MLflow store {uri!r}: {folder} is not a writable folder")
        return
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    try:
        with mock.patch.dict(os.environ, quick):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure here means "not reachable", said plainly
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrackingError(
            f"cannot reach the MLflow tracking store {uri!r} ({first_line}). Start the server, or "
            "pass another --tracking-uri (default: sqlite:///<cwd>/mlflow.db)"
        ) from None


@dataclass(frozen=True)
class TrialPlan:
    trial: TrialSpec
    bundles: list[dict[str, float]]
    env_steps: int

    @property
    def required(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for b in self.bundles:
            for k, v in b.items():
                total[k] = total.get(k, 0.0) + v
        return total


def param_space(spec: ExperimentSpec, tracking_uri: str) -> dict[str, Any]:
    from ray import tune

    space = {
        "spec": spec.model_dump(mode="json", by_alias=True),
        "trial": tune.grid_search([t.as_dict() for t in spec.trials()]),
    }
    if spec.distill is not None:  # students look their teacher and dataset up there
        space["tracking_uri"] = tracking_uri
    return space


def plan_trials(spec: ExperimentSpec) -> list[TrialPlan]:
    """Per-trial resources (RLlib's own placement group) and env-step budget. Starts no Ray."""
    from adpo_ray.orchestration.trainable import GridTrainable

    spec_dict = spec.model_dump(mode="json", by_alias=True)
    plans = []
    for t in spec.trials():
        pgf = GridTrainable.default_resource_request({"spec": spec_dict, "trial": t.as_dict()})
        plans.append(TrialPlan(t, [dict(b) for b in pgf.bundles], trial_env_steps(spec, t.env, t.algorithm)))
    return plans


def trial_env_steps(spec: ExperimentSpec, env: str, algorithm: str = "adpo") -> int:
    """The env steps one trial of ``env`` samples (its budget, whichever limit comes first); for
    a distillation student, the dataset states it trains on."""
    budget = spec.budget_for(env)
    if spec.distill is not None:
        return budget.iterations * spec.distill.states_per_iteration
    by_iters = budget.iterations * spec.params_for(env, algorithm).train_batch_size if budget.iterations else None
    return int(min(v for v in (by_iters, budget.env_steps) if v))


def check_fits(plans: list[TrialPlan], nodes: list[dict[str, Any]]) -> None:
    """Raise :class:`ResourceError` unless every trial's bundles fit the alive nodes."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    for plan in plans:
        need = plan.required
        # RLlib packs a trial's bundles; every bundle must fit some node, the whole trial the cluster.
        for bundle in plan.bundles:
            if not any(all(node.get(k, 0) >= v for k, v in bundle.items()) for node in alive):
                raise ResourceError(_no_fit(plan, bundle, alive, "one bundle"))
        totals = {k: sum(node.get(k, 0) for node in alive) for k in need}
        if any(totals[k] < v for k, v in need.items()):
            raise ResourceError(_no_fit(plan, need, alive, "the trial"))


def _no_fit(plan: TrialPlan, need: dict, alive: list[dict], what: str) -> str:
    have = [{k: node.get(k, 0) for k in ("CPU", "GPU")} for node in alive]
    return (
        f"trial {plan.trial.tag} can never be scheduled: {what} needs {need}, the cluster's nodes "
        f"have {have}. Lower resources.num_env_runners / resources.num_learners / "
        f"resources.num_gpus_per_learner in the spec, or add nodes."
    )


def max_concurrent(plans: list[TrialPlan], cluster: dict[str, float], spec: ExperimentSpec) -> int:
    if spec.resources.max_concurrent_trials:
        return spec.resources.max_concurrent_trials
    worst = max((p.required.get("CPU", 1.0) for p in plans), default=1.0) or 1.0
    by_cpu = int(cluster.get("CPU", 1) // worst)
    gpu_need = max((p.required.get("GPU", 0.0) for p in plans), default=0.0)
    by_gpu = int(cluster.get("GPU", 0) // gpu_need) if gpu_need else by_cpu
    return max(1, min(by_cpu, by_gpu, len(plans)))


# -- progress table ----------------------------------------------------------------------------
def progress_reporter(spec: ExperimentSpec):
    from ray import tune

    metrics = {"training_iteration": "iter", "env_steps": "env steps"}
    kinds = {ENVIRONMENTS[e]["kind"] for e in spec.environments}
    if "bandit" in kinds:
        metrics["eval/winmass"] = "WinMass"
    if "mujoco" in kinds:
        metrics["eval/return_mean"] = "eval return"
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
    from adpo_ray.config import default_artifact_location, default_tracking_uri

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


def run_grid(spec: ExperimentSpec, options: GridOptions, *, trainable=None, verbose: int = 1,
             plans: list[TrialPlan] | None = None):
    """Launch the grid of ``spec`` and return Tune's ResultGrid (``plans``: from
    :func:`plan_trials`, if the caller has them already)."""
    _tuner_env()
    import ray
    from ray import tune

    from adpo_ray.orchestration.tracking import MLflowTracker
    from adpo_ray.orchestration.trainable import GridTrainable

    trainable = trainable or GridTrainable
    plans = plans or plan_trials(spec)  # validates every trial's RLlib config before anything starts
    check_tracking(options.tracking_uri)
    connect(options.address)
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
    _tuner_env()
    from ray import tune

    from adpo_ray.orchestration.tracking import MLflowTracker
    from adpo_ray.orchestration.trainable import GridTrainable

    run_dir = str(run_dir).rstrip("/") if storage.is_uri(str(run_dir)) else str(Path(run_dir).resolve())
    spec, options = load_grid_file(run_dir)
    if not tune.Tuner.can_restore(run_dir):
        raise FileNotFoundError(f"{run_dir} has no Tune experiment state to resume")
    # the folder may have moved since launch: everything follows the folder given here
    options.storage_path, _, options.name = run_dir.rpartition("/")
    connect(address or options.address)
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


# -- summary -----------------------------------------------------------------------------------
def summary_frame(results) -> Any:
    """One row per trial: coordinates, status and final curated metrics."""
    import pandas as pd

    rows = []
    for r in results:
        t = TrialSpec(**r.config["trial"])
        row = {**t.as_dict(), "method": t.method, "status": "ERROR" if r.error else "TERMINATED"}
        row.update({k: v for k, v in (r.metrics or {}).items() if is_metric_key(k)})
        rows.append(row)
    return pd.DataFrame(rows)


def headline_table(frame, env: str):
    """Scenarios (rows) x methods (columns) of the env's headline metric (mean over seeds/hidden)."""
    metric = HEADLINE[ENVIRONMENTS[env]["kind"]]
    sub = frame[frame["env"] == env]
    if metric not in sub:
        return None, metric
    return sub.pivot_table(index="scenario", columns="method", values=metric, aggfunc="mean"), metric
