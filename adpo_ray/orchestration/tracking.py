"""MLflow tracking of a grid, as a Tune callback running on the driver.

* one MLflow experiment per spec name, one *parent* run per launch, one *child* run per trial
  (``mlflow.parentRunId``), tagged with the trial's coordinates so the MLflow UI can filter and
  group by scenario, noise type, severity, anchor mode, hidden size, env, seed and algorithm;
* curated params (the spec's knobs) and curated metrics, logged in batches with the env-step count
  as the step;
* artifacts: the resolved spec on the parent; the metrics CSV and final checkpoint on each child.

Resuming re-attaches: the parent run id is kept in the Tune experiment folder, each child run is
found again by its ``trial`` tag, and metric steps already logged are not logged twice — so every
trial has exactly one child run and one metric history, whatever happened to the driver.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune

from adpo_ray.metrics import ENV_STEPS, TRAINING_ITERATION, is_metric_key
from adpo_ray.orchestration import mlflow_store, storage
from adpo_ray.spec import ExperimentSpec, TrialSpec

PARENT_FILE = "adpo_mlflow_parent.json"


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
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class MLflowTracker(tune.Callback):
    """Tune callback logging a grid to MLflow (see the module docstring)."""

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
        self._client = None
        self._state: dict[str, Any] = {}

    # The MLflow client holds sessions: never pickled with the Tuner.
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_client"] = None
        state["_state"] = {}
        return state

    @property
    def spec(self) -> ExperimentSpec:
        return ExperimentSpec.model_validate(self.spec_dict)

    @property
    def client(self):
        if self._client is None:
            self._client = mlflow_store.client(self.tracking_uri)
        return self._client

    # -- parent run ------------------------------------------------------------------------
    def setup(self, **info) -> None:
        self._state = {"children": {}, "last_step": {}}
        self._software_tags = software_tags()
        spec = self.spec
        self.experiment_id = self._experiment_id(spec.experiment_name)
        parent_file = storage.join(self.run_dir, PARENT_FILE)
        if storage.exists(parent_file):
            self.parent_run_id = json.loads(storage.read_text(parent_file))["run_id"]
            self.client.update_run(self.parent_run_id, status="RUNNING")
            self.client.set_tag(self.parent_run_id, "resumed", "true")
            return
        run = self.client.create_run(
            self.experiment_id,
            run_name=self.launch_name,
            tags={"grid": spec.name, "run_dir": self.run_dir, "kind": "grid", **self._software_tags},
        )
        self.parent_run_id = run.info.run_id
        storage.write_text(parent_file, json.dumps({"run_id": self.parent_run_id, "experiment_id": self.experiment_id}))
        self._log_params(self.parent_run_id, {
            "grid.trials": str(len(spec.trials())),
            "grid.environments": ",".join(spec.environments),
            "grid.scenarios": ",".join(spec.scenario_names)[:6000],
            "grid.algorithms": ",".join(spec.algorithms),
            "grid.anchor_modes": ",".join(spec.anchors.modes),
            "grid.hidden_sizes": ",".join(map(str, spec.hidden_sizes)),
            "grid.seeds": ",".join(map(str, spec.seeds)),
        })
        with tempfile.TemporaryDirectory() as tmp:
            import yaml

            path = Path(tmp) / "spec.yaml"
            path.write_text(yaml.safe_dump(self.spec_dict, sort_keys=False))
            self.client.log_artifact(self.parent_run_id, str(path))

    def _experiment_id(self, name: str) -> str:
        return mlflow_store.experiment_id(self.client, name, self.artifact_location)

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])

    # -- child runs ------------------------------------------------------------------------
    def _child(self, trial) -> str:
        key = trial.trial_id
        if key in self._state["children"]:
            return self._state["children"][key]
        spec, t = self.spec, TrialSpec(**trial.config["trial"])
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}' and tags.trial = '{t.tag}'",
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            history = self.client.get_metric_history(run_id, ENV_STEPS)
            self._state["last_step"][run_id] = max((m.step for m in history), default=-1)
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=t.tag,
                tags={
                    "mlflow.parentRunId": self.parent_run_id,
                    "tune_trial_id": trial.trial_id,
                    **run_tags(t, spec.name),
                    **self._software_tags,
                },
            )
            run_id = run.info.run_id
            self._log_params(run_id, spec.knobs(t).params())
            self._state["last_step"][run_id] = -1
        self._state["children"][key] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._child(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        from mlflow.entities import Metric

        run_id = self._child(trial)
        step = int(result.get(ENV_STEPS, result.get(TRAINING_ITERATION, 0)))
        if step <= self._state["last_step"].get(run_id, -1):
            return  # already logged before a crash / restore: one history per trial
        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, step)
            for k, v in result.items()
            if is_metric_key(k) and isinstance(v, (int, float))
        ]
        self.client.log_batch(run_id, metrics=metrics)
        self._state["last_step"][run_id] = step

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.client.set_tag(self._child(trial), "num_failures", str(trial.num_failures))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run_id = self._child(trial)
        try:
            self._log_history_csv(run_id)
            checkpoint = trial.checkpoint
            if checkpoint is not None:
                if Path(checkpoint.path).exists():
                    self.client.log_artifacts(run_id, checkpoint.path, artifact_path="checkpoint")
                else:  # on remote storage (s3://...): fetch it first
                    with tempfile.TemporaryDirectory() as tmp:
                        self.client.log_artifacts(run_id, checkpoint.to_directory(tmp), artifact_path="checkpoint")
        finally:
            self.client.set_terminated(run_id, status="FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        run_id = self._child(trial)
        if trial.error_file and Path(trial.error_file).exists():
            self.client.log_artifact(run_id, trial.error_file)
        self.client.set_terminated(run_id, status="FAILED")

    def on_experiment_end(self, trials, **info) -> None:
        ok = all(t.status == "TERMINATED" for t in trials)
        self.client.set_terminated(self.parent_run_id, status="FINISHED" if ok else "FAILED")

    def _log_history_csv(self, run_id: str) -> None:
        run = self.client.get_run(run_id)
        frames = []
        for key in run.data.metrics:
            hist = self.client.get_metric_history(run_id, key)
            frames.append(pd.DataFrame({"step": [m.step for m in hist], key: [m.value for m in hist]})
                          .drop_duplicates("step", keep="last").set_index("step"))
        if not frames:
            return
        table = pd.concat(frames, axis=1).sort_index()
        table = table.drop(columns=[ENV_STEPS], errors="ignore").rename_axis(ENV_STEPS).reset_index()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "metrics.csv"
            table.to_csv(path, index=False)
            self.client.log_artifact(run_id, str(path))
