"""K trials of one shape -> ONE RLlib algorithm (a *trial pack*): :func:`build_pack_config`.

The pack is member 0's solo config (:func:`~adpo_ray.rllib.factory.build_algo_config`: the shared
shape, network, batch and loss variant) made to sample all members' envs
(:func:`~adpo_ray.rllib.packed.configure_pack`), with the stacked module
(:class:`~adpo_ray.rllib.pack_module.PackedTorchRLModule`) and learner
(:class:`~adpo_ray.rllib.pack_learner.PackedLearner`); each member's own knobs (seed, lr, clips,
coefficients, ``tau_anc``, ``beta_q``, ``anchor_kl_coeff``, anchor schedule, ``ppo_kl``'s initial beta and KL target,
env scenario) go to the learner and the env. ``train_batch_size`` is K times the solo's: each member's rows are its own solo batch.

Evaluation is per member, as the solo trial's: the bandit's WinMass on the learner's module over
each member's own held-out contexts (:class:`PackResultCallbacks`), MuJoCo's clean-env episodes on
the evaluation env runner, whose pack env runs every member's clean env with the member's own
observation filter (:func:`evaluate_members`). Both land under ``member/<k>/`` in the result.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    EPISODE_LEN_MEAN,
    EPISODE_RETURN_MEAN,
    EVALUATION_RESULTS,
)
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

from adpo_ray.envs import ENVIRONMENTS, bandit_problem, winmass
from adpo_ray.metrics import EVAL_GROUP, MEMBER_GROUP, WINMASS_KEY
from adpo_ray.rllib import _ray_private as rp
from adpo_ray.rllib.bandit_runner import BanditPackEnvRunner
from adpo_ray.rllib.callbacks import CleanMetricsCallbacks
from adpo_ray.rllib.factory import build_algo_config, eval_envs, model_config
from adpo_ray.rllib.pack_learner import PACK_ALGORITHM, PACK_MEMBERS, PackedLearner, member_knobs
from adpo_ray.rllib.pack_module import PackedTorchRLModule, pack_model_config
from adpo_ray.rllib.packed import MEMBER, configure_pack, pack_env_to_module
from adpo_ray.spec.packs import FUSED, SHAPE_KNOBS, check_pack  # noqa: F401 - re-exported: what a pack takes


def member_env_configs(knobs: list) -> list[dict[str, Any]]:
    """Each member's training env config (its solo trial's) with its ``seed``."""
    return [{**kn.env_config, "seed": kn.trial.seed} for kn in knobs]


def build_pack_config(knobs: list) -> AlgorithmConfig:
    """The RLlib config of a pack of ``len(knobs)`` trials (``TrialKnobs``, one per member, in
    member order): ADPO, DPO, PPO or ``ppo_kl`` on the fused path, one algorithm, one module, one learner.
    Raises ``ValueError`` as :func:`check_pack`."""
    check_pack(knobs)
    first = knobs[0]
    config = build_algo_config(first)
    k = len(knobs)
    members = member_env_configs(knobs)
    config.callbacks(PackResultCallbacks)  # replaces CleanMetricsCallbacks; configure_pack adds its own
    configure_pack(config, members, first.num_envs_per_env_runner)
    config.training(train_batch_size_per_learner=k * first.train_batch_size)
    config.learners(
        learner_class=PackedLearner,
        learner_config_dict={
            PACK_ALGORITHM: first.trial.algorithm,
            PACK_MEMBERS: [member_knobs(
                seed=kn.trial.seed, lr=kn.lr, grad_clip=kn.grad_clip, entropy_coeff=kn.entropy_coeff,
                vf_loss_coeff=kn.vf_coeff, clip_param=kn.clip_param, tau_anc=kn.tau_anc, beta_q=kn.beta_q,
                anchor_mode=kn.anchor_mode, anchor_params=dict(kn.anchor_params), kl_beta=kn.kl_beta,
                kl_target=kn.kl_target, anchor_kl_coeff=kn.anchor_kl_coeff) for kn in knobs],
        },
    )
    config.rl_module(rl_module_spec=RLModuleSpec(
        module_class=PackedTorchRLModule,
        model_config=pack_model_config(model_config(first.trial.hidden_size), [kn.trial.seed for kn in knobs])))
    if first.kind == "bandit":  # one-step episodes: sampled as columns (see bandit_runner)
        config.env_runners(env_runner_cls=BanditPackEnvRunner)
    if first.kind == "mujoco":
        n = eval_envs(first)  # per member, as its solo trial's evaluation env runner
        clean = {**config.env_config, "members": [{**m, "scenario": "clean"} for m in members],
                 "num_envs_per_member": n}
        config.evaluation(
            custom_evaluation_function=evaluate_members,
            evaluation_config=AlgorithmConfig.overrides(
                env_config=clean, explore=bool(first.eval_explore), num_envs_per_env_runner=k * n,
                **rp.env_to_module_override(pack_env_to_module(k, update_stats=False))),
        )
    return config


def _member_winmass(learner, members: list[dict[str, Any]]) -> list[float]:
    """Each member's WinMass on its own held-out contexts, one batched forward pass."""
    module = learner.module[DEFAULT_MODULE_ID].unwrapped()
    configs = [{k: v for k, v in m.items() if k != "seed"} for m in members]
    problems = [bandit_problem(c) for c in configs]
    n = [int(c.get("eval_contexts", 1024)) for c in configs]
    if len(set(n)) != 1:
        raise ValueError(f"eval_contexts: every member of a pack must share it, got {n}")
    x = np.stack([p.eval_contexts(n[0]) for p in problems])
    with torch.no_grad():
        probs = torch.softmax(module.member_policy(torch.as_tensor(x, device=module.theta.device)), dim=-1)
    probs = probs.cpu().numpy()
    return [winmass(p, lambda _x, k=k: probs[k], n=n[0]) for k, p in enumerate(problems)]


