"""The sections of a spec: one pydantic model per YAML section, each knob's type, bounds and
default, and each environment kind's tuned knobs (:data:`KIND_DEFAULTS`).

Unknown keys are rejected everywhere; a model here checks only its own section (the checks that
read several sections are :class:`~adpo_ray.spec.experiment.ExperimentSpec`'s)."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from adpo_ray.core.anchors import make_schedule
from adpo_ray.core.choices import LOSSES, TARGETS, TAU_MIN
from adpo_ray.envs import ENVIRONMENTS

EnvName = Literal[tuple(ENVIRONMENTS)]  # every env of adpo_ray.envs.ENVIRONMENTS
Algorithm = Literal["adpo", "ppo", "ppo_kl", "dpo", "kd", "bc"]
PosFloat = Annotated[float, Field(gt=0, le=1e6)]
NonNegFloat = Annotated[float, Field(ge=0, le=1e6)]

#: The MLflow experiment of the stored clean-env PPO policies (distillation teachers and
#: pretrained starts) unless a spec names another.
POLICIES_EXPERIMENT = "adpo-ray-teachers"
#: How an online learner updates (``resources.learner_update``); the first is the default.
LEARNER_UPDATES = ("fused", "rllib")
#: The optimisers of every learner (``train.optimizer``); the first is the default.
OPTIMIZERS = ("adam", "adamw")

assert set(LOSSES) == {"listwise", "plackett_luce", "pairwise", "dpo"} and set(TARGETS) == {"softmax", "kde", "hard"}


def _count(low: int, high: int):
    """An integer in ``[low, high]``: sizes and counts have sane upper bounds, so a typo such as
    ``hidden_sizes: [1000000]`` is an error naming the field, not a crash hours later."""
    return Annotated[int, Field(ge=low, le=high)]


Seed = _count(0, 2**31 - 1)
Hidden = _count(1, 8192)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def fmt_loc(loc: tuple) -> str:
    """A pydantic error location as the spec writes the path: ``budget.iterations``, ``seeds[2]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _at_most(small: str, big: str, model: BaseModel) -> None:
    """``model.<small> <= model.<big>``, or a ValueError naming both."""
    a, b = getattr(model, small), getattr(model, big)
    if a > b:
        raise ValueError(f"{small} ({a}) must be <= {big} ({b})")


def unique(values: list, field: str) -> list:
    """``values``, or a ValueError naming ``field`` and the values listed more than once."""
    dupes = sorted(str(v) for v, n in Counter(values).items() if n > 1)
    if dupes:
        raise ValueError(f"duplicate {field}: {', '.join(dupes)} (each value may appear once)")
    return values


class PretrainParams(_Strict):
    """A competent starting policy: RLlib PPO on the clean env (the bandit or MuJoCo) for
    ``env_steps`` sampled env steps or ``iterations`` training iterations, whichever comes first,
    one per env and network size, kept in MLflow and found again by its key (env, budget, seed,
    network, PPO knobs) — the same runs as distillation teachers with equal settings, trained once,
    reused after."""

    env_steps: _count(1, 10**10) = 300_000
    #: training iterations (each: one ``train_batch_size`` batch, ``num_epochs`` epochs of
    #: minibatches); null: only ``env_steps`` stops the pretraining
    iterations: _count(1, 10_000_000) | None = None
    seed: Seed = 0
    experiment: Annotated[str, Field(min_length=1)] = POLICIES_EXPERIMENT


