"""The metric registry: every metric name of the project, defined once (no Ray import).

Two kinds of names live here:

* **curated names** (``eval/winmass``, ``loss/adpo``...): what trials report to Tune, what MLflow
  stores (env steps as the step), what summaries and reports read;
* **source keys**: where this project's RLlib parts (learners, callbacks, the distillation
  algorithm) log their values inside an RLlib result, next to RLlib's own keys.

:data:`CURATED` maps each curated name to its source paths; :func:`curate` reads them out of an
RLlib result. A key that our RLlib parts log must be the source of a curated metric or listed in
:data:`EXCLUDED` (checked by ``tests/integration/test_metrics_registry.py``).
"""

from __future__ import annotations

import math
from typing import Any, AnyStr

#: RLlib's ``DEFAULT_MODULE_ID`` (the single-agent module), spelled here to keep this module
#: Ray-free; a test checks it against RLlib's constant.
MODULE = "default_policy"

# -- curated names ----------------------------------------------------------------------------
ENV_STEPS = "env_steps"  # env steps sampled; distillation students: dataset states trained on
TRAINING_ITERATION = "training_iteration"
EVAL_WINMASS = "eval/winmass"
EVAL_RETURN = "eval/return_mean"
EVAL_OVER_TEACHER = "eval/return_over_teacher"
KL_TEACHER = "distill/kl_teacher"
#: NDCG of a student's ranking of each held-out state's candidates (by its log-probability)
#: against their clean signal's ranking (:func:`adpo_ray.core.distill.ndcg`).
NDCG = "distill/ndcg"
#: The NDCG a uniformly random order of the same held-out lists scores in expectation
#: (:func:`adpo_ray.core.distill.random_order_ndcg`): the level :data:`NDCG` must beat.
NDCG_RANDOM = "distill/ndcg_random"
TRAIN_KL_TEACHER = "distill/train_kl_teacher"
LOSS_DISTILL = "loss/distill"
TRAIN_RETURN = "train/return_mean"
TRAIN_RETURN_NOISY = "train/return_noisy_mean"
ANCHOR_KL = "adpo/anchor_kl"
ANCHOR_REFRESHES = "adpo/anchor_refreshes"
LAST_REFRESH_STEP = "adpo/last_refresh_step"
LAST_REFRESH_KL = "adpo/last_refresh_kl"
LOSS_ADPO = "loss/adpo"
#: ``ppo_kl``'s KL coefficient beta after each update (the one the next update uses)
PPO_KL_BETA = "ppo_kl/beta"
LOSS_POLICY = "loss/policy"
LOSS_VF = "loss/vf"
ENTROPY = "policy/entropy"
TIME_SAMPLE = "time/sample_s"
TIME_LEARN = "time/learn_s"
#: A distillation teacher's clean return (on the teacher's own MLflow run).
TEACHER_RETURN = "teacher/return_mean"

#: The headline metric per environment kind (what summary tables and reports compare).
HEADLINE = {"bandit": EVAL_WINMASS, "mujoco": EVAL_RETURN}

# -- source keys: what our RLlib parts log, and where -------------------------------------------
#: ``env_runners/<key>``: the clean-reward return of each training episode (callbacks).
CLEAN_RETURN_KEY = "train_clean_return"
#: ``env_runners/<MEMBER_GROUP>/<k>/<key>``: a trial pack's member ``k``'s episode metrics, keyed
#: as a solo trial's env runners key them (:data:`CLEAN_RETURN_KEY`, ``episode_return_mean``,
#: ``episode_len_mean``), so a pack's result splits into solo-shaped ones.
MEMBER_GROUP = "member"
#: A trial pack's Tune result key: its members' results, a list in member order, each shaped as
#: its solo trial's result (:func:`member_results`).
MEMBERS = "members"
#: ``eval/winmass``: the bandit's WinMass, added to each training result (callbacks).
EVAL_GROUP, WINMASS_KEY = "eval", "winmass"
#: ``distill/<key>``: what the offline distillation algorithm adds to each result.
DISTILL_GROUP = "distill"
DISTILL_STATES_KEY = "states_trained"
DISTILL_KL_KEY = "kl_teacher"
DISTILL_NDCG_KEY = "ndcg"
DISTILL_NDCG_RANDOM_KEY = "ndcg_random"
DISTILL_EVAL_RETURN_KEY = "eval_return_mean"
DISTILL_EVAL_OVER_TEACHER_KEY = "eval_return_over_teacher"
#: RLlib's own learner keys that the curated losses read (``ray.rllib.core.learner.learner``).
RLLIB_POLICY_LOSS, RLLIB_VF_LOSS, RLLIB_ENTROPY = "policy_loss", "vf_loss", "entropy"
#: RLlib's PPO learner key of the current KL coefficient (``ppo_kl`` logs its beta there).
RLLIB_CURR_KL_COEFF = "curr_kl_coeff"

_L = ("learners", MODULE)

