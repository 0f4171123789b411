"""Roll a trained policy out (`adpo-ray evaluate`): a grid trial's checkpoint, from its MLflow
child run or a folder, on any scenario, with the project's own evaluation (the bandit's WinMass;
MuJoCo's clean return of the mean action, the trial's observation normalisation frozen), and,
with a run id, the result logged back to that run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adpo_ray.envs import ENVIRONMENTS
from adpo_ray.metrics import ENV_STEPS
from adpo_ray.orchestration import storage
from adpo_ray.orchestration.run_folder import local_run_dir


@dataclass
class Evaluation:
    env: str
    scenario: str
    metric: str  # "winmass" or "return"
    mean: float
    std: float
    episodes: int
    video: str | None = None
    video_note: str | None = None

    def metrics(self) -> dict[str, float]:
        """What is logged on the child run: ``evaluate/<scenario>/<metric>_mean`` (and ``_std``)."""
        out = {f"evaluate/{self.scenario}/{self.metric}_mean": self.mean}
        if self.metric == "return":
            out[f"evaluate/{self.scenario}/return_std"] = self.std
        return out


def checkpoint_of(source: str, tracking_uri: str) -> tuple[Path, str | None]:
    """``source`` is a checkpoint folder on this machine (resolved by
    :func:`~adpo_ray.orchestration.run_folder.resolve_run_dir`), or the id of a grid's child run
    (its ``checkpoint`` artifact, downloaded once). Returns (checkpoint folder, run id or None).
    Raises ValueError for a URI, FileNotFoundError when ``source`` is neither."""
    if storage.is_uri(source) or os.path.isdir(source):
        return Path(local_run_dir(source, "CHECKPOINT", "adpo-ray evaluate")), None
    from adpo_ray.orchestration.mlflow_store import client, download
    from adpo_ray.orchestration.tracking import PACK_TAG

    try:
        run = client(tracking_uri).get_run(source)
    except Exception as e:  # noqa: BLE001 - no such run, or the store is away: say which
        raise FileNotFoundError(f"{source!r} is neither a checkpoint folder nor a run at {tracking_uri} ({e})") from None
    if PACK_TAG in run.data.tags:
        raise ValueError(f"run {source} is a member of the trial pack {run.data.tags[PACK_TAG]!r} (its Tune trial): "
                         "its policy is in that pack's checkpoint with the other members', and evaluating one "
                         "member is not supported yet; its metrics (eval/*) are on the run")
    return download(tracking_uri, source, "checkpoint"), source


def evaluate(checkpoint: Path, *, scenario: str | None = None, episodes: int = 10, seed: int | None = None,
             video: Path | None = None) -> Evaluation:
    """Evaluate the policy saved at ``checkpoint`` (needs a connected Ray to restore it): MuJoCo
    episodes reset with seeds ``seed``, ``seed + 1``, ... (default
    :data:`~adpo_ray.rllib.rollout.EVAL_SEED`, the episodes teachers and students are measured on).
    Raises ValueError for a trial pack's checkpoint."""
    from ray.rllib.algorithms.algorithm import Algorithm

    from adpo_ray.orchestration.policies import obs_norm_of
    from adpo_ray.rllib import _ray_private as rp
    from adpo_ray.rllib.env import register
    from adpo_ray.rllib.pack_module import MEMBER_SEEDS
    from adpo_ray.rllib.rollout import EVAL_SEED, episode_returns

    register()
    algo = Algorithm.from_checkpoint(str(checkpoint))
    try:
        if MEMBER_SEEDS in dict(algo.config.model_config or {}):
            raise ValueError(f"{checkpoint} is a trial pack's checkpoint (the policies of several trials); "
                             "evaluating one member is not supported yet")
        env_config = dict(algo.config.env_config or {})
        env = env_config["env"]
        scenario = scenario or "clean"
        if ENVIRONMENTS[env]["kind"] == "bandit":
            from adpo_ray.rllib.callbacks import _winmass_on_learner

            value = _winmass_on_learner(rp.local_learner(algo.learner_group), {**env_config, "scenario": scenario})
            note = "--video: the bandit has no frames to record" if video else None
            return Evaluation(env, scenario, "winmass", value, 0.0, 0, video_note=note)
        obs_norm = env_config.get("obs_norm") or obs_norm_of(algo)
        module = algo.get_module()
        seed = EVAL_SEED if seed is None else seed
        returns = episode_returns(module, env, obs_norm, episodes, seed, scenario=scenario)
        result = Evaluation(env, scenario, "return", float(np.mean(returns)), float(np.std(returns)), episodes)
        if video is not None:
            result.video, result.video_note = _record(module, env, scenario, obs_norm, seed, video)
        return result
    finally:
        algo.stop()


def _record(module, env_name: str, scenario: str, obs_norm: dict, seed: int, path: Path) -> tuple[str | None, str]:
    """An MP4 of one episode, or why none could be made (no offscreen GL, no video writer)."""
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401 - the MP4 writer
    except ImportError:
        return None, "--video needs an MP4 writer: pip install imageio-ffmpeg"
    from adpo_ray.rllib.rollout import episode_returns

    frames: list = []
    try:
        episode_returns(module, env_name, obs_norm, 1, seed, scenario=scenario, frames=frames)
    except Exception as e:  # noqa: BLE001 - MuJoCo's renderer could not start
        gl = os.environ.get("MUJOCO_GL", "unset")
        return None, (f"--video: MuJoCo could not render offscreen (MUJOCO_GL={gl}: {type(e).__name__}: "
                      f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); set MUJOCO_GL=egl on a GPU "
                      "node or MUJOCO_GL=osmesa with OSMesa installed")
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, frames, fps=30)
    return str(path), f"video: {path} ({len(frames)} frames)"


def log_evaluation(tracking_uri: str, run_id: str, result: Evaluation) -> None:
    """The evaluation on its child run, at the run's final env step; the video as an artifact."""
    from mlflow.entities import Metric

    from adpo_ray.orchestration.mlflow_store import client

    c = client(tracking_uri)
    step = int(c.get_run(run_id).data.metrics.get(ENV_STEPS, 0))
    c.log_batch(run_id, metrics=[Metric(k, v, 0, step) for k, v in result.metrics().items()])
    if result.video:
        c.log_artifact(run_id, result.video, artifact_path="evaluate")