class AnchorInit(_Strict):
    """Where online trials start (``anchors.init``): every ADPO anchor mode, and the PPO baseline,
    start from the same policy, value function and observation statistics; ADPO's anchor is that
    policy. Exactly one of ``checkpoint`` (an RLlib algorithm checkpoint: one path, or one per
    env) and ``pretrain``."""

    checkpoint: str | dict[EnvName, str] | None = None
    pretrain: PretrainParams | None = None

    @model_validator(mode="after")
    def _one(self) -> AnchorInit:
        if (self.checkpoint is None) == (self.pretrain is None):
            raise ValueError("give exactly one of checkpoint (a path, or {env: path}) and pretrain "
                             "({env_steps, seed, experiment})")
        if isinstance(self.checkpoint, str) and not self.checkpoint.strip():
            raise ValueError("checkpoint: an empty path")
        return self

    def checkpoint_for(self, env: str) -> str | None:
        """The checkpoint path ``env``'s trials start from (None with ``pretrain``)."""
        if isinstance(self.checkpoint, dict):
            return self.checkpoint.get(env)
        return self.checkpoint


class Anchors(_Strict):
    """Anchor modes of the ADPO trials, each mode's parameters, and where trials start (``init``;
    default: a random policy, which a fixed anchor then keeps the policy near)."""

    modes: list[str] = Field(default_factory=lambda: ["fixed", "dynamic"], min_length=1)
    params: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {
            "dynamic": {"every": 1},
            "ema": {"rate": 0.05},
            "kl_triggered": {"threshold": 0.05, "window": 1},
        }
    )
    init: AnchorInit | None = None

    @field_validator("modes")
    @classmethod
    def _modes(cls, v: list[str]) -> list[str]:
        return unique(v, "anchor modes")

    @model_validator(mode="after")
    def _buildable(self) -> Anchors:
        for mode in dict.fromkeys([*self.modes, *self.params]):
            try:
                make_schedule(mode, **self.params.get(mode, {}))
            except ValueError as e:
                where = f"params.{mode}" if mode in self.params else "modes"
                raise ValueError(f"{where}: {e}") from None
        return self

    def schedule_params(self, mode: str) -> dict[str, Any]:
        """The constructor kwargs of ``mode``'s schedule (empty for a mode without params)."""
        return dict(self.params.get(mode, {}))


class Budget(_Strict):
    """When a trial stops: after ``iterations`` training iterations or ``env_steps`` sampled env
    steps, whichever comes first (at least one is required)."""

    iterations: _count(1, 10_000_000) | None = None
    env_steps: _count(1, 10**11) | None = None
    checkpoint_every: _count(1, 1_000_000) = 10

    @model_validator(mode="after")
    def _some_stop(self) -> Budget:
        if self.iterations is None and self.env_steps is None:
            raise ValueError("set iterations or env_steps (positive integers)")
        return self


class TrainParams(_Strict):
    """The ``train:`` section: the optimisation knobs every method shares (network updates,
    batches, GAE). PPO trials take the ``ppo:`` overrides on top
    (:meth:`~adpo_ray.spec.experiment.ExperimentSpec.train_for`)."""

    lr: PosFloat = 3e-4
    #: ``adam``: torch's Adam (``weight_decay`` is an L2 term in the gradient); ``adamw``: AdamW
    #: (decoupled weight decay)
    optimizer: Literal[OPTIMIZERS] = OPTIMIZERS[0]
    weight_decay: NonNegFloat = 0.0
    grad_clip: NonNegFloat = 0.5  # global-norm clipping; 0: none
    entropy_coeff: NonNegFloat = 0.0
    vf_coeff: NonNegFloat = 0.5
    gamma: Annotated[float, Field(ge=0, le=1)] = 0.99
    lambda_: Annotated[float, Field(ge=0, le=1, alias="lambda")] = 0.95
    num_epochs: _count(1, 1000) = 4
    minibatch_size: _count(1, 1_000_000) = 128
    train_batch_size: _count(1, 10_000_000) = 512

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)

    @model_validator(mode="after")
    def _batches(self) -> TrainParams:
        _at_most("minibatch_size", "train_batch_size", self)
        return self


