"""Load a grid's trials into tidy tables, from MLflow or from a Tune results folder.

* ``trials``: one row per trial — coordinates (env, scenario, noise_type, severity, algorithm,
  anchor_mode, method, hidden_size, seed, start, loss: the preference loss of ADPO and DPO
  trials), status and final curated metrics.
* ``curves``: long table of the headline metrics over training — trial, env_steps, metric, value.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

from adpo_ray.core.noise import SCENARIOS, TWELVE
from adpo_ray.metrics import (
    CURVE_METRICS,
    ENV_STEPS,
    MEMBERS,
    is_metric_key,
    member_ended,
    whole_lines,
)
from adpo_ray.spec import method_name

COORDS = ["env", "scenario", "noise_type", "severity", "algorithm", "anchor_mode", "method", "hidden_size", "seed", "start",
          "loss"]
SCENARIO_ORDER = {name: i for i, name in enumerate([s.name for s in TWELVE] + ["clean"])}


@dataclass
class GridData:
    trials: pd.DataFrame
    curves: pd.DataFrame
    source: str
    parent_run_id: str | None = None
    experiment_id: str | None = None


def start_label(init: str | None) -> str:
    """A trial's ``anchors.init`` param as the report's start label."""
    if not init:
        return "random init"
    return "pretrained PPO" if str(init).startswith("pretrain:") else f"checkpoint {init}"


def _coords(trial: dict) -> dict:
    scen = SCENARIOS.get(trial["scenario"])
    method = trial.get("method") or method_name(trial["algorithm"], trial["anchor_mode"])
    return {
        "env": trial["env"],
        "scenario": trial["scenario"],
        "noise_type": scen.noise_type if scen else "",
        "severity": scen.severity if scen else "",
        "algorithm": trial["algorithm"],
        "anchor_mode": trial["anchor_mode"],
        "method": method,
        "hidden_size": int(trial["hidden_size"]),
        "seed": int(trial["seed"]),
    }


def _frames(rows: list[dict], curve_rows: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    trials = pd.DataFrame(rows)
    curves = pd.DataFrame(curve_rows, columns=["trial", "env_steps", "metric", "value"])
    if not trials.empty:
        order = trials["scenario"].map(lambda s: SCENARIO_ORDER.get(s, len(SCENARIO_ORDER)))
        trials = (trials.assign(_order=order)
                  .sort_values(["env", "_order", "method", "hidden_size", "seed"])
                  .drop(columns="_order").reset_index(drop=True))
    return trials, curves


def latest_parent_run(client, experiment_id: str) -> str | None:
    runs = client.search_runs(
        [experiment_id], filter_string="tags.kind = 'grid'", order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0].info.run_id if runs else None


def load_mlflow(tracking_uri: str, experiment: str, parent_run_id: str | None = None) -> GridData:
    """The child runs of one launch (``parent_run_id``, default: the latest launch)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise LookupError(f"no MLflow experiment {experiment!r} at {tracking_uri}; experiments: {', '.join(names) or 'none'}")
    parent_run_id = parent_run_id or latest_parent_run(client, exp.experiment_id)
    if parent_run_id is None:
        raise LookupError(f"experiment {experiment!r} has no grid launch (parent run)")
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=50_000
    )
    rows, curve_rows = [], []
    for run in runs:
        tags = run.data.tags
        if "trial" not in tags:
            continue
        row = {"trial": tags["trial"], **_coords(tags), "status": run.info.status, "run_id": run.info.run_id,
               "start": start_label(run.data.params.get("anchors.init")), "loss": run.data.params.get("loss")}
        row.update(run.data.metrics)
        rows.append(row)
        for key in CURVE_METRICS:
            if key in run.data.metrics:
                for m in client.get_metric_history(run.info.run_id, key):
                    curve_rows.append({"trial": tags["trial"], "env_steps": m.step, "metric": key, "value": m.value})
    if not rows:
        raise LookupError(f"launch {parent_run_id} of experiment {experiment!r} has no trial runs")
    trials, curves = _frames(rows, curve_rows)
    return GridData(trials, curves, f"{tracking_uri} / {experiment} / {parent_run_id}", parent_run_id, exp.experiment_id)


@lru_cache(maxsize=16)
def _spec(spec_json: str):
    """A launch's spec, validated once (every trial of a launch carries the same one)."""
    from adpo_ray.spec import ExperimentSpec

    return ExperimentSpec.model_validate(json.loads(spec_json))


