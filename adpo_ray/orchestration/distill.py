"""Offline distillation inputs: teachers and candidate datasets, kept in MLflow and reused.

Before a distillation grid starts, :func:`prepare` makes sure that, for every environment of the
spec, a teacher exists and, for every scenario, its dataset exists:

* **teacher**: RLlib PPO trained on the clean env for ``distill.teacher.env_steps`` steps (as a Ray
  task). It is one MLflow run in the experiment ``distill.teacher.experiment`` tagged with its key
  (env, budget, seed, network, optimisation knobs): the RLlib checkpoint under ``checkpoint/``, its
  frozen observation normalisation in ``teacher.json`` and its clean return as
  ``teacher/return_mean``. Only FINISHED runs count, so an interrupted training is redone, never
  half-used.
* **dataset**: teacher rollouts with ``K`` candidates per state (:mod:`adpo_ray.envs.candidates`),
  generated in parallel Ray tasks (``distill.dataset.chunks``), written as Parquet under the
  teacher run's ``datasets/<key>/`` and marked complete by a run tag.

A second launch finds both by key and trains nothing. Each student trial downloads its dataset once
per node into a local cache (:func:`student_inputs`).

The same clean-env PPO runs are the pretrained starting policies of online grids
(``anchors.init.pretrain``, :func:`prepare_init`): one per env and network size, keyed like
teachers (a teacher and a starting policy with equal settings are one run), pinned at launch, and
downloaded once per node by the trials that start from them (:func:`init_checkpoint`).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from adpo_ray.metrics import ENV_STEPS, TEACHER_RETURN
from adpo_ray.orchestration.mlflow_store import client as _client
from adpo_ray.orchestration.mlflow_store import download, experiment_id
from adpo_ray.spec import (
    CleanPPO,
    ExperimentSpec,
    TrialSpec,
    dataset_key,
    init_slot,
    pretrained_policies,
    teacher_key,
    teacher_of,
)

TEACHER_TAG = "adpo_ray.teacher_key"
DATASET_TAG_PREFIX = "dataset."
TEACHER_FILE = "teacher.json"


# -- MLflow lookups (a clean-env PPO policy: a teacher, or a pretrained starting policy) ----------
def find_policy(client, stage: CleanPPO, status: str = "FINISHED"):
    """The newest run of ``stage`` with ``status``, or None."""
    runs = _policy_runs(client, stage, status)
    return runs[0] if runs else None


def _policy_runs(client, stage: CleanPPO, status: str) -> list:
    exp = client.get_experiment_by_name(stage.experiment)
    if exp is None:
        return []
    return client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{TEACHER_TAG}` = '{stage.key}' and attributes.status = '{status}'",
        order_by=["attributes.start_time DESC"],
        max_results=100,
    )


def claim_policy(client, stage: CleanPPO, artifact_location: str | None) -> tuple[str, bool]:
    """The run this launch uses for ``stage``: ``(run id, True)`` when this launch must train
    it (its run is created now, RUNNING: the claim), ``(run id, False)`` when another launch is
    training it (wait for it). Two launches racing for one key both create a claim; the earlier
    claim wins, the later one is marked KILLED and waits."""
    exp_id = experiment_id(client, stage.experiment, artifact_location)
    running = _policy_runs(client, stage, "RUNNING")
    if running:
        return running[-1].info.run_id, False  # the earliest claim
    mine = client.create_run(exp_id, run_name=stage.key, tags={TEACHER_TAG: stage.key, "env": stage.env})
    claims = sorted(_policy_runs(client, stage, "RUNNING"), key=lambda r: (r.info.start_time, r.info.run_id))
    if claims and claims[0].info.run_id != mine.info.run_id:
        client.set_terminated(mine.info.run_id, "KILLED")
        return claims[0].info.run_id, False
    return mine.info.run_id, True


def wait_for_teacher(client, run_id: str, log=print, poll_s: float = 5.0, timeout_s: float = 24 * 3600) -> str:
    """Wait until another launch's training of this policy ends; its id if it FINISHED, else RuntimeError."""
    log(f"PPO run {run_id}: being trained by another launch; waiting for it")
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = client.get_run(run_id).info.status
        if status == "FINISHED":
            return run_id
        if status in ("FAILED", "KILLED"):
            raise RuntimeError(f"PPO run {run_id} ended {status} in the launch that trained it; launch again")
        time.sleep(poll_s)
    raise TimeoutError(f"PPO run {run_id} did not finish within {timeout_s:.0f} s")