class ADPOParams(_Strict):
    """The ``adpo:`` section: the anchored preference loss of ADPO trials (and of DPO's, which fixes
    its own loss, target and lists)."""

    loss: Literal[LOSSES] = "listwise"
    target: Literal[TARGETS] = "softmax"
    list_source: Literal["auto", "actions", "batch"] = "auto"
    tau_anc: PosFloat = 1.0
    beta_q: PosFloat = 1.0
    list_size: _count(2, 4096) = 8
    # the author's variants of the listwise losses (:mod:`adpo_ray.core.losses`); off by default
    #: ``list``: z-normalise the signal within each list before the target (``beta_q`` scale-free)
    target_norm: Literal["none", "list"] = "none"
    #: adaptive anchor temperature ``max(tau_min, tau_anc * (1 - tau_alpha * H(q) / log K))``; 0: off
    tau_alpha: Annotated[float, Field(ge=0, le=1)] = 0.0
    tau_min: PosFloat = TAU_MIN
    #: centre the anchored logits by ``q`` before the softmax (shift-invariant: changes nothing)
    q_center: bool = False
    #: ``+ coeff * KL(policy || anchor)`` per state (exact, closed form)
    anchor_kl_coeff: NonNegFloat = 0.0
    #: ``plackett_luce``: only the best ``pl_top_k`` ranks count; null: every rank
    pl_top_k: _count(1, 4096) | None = None
    #: ``plackett_luce``: each rank's draw smoothed toward the uniform draw over the candidates left
    label_smoothing: Annotated[float, Field(ge=0, le=1)] = 0.0
    #: ``plackett_luce``: Poly-1 term ``e * (1 - p)`` on each rank's draw; 0: off
    poly_epsilon: NonNegFloat = 0.0
    #: both listwise losses: clamp ``s - r`` to ``[-c, c]`` before the temperature; 0: off
    clip_log_ratio: NonNegFloat = 0.0
    #: both listwise losses: clamp the anchored logits to ``[-c, c]``; 0: off
    clip_score: NonNegFloat = 0.0


class PPOKLParams(_Strict):
    """The ``ppo_kl:`` section: the KL-penalty policy gradient's loss knobs (the ``ppo_kl``
    baseline: ``-ratio * A + beta * KL(pi_old || pi_new)`` per state, no clipping; the
    manuscript's "TRPO"). Its optimisation knobs are PPO's (``train:`` with the ``ppo:`` overrides)."""

    #: the initial KL coefficient beta
    kl_beta: PosFloat = 1.0
    #: d_targ of the adaptive rule: beta halves below ``kl_target / 1.5``, doubles above ``kl_target * 1.5``
    kl_target: PosFloat = 0.01
    #: adapt beta after every update (false: beta stays ``kl_beta``)
    kl_adaptive: bool = True


#: The ``train:`` knobs (YAML names); a spec that still writes them under ``adpo:`` is moved.
TRAIN_KNOBS = frozenset(f.alias or n for n, f in TrainParams.model_fields.items()) | {"lambda_"}
#: The knobs only the Plackett-Luce loss reads, with their values that mean "off".
PL_KNOBS = {"pl_top_k": None, "label_smoothing": 0.0, "poly_epsilon": 0.0}


def _optional(model: type[BaseModel], name: str, doc: str) -> type[BaseModel]:
    """``model`` with every field optional and ``None`` by default: a spec section whose unset
    knobs fall through to the defaults below it (field constraints and aliases kept)."""
    fields = {}
    for n, f in model.model_fields.items():
        typ = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
        fields[n] = (typ | None, Field(None, alias=f.alias))
    out = create_model(name, __base__=_Strict, __doc__=doc, **fields)
    out.model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)
    out.model_rebuild(force=True)
    return out


#: The ``train:`` section as written: :class:`TrainParams` with every knob optional. A knob left
#: out takes the environment kind's default (:data:`KIND_DEFAULTS`), then :class:`TrainParams`'s.
TrainSection = _optional(TrainParams, "TrainSection", "The ``train:`` section: knobs left out take the env kind's defaults.")
#: The ``adpo:`` section as written (knobs left out: the kind's defaults, then :class:`ADPOParams`'s).
ADPOSection = _optional(ADPOParams, "ADPOSection", "The ``adpo:`` section: knobs left out take the env kind's defaults.")