class PackResultCallbacks(CleanMetricsCallbacks):
    """:class:`CleanMetricsCallbacks` for a pack: the bandit's WinMass per member, in
    ``eval/member/<k>/winmass`` (a solo trial's is ``eval/winmass``)."""

    def on_episode_end(self, **kwargs) -> None:
        """Nothing: :class:`~adpo_ray.rllib.packed.PackCallbacks` logs each member's clean return
        (a mean over every member's episodes, which no result reads, cost a log call per episode)."""

    def on_train_result(self, *, algorithm, metrics_logger=None, result: dict, **kwargs) -> None:
        members = list((algorithm.config.env_config or {}).get("members") or [])
        if not members or ENVIRONMENTS.get(members[0].get("env", ""), {}).get("kind") != "bandit":
            return
        per_learner = [v.get() for v in algorithm.learner_group.foreach_learner(
            lambda lr: _member_winmass(lr, members))]
        values = np.mean(np.asarray(per_learner, dtype=np.float64), axis=0)
        result.setdefault(EVAL_GROUP, {})[MEMBER_GROUP] = {str(k): {WINMASS_KEY: float(v)} for k, v in enumerate(values)}


#: The attribute of a pack's algorithm naming the members an evaluation logs (see
#: :func:`evaluate_members`); unset or None: every member.
EVALUATED_MEMBERS = "pack_evaluated_members"


def freeze_members(algorithm, frozen: list[bool]) -> None:
    """Member ``k`` of the pack ``algorithm`` stops where ``frozen[k]``, as its solo trial stops at
    its budget while its pack-mates train on: its learner takes no step
    (:meth:`~adpo_ray.rllib.pack_learner.PackedLearner.freeze_members`), its observation filter on
    every env runner stops updating (:meth:`~adpo_ray.rllib.packed.PackedMeanStdFilter.freeze_members`)
    and the scheduled evaluations log only the members not frozen. Its envs still step with the
    others (their rows go unused). Idempotent; call it again after a restore.

    Raises:
        ValueError: for a length other than the pack's members, or every member frozen.
    """
    from adpo_ray.rllib.init import each_pipeline
    from adpo_ray.rllib.packed import PackedMeanStdFilter

    frozen = [bool(f) for f in frozen]
    k = len((algorithm.config.env_config or {}).get("members") or [])
    if len(frozen) != k or all(frozen):
        raise ValueError(f"frozen: need one flag per member ({k}), not all true, got {frozen}")
    algorithm.learner_group.foreach_learner(lambda learner: learner.freeze_members(frozen))

    def on_pipeline(pipeline) -> None:
        for connector in pipeline.connectors:
            if isinstance(connector, PackedMeanStdFilter):
                connector.freeze_members(frozen)

    each_pipeline(algorithm, on_pipeline)
    setattr(algorithm, EVALUATED_MEMBERS, [m for m in range(k) if not frozen[m]] if any(frozen) else None)


