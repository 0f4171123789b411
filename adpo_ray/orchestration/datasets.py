"""Offline distillation datasets: teacher rollouts with ``K`` candidates per state
(:mod:`adpo_ray.envs.candidates`), kept in MLflow under their teacher's run and reused.

Before a distillation grid starts, :func:`prepare` makes sure that, for every environment of the
spec, a teacher exists (:mod:`adpo_ray.orchestration.policies`) and, for every scenario, its
dataset exists: generated in parallel Ray tasks (``distill.dataset.chunks``), written as Parquet
under the teacher run's ``datasets/<key>/`` and marked complete by a run tag. A second launch
finds both by key and trains nothing. Each student trial downloads its dataset once per node into
a local cache (:func:`student_inputs`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from adpo_ray.orchestration.mlflow_store import client as _client
from adpo_ray.orchestration.mlflow_store import download
from adpo_ray.orchestration.policies import (
    TEACHER_TAG,
    ensure_policies,
    teacher_callables,
    teacher_info,
)
from adpo_ray.spec import ExperimentSpec, TrialSpec, dataset_key, teacher_key, teacher_of

DATASET_TAG_PREFIX = "dataset."


def collect_chunk(tracking_uri: str, run_id: str, env: str, scenario: str, num_states: int,
                  num_candidates: int, seed: int, heldout_fraction: float, signal: str = "reward",
                  gamma: float = 0.99, horizon: int = 1) -> dict:
    """One generation task: the teacher from MLflow, ``num_states`` rollout states."""
    import torch

    from adpo_ray.envs.candidates import collect
    from adpo_ray.envs.mujoco import ObsNorm

    torch.set_num_threads(1)
    policy, value = teacher_callables(download(tracking_uri, run_id, "checkpoint"))
    info = teacher_info(tracking_uri, run_id)
    return collect(env, scenario, policy, ObsNorm.from_dict(info["obs_norm"]), num_states=num_states,
                   num_candidates=num_candidates, seed=seed, heldout_fraction=heldout_fraction,
                   signal=signal, gamma=gamma, horizon=horizon, value=value)


def chunk_sizes(total: int, chunks: int) -> list[int]:
    chunks = max(1, min(chunks, total))
    return [total // chunks + (1 if i < total % chunks else 0) for i in range(chunks)]


def build_dataset(spec: ExperimentSpec, env: str, scenario: str, tracking_uri: str, run_id: str) -> None:
    """Generate a scenario's dataset in parallel Ray tasks and log it to the teacher's run."""
    import ray

    from adpo_ray.envs.candidates import write_dataset

    d = spec.distill.dataset
    key = dataset_key(spec, env, scenario)
    task = ray.remote(num_cpus=1)(collect_chunk)
    seeds = [d.seed * 1_000_003 + i for i in range(d.chunks)]
    parts = ray.get([
        task.remote(tracking_uri, run_id, env, scenario, n, d.candidates, seed, d.heldout_fraction,
                    d.signal, d.gamma, d.horizon)
        for n, seed in zip(chunk_sizes(d.states, d.chunks), seeds, strict=False)
    ])
    info = teacher_info(tracking_uri, run_id)
    meta = {"env": env, "scenario": scenario, "dataset_key": key, "teacher_run_id": run_id,
            "teacher_key": info["key"], "obs_norm": info["obs_norm"],
            "teacher_return": info["return_mean"], "params": d.model_dump()}
    client = _client(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp) / key, parts, meta)
        client.log_artifacts(run_id, str(Path(tmp) / key), f"datasets/{key}")
    client.set_tag(run_id, DATASET_TAG_PREFIX + key, "complete")


def prepare(spec: ExperimentSpec, tracking_uri: str, artifact_location: str | None, log=print) -> dict:
    """Teachers and datasets of every (env, scenario) of ``spec``: found in MLflow or made now.
    Needs a connected Ray. Returns ``{env: {"run_id", "trained", "datasets_built"}}``."""
    client = _client(tracking_uri)
    stages = {env: teacher_of(spec, env) for env in spec.environments}
    runs = ensure_policies(spec, list(stages.values()), tracking_uri, artifact_location, "teacher", log)
    out = {env: dict(runs[stage.key]) for env, stage in stages.items()}
    for env in spec.environments:
        run = client.get_run(out[env]["run_id"])
        built = []
        for scenario in spec.scenario_names:
            key = dataset_key(spec, env, scenario)
            if run.data.tags.get(DATASET_TAG_PREFIX + key) == "complete":
                continue
            d = spec.distill.dataset
            log(f"dataset {env}/{key}: generating {d.states} states x {d.candidates} candidates "
                f"scored by {d.signal} ({d.steps_per_candidate} simulator step(s) each)")
            build_dataset(spec, env, scenario, tracking_uri, out[env]["run_id"])
            built.append(scenario)
        out[env]["datasets_built"] = built
    return out


def student_inputs(spec: ExperimentSpec, trial: TrialSpec, tracking_uri: str, teacher_run_id: str) -> dict:
    """What a student trial needs: its local dataset folder, the teacher's frozen observation
    normalisation and clean return — from the teacher run pinned at launch, never "the newest
    one now", so launches side by side never mix teachers."""
    client = _client(tracking_uri)
    run = client.get_run(teacher_run_id)
    if run.info.status != "FINISHED" or run.data.tags.get(TEACHER_TAG) != teacher_key(spec, trial.env):
        raise FileNotFoundError(
            f"teacher run {teacher_run_id} pinned at launch is not a finished teacher "
            f"{teacher_key(spec, trial.env)} (status {run.info.status}) at {tracking_uri}"
        )
    key = dataset_key(spec, trial.env, trial.scenario)
    if run.data.tags.get(DATASET_TAG_PREFIX + key) != "complete":
        raise FileNotFoundError(f"teacher run {run.info.run_id} has no complete dataset {key}")
    info = teacher_info(tracking_uri, run.info.run_id)
    return {
        "dataset": str(download(tracking_uri, run.info.run_id, f"datasets/{key}")),
        "obs_norm": info["obs_norm"],
        "teacher_return": info["return_mean"],
    }