# -- teacher -----------------------------------------------------------------------------------
def teacher_callables(checkpoint: str | Path):
    """The teacher saved at an algorithm checkpoint as numpy callables: its policy
    ``obs -> (mean, log_std)`` and its value function ``obs -> V(obs)`` (normalised observations)."""
    import torch
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.rl_module import RLModule

    from adpo_ray.rllib.init import module_dir
    from adpo_ray.rllib.module import split_gaussian

    module = RLModule.from_checkpoint(str(module_dir(checkpoint)))
    module.eval()

    def policy(obs):
        with torch.no_grad():
            out = module.forward_inference({Columns.OBS: torch.as_tensor(obs[None], dtype=torch.float32)})
        mean, log_std = split_gaussian(out[Columns.ACTION_DIST_INPUTS][0])
        return mean.numpy(), log_std.numpy()

    def value(obs) -> float:
        with torch.no_grad():
            return float(module.compute_values({Columns.OBS: torch.as_tensor(obs[None], dtype=torch.float32)})[0])

    return policy, value


def obs_norm_of(algo) -> dict:
    """An online algorithm's observation filter (running mean/std), frozen, as an ObsNorm dict."""
    from adpo_ray.envs.mujoco import ObsNorm
    from adpo_ray.rllib import _ray_private as rp

    for connector in rp.env_to_module(algo.env_runner).connectors:
        filters = rp.mean_std_filters(connector)
        if filters:
            filt = filters[next(iter(filters))]
            stats = filt.running_stats
            return ObsNorm(stats.mean, stats.std, filt.clip).as_dict()
    raise RuntimeError("the teacher's env-to-module pipeline has no observation filter")