#: The one source of each environment kind's tuned knobs, below the spec's ``train:``/``adpo:``/
#: ``ppo:`` sections and ``env_overrides`` (:meth:`~adpo_ray.spec.experiment.ExperimentSpec.train_for`,
#: :meth:`~adpo_ray.spec.experiment.ExperimentSpec.adpo_for`). MuJoCo: ADPO as tuned on clean
#: Hopper (hopper_learning / hopper_search: lists of 8 transitions, ``beta_q: 2``, ``tau_anc: 0.5``,
#: lr 1e-3), PPO at its usual lr 3e-4, both with RLlib's MuJoCo batch (2,048 steps, 10 epochs of
#: minibatches of 64). A preset that departs from them says so in ``departs_from_defaults`` (a
#: test holds every preset to it).
KIND_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "mujoco": {
        "train": {"lr": 1e-3, "num_epochs": 10, "minibatch_size": 64, "train_batch_size": 2048,
                  "entropy_coeff": 0.0, "vf_coeff": 0.5},
        "adpo": {"loss": "listwise", "target": "softmax", "tau_anc": 0.5, "beta_q": 2.0, "list_size": 8},
        "ppo": {"lr": 3e-4},
    },
    "bandit": {"train": {}, "adpo": {}, "ppo": {}},
}


class BanditParams(_Strict):
    num_items: _count(2, 4096) = 8
    context_dim: _count(1, 4096) = 8
    problem_seed: Seed = 0
    eval_contexts: _count(1, 1_000_000) = 1024


class Resources(_Strict):
    """What each trial asks of the cluster, and how many run at once (README "Resources")."""

    num_env_runners: Annotated[int, Field(ge=0, le=64)] = 0
    num_envs_per_env_runner: Annotated[int, Field(ge=1, le=1024)] = 1
    num_learners: Annotated[int, Field(ge=0, le=1)] = 0
    #: ``auto``: a GPU learner only where one was measured faster (:mod:`adpo_ray.spec.devices`)
    #: and only on a cluster with GPUs; ``cpu``: never; ``gpu``: always.
    learner_device: Literal["auto", "cpu", "gpu"] = "auto"
    #: The GPU share of each GPU learner; 0 = chosen at launch so that a GPU node's CPUs all
    #: run trials (a whole GPU when the cluster is not known, e.g. a dry run without --cluster).
    num_gpus_per_learner: Annotated[float, Field(ge=0, le=8)] = 0.0
    #: ``fused``: ADPO's and PPO's learner run every epoch x minibatch in one loop on the device
    #: (:mod:`adpo_ray.rllib.fused`); ``rllib``: RLlib's own update loop (same math, slower).
    learner_update: Literal[LEARNER_UPDATES] = LEARNER_UPDATES[0]
    #: ``torch.compile`` the fused path's minibatch loss: about 1.5x faster updates on CPU once
    #: compiled, for 10-30 s of compiling at the trial's start (pays for trials of more than a few
    #: hundred updates); needs a C++ compiler on the workers.
    learner_compile: bool = False
    #: At most this many trials at once; default: as many as the cluster fits at full scale.
    max_concurrent_trials: _count(1, 100_000) | None = None
    max_failures: Annotated[int, Field(ge=0, le=100)] = 2
    #: Tune's ``reuse_actors``: a trial that ends hands its process (and placement group) to the
    #: next trial asking the same resources, which builds its algorithm there afresh; saves the
    #: process start and the torch/RLlib imports, about 4 s of CPU per trial. ``false``: one new
    #: process per trial.
    reuse_actors: bool = True
    #: Trial packs: ``N`` runs up to N trials of one shape as ONE RLlib algorithm in one process
    #: (one Tune trial, one bundle; each member still gets its own MLflow run); ``auto``: every
    #: trial of a shape, at most :data:`~adpo_ray.spec.packs.AUTO_PACK_SIZE` per pack; ``1``: one
    #: trial per Tune trial. Trials a pack cannot run, and a search's trials, run alone.
    pack: Literal["auto"] | _count(1, 1024) = "auto"

    @field_validator("pack", mode="before")
    @classmethod
    def _pack(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1024):
            return v
        raise ValueError(f"{v!r}; allowed: auto, or a whole number of trials per pack from 1 (no packs) to 1024")

    @model_validator(mode="after")
    def _device(self) -> Resources:
        if self.learner_device == "cpu" and self.num_gpus_per_learner > 0:
            raise ValueError("num_gpus_per_learner > 0 with learner_device: cpu; use learner_device: gpu or auto")
        return self


