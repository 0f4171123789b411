"""Each trial's effective settings: :class:`TrialKnobs`, derived once from the spec
(:func:`derive_knobs`, called by :meth:`~adpo_ray.spec.experiment.ExperimentSpec.knobs`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from adpo_ray.core.choices import DISTILL_METHODS
from adpo_ray.envs import ENVIRONMENTS
from adpo_ray.spec.devices import learner_gpus
from adpo_ray.spec.identity import dataset_key, pretrained_of, teacher_key
from adpo_ray.spec.sections import ADPOParams
from adpo_ray.spec.trials import TrialSpec

#: ``pl_top_k`` of a Plackett-Luce trial in which every rank counts (the spec's ``null``).
ALL_RANKS = "all"
#: What an online trial starts from without ``anchors.init``: a freshly initialised policy.
NO_INIT = "none"


@dataclass(frozen=True)
class TrialKnobs:
    """Everything one trial trains with, derived once from the spec by
    :meth:`~adpo_ray.spec.experiment.ExperimentSpec.knobs`: the only record the trainable (budget,
    checkpoints, resources) and the RLlib config builders read, and :meth:`params` is what MLflow
    logs, so the params shown are the settings that trained.

    A knob that is off holds its off value (``0.0``, ``False``, ``"none"``), logged like any other.
    ``None`` means only that the knob does not apply to the trial's method (not logged):
    ``clip_param`` is PPO's, the ``kl_*`` knobs ``ppo_kl``'s, the preference-loss knobs are ADPO's and DPO's (each loss its own
    variants), the batch and GAE knobs are online RL's, the ``distill_*`` knobs a student's."""

    trial: TrialSpec
    kind: str  # the env's kind: bandit | mujoco
    # budget
    iterations: int | None
    env_steps: int | None
    checkpoint_every: int
    # optimisation (every method)
    lr: float
    optimizer: str
    weight_decay: float
    grad_clip: float  # global norm; 0.0: no clipping
    # online RL (adpo, dpo, ppo)
    gamma: float | None = None
    lambda_: float | None = None
    num_epochs: int | None = None
    minibatch_size: int | None = None
    train_batch_size: int | None = None
    entropy_coeff: float | None = None
    vf_coeff: float | None = None
    clip_param: float | None = None  # ppo
    # the KL-penalty policy gradient (ppo_kl): initial beta, d_targ, whether beta adapts
    kl_beta: float | None = None
    kl_target: float | None = None
    kl_adaptive: bool | None = None
    # the anchored preference loss (adpo, dpo; adpo students)
    loss: str | None = None
    target: str | None = None
    tau_anc: float | None = None
    beta_q: float | None = None
    list_source: str | None = None  # online only
    list_size: int | None = None  # online, list_source batch
    anchor_mode: str | None = None
    anchor_params: tuple[tuple[str, Any], ...] = ()
    # the author's loss variants: target_norm (every preference loss), the adaptive temperature
    # and q_center (listwise), the rank knobs (plackett_luce), the clamps (both listwise losses)
    target_norm: str | None = None
    tau_alpha: float | None = None
    tau_min: float | None = None
    q_center: bool | None = None
    pl_top_k: int | str | None = None  # a count of ranks, or ALL_RANKS
    label_smoothing: float | None = None
    poly_epsilon: float | None = None
    clip_log_ratio: float | None = None
    clip_score: float | None = None
    anchor_kl_coeff: float | None = None  # online adpo only
    #: where an online trial starts (anchors.init): ``pretrain:<key>``, a checkpoint path, or NO_INIT
    init: str | None = None
    # environment and evaluation
    bandit: tuple[tuple[str, Any], ...] = ()
    eval_interval: int | None = None
    eval_episodes: int | None = None
    eval_explore: bool | None = None
    # offline distillation students
    distill_teacher_key: str | None = None
    distill_dataset_key: str | None = None
    distill_states: int | None = None
    distill_candidates: int | None = None
    distill_states_per_iteration: int | None = None
    distill_minibatch_states: int | None = None
    # resources of the trial's algorithm
    num_env_runners: int = 0
    num_envs_per_env_runner: int = 1
    num_learners: int = 0
    num_gpus_per_learner: float = 0.0  # > 0: the trial's learner is on a GPU, this share of one
    learner_update: str | None = None  # online RL: fused | rllib
    learner_compile: bool | None = None  # online RL, fused path: torch.compile the minibatch loss

    @property
    def env_config(self) -> dict[str, Any]:
        """The env creator's config of the training env (the trial's scenario)."""
        return {"env": self.trial.env, "scenario": self.trial.scenario, **dict(self.bandit)}

    def params(self) -> dict[str, str]:
        """The MLflow params of the trial: its coordinates and every knob that applies, off or on."""
        t = self.trial
        out: dict[str, Any] = {
            "env": t.env, "scenario": t.scenario, "algorithm": t.algorithm, "anchor_mode": t.anchor_mode,
            "hidden_size": t.hidden_size, "seed": t.seed,
            "budget.iterations": self.iterations, "budget.env_steps": self.env_steps,
        }
        skip = {"trial", "kind", "iterations", "env_steps", "checkpoint_every", "anchor_mode",
                "anchor_params", "bandit"}
        for name, value in asdict(self).items():
            if name in skip or value is None:
                continue
            if name.startswith("distill_"):
                name = "distill." + name.removeprefix("distill_")
            elif name.startswith(("num_env", "num_learners", "num_gpus", "learner_")):
                name = "resources." + name
            elif name.startswith("eval_"):
                name = "evaluation." + name.removeprefix("eval_")
            elif name == "init":
                name = "anchors.init"
            out[name.rstrip("_")] = value
        out.update({f"anchor.{k}": v for k, v in self.anchor_params})
        out.update({f"bandit.{k}": v for k, v in self.bandit})
        return {k: str(v) for k, v in out.items()}


def derive_knobs(spec, trial: TrialSpec) -> TrialKnobs:
    """The knobs of ``trial`` under ``spec`` (an :class:`~adpo_ray.spec.experiment.ExperimentSpec`
    already at the trial's sweep point)."""
    kind = ENVIRONMENTS[trial.env]["kind"]
    budget, res = spec.budget_for(trial.env), spec.resources
    student = spec.distill is not None and trial.algorithm in DISTILL_METHODS
    train, p = spec.train_for(trial.env, trial.algorithm), spec.adpo_for(trial.env)
    minibatch = spec.distill.minibatch_states if student else train.minibatch_size
    common: dict[str, Any] = dict(
        trial=trial, kind=kind, iterations=budget.iterations, env_steps=budget.env_steps,
        checkpoint_every=budget.checkpoint_every, lr=train.lr, optimizer=train.optimizer,
        weight_decay=train.weight_decay, grad_clip=train.grad_clip,
        num_env_runners=res.num_env_runners, num_envs_per_env_runner=res.num_envs_per_env_runner,
        num_learners=res.num_learners, num_gpus_per_learner=learner_gpus(res, trial.hidden_size, minibatch),
    )
    if kind == "bandit":
        common["bandit"] = tuple(spec.bandit.model_dump().items())
    if kind == "mujoco":
        common.update(eval_interval=spec.evaluation.interval, eval_episodes=spec.evaluation.episodes,
                      eval_explore=spec.evaluation.explore)
    if student:
        d = spec.distill
        common.update(
            distill_teacher_key=teacher_key(spec, trial.env),
            distill_dataset_key=dataset_key(spec, trial.env, trial.scenario),
            distill_states=d.dataset.states, distill_candidates=d.dataset.candidates,
            distill_states_per_iteration=d.states_per_iteration, distill_minibatch_states=d.minibatch_states,
        )
        if trial.algorithm == "adpo":  # kd and bc have no preference loss and no anchor
            common.update(loss=p.loss, target=p.target, tau_anc=p.tau_anc, beta_q=p.beta_q,
                          anchor_mode=trial.anchor_mode,
                          anchor_params=tuple(spec.anchors.schedule_params(trial.anchor_mode).items()),
                          **loss_variants(p, p.loss))
        return TrialKnobs(**common)
    common["init"] = _init_label(spec, trial)
    common.update(
        gamma=train.gamma, lambda_=train.lambda_, num_epochs=train.num_epochs, minibatch_size=train.minibatch_size,
        train_batch_size=train.train_batch_size, entropy_coeff=train.entropy_coeff, vf_coeff=train.vf_coeff,
        learner_update=res.learner_update, learner_compile=res.learner_compile,
    )
    if trial.algorithm == "ppo":
        common["clip_param"] = 0.2
    elif trial.algorithm == "ppo_kl":
        k = spec.ppo_kl
        common.update(kl_beta=k.kl_beta, kl_target=k.kl_target, kl_adaptive=k.kl_adaptive)
    elif trial.algorithm == "dpo":
        # DPO: hard pairwise labels, the frozen initial policy as reference, lists of all actions
        common.update(loss="dpo", target="hard", tau_anc=p.tau_anc, beta_q=p.beta_q,
                      list_source="actions", anchor_mode="fixed", **loss_variants(p, "dpo"))
    else:
        source = spec.list_source(trial.env)
        common.update(loss=p.loss, target=p.target, tau_anc=p.tau_anc, beta_q=p.beta_q, list_source=source,
                      list_size=p.list_size if source == "batch" else None, anchor_mode=trial.anchor_mode,
                      anchor_params=tuple(spec.anchors.schedule_params(trial.anchor_mode).items()),
                      **loss_variants(p, p.loss), anchor_kl_coeff=p.anchor_kl_coeff)
    return TrialKnobs(**common)


def loss_variants(p: ADPOParams, loss: str) -> dict[str, Any]:
    """The author's loss variants that apply to ``loss``, with their values (off ones included)."""
    out: dict[str, Any] = {"target_norm": p.target_norm}
    if loss == "listwise":
        out.update(tau_alpha=p.tau_alpha, tau_min=p.tau_min, q_center=p.q_center)
    if loss == "plackett_luce":
        out.update(pl_top_k=ALL_RANKS if p.pl_top_k is None else p.pl_top_k, label_smoothing=p.label_smoothing,
                   poly_epsilon=p.poly_epsilon)
    if loss in ("listwise", "plackett_luce"):
        out.update(clip_log_ratio=p.clip_log_ratio, clip_score=p.clip_score)
    return out


def _init_label(spec, trial: TrialSpec) -> str:
    init = spec.anchors.init
    if init is None:
        return NO_INIT
    if init.pretrain is not None:
        return "pretrain:" + pretrained_of(spec, trial.env, trial.hidden_size).key
    return init.checkpoint_for(trial.env)