def evaluate_members(algorithm, eval_env_runner_group) -> tuple[dict, int, int]:
    """The pack's evaluation (RLlib's ``custom_evaluation_function``): ``evaluation_duration``
    episodes per member on the local evaluation env runner (the members' clean envs, each
    member's synced observation filter), each member's first episodes in the order they end
    from a reset of every env, as a solo trial's ``sample(num_episodes=...)`` returns them.

    The runner samples by timesteps and carries episodes over between calls (one reset, at the
    start), summing each episode's pieces by its id: members whose episodes end quickly cannot
    starve a member whose episodes run long, as sampling by episode count (which resets every
    env on each call) would.

    Their returns and lengths are logged as a solo evaluation env runner logs its episodes (the
    same window, ``metrics_num_episodes_for_smoothing``, kept across evaluations) under
    ``member/<k>/`` and merged into the algorithm's evaluation results, where the result's
    ``evaluation/env_runners/member/<k>/episode_return_mean`` comes from, as a solo trial's
    ``evaluation/env_runners/episode_return_mean`` does. Only the members listed in the
    algorithm's :data:`EVALUATED_MEMBERS` attribute (all when it is unset or None) are waited for
    and logged: a member past its budget keeps its last evaluation, as its solo trial ends
    with it. Returns ``(this evaluation's means, env_steps, agent_steps)``."""
    runner = eval_env_runner_group.local_env_runner
    members = runner.config.env_config["members"]
    k, wanted = len(members), int(algorithm.config.evaluation_duration)
    logged = getattr(algorithm, EVALUATED_MEMBERS, None)
    logged = range(k) if logged is None else logged
    done: dict[int, list[tuple[float, int]]] = {m: [] for m in logged}  # (return, length) per episode
    partial: dict[str, tuple[float, int]] = {}  # episodes still running: their pieces so far
    env_steps, reset = 0, True
    rp.seed_next_reset(runner)  # every evaluation starts from the same seeded reset, as a solo trial's
    timesteps = runner.num_envs * 100  # per call: 100 steps of every env
    while any(len(v) < wanted for v in done.values()):
        for piece in runner.sample(num_timesteps=timesteps, explore=runner.config.explore, force_reset=reset):
            env_steps += piece.env_steps()
            ret, length = partial.pop(piece.id_, (0.0, 0))
            ret, length = ret + float(piece.get_return()), length + len(piece)
            if not piece.is_done:
                partial[piece.id_] = (ret, length)
                continue
            m = piece.custom_data[MEMBER]
            if m in done and len(done[m]) < wanted:
                done[m].append((ret, length))
        reset = False
    logger = getattr(runner, "pack_eval_metrics", None)
    if logger is None:  # one per evaluation runner, so that the window spans evaluations
        logger = MetricsLogger()
        runner.pack_eval_metrics = logger
    win = max(1, math.ceil(runner.config.metrics_num_episodes_for_smoothing / (runner.config.num_env_runners or 1)))
    for m, episodes in done.items():
        for ret, length in episodes:
            logger.log_value((MEMBER_GROUP, str(m), EPISODE_RETURN_MEAN), ret, window=win)
            logger.log_value((MEMBER_GROUP, str(m), EPISODE_LEN_MEAN), length, window=win)
            logger.log_value(EPISODE_RETURN_MEAN, ret, window=win)
    # RLlib's new stack reads the evaluation's results from the algorithm's metrics, into which
    # its own evaluation merges the evaluation env runner's reduced metrics
    algorithm.metrics.aggregate([logger.reduce()], key=(EVALUATION_RESULTS, ENV_RUNNER_RESULTS))
    means = {str(m): {EPISODE_RETURN_MEAN: float(np.mean([r for r, _ in eps])),
                      EPISODE_LEN_MEAN: float(np.mean([n for _, n in eps]))} for m, eps in done.items()}
    return {ENV_RUNNER_RESULTS: {MEMBER_GROUP: means}}, env_steps, env_steps