def train_teacher(spec_json: str, stage_json: str, tracking_uri: str, run_id: str) -> str:
    """Train one clean-env PPO policy (a teacher, or a pretrained start) into its claimed MLflow
    run ``run_id`` (runs as a Ray task)."""
    import torch
    from mlflow.entities import Metric, Param, RunTag

    from adpo_ray.rllib.factory import build_algo_config
    from adpo_ray.rllib.rollout import EVAL_SEED, evaluate_policy

    torch.set_num_threads(1)
    spec = ExperimentSpec.model_validate_json(spec_json)
    t = CleanPPO(**json.loads(stage_json))
    key, env = t.key, t.env
    client = _client(tracking_uri)
    run = client.get_run(run_id)
    try:
        knobs = spec.knobs(t.trial)
        config = build_algo_config(knobs)
        config.evaluation(evaluation_interval=None)
        algo = config.build_algo()
        steps = 0
        while steps < t.env_steps:
            result = algo.train()
            steps = int(result.get("num_env_steps_sampled_lifetime")
                        or result["env_runners"]["num_env_steps_sampled_lifetime"])
        obs_norm = obs_norm_of(algo)
        ret = evaluate_policy(algo.get_module(), env, obs_norm, spec.evaluation.episodes, EVAL_SEED,
                              explore=spec.evaluation.explore)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "checkpoint"
            algo.save_to_path(str(ckpt))
            algo.stop()
            client.log_artifacts(run.info.run_id, str(ckpt), "checkpoint")
            (Path(tmp) / TEACHER_FILE).write_text(json.dumps(
                {"key": key, "env": env, "obs_norm": obs_norm, "return_mean": ret, "env_steps": steps}
            ))
            client.log_artifact(run.info.run_id, str(Path(tmp) / TEACHER_FILE))
        # the teacher's own budget, not the students' (knobs' budget.* is the grid's)
        params = {k: v for k, v in knobs.params().items() if not k.startswith("budget.")}
        params["env_steps"] = str(t.env_steps)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(TEACHER_RETURN, ret, 0, steps), Metric(ENV_STEPS, steps, 0, steps)],
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(TEACHER_RETURN, f"{ret:.1f}")],
        )
        client.set_terminated(run.info.run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    return run.info.run_id


def teacher_info(tracking_uri: str, run_id: str) -> dict:
    return json.loads((download(tracking_uri, run_id, TEACHER_FILE)).read_text())


# -- datasets ----------------------------------------------------------------------------------
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


def ensure_policies(spec: ExperimentSpec, stages: list[CleanPPO], tracking_uri: str,
                    artifact_location: str | None, what: str = "teacher", log=print) -> dict[str, dict]:
    """Clean-env PPO policies, found in MLflow by key or trained now (in parallel Ray tasks; a key
    another launch is training is waited for, never trained twice). Needs a connected Ray.
    Returns ``{key: {"run_id", "trained"}}``."""
    import ray

    client = _client(tracking_uri)
    out: dict[str, dict] = {}
    pending, elsewhere = {}, {}
    for stage in {s.key: s for s in stages}.values():
        run = find_policy(client, stage)
        if run is not None:
            out[stage.key] = {"run_id": run.info.run_id, "trained": False}
            log(f"{what} {stage.key}: reusing MLflow run {run.info.run_id} "
                f"(clean return {run.data.metrics.get(TEACHER_RETURN, float('nan')):.1f})")
            continue
        run_id, mine = claim_policy(client, stage, artifact_location)
        if not mine:  # another launch trains this very policy: never a second one
            elsewhere[stage.key] = run_id
            continue
        log(f"{what} {stage.key}: training RLlib PPO for {stage.env_steps} env steps")
        knobs = spec.knobs(stage.trial)  # a local learner on a GPU needs it reserved here
        gpus = knobs.num_gpus_per_learner if knobs.num_learners == 0 else 0
        pending[stage.key] = ray.remote(num_cpus=1, num_gpus=gpus)(train_teacher).remote(
            spec.model_dump_json(by_alias=True), json.dumps(asdict(stage)), tracking_uri, run_id
        )
    for key, ref in pending.items():
        out[key] = {"run_id": ray.get(ref), "trained": True}
        info = teacher_info(tracking_uri, out[key]["run_id"])
        log(f"{what} {key}: trained, clean return {info['return_mean']:.1f}")
    for key, run_id in elsewhere.items():
        out[key] = {"run_id": wait_for_teacher(client, run_id, log), "trained": False}
    return out


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


def prepare_init(spec: ExperimentSpec, tracking_uri: str, artifact_location: str | None, log=print) -> dict[str, str]:
    """The pretrained starting policies of an online grid (``anchors.init.pretrain``), found in
    MLflow or trained now: ``{init_slot(env, hidden): run id}``, pinned for the whole launch."""
    stages = {init_slot(p.env, p.hidden_size): p for p in pretrained_policies(spec)}
    runs = ensure_policies(spec, list(stages.values()), tracking_uri, artifact_location, "pretrained policy", log)
    return {slot: runs[p.key]["run_id"] for slot, p in stages.items()}


def init_checkpoint(spec: ExperimentSpec, trial: TrialSpec, tracking_uri: str | None, init_runs: dict | None) -> str | None:
    """The local checkpoint a trial starts from (``anchors.init``), or None: the path the spec
    names, or the pretrained run pinned at launch, downloaded once per node."""
    init = spec.anchors.init
    if init is None or spec.distill is not None:
        return None
    if init.pretrain is None:
        return init.checkpoint_for(trial.env)
    slot = init_slot(trial.env, trial.hidden_size)
    run_id = (init_runs or {}).get(slot)
    if run_id is None:
        raise FileNotFoundError(f"anchors.init.pretrain: no pretrained run pinned for {slot} at launch")
    return str(download(tracking_uri, run_id, "checkpoint"))


def check_shared_tracking(tracking_uri: str, capacity) -> None:
    """Distillation trials read and write MLflow themselves (teachers, datasets): on more than one
    node they all need one store they can reach. A sqlite file or a loopback server is each
    node's own: an error before launch, saying what to pass instead."""
    from urllib.parse import urlparse

    nodes = sum(t.count for t in capacity.node_types)
    if nodes <= 1:
        return
    host = urlparse(tracking_uri).hostname or ""
    local = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri \
        or host in ("localhost", "::1") or host.startswith("127.")
    if local:
        raise ValueError(
            f"distillation on a cluster of {nodes} nodes needs a tracking store every node reaches; "
            f"{tracking_uri!r} is this node's own. Pass --tracking-uri http://<head's private address>:5000 "
            "(an `mlflow server --host 0.0.0.0` on the head, behind the cluster's firewall) or another shared server"
        )


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
