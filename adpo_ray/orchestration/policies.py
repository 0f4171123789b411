"""Stored clean-env PPO policies: distillation teachers and the pretrained starts of online grids,
kept in MLflow and reused. Online trainables import this module (never the datasets').

A policy is RLlib PPO trained on the clean env (as a Ray task), one MLflow run in its experiment
(``distill.teacher.experiment`` / ``anchors.init.pretrain.experiment``) tagged with its key (env,
budget, seed, network, optimisation knobs: :func:`adpo_ray.spec.clean_ppo`): the RLlib checkpoint
under ``checkpoint/``, its frozen observation normalisation in ``teacher.json`` and its clean
return as ``teacher/return_mean`` (on the bandit: no normalisation, its clean ``eval/winmass``). Only FINISHED runs count, so an interrupted training is redone,
never half-used; a key another launch is training is waited for, never trained twice. The launch
that claimed a key marks its run alive every :data:`HEARTBEAT_S` while the policy trains; a
RUNNING claim silent for :data:`STALE_S` (its launch was killed mid-training) is marked FAILED,
and the key is claimed and trained again.

A teacher and a pretrained start with equal settings are one run. Pretrained starts
(``anchors.init.pretrain``, :func:`prepare_init`) are one per env and network size, pinned at
launch, and downloaded once per node by the trials that start from them (:func:`init_checkpoint`).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from adpo_ray.metrics import ENV_STEPS, EVAL_WINMASS, TEACHER_RETURN, curate
from adpo_ray.orchestration.mlflow_store import client as _client
from adpo_ray.orchestration.mlflow_store import download, experiment_id
from adpo_ray.spec import CleanPPO, ExperimentSpec, TrialSpec, init_slot, pretrained_policies

TEACHER_TAG = "adpo_ray.teacher_key"
TEACHER_FILE = "teacher.json"
#: The tag the launch training a policy refreshes: when it last said it was alive (seconds since
#: the epoch, the driver's clock).
HEARTBEAT_TAG = "adpo_ray.heartbeat"
#: Seconds between two heartbeats of a training policy.
HEARTBEAT_S = 30.0
#: Seconds without a heartbeat (or, before the first, since the claim) after which a RUNNING claim
#: counts as abandoned: ten missed heartbeats, far above a store's hiccup or the nodes' clock skew.
STALE_S = 300.0


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


def last_alive(run) -> float:
    """When a policy's claim last showed life (seconds since the epoch): its latest heartbeat, or
    its creation before the first."""
    beat = run.data.tags.get(HEARTBEAT_TAG)
    return max(float(beat) if beat else 0.0, run.info.start_time / 1000)


def release_if_abandoned(client, run, now: float | None = None) -> bool:
    """Whether ``run`` is a RUNNING claim silent for over :data:`STALE_S` seconds (:func:`heartbeat`);
    such a claim is marked FAILED (with an ``adpo_ray.abandoned`` tag saying why), so that the key is claimed
    and trained again instead of waited for. Two launches may both release it: the same end."""
    silent = (time.time() if now is None else now) - last_alive(run)
    if run.info.status != "RUNNING" or silent <= STALE_S:
        return False
    client.set_tag(run.info.run_id, "adpo_ray.abandoned",
                   f"no heartbeat for {silent:.0f} s: the launch training it was killed")
    client.set_terminated(run.info.run_id, "FAILED")
    return True


def _claims(client, stage: CleanPPO) -> list:
    """Every run of ``stage`` that is training or trained (RUNNING or FINISHED), earliest first
    (by start time, then run id: every launch orders them alike), read in one query, so that a
    claim which finishes between two queries cannot be missed by both. An abandoned claim
    (:func:`release_if_abandoned`) is released, not counted."""
    exp = client.get_experiment_by_name(stage.experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TEACHER_TAG}` = '{stage.key}'",
                              max_results=1000)
    return sorted((r for r in runs if r.info.status in ("RUNNING", "FINISHED") and not release_if_abandoned(client, r)),
                  key=lambda r: (r.info.start_time, r.info.run_id))


def claim_policy(client, stage: CleanPPO, artifact_location: str | None) -> tuple[str, bool]:
    """The run this launch uses for ``stage``: ``(run id, True)`` when this launch must train
    it (its run is created now, RUNNING: the claim), ``(run id, False)`` when another launch is
    training it or has just trained it (wait for it; a FINISHED one is ready). Two launches
    racing for one key both create a claim; the earliest claim wins, whether it is still
    training or already done, and the later one is marked KILLED and waits. An abandoned claim
    is released (:func:`release_if_abandoned`) and does not count."""
    exp_id = experiment_id(client, stage.experiment, artifact_location)
    running = [r for r in _policy_runs(client, stage, "RUNNING") if not release_if_abandoned(client, r)]
    if running:
        return running[-1].info.run_id, False  # the earliest claim
    mine = client.create_run(exp_id, run_name=stage.key, tags={TEACHER_TAG: stage.key, "env": stage.env})
    claims = _claims(client, stage)
    if claims and claims[0].info.run_id != mine.info.run_id:
        client.set_terminated(mine.info.run_id, "KILLED")
        return claims[0].info.run_id, False
    return mine.info.run_id, True


@contextmanager
def heartbeat(client, run_ids: list[str], period_s: float = HEARTBEAT_S):
    """Refresh each of ``run_ids``' :data:`HEARTBEAT_TAG` every ``period_s`` seconds (from a
    daemon thread) while the block runs. The launch that claimed the runs beats for them while it
    waits on their training: they stay alive as long as it does, however long a training task
    waits for a node or an iteration takes, and fall silent when it is killed. A beat the store
    refuses is skipped (the next one tries again)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(period_s):
            for run_id in run_ids:
                try:
                    client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
                except Exception:  # noqa: BLE001 - the store away for a while: the next beat tries again
                    pass

    thread = threading.Thread(target=beat, name="policy-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=period_s)


def wait_for_teacher(client, run_id: str, log=print, poll_s: float = 5.0,
                     timeout_s: float = 24 * 3600) -> str | None:
    """Wait until another launch's training of this policy ends: its id if it FINISHED, None if
    the claim was abandoned (:func:`release_if_abandoned`: claim the key again), RuntimeError if
    it FAILED or was KILLED, TimeoutError after ``timeout_s``."""
    deadline, told = time.time() + timeout_s, False
    while time.time() < deadline:
        run = client.get_run(run_id)
        status = run.info.status
        if status == "FINISHED":
            return run_id
        if release_if_abandoned(client, run):
            log(f"PPO run {run_id}: abandoned by the launch training it (no heartbeat for {STALE_S:.0f} s); "
                "marked FAILED, claiming it again")
            return None
        if status in ("FAILED", "KILLED"):
            raise RuntimeError(f"PPO run {run_id} ended {status} in the launch that trained it; launch again")
        if not told:  # a run already FINISHED is used without a word of waiting
            log(f"PPO run {run_id}: being trained by another launch; waiting for it")
            told = True
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


def obs_norm_of(algo, member: int | None = None) -> dict:
    """An online algorithm's observation filter (running mean/std), frozen, as an ObsNorm dict;
    of a trial pack (one filter per member), member ``member``'s."""
    from adpo_ray.envs.mujoco import ObsNorm
    from adpo_ray.rllib import _ray_private as rp

    for connector in rp.env_to_module(algo.env_runner).connectors:
        filters = rp.mean_std_filters(connector)
        if filters:
            filt = filters[next(iter(filters)) if member is None else member]
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
        steps, result = 0, {}
        while steps < t.env_steps and (t.iterations is None or algo.iteration < t.iterations):
            result = algo.train()
            steps = int(result.get("num_env_steps_sampled_lifetime")
                        or result["env_runners"]["num_env_steps_sampled_lifetime"])
        if knobs.kind == "bandit":  # the clean WinMass of the final policy (no observation filter)
            obs_norm, score = None, {"winmass": curate(result)[EVAL_WINMASS]}
        else:
            obs_norm = obs_norm_of(algo)
            score = {"return_mean": evaluate_policy(algo.get_module(), env, obs_norm, spec.evaluation.episodes,
                                                    EVAL_SEED, explore=spec.evaluation.explore)}
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "checkpoint"
            algo.save_to_path(str(ckpt))
            algo.stop()
            client.log_artifacts(run.info.run_id, str(ckpt), "checkpoint")
            (Path(tmp) / TEACHER_FILE).write_text(json.dumps(
                {"key": key, "env": env, "obs_norm": obs_norm, **score, "env_steps": steps,
                 "iterations": algo.iteration}
            ))
            client.log_artifact(run.info.run_id, str(Path(tmp) / TEACHER_FILE))
        # the teacher's own budget, not the students' (knobs' budget.* is the grid's)
        params = {k: v for k, v in knobs.params().items() if not k.startswith("budget.")}
        params["env_steps"] = str(t.env_steps)
        if t.iterations is not None:
            params["iterations"] = str(t.iterations)
        name, value = (EVAL_WINMASS, score["winmass"]) if "winmass" in score else (TEACHER_RETURN, score["return_mean"])
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(name, value, 0, steps), Metric(ENV_STEPS, steps, 0, steps)],
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(name, f"{value:.3g}" if "winmass" in score else f"{value:.1f}")],
        )
        client.set_terminated(run.info.run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    return run.info.run_id


def teacher_info(tracking_uri: str, run_id: str) -> dict:
    return json.loads((download(tracking_uri, run_id, TEACHER_FILE)).read_text())


def ensure_policies(spec: ExperimentSpec, stages: list[CleanPPO], tracking_uri: str,
                    artifact_location: str | None, what: str = "teacher", log=print) -> dict[str, dict]:
    """Clean-env PPO policies, found in MLflow by key or trained now (in parallel Ray tasks; a key
    another launch is training is waited for, never trained twice). Needs a connected Ray.
    Returns ``{key: {"run_id", "trained"}}``."""
    import ray

    client = _client(tracking_uri)
    out: dict[str, dict] = {}
    pending, elsewhere, claimed = {}, {}, {}
    for stage in {s.key: s for s in stages}.values():
        run = find_policy(client, stage)
        if run is not None:
            out[stage.key] = {"run_id": run.info.run_id, "trained": False}
            log(f"{what} {stage.key}: reusing MLflow run {run.info.run_id} ({_clean_score(run.data.metrics)})")
            continue
        run_id, mine = claim_policy(client, stage, artifact_location)
        if not mine:  # another launch trains this very policy: never a second one
            elsewhere[stage.key] = run_id
            continue
        claimed[stage.key] = run_id
        log(f"{what} {stage.key}: training RLlib PPO for {stage.budget}")
        knobs = spec.knobs(stage.trial)  # a local learner on a GPU needs it reserved here
        gpus = knobs.num_gpus_per_learner if knobs.num_learners == 0 else 0
        pending[stage.key] = ray.remote(num_cpus=1, num_gpus=gpus)(train_teacher).remote(
            spec.model_dump_json(by_alias=True), json.dumps(asdict(stage)), tracking_uri, run_id
        )
    with heartbeat(client, list(claimed.values())):
        for key, ref in pending.items():
            out[key] = {"run_id": ray.get(ref), "trained": True}
            info = teacher_info(tracking_uri, out[key]["run_id"])
            log(f"{what} {key}: trained, {_clean_score({TEACHER_RETURN: info.get('return_mean'), EVAL_WINMASS: info.get('winmass')})}")
    again = []
    for key, run_id in elsewhere.items():
        done = wait_for_teacher(client, run_id, log)
        if done is None:
            again.append(next(s for s in stages if s.key == key))
        else:
            out[key] = {"run_id": done, "trained": False}
    if again:  # their claims were abandoned: claimed (and, by the earliest, trained) again
        out.update(ensure_policies(spec, again, tracking_uri, artifact_location, what, log))
    return out



def _clean_score(metrics: dict) -> str:
    """A stored policy's clean yardstick in words: the bandit's WinMass, or MuJoCo's return."""
    if metrics.get(EVAL_WINMASS) is not None:
        return f"clean winmass {metrics[EVAL_WINMASS]:.3f}"
    return f"clean return {metrics.get(TEACHER_RETURN) or float('nan'):.1f}"


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
    """Trials that read stored policies or datasets (distillation students, online trials from a
    pretrained start) read MLflow themselves: on more than one node they all need one store they
    can reach. A sqlite file or a loopback server is each
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
