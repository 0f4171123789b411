"""Roll a trained policy out (`adpo-ray evaluate`): a grid trial's checkpoint, from its MLflow
child run or a folder, on any scenario, with the project's own evaluation (the bandit's WinMass;
MuJoCo's clean return of the mean action, the trial's observation normalisation frozen), and,
with a run id, the result logged back to that run. A trial pack's member is evaluated from the
pack's checkpoint exactly as its solo trial's checkpoint would be (``--member``)."""

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


def checkpoint_of(source: str, tracking_uri: str, member: int | None = None) -> tuple[Path, str | None, int | None]:
    """``source`` is a checkpoint folder on this machine (resolved by
    :func:`~adpo_ray.orchestration.run_folder.resolve_run_dir`), or the id of a grid's child run:
    a solo trial's (its ``checkpoint`` artifact, downloaded once) or a trial pack member's (the
    pack's checkpoint its ``pack_checkpoint`` tag names, the member its ``pack_member`` tag).
    Returns (checkpoint folder, run id or None, member or None); ``member`` is the ``--member``
    given, checked against a run's.

    Raises:
        ValueError: a URI; a run id with a ``member`` that is not its own (a solo run has none);
            a member's run whose pack checkpoint is not on this machine (the message says what
            to pass instead).
        FileNotFoundError: ``source`` is neither a folder nor a run.
    """
    if storage.is_uri(source) or os.path.isdir(source):
        return Path(local_run_dir(source, "CHECKPOINT", "adpo-ray evaluate")), None, member
    from adpo_ray.orchestration.mlflow_store import client, download, existing_store
    from adpo_ray.orchestration.tracking import PACK_CHECKPOINT_TAG, PACK_MEMBER_TAG, PACK_TAG

    try:
        store = client(existing_store(tracking_uri))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{source!r} is not a checkpoint folder, nor a run id to look up: {e}") from None
    try:
        run = store.get_run(source)
    except Exception as e:  # noqa: BLE001 - no such run, or the store is away: say which
        raise FileNotFoundError(f"{source!r} is neither a checkpoint folder nor a run at {tracking_uri} ({e})") from None
    tags = run.data.tags
    if PACK_TAG not in tags:
        if member is not None:
            raise ValueError(f"--member {member}: run {source} is a solo trial's (one policy); --member picks a "
                             "member of a trial pack's checkpoint only")
        return download(tracking_uri, source, "checkpoint"), source, None
    pack, own = tags[PACK_TAG], tags.get(PACK_MEMBER_TAG)
    if own is not None and member is not None and member != int(own):
        raise ValueError(f"--member {member}: run {source} is member {own} of the trial pack {pack!r}; "
                         f"leave --member out (or give {own})")
    location = tags.get(PACK_CHECKPOINT_TAG)
    if own is not None and location and not storage.is_uri(location) and os.path.isdir(location):
        return Path(location), source, int(own)
    where = f"its pack's checkpoint {location}, which is not a folder on this machine" if location else \
        "its run names no checkpoint of its pack (the pack has not ended, or was launched before runs named it)"
    launch = tags.get("mlflow.parentRunId")
    run_dir = client(tracking_uri).get_run(launch).data.tags.get("run_dir") if launch else None
    folder = f" (a checkpoint_* folder of the pack's Tune folder in {run_dir})" if run_dir else ""
    which = own if own is not None else "K"
    place = "" if own is not None else " (K: its place, from 0, in the 'trials' list of the pack folder's params.json)"
    raise ValueError(f"run {source} is a member of the trial pack {pack!r} (its Tune trial), and {where}: run "
                     f"`adpo-ray evaluate PACK_CHECKPOINT --member {which}` with a copy of the pack's checkpoint "
                     f"folder here{folder}{place}")


def evaluate(checkpoint: Path, *, scenario: str | None = None, episodes: int = 10, seed: int | None = None,
             video: Path | None = None, member: int | None = None) -> Evaluation:
    """Evaluate the policy saved at ``checkpoint`` (an RLlib algorithm checkpoint folder): MuJoCo
    episodes reset with seeds ``seed``, ``seed + 1``, ... (default
    :data:`~adpo_ray.rllib.rollout.EVAL_SEED`, the episodes teachers and students are measured on).

    Reads the checkpoint's files, the learner's RLModule, the env config and the env runner's
    observation filter, and rolls the policy out in this process: it builds no algorithm and
    starts no Ray.

    A trial pack's checkpoint holds K members' policies: ``member`` (``0 .. K-1``, in the pack's
    member order, the ``pack_member`` tag of the member's MLflow run) picks one, evaluated exactly
    as its solo trial's checkpoint would be: its own network
    (:meth:`~adpo_ray.rllib.pack_module.PackedTorchRLModule.member_module`), its own env config and,
    on MuJoCo, its own observation filter, through the same WinMass or rollout.

    Raises:
        FileNotFoundError: ``checkpoint`` is not an algorithm checkpoint.
        ValueError: a pack's checkpoint without ``member`` or with one outside ``0 .. K-1``, or a
            solo trial's checkpoint with a ``member`` (raised before any rollout).
    """
    module, env_config, obs_norm = _policy(checkpoint, member)
    env = env_config["env"]
    scenario = scenario or "clean"
    if ENVIRONMENTS[env]["kind"] == "bandit":
        from adpo_ray.rllib.callbacks import module_winmass

        value = module_winmass(module, {**env_config, "scenario": scenario})
        note = "--video: the bandit has no frames to record" if video else None
        return Evaluation(env, scenario, "winmass", value, 0.0, 0, video_note=note)
    from adpo_ray.rllib.rollout import EVAL_SEED, episode_returns

    obs_norm = obs_norm()
    seed = EVAL_SEED if seed is None else seed
    returns = episode_returns(module, env, obs_norm, episodes, seed, scenario=scenario)
    result = Evaluation(env, scenario, "return", float(np.mean(returns)), float(np.std(returns)), episodes)
    if video is not None:
        result.video, result.video_note = _record(module, env, scenario, obs_norm, seed, video)
    return result


def _policy(checkpoint: Path, member: int | None):
    """What :func:`evaluate` rolls out of ``checkpoint``: (the solo module, its env config without
    ``seed``, a callable giving its frozen observation normalisation); a pack's member
    ``member``, or the solo trial's. The module is the learner's, as trained (the env runners
    hold the same weights after every iteration). Raises ValueError as :func:`evaluate`."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    from adpo_ray.rllib.init import module_dir, saved_env_config, saved_obs_norm

    env_config = saved_env_config(checkpoint)
    k = len(env_config.get("members") or [])  # a pack's env config (configure_pack): one per member
    if not k:
        if member is not None:
            raise ValueError(f"--member {member}: {checkpoint} is a solo trial's checkpoint (one policy); "
                             "--member picks a member of a trial pack's checkpoint only")
        module = RLModule.from_checkpoint(str(module_dir(checkpoint)))
        return module, env_config, lambda: env_config.get("obs_norm") or saved_obs_norm(checkpoint)
    if member is None or not 0 <= member < k:
        got = "none given" if member is None else f"got {member!r}"
        raise ValueError(f"--member: {checkpoint} is a trial pack's checkpoint of {k} members; pick one with "
                         f"--member 0..{k - 1} ({got}; a member's MLflow run has it as its "
                         "'pack_member' tag)")
    pack = RLModule.from_checkpoint(str(module_dir(checkpoint))).unwrapped()
    mine = {n: v for n, v in env_config["members"][member].items() if n != "seed"}
    return pack.member_module(member), mine, lambda: mine.get("obs_norm") or saved_obs_norm(checkpoint, member)


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