class Tracking(_Strict):
    tracking_uri: str | None = None  # default: sqlite:///<abs cwd>/mlflow.db
    experiment: str | None = None  # default: the spec's name
    artifact_location: str | None = None  # default: <abs cwd>/mlartifacts


class Evaluation(_Strict):
    interval: _count(1, 1_000_000) = 1  # MuJoCo: evaluate on the clean env every N iterations
    episodes: _count(1, 10_000) = 2  # MuJoCo: clean evaluation episodes per evaluation
    #: MuJoCo: sample actions in evaluation (``true``) or take the policy's mean (``false``)
    explore: bool = False


class TeacherParams(_Strict):
    """The distillation teacher: RLlib PPO on the clean env (the optimisation knobs of PPO trials:
    the ``train`` section with the ``ppo`` overrides), found again in MLflow by env, budget, seed,
    network and knobs — trained once, reused after."""

    env_steps: _count(1, 10**10) = 300_000
    seed: Seed = 0
    hidden_size: Hidden = 64
    experiment: Annotated[str, Field(min_length=1)] = POLICIES_EXPERIMENT


class DatasetParams(_Strict):
    """Teacher rollouts with ``candidates`` teacher-sampled actions per state, each scored by
    ``signal`` from the restored simulator state (:mod:`adpo_ray.envs.candidates`)."""

    states: _count(10, 100_000_000) = 20_000
    candidates: _count(2, 4096) = 8
    heldout_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    chunks: _count(1, 4096) = 4  # parallel generation tasks (each rolls out its own episodes)
    seed: Seed = 0
    #: ``reward``: the one-step reward; ``q_lookahead``: reward + gamma * V_teacher(next state);
    #: ``nstep``: the discounted ``horizon``-step return, the teacher's mean action after the candidate
    signal: Literal["reward", "q_lookahead", "nstep"] = "reward"
    gamma: Annotated[float, Field(ge=0, le=1)] = 0.99  # q_lookahead and nstep
    horizon: _count(1, 1000) = 10  # nstep: simulator steps per candidate

    def key_fields(self) -> dict[str, Any]:
        """What identifies a dataset: every knob that changes its contents (a signal's own knobs
        only where it reads them, so one-step datasets keep the keys they had before signals)."""
        skip = {"reward": {"signal", "gamma", "horizon"}, "q_lookahead": {"horizon"}, "nstep": set()}[self.signal]
        return self.model_dump(exclude=skip)

    @property
    def steps_per_candidate(self) -> int:
        return self.horizon if self.signal == "nstep" else 1


class DistillParams(_Strict):
    """Offline distillation: present, it turns the grid into students (``adpo``, ``kd``, ``bc``)
    trained from teacher datasets; ``budget.iterations`` counts student iterations."""

    teacher: TeacherParams = Field(default_factory=TeacherParams)
    dataset: DatasetParams = Field(default_factory=DatasetParams)
    states_per_iteration: _count(1, 10_000_000) = 2048
    minibatch_states: _count(1, 10_000_000) = 256

    @model_validator(mode="after")
    def _batches(self) -> DistillParams:
        _at_most("minibatch_states", "states_per_iteration", self)
        return self


class EnvOverride(_Strict):
    """Per-environment overrides: a bandit trial and a MuJoCo trial rarely share a budget."""

    budget: Budget | None = None
    train: dict[str, Any] = Field(default_factory=dict)
    adpo: dict[str, Any] = Field(default_factory=dict)