def _loss_of(config: dict, trial) -> str | None:
    """The trial's preference loss (ADPO, DPO) from the spec its config carries; None without one."""
    if "spec" not in config:
        return None
    return _spec(json.dumps(config["spec"], sort_keys=True)).knobs(trial).loss


def load_tune_folder(run_dir: str | Path) -> GridData:
    """The same tables from a Tune results folder (each trial's params.json and progress.csv; a
    trial pack's members, each a row, from its result.json)."""
    from adpo_ray.spec import TrialSpec, trials_of

    run_dir = Path(run_dir)
    rows, curve_rows = [], []
    for params in sorted(run_dir.glob("*/params.json")):
        config = json.loads(params.read_text())
        if "trial" in config:
            # the trial's folder name (TrialSpec.dirname; a search's tag holds Tune's trial id)
            members = [(TrialSpec.from_config(config), params.parent.name, read_progress(params.parent))]
        elif "trials" in config:
            members = [(t, tag, history) for t, (tag, history)
                       in zip(trials_of(config), _member_histories(config, params.parent), strict=True)]
        else:
            continue
        for trial, tag, history in members:
            row, curves = _trial_rows(config, trial, tag, history)
            rows.append(row)
            curve_rows += curves
    if not rows:
        raise LookupError(f"{run_dir} holds no adpo-ray trials (no */params.json)")
    trials, curves = _frames(rows, curve_rows)
    return GridData(trials, curves, str(run_dir))


def read_progress(folder: Path) -> pd.DataFrame:
    """A solo trial's results, from its Tune folder's progress.csv, whole rows only (see
    :func:`~adpo_ray.metrics.whole_lines`); empty when there is none yet."""
    progress = folder / "progress.csv"
    text = whole_lines(progress.read_text()) if progress.exists() else ""
    return pd.read_csv(io.StringIO(text)) if text else pd.DataFrame()


def _member_histories(config: dict, folder: Path) -> list[tuple[str, pd.DataFrame]]:
    """(folder name, results) of each trial a Tune trial of ``trials`` ran: a pack's members'
    from its folder's result.json (Tune's progress.csv holds the members' list as one cell),
    each row a member's result, ``done`` once the member or the pack is; a trial alone's from its
    progress.csv."""
    from adpo_ray.spec import TrialSpec

    if len(config["trials"]) == 1:
        return [(folder.name, read_progress(folder))]
    lines = []
    result_file = folder / "result.json"
    for text in (result_file.read_text().splitlines() if result_file.exists() else []):
        try:
            lines.append(json.loads(text))
        except ValueError:  # a line torn by a killed driver (Tune appends the next one to it)
            continue
    return [(TrialSpec(**t).dirname,
             pd.DataFrame([{**line[MEMBERS][k], "done": member_ended(line, line[MEMBERS][k])}
                           for line in lines if MEMBERS in line]))
            for k, t in enumerate(config["trials"])]


def _trial_rows(config: dict, trial, tag: str, history: pd.DataFrame) -> tuple[dict, list[dict]]:
    """One grid trial's row of the trials table and its curve rows, from its results."""
    curve_rows: list[dict] = []
    if not history.empty and ENV_STEPS in history:
        # a step replayed after a retry keeps its first record, as in MLflow
        history = history.drop_duplicates(ENV_STEPS, keep="first").sort_values(ENV_STEPS)
    # error.txt stays behind after a retried failure: the last result's `done` says more
    done = not history.empty and "done" in history and bool(history["done"].iloc[-1])
    init = (config.get("spec", {}).get("anchors") or {}).get("init")
    label = None if not init else ("pretrain:" if init.get("pretrain") else init.get("checkpoint"))
    row = {"trial": tag, **_coords({**trial.as_dict(), "method": trial.method}),
           "status": "FINISHED" if done else "UNFINISHED", "run_id": None, "start": start_label(label),
           "loss": _loss_of(config, trial)}
    if not history.empty:
        last = history.iloc[-1]
        row.update({k: float(last[k]) for k in history.columns if is_metric_key(k) and pd.notna(last[k])})
        for key in CURVE_METRICS:
            if key in history:
                for step, value in zip(history[ENV_STEPS], history[key], strict=True):
                    if pd.notna(value):
                        curve_rows.append({"trial": tag, "env_steps": int(step), "metric": key, "value": float(value)})
    return row, curve_rows