#: Curated metric name -> source paths in an RLlib result (the first path found wins).
CURATED: dict[str, tuple[tuple[str, ...], ...]] = {
    ENV_STEPS: ((DISTILL_GROUP, DISTILL_STATES_KEY), ("num_env_steps_sampled_lifetime",),
                ("env_runners", "num_env_steps_sampled_lifetime")),
    EVAL_WINMASS: ((EVAL_GROUP, WINMASS_KEY),),
    EVAL_RETURN: (("evaluation", "env_runners", "episode_return_mean"), (DISTILL_GROUP, DISTILL_EVAL_RETURN_KEY)),
    EVAL_OVER_TEACHER: ((DISTILL_GROUP, DISTILL_EVAL_OVER_TEACHER_KEY),),
    KL_TEACHER: ((DISTILL_GROUP, DISTILL_KL_KEY),),
    NDCG: ((DISTILL_GROUP, DISTILL_NDCG_KEY),),
    NDCG_RANDOM: ((DISTILL_GROUP, DISTILL_NDCG_RANDOM_KEY),),
    TRAIN_KL_TEACHER: ((*_L, TRAIN_KL_TEACHER),),
    LOSS_DISTILL: ((*_L, LOSS_DISTILL),),
    TRAIN_RETURN: (("env_runners", CLEAN_RETURN_KEY),),
    TRAIN_RETURN_NOISY: (("env_runners", "episode_return_mean"),),
    ANCHOR_KL: ((*_L, ANCHOR_KL),),
    ANCHOR_REFRESHES: ((*_L, ANCHOR_REFRESHES),),
    LAST_REFRESH_STEP: ((*_L, LAST_REFRESH_STEP),),
    LAST_REFRESH_KL: ((*_L, LAST_REFRESH_KL),),
    LOSS_ADPO: ((*_L, LOSS_ADPO),),
    PPO_KL_BETA: ((*_L, RLLIB_CURR_KL_COEFF),),
    LOSS_POLICY: ((*_L, RLLIB_POLICY_LOSS),),
    LOSS_VF: ((*_L, RLLIB_VF_LOSS),),
    ENTROPY: ((*_L, RLLIB_ENTROPY), (*_L, ENTROPY)),
    TIME_SAMPLE: (("timers", "env_runner_sampling_timer"),),
    TIME_LEARN: (("timers", "learner_update_timer"),),
}

#: Source paths our RLlib parts log on purpose without curating them, with the reason.
EXCLUDED: dict[tuple[str, ...], str] = {
    (*_L, LOSS_VF): "the same value as RLlib's vf_loss, curated as loss/vf",
}

#: Result keys kept as metrics besides the curated ``group/name`` ones.
PLAIN_METRICS = (ENV_STEPS, TRAINING_ITERATION)

#: Metrics the report's tables show, and the ones it draws as curves over env steps.
REPORT_COLUMNS = (EVAL_WINMASS, EVAL_RETURN, EVAL_OVER_TEACHER, KL_TEACHER, NDCG, NDCG_RANDOM, TRAIN_RETURN,
                  ANCHOR_KL, ANCHOR_REFRESHES, ENV_STEPS)
CURVE_METRICS = (EVAL_WINMASS, EVAL_RETURN, KL_TEACHER)
#: Metrics that only a fresh evaluation produces (RLlib repeats the last one in between).
EVAL_METRICS = (EVAL_RETURN, EVAL_OVER_TEACHER)


def is_metric_key(key: str) -> bool:
    """A curated metric (``eval/winmass``, ``loss/vf``...) or one of :data:`PLAIN_METRICS`."""
    return key in CURATED or key in PLAIN_METRICS


def source_paths() -> set[tuple[str, ...]]:
    """Every RLlib result path a curated metric reads."""
    return {path for paths in CURATED.values() for path in paths}


def _get(result: dict[str, Any], path: tuple[str, ...]) -> Any:
    cur: Any = result
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return cur


def curate(result: dict[str, Any]) -> dict[str, float]:
    """The curated metrics present in an RLlib result, as finite floats."""
    out: dict[str, float] = {}
    for name, paths in CURATED.items():
        for path in paths:
            value = _get(result, path)
            if value is None:
                continue
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                out[name] = value
                break
    return out


def whole_lines(data: AnyStr) -> AnyStr:
    """A Tune trial log's text or bytes (``progress.csv``, ``result.json``: a result a line) up to
    and including its last newline. What follows is a result still being written or copied into
    the results folder, or cut short by a kill; a CSV reader would take its cut numbers as values
    (``1.95`` of ``1.9786``) and its missing ``done`` as true."""
    return data[:data.rfind(b"\n" if isinstance(data, bytes) else "\n") + 1]


def member_ended(result: dict[str, Any], member: dict[str, Any]) -> bool:
    """Whether a trial-pack member whose result is ``member`` (one of ``result[MEMBERS]``) has
    ended: it reached its own budget (its ``done``) or the pack ended (the pack's ``done``)."""
    return bool(member.get("done") or result.get("done"))


def member_results(config: dict[str, Any], result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The grid trials' results in a Tune trial's ``result``, in the order of its ``config``'s
    trials: a pack's members' (:data:`MEMBERS`; empty dicts before its first result), or the
    result itself for a solo trial (``trial``, or ``trials`` of one)."""
    result = result or {}
    trials = config.get("trials")
    if trials is None or len(trials) == 1:
        return [result]
    return list(result.get(MEMBERS) or [{} for _ in trials])
