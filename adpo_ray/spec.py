"""Experiment specs: the pydantic models behind every YAML in ``tune_configs/``, and each trial's
effective settings (:class:`TrialKnobs`, from :meth:`ExperimentSpec.knobs`).

One spec describes one grid: environments x scenarios x methods (ADPO anchor modes and baselines)
x hidden sizes x seeds, with the budget, the ADPO hyperparameters, resources and tracking.
Unknown keys are rejected; every error names its field path and what is allowed; nothing starts
before the whole file validates (:func:`load_spec`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from adpo_ray.core.anchors import make_schedule
from adpo_ray.core.devices import gpu_pays
from adpo_ray.core.distill import DISTILL_METHODS
from adpo_ray.core.losses import LOSSES
from adpo_ray.core.noise import SCENARIOS, TWELVE, get_scenario
from adpo_ray.core.targets import TARGETS
from adpo_ray.envs import ENVIRONMENTS
from adpo_ray.sweeps import SWEEP_SECTIONS, Distribution, Search, distribution_bounds, sweep_label

__all__ = ["ExperimentSpec", "TrialSpec", "TrialKnobs", "SpecError", "load_spec", "parse_spec",
           "teacher_key", "dataset_key", "CleanPPO", "clean_ppo", "teacher_of", "pretrained_of",
           "pretrained_policies", "init_slot", "KIND_DEFAULTS", "check_identities", "method_name"]

EnvName = Literal["PreferenceBandit", "HalfCheetah-v5", "Hopper-v5"]
Algorithm = Literal["adpo", "ppo", "dpo", "kd", "bc"]
PosFloat = Annotated[float, Field(gt=0, le=1e6)]
NonNegFloat = Annotated[float, Field(ge=0, le=1e6)]


def _count(low: int, high: int):
    """An integer in ``[low, high]``: sizes and counts have sane upper bounds, so a typo such as
    ``hidden_sizes: [1000000]`` is an error naming the field, not a crash hours later."""
    return Annotated[int, Field(ge=low, le=high)]


Seed = _count(0, 2**31 - 1)
Hidden = _count(1, 8192)
#: The most trials one grid may have.
MAX_TRIALS = 200_000

assert set(EnvName.__args__) == set(ENVIRONMENTS)  # one list of environments
assert set(LOSSES) == {"listwise", "plackett_luce", "pairwise", "dpo"} and set(TARGETS) == {"softmax", "kde", "hard"}


def method_name(algorithm: str, anchor_mode: str | None) -> str:
    """A trial's method as reports and MLflow tags name it: ``adpo-<anchor_mode>`` for ADPO
    (``adpo-dynamic``, ``adpo-fixed``...), else the algorithm (``ppo``, ``dpo``, ``kd``, ``bc``)."""
    return f"adpo-{anchor_mode}" if algorithm == "adpo" else algorithm


class SpecError(ValueError):
    """A spec failed validation; ``errors`` holds one ``"field.path: message"`` line per problem."""

    def __init__(self, errors: list[str], source: str = "spec"):
        self.errors = errors
        self.source = source
        super().__init__(f"{source}: {len(errors)} error(s)\n" + "\n".join(f"  {e}" for e in errors))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _at_most(small: str, big: str, model: BaseModel) -> None:
    """``model.<small> <= model.<big>``, or a ValueError naming both."""
    a, b = getattr(model, small), getattr(model, big)
    if a > b:
        raise ValueError(f"{small} ({a}) must be <= {big} ({b})")


def _unique(values: list, field: str) -> list:
    from collections import Counter

    dupes = sorted(str(v) for v, n in Counter(values).items() if n > 1)
    if dupes:
        raise ValueError(f"duplicate {field}: {', '.join(dupes)} (each value may appear once)")
    return values


class PretrainParams(_Strict):
    """A competent starting policy: RLlib PPO on the clean env for ``env_steps`` steps, one per env
    and network size, kept in MLflow and found again by its key (env, budget, seed, network, PPO
    knobs) — the same runs as distillation teachers with equal settings, trained once, reused after."""

    env_steps: _count(1, 10**10) = 300_000
    seed: Seed = 0
    experiment: Annotated[str, Field(min_length=1)] = "adpo-ray-teachers"


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
        return _unique(v, "anchor modes")

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
    """The ``adpo:`` section: ADPO's loss knobs and the optimisation knobs every method shares
    (network updates, batches, GAE). PPO trials read it through the ``ppo:`` overrides
    (:meth:`ExperimentSpec.params_for`)."""

    loss: Literal["listwise", "plackett_luce", "pairwise", "dpo"] = "listwise"
    target: Literal["softmax", "kde", "hard"] = "softmax"
    list_source: Literal["auto", "actions", "batch"] = "auto"
    tau_anc: PosFloat = 1.0
    beta_q: PosFloat = 1.0
    list_size: _count(2, 4096) = 8
    lr: PosFloat = 3e-4
    entropy_coeff: NonNegFloat = 0.0
    vf_coeff: NonNegFloat = 0.5
    gamma: Annotated[float, Field(ge=0, le=1)] = 0.99
    lambda_: Annotated[float, Field(ge=0, le=1, alias="lambda")] = 0.95
    num_epochs: _count(1, 1000) = 4
    minibatch_size: _count(1, 1_000_000) = 128
    train_batch_size: _count(1, 10_000_000) = 512
    grad_clip: NonNegFloat = 0.5  # global-norm clipping; 0: none
    # the author's variants of the listwise loss (:mod:`adpo_ray.core.losses`); off by default
    #: ``list``: z-normalise the signal within each list before the target (``beta_q`` scale-free)
    target_norm: Literal["none", "list"] = "none"
    #: adaptive anchor temperature ``max(tau_min, tau_anc * (1 - tau_alpha * H(q) / log K))``; 0: off
    tau_alpha: Annotated[float, Field(ge=0, le=1)] = 0.0
    tau_min: PosFloat = 0.05
    #: centre the anchored logits by ``q`` before the softmax (shift-invariant: changes nothing)
    q_center: bool = False
    #: ``+ coeff * KL(policy || anchor)`` per state (exact, closed form)
    anchor_kl_coeff: NonNegFloat = 0.0

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)

    @model_validator(mode="after")
    def _batches(self) -> TrainParams:
        _at_most("minibatch_size", "train_batch_size", self)
        return self


def _optional(model: type[BaseModel], name: str, doc: str) -> type[BaseModel]:
    """``model`` with every field optional and ``None`` by default: a spec section whose unset
    knobs fall through to the defaults below it (field constraints and aliases kept)."""
    from pydantic import create_model

    fields = {}
    for n, f in model.model_fields.items():
        typ = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
        fields[n] = (typ | None, Field(None, alias=f.alias))
    out = create_model(name, __base__=_Strict, __doc__=doc, **fields)
    out.model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)
    out.model_rebuild(force=True)
    return out


#: The ``adpo:`` section of a spec: :class:`TrainParams` with every knob optional. A knob left out
#: takes the environment kind's default (:data:`KIND_DEFAULTS`), then :class:`TrainParams`'s.
TrainSection = _optional(TrainParams, "TrainSection", "The ``adpo:`` section: knobs left out take the env kind's defaults.")

#: The one source of each environment kind's tuned knobs, below the spec's ``adpo:``/``ppo:``
#: sections and ``env_overrides`` (:meth:`ExperimentSpec.params_for`). MuJoCo: ADPO as tuned on
#: clean Hopper (hopper_learning / hopper_search: lists of 8 transitions, ``beta_q: 2``,
#: ``tau_anc: 0.5``, lr 1e-3), PPO at its usual lr 3e-4, both with RLlib's MuJoCo batch
#: (2,048 steps, 10 epochs of minibatches of 64). A preset that departs from them says so in
#: ``departs_from_defaults`` (a test holds every preset to it).
KIND_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "mujoco": {
        "adpo": {"loss": "listwise", "target": "softmax", "tau_anc": 0.5, "beta_q": 2.0, "list_size": 8,
                 "lr": 1e-3, "num_epochs": 10, "minibatch_size": 64, "train_batch_size": 2048,
                 "entropy_coeff": 0.0, "vf_coeff": 0.5},
        "ppo": {"lr": 3e-4},
    },
    "bandit": {"adpo": {}, "ppo": {}},
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
    #: ``auto``: a GPU learner only where one was measured faster (:mod:`adpo_ray.core.devices`)
    #: and only on a cluster with GPUs; ``cpu``: never; ``gpu``: always.
    learner_device: Literal["auto", "cpu", "gpu"] = "auto"
    #: The GPU share of each GPU learner; 0 = chosen at launch so that a GPU node's CPUs all
    #: run trials (a whole GPU when the cluster is not known, e.g. a dry run without --cluster).
    num_gpus_per_learner: Annotated[float, Field(ge=0, le=8)] = 0.0
    #: ``fused``: ADPO's and PPO's learner run every epoch x minibatch in one loop on the device
    #: (:mod:`adpo_ray.rllib.fused`); ``rllib``: RLlib's own update loop (same math, slower).
    learner_update: Literal["fused", "rllib"] = "fused"
    #: ``torch.compile`` the fused path's minibatch loss: about 1.5x faster updates on CPU once
    #: compiled, for 10-30 s of compiling at the trial's start (pays for trials of more than a few
    #: hundred updates); needs a C++ compiler on the workers.
    learner_compile: bool = False
    #: At most this many trials at once; default: as many as the cluster fits at full scale.
    max_concurrent_trials: _count(1, 100_000) | None = None
    max_failures: Annotated[int, Field(ge=0, le=100)] = 2

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
    the ``adpo`` section with the ``ppo`` overrides), found again in MLflow by env, budget, seed,
    network and knobs — trained once, reused after."""

    env_steps: _count(1, 10**10) = 300_000
    seed: Seed = 0
    hidden_size: Hidden = 64
    experiment: Annotated[str, Field(min_length=1)] = "adpo-ray-teachers"


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
    adpo: dict[str, Any] = Field(default_factory=dict)


class ExperimentSpec(_Strict):
    """One grid of trials. ``scenarios: all`` means the twelve (``clean`` can be listed too)."""

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]
    environments: list[EnvName] = Field(min_length=1)
    scenarios: Literal["all"] | list[str] = "all"
    algorithms: list[Algorithm] = Field(default_factory=lambda: ["adpo"], min_length=1)
    anchors: Anchors = Field(default_factory=Anchors)
    hidden_sizes: list[Hidden] = Field(default_factory=lambda: [64], min_length=1, max_length=64)
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1, max_length=10_000)
    budget: Budget
    adpo: TrainSection = Field(default_factory=TrainSection)
    bandit: BanditParams = Field(default_factory=BanditParams)
    resources: Resources = Field(default_factory=Resources)
    tracking: Tracking = Field(default_factory=Tracking)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    env_overrides: dict[EnvName, EnvOverride] = Field(default_factory=dict)
    distill: DistillParams | None = None
    #: knobs of the ``adpo`` section that PPO trials (the baseline and distillation teachers) set
    #: differently, e.g. ``{lr: 0.0003}`` while ADPO runs at another learning rate
    ppo: dict[str, Any] = Field(default_factory=dict)
    #: knobs this spec sets away from :data:`KIND_DEFAULTS` on purpose, ``{adpo.<knob>: why}``
    #: (documentation that a test holds presets to; it changes no setting)
    departs_from_defaults: dict[str, Annotated[str, Field(min_length=1)]] = Field(default_factory=dict)
    #: knobs swept over, by dotted path: a list (a grid axis) or a distribution (with ``search``)
    sweep: dict[str, Any] = Field(default_factory=dict)
    #: a tuning search over the sweep (Tune search algorithm, metric, samples, early stopping)
    search: Search | None = None

    _with_values: dict[str, ExperimentSpec] = PrivateAttr(default_factory=dict)

    @field_validator("sweep")
    @classmethod
    def _sweep_values(cls, v: dict[str, Any]) -> dict[str, list | Distribution]:
        out: dict[str, list | Distribution] = {}
        for path, value in v.items():
            if isinstance(value, list):
                if not value:
                    raise ValueError(f"{path}: an empty list; give the values to try")
                out[path] = value
            elif isinstance(value, dict | Distribution):
                try:
                    out[path] = Distribution.model_validate(value)
                except ValidationError as e:
                    msgs = "; ".join(f"{_fmt_loc(x['loc']) + ': ' if x['loc'] else ''}{x['msg'].removeprefix('Value error, ')}"
                                     for x in e.errors())
                    raise ValueError(f"{path}: {msgs} (a distribution is one of uniform: [lo, hi], "
                                     "loguniform: [lo, hi], randint: [lo, hi], choice: [values])") from None
            else:
                raise ValueError(f"{path}: {value!r} is neither a list of values (a grid) nor a distribution "
                                 "such as {loguniform: [0.0001, 0.01]}")
        return out

    @field_validator("scenarios")
    @classmethod
    def _scenarios(cls, v: str | list[str]) -> str | list[str]:
        if v == "all":
            return v
        if not v:
            raise ValueError("empty list; give scenario names or 'all' for the twelve")
        for name in v:
            get_scenario(name)  # ValueError lists the allowed names
        return _unique(v, "scenarios")

    @field_validator("environments", "algorithms", "hidden_sizes", "seeds")
    @classmethod
    def _no_dupes(cls, v: list, info) -> list:
        return _unique(v, info.field_name)

    @model_validator(mode="after")
    def _combinations(self) -> ExperimentSpec:
        envs = set(self.environments)
        for env in self.env_overrides:
            if env not in envs:
                raise ValueError(f"env_overrides.{env}: not one of environments ({', '.join(self.environments)})")
            try:
                self.adpo_for(env)
            except ValidationError as e:
                msgs = "; ".join(f"{_fmt_loc(x['loc'])}: {x['msg']}" for x in e.errors())
                raise ValueError(f"env_overrides.{env}.adpo: {msgs}") from None
        for env in self.environments:
            for algo in ("adpo", "ppo"):
                try:
                    self.params_for(env, algo)
                except ValidationError as e:
                    msgs = "; ".join((f"{_fmt_loc(x['loc'])}: " if x["loc"] else "")
                                     + x["msg"].removeprefix("Value error, ") for x in e.errors())
                    where = "ppo" if algo == "ppo" and self.ppo else "adpo"
                    raise ValueError(f"{where}: {msgs} (with {env}'s defaults)") from None
        bad = [e for e in self.environments if self.list_source(e) == "actions" != ENVIRONMENTS[e]["list_source"]]
        if bad and "adpo" in self.algorithms:
            raise ValueError(
                f"adpo.list_source='actions' does not fit {', '.join(bad)}: 'actions' needs a "
                "discrete env with per-item feedback (PreferenceBandit); 'batch' fits any env; "
                "use 'auto' to pick each env's own"
            )
        if "dpo" in self.algorithms and not any(
            ENVIRONMENTS[e]["list_source"] == "actions" for e in envs
        ):
            raise ValueError(
                "algorithms: 'dpo' needs an environment with per-item preference feedback "
                "(PreferenceBandit); none is listed in environments"
            )
        self._check_departures()
        self._check_variants()
        self._check_init()
        self._check_distill()
        self._check_sweep()
        n = self.trial_count()
        if not n:
            raise ValueError("the grid is empty: no trial results from these axes")
        if n > MAX_TRIALS:
            raise ValueError(f"the grid has {n:,} trials; at most {MAX_TRIALS:,} (split it into several specs)")
        if self.grid_axes() and self.search is None:  # without a sweep, the grid's own axes tell trials apart
            check_identities(self.trials())
        return self

    def _check_departures(self) -> None:
        names = {f.alias or n for n, f in TrainParams.model_fields.items()}
        for path in self.departs_from_defaults:
            section, _, knob = path.partition(".")
            if section not in ("adpo", "ppo") or knob not in names:
                raise ValueError(f"departs_from_defaults.{path}: not a knob; use adpo.<knob> or ppo.<knob> "
                                 f"with a knob of {', '.join(sorted(names))}")

    def _check_variants(self) -> None:
        if not any(a in self.algorithms for a in ("adpo", "dpo")):
            return
        for env in self.environments:
            p = self.adpo_for(env)
            if p.loss != "listwise" and "adpo" in self.algorithms and (p.tau_alpha > 0 or p.q_center):
                raise ValueError(f"adpo.tau_alpha / adpo.q_center: the listwise loss's variants; adpo.loss is "
                                 f"{p.loss!r} (set tau_alpha: 0 and q_center: false, or loss: listwise)")
            if p.anchor_kl_coeff > 0 and self.distill is not None:
                raise ValueError("adpo.anchor_kl_coeff: online RL only; distillation students' anchor is the "
                                 "teacher (use kd for a KL to it)")

    def _check_init(self) -> None:
        init = self.anchors.init
        if init is None:
            return
        if self.distill is not None:
            raise ValueError("anchors.init: not with `distill` (students start from scratch, their anchor "
                             "is the teacher); remove one of them")
        if init.pretrain is not None:
            bad = [e for e in self.environments if ENVIRONMENTS[e]["kind"] != "mujoco"]
            if bad:
                raise ValueError(f"anchors.init.pretrain: MuJoCo envs only (PPO pretraining is evaluated on the "
                                 f"clean MuJoCo env); {', '.join(bad)} is not one; give anchors.init.checkpoint "
                                 "or split the spec")
        elif isinstance(init.checkpoint, dict):
            missing = [e for e in self.environments if e not in init.checkpoint]
            extra = [e for e in init.checkpoint if e not in self.environments]
            if missing or extra:
                raise ValueError("anchors.init.checkpoint: give one path per environment; "
                                 + (f"missing {', '.join(missing)}" if missing else f"{', '.join(extra)} not in environments"))
        elif len(self.environments) > 1:
            raise ValueError(f"anchors.init.checkpoint: one path for {len(self.environments)} environments; "
                             "give {env: path} for each (a policy fits one env's spaces)")

    def _check_distill(self) -> None:
        students = [a for a in self.algorithms if a in ("kd", "bc")]
        if self.distill is None:
            if students:
                raise ValueError(
                    f"algorithms: {', '.join(students)} are offline distillation students; add a "
                    "`distill:` section (teacher, dataset) or use adpo, ppo, dpo"
                )
            return
        wrong = [a for a in self.algorithms if a not in DISTILL_METHODS]
        if wrong:
            raise ValueError(
                f"algorithms: {', '.join(wrong)} cannot be a distillation student; allowed with "
                f"`distill`: {', '.join(DISTILL_METHODS)}"
            )
        not_mujoco = [e for e in self.environments if ENVIRONMENTS[e]["kind"] != "mujoco"]
        if not_mujoco:
            raise ValueError(
                f"environments: distillation needs MuJoCo envs (state restore); "
                f"{', '.join(not_mujoco)} is not one (allowed: HalfCheetah-v5, Hopper-v5)"
            )
        for env in self.environments:
            budget = self.budget_for(env)
            if budget.iterations is None or budget.env_steps is not None:
                where = f"env_overrides.{env}.budget" if env in self.env_overrides and self.env_overrides[env].budget else "budget"
                raise ValueError(
                    f"{where}: distillation students train offline; give `iterations` (student "
                    "iterations of distill.states_per_iteration states) and no `env_steps` "
                    "(the teacher's budget is distill.teacher.env_steps)"
                )

    def _check_sweep(self) -> None:
        if not self.sweep:
            if self.search is not None:
                raise ValueError("search: needs a `sweep:` section (the knobs to tune)")
            return
        if self.distill is not None:
            raise ValueError("sweep: not with `distill` (its teachers and datasets are made once per launch); "
                             "launch one spec per setting")
        for path, value in self.sweep.items():
            self._check_sweep_path(path)
            if isinstance(value, Distribution):
                if self.search is None:
                    raise ValueError(f"sweep.{path}: a distribution ({value.kind}) needs a `search:` section "
                                     "(its num_samples says how many draws); give a list for a grid")
                if self.search.algorithm == "grid":
                    raise ValueError(f"sweep.{path}: search.algorithm 'grid' takes lists only; use 'random' "
                                     "or 'optuna' for a distribution")
                candidates = distribution_bounds(value)
            else:
                candidates = value
            seen: dict[Any, Any] = {}
            for v in candidates:
                try:
                    self.with_values({path: v})
                except ValidationError as e:
                    msgs = "; ".join(x["msg"].removeprefix("Value error, ") for x in e.errors())
                    raise ValueError(f"sweep.{path}: value {v!r}: {msgs}") from None
                held = _swept_value(path, v)
                if isinstance(value, list) and _same(held) in seen:
                    raise ValueError(f"sweep.{path}: a value is listed twice ({seen[_same(held)]!r} and {v!r} "
                                     "are the same value for this knob); list each value once")
                seen[_same(held)] = v
        if self.search is not None:
            from adpo_ray.metrics import CURATED

            if self.search.metric not in CURATED:
                raise ValueError(f"search.metric {self.search.metric!r}: not a metric the trials report; "
                                 f"allowed: {', '.join(sorted(CURATED))}")
            base = self._base_count()
            if base != 1:
                raise ValueError(
                    f"search: tunes one setting, but environments x scenarios x methods x hidden_sizes x "
                    f"seeds give {base} trials; narrow them to one (sweep a knob to vary it)"
                )

    def _check_sweep_path(self, path: str) -> None:
        section = next((s for s in SWEEP_SECTIONS if path.startswith(s + ".")), None)
        hint = ("sweepable knobs are adpo.<knob>, ppo.<knob>, bandit.<knob> and "
                "anchors.params.<mode>.<parameter>")
        if section is None:
            raise ValueError(f"sweep.{path}: not a sweepable knob; {hint}")
        rest = path[len(section) + 1:]
        if section in ("adpo", "ppo", "bandit"):
            model = BanditParams if section == "bandit" else TrainParams
            names = {f.alias or n for n, f in model.model_fields.items()} | set(model.model_fields)
            if rest not in names:
                raise ValueError(f"sweep.{path}: {section} has no knob {rest!r}; allowed: "
                                 f"{', '.join(sorted(f.alias or n for n, f in model.model_fields.items()))}")
        else:
            mode, _, key = rest.partition(".")
            if mode not in self.anchors.modes or not key or "." in key:
                raise ValueError(f"sweep.{path}: use anchors.params.<mode>.<parameter> with a mode of "
                                 f"anchors.modes ({', '.join(self.anchors.modes)})")

    def with_values(self, values: dict[str, Any]) -> ExperimentSpec:
        """This spec with the knobs at ``values`` (dotted paths, as in ``sweep``) set, validated;
        without its sweep and search (the result is one point of them)."""
        from adpo_ray.sweeps import set_path

        key = json.dumps(values, sort_keys=True, default=str)
        if key not in self._with_values:
            data = self.model_dump(mode="json", by_alias=True, exclude={"sweep", "search"})
            for path, value in values.items():
                set_path(data, path, value, where="sweep")
            self._with_values[key] = ExperimentSpec.model_validate(data)
        return self._with_values[key]

    def grid_axes(self) -> dict[str, list[Any]]:
        """The sweep's grid axes (lists), in spec order; a search's Tune generator expands them."""
        return {k: v for k, v in self.sweep.items() if isinstance(v, list)}

    # -- derived -------------------------------------------------------------------------
    @property
    def scenario_names(self) -> list[str]:
        return [s.name for s in TWELVE] if self.scenarios == "all" else list(self.scenarios)

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    def adpo_for(self, env: str) -> TrainParams:
        """The ADPO/optimisation knobs of ``env``'s trials: :class:`TrainParams`'s defaults, then
        the env kind's (:data:`KIND_DEFAULTS`), the knobs set in ``adpo:``, and ``env_overrides``."""
        override = self.env_overrides.get(env)
        return _train_params(json.dumps([KIND_DEFAULTS[ENVIRONMENTS[env]["kind"]]["adpo"],
                                         self.adpo.model_dump(by_alias=True, exclude_none=True),
                                         override.adpo if override is not None else {}], sort_keys=True))

    def params_for(self, env: str, algorithm: str) -> TrainParams:
        """The optimisation knobs of one trial: :meth:`adpo_for`, and for PPO (the baseline, the
        pretrained starting policies and distillation teachers) the env kind's PPO defaults and
        the ``ppo`` section on top."""
        params = self.adpo_for(env)
        kind = KIND_DEFAULTS[ENVIRONMENTS[env]["kind"]]["ppo"]
        if algorithm != "ppo" or not (self.ppo or kind):
            return params
        return _train_params(json.dumps([params.model_dump(by_alias=True), kind, self.ppo], sort_keys=True))

    def budget_for(self, env: str) -> Budget:
        override = self.env_overrides.get(env)
        return override.budget if override is not None and override.budget is not None else self.budget

    def list_source(self, env: str) -> str:
        source = self.adpo_for(env).list_source
        return ENVIRONMENTS[env]["list_source"] if source == "auto" else source

    def knobs(self, trial: TrialSpec) -> TrialKnobs:
        """The effective settings of one trial: the single record that the RLlib config builders
        (:mod:`adpo_ray.rllib.factory`) and the MLflow params read (its sweep point applied)."""
        return _knobs(self.with_values(dict(trial.sweep)) if trial.sweep else self, trial)

    def trial_count(self) -> int:
        """How many trials the launch runs: :meth:`trials` x the sweep grid, or a search's samples."""
        axes = 1
        for values in self.grid_axes().values():
            axes *= len(values)
        if self.search is not None:
            return self.search.num_samples * (1 if self.search.algorithm == "optuna" else axes)
        return self._base_count() * axes

    def _base_count(self) -> int:
        """How many trials the grid's own axes give (before any sweep)."""
        per_env = {}
        for env in self.environments:
            methods = 0
            for algo in self.algorithms:
                if algo == "adpo":
                    methods += len(self.anchors.modes)
                elif algo != "dpo" or ENVIRONMENTS[env]["list_source"] == "actions":
                    methods += 1
            per_env[env] = methods
        return sum(per_env.values()) * len(self.scenario_names) * len(self.hidden_sizes) * len(self.seeds)

    def trials(self) -> list[TrialSpec]:
        """Every trial of the grid, in a stable order: each base trial at every point of the
        sweep's grid. With ``search``, the base trial alone (Tune samples its sweep points)."""
        base = self._base_trials()
        axes = self.grid_axes()
        if self.search is not None or not axes:
            return base
        points = [tuple(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
        return [TrialSpec(**{**t.as_dict(), "sweep": point}) for t in base for point in points]

    def _base_trials(self) -> list[TrialSpec]:
        out: list[TrialSpec] = []
        for env, scen, algo, hidden, seed in itertools.product(
            self.environments, self.scenario_names, self.algorithms, self.hidden_sizes, self.seeds
        ):
            if algo == "adpo":
                modes = self.anchors.modes
            elif algo == "dpo":
                if ENVIRONMENTS[env]["list_source"] != "actions":
                    continue  # DPO needs per-item preference labels: bandit only
                modes = ["fixed"]  # DPO's reference policy is the frozen initial policy
            else:
                modes = ["none"]
            for mode in modes:
                out.append(TrialSpec(env, scen, algo, mode, hidden, seed))
        return out


def _swept_value(path: str, value: Any) -> Any:
    """A sweep value as its knob holds it once validated, so that values written differently
    compare equal (``1`` and ``1.0`` of a float knob, ``'1e-3'`` and ``0.001``, ``1`` and ``true``
    of a switch). Anchor parameters reach their schedule as written."""
    section, _, knob = path.partition(".")
    model = {"adpo": TrainSection, "ppo": TrainSection, "bandit": BanditParams}.get(section)
    if model is None:
        return value
    name = next(n for n, f in model.model_fields.items() if knob in (n, f.alias))
    return getattr(model.model_validate({knob: value}), name)


def _same(value: Any) -> Any:
    """A key under which equal values meet (``1 == 1.0 == True``, as the knobs read them)."""
    try:
        hash(value)
        return value
    except TypeError:
        return json.dumps(value, sort_keys=True, default=str)


def check_identities(trials: list[TrialSpec]) -> None:
    """Raise ValueError unless every trial has its own identity: tag (MLflow run key, ``trial``
    tag, run name), method label within its coordinates, and folder name (:attr:`TrialSpec.dirname`).
    The error names both trials and their sweep points."""
    for what, ident in (("name", lambda t: t.tag), ("folder name", lambda t: t.dirname)):
        seen: dict[str, TrialSpec] = {}
        for t in trials:
            key = ident(t)
            other = seen.setdefault(key, t)
            if other is not t:
                raise ValueError(
                    f"sweep: two trials would have the same {what} {key!r}: the points ({_point(other)}) and "
                    f"({_point(t)}); their runs, folders and report groups would merge. List values that "
                    "differ as written (e.g. 0.5 and 0.25, not 0.5 and '0.5')"
                )


def _point(trial: TrialSpec) -> str:
    """A trial's sweep point with every value as Python writes it (``'0.5'`` is not ``0.5``)."""
    return ", ".join(f"{k}={v!r}" for k, v in trial.sweep) or "no sweep"


#: The longest trial folder name kept as it is: file systems take 255 bytes per path component,
#: and the margin leaves room for the suffixes that storage and sync tools add to a name.
MAX_DIRNAME_BYTES = 200
_DIRNAME_SAFE = re.compile(r"[A-Za-z0-9_.,=+-]+")


@dataclass(frozen=True)
class TrialSpec:
    """The coordinates of one trial in the grid."""

    env: str
    scenario: str
    algorithm: str
    anchor_mode: str
    hidden_size: int
    seed: int
    #: the trial's sweep point: ``((path, value), ...)`` in the spec's sweep order
    sweep: tuple = ()
    #: a search's sample (Tune's trial id): two samples may draw the same point
    sample: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sweep", tuple((str(k), v) for k, v in (self.sweep or ())))

    @classmethod
    def from_config(cls, config: dict[str, Any], trial_id: str = "") -> TrialSpec:
        """The trial of a Tune config: its coordinates, and the sweep point a search sampled
        (``trial_id``, Tune's, tells two samples of one point apart)."""
        trial = cls(**config["trial"])
        sampled = config.get("sweep") or {}
        if sampled:
            trial = cls(**{**trial.as_dict(), "sweep": (*trial.sweep, *sampled.items()), "sample": trial_id})
        return trial

    @property
    def base_method(self) -> str:
        """``adpo-dynamic``, ``adpo-fixed``, ``ppo``, ``dpo``, ``kd``, ``bc``."""
        return method_name(self.algorithm, self.anchor_mode)

    @property
    def method(self) -> str:
        """What a report compares: the base method, with the sweep point where there is one
        (``adpo-dynamic (adpo.lr=0.001)``)."""
        return f"{self.base_method} ({sweep_label(self.sweep)})" if self.sweep else self.base_method

    @property
    def tag(self) -> str:
        tag = f"{self.env}_{self.scenario}_{self.base_method}_h{self.hidden_size}_s{self.seed}"
        if self.sweep:
            tag += f"_{sweep_label(self.sweep)}"
        return f"{tag}_{self.sample}" if self.sample else tag

    @property
    def dirname(self) -> str:
        """The trial's folder name (Tune's trial folder, its MLflow run name and spool files): its
        :attr:`tag`; a tag longer than :data:`MAX_DIRNAME_BYTES` or with characters a folder name
        cannot hold (``/``, spaces...) is cut, those characters made ``_``, and a digest of the whole
        tag appended, so distinct tags keep distinct names. The full tag stays in MLflow."""
        tag = self.tag
        if len(tag.encode()) <= MAX_DIRNAME_BYTES and _DIRNAME_SAFE.fullmatch(tag):
            return tag
        digest = hashlib.sha256(tag.encode()).hexdigest()[:16]
        safe = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", tag)
        return f"{safe[:MAX_DIRNAME_BYTES - len(digest) - 1]}_{digest}"

    @property
    def noise_type(self) -> str:
        return SCENARIOS[self.scenario].noise_type

    @property
    def severity(self) -> str:
        return SCENARIOS[self.scenario].severity

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@lru_cache(maxsize=4096)
def _train_params(layers_json: str) -> TrainParams:
    """:class:`TrainParams` from layers of knobs, later layers winning (cached: every trial asks)."""
    data: dict[str, Any] = {}
    for layer in json.loads(layers_json):
        data.update(layer)
    return TrainParams.model_validate(data)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class CleanPPO:
    """A PPO policy trained on the clean env, kept in MLflow under ``key`` in ``experiment``: a
    distillation teacher, or the pretrained start of online trials (``anchors.init.pretrain``)."""

    env: str
    env_steps: int
    hidden_size: int
    seed: int
    experiment: str
    key: str

    @property
    def trial(self) -> TrialSpec:
        """The training run as a trial: PPO on the clean env, with this network and seed."""
        return TrialSpec(self.env, "clean", "ppo", "none", self.hidden_size, self.seed)


def clean_ppo(spec: ExperimentSpec, env: str, env_steps: int, hidden_size: int, seed: int, experiment: str) -> CleanPPO:
    """The identity of a clean-env PPO policy: env, budget, seed, network and the PPO knobs it
    trains with (and the evaluation episodes of its recorded return)."""
    knobs = spec.params_for(env, "ppo").model_dump(
        include={"lr", "gamma", "lambda_", "num_epochs", "minibatch_size", "train_batch_size",
                 "entropy_coeff", "vf_coeff", "grad_clip"}
    )
    knobs["evaluation_episodes"] = spec.evaluation.episodes
    if spec.evaluation.explore:
        knobs["evaluation_explore"] = True
    key = f"{env}_ppo_{env_steps}steps_h{hidden_size}_s{seed}_{_digest(knobs)}"
    return CleanPPO(env, env_steps, hidden_size, seed, experiment, key)


def teacher_of(spec: ExperimentSpec, env: str) -> CleanPPO:
    t = spec.distill.teacher
    return clean_ppo(spec, env, t.env_steps, t.hidden_size, t.seed, t.experiment)


def teacher_key(spec: ExperimentSpec, env: str) -> str:
    """A distillation teacher's identity: env, budget, seed, network and the PPO knobs it trains with."""
    return teacher_of(spec, env).key


def pretrained_of(spec: ExperimentSpec, env: str, hidden_size: int) -> CleanPPO | None:
    """The pretrained starting policy of ``env``'s online trials of ``hidden_size``, if any."""
    init = spec.anchors.init
    if init is None or init.pretrain is None or spec.distill is not None:
        return None
    p = init.pretrain
    return clean_ppo(spec, env, p.env_steps, hidden_size, p.seed, p.experiment)


def pretrained_policies(spec: ExperimentSpec) -> list[CleanPPO]:
    """Every pretrained starting policy the grid needs: one per env and network size."""
    out = [pretrained_of(spec, env, h) for env in spec.environments for h in spec.hidden_sizes]
    return [p for p in out if p is not None]


def init_slot(env: str, hidden_size: int) -> str:
    """Where a trial's pinned starting policy is found in the launch's ``init_runs``."""
    return f"{env}/h{hidden_size}"


def dataset_key(spec: ExperimentSpec, env: str, scenario: str) -> str:
    """A distillation dataset's identity (under its teacher's run): scenario and dataset knobs."""
    d = spec.distill.dataset
    return f"{scenario}_{d.states}x{d.candidates}_{_digest(d.key_fields())}"


@dataclass(frozen=True)
class TrialKnobs:
    """Everything one trial trains with, derived once from the spec by :meth:`ExperimentSpec.knobs`.

    The RLlib config builders read only this record, and :meth:`params` is what MLflow logs, so
    the params shown are the settings that trained. Knobs that do not apply to the trial's method
    are ``None`` (and not logged): ``clip_param`` is PPO's, the preference-loss knobs are ADPO's and
    DPO's, the batch and GAE knobs are online RL's, the ``distill_*`` knobs a student's."""

    trial: TrialSpec
    kind: str  # the env's kind: bandit | mujoco
    # budget
    iterations: int | None
    env_steps: int | None
    checkpoint_every: int
    # optimisation (every method)
    lr: float
    grad_clip: float | None
    # online RL (adpo, dpo, ppo)
    gamma: float | None = None
    lambda_: float | None = None
    num_epochs: int | None = None
    minibatch_size: int | None = None
    train_batch_size: int | None = None
    entropy_coeff: float | None = None
    vf_coeff: float | None = None
    clip_param: float | None = None  # ppo
    # the anchored preference loss (adpo, dpo; adpo students)
    loss: str | None = None
    target: str | None = None
    tau_anc: float | None = None
    beta_q: float | None = None
    list_source: str | None = None  # online only
    list_size: int | None = None  # online, list_source batch
    anchor_mode: str | None = None
    anchor_params: tuple[tuple[str, Any], ...] = ()
    # the author's loss variants (adpo; target_norm for dpo too); None where off
    target_norm: str | None = None
    tau_alpha: float | None = None
    tau_min: float | None = None
    q_center: bool | None = None
    anchor_kl_coeff: float | None = None  # online only
    #: where the trial starts (anchors.init): ``pretrain:<key>`` or a checkpoint path
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
        """The MLflow params of the trial: its coordinates and every knob that applies."""
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


def learner_gpus(res: Resources, hidden_size: int, minibatch: int) -> float:
    """The GPU share of a trial's learner (0: on CPU), by ``resources.learner_device``."""
    if res.learner_device == "cpu":
        return 0.0
    if res.learner_device == "gpu":
        return res.num_gpus_per_learner or 1.0
    # auto: the launch sets num_gpus_per_learner once it knows the cluster has GPUs
    return res.num_gpus_per_learner if res.num_gpus_per_learner and gpu_pays(hidden_size, minibatch) else 0.0


def _knobs(spec: ExperimentSpec, trial: TrialSpec) -> TrialKnobs:
    kind = ENVIRONMENTS[trial.env]["kind"]
    budget, res = spec.budget_for(trial.env), spec.resources
    student = spec.distill is not None and trial.algorithm in DISTILL_METHODS
    p = spec.params_for(trial.env, trial.algorithm)
    minibatch = spec.distill.minibatch_states if student else p.minibatch_size
    common: dict[str, Any] = dict(
        trial=trial, kind=kind, iterations=budget.iterations, env_steps=budget.env_steps,
        checkpoint_every=budget.checkpoint_every, lr=p.lr, grad_clip=p.grad_clip or None,
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
                          **_variants(p, p.loss))
        return TrialKnobs(**common)
    common["init"] = _init_label(spec, trial)
    common.update(
        gamma=p.gamma, lambda_=p.lambda_, num_epochs=p.num_epochs, minibatch_size=p.minibatch_size,
        train_batch_size=p.train_batch_size, entropy_coeff=p.entropy_coeff, vf_coeff=p.vf_coeff,
        learner_update=res.learner_update, learner_compile=res.learner_compile,
    )
    if trial.algorithm == "ppo":
        common["clip_param"] = 0.2
    elif trial.algorithm == "dpo":
        # DPO: hard pairwise labels, the frozen initial policy as reference, lists of all actions
        common.update(loss="dpo", target="hard", tau_anc=p.tau_anc, beta_q=p.beta_q,
                      list_source="actions", anchor_mode="fixed", **_variants(p, "dpo"))
    else:
        source = spec.list_source(trial.env)
        common.update(loss=p.loss, target=p.target, tau_anc=p.tau_anc, beta_q=p.beta_q, list_source=source,
                      list_size=p.list_size if source == "batch" else None, anchor_mode=trial.anchor_mode,
                      anchor_params=tuple(spec.anchors.schedule_params(trial.anchor_mode).items()),
                      **_variants(p, p.loss), anchor_kl_coeff=p.anchor_kl_coeff or None)
    return TrialKnobs(**common)


def _variants(p: TrainParams, loss: str) -> dict[str, Any]:
    """The author's loss variants a trial trains with (``None``: off, not logged)."""
    out: dict[str, Any] = {"target_norm": p.target_norm if p.target_norm != "none" else None}
    if loss == "listwise":
        if p.tau_alpha > 0:
            out.update(tau_alpha=p.tau_alpha, tau_min=p.tau_min)
        out["q_center"] = True if p.q_center else None
    return out


def _init_label(spec: ExperimentSpec, trial: TrialSpec) -> str | None:
    init = spec.anchors.init
    if init is None:
        return None
    if init.pretrain is not None:
        return "pretrain:" + pretrained_of(spec, trial.env, trial.hidden_size).key
    return init.checkpoint_for(trial.env)


def _fmt_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the field path ``loc`` (for 'allowed keys' hints)."""
    model: type[BaseModel] | None = ExperimentSpec
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return model
        options = [field.annotation, *get_args(field.annotation)]  # `Model | None` too
        model = next((a for a in options if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return model


def _format_errors(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith(("literal[", "list["))))
        if e["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            allowed = sorted(f.alias or n for n, f in parent.model_fields.items()) if parent else []
            lines.append(f"{_fmt_loc(loc)}: unknown key; allowed keys here: {', '.join(allowed)}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if not loc and re.match(r"^[A-Za-z_][\w.\[\]-]*: ", msg):  # a spec-wide check naming its field
            lines.append(msg)
            continue
        lines.append(f"{_fmt_loc(loc)}: {msg}")
    return list(dict.fromkeys(lines))


def parse_spec(data: Any, source: str = "spec") -> ExperimentSpec:
    """Validate a spec from a mapping; raise :class:`SpecError` listing every problem."""
    if not isinstance(data, dict):
        raise SpecError([f"(top level): expected a mapping of keys, got {type(data).__name__}"], source)
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(_format_errors(e), source) from None


def load_spec(path: str | Path, sets: list[str] | tuple[str, ...] = ()) -> ExperimentSpec:
    """Read and validate a YAML spec, with ``--set KEY=VALUE`` overrides applied first; raise
    :class:`SpecError` (never starts anything)."""
    from adpo_ray.sweeps import apply_sets

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError([f"file not found: {path}"], str(path)) from None
    except yaml.YAMLError as e:
        raise SpecError([f"(yaml): {e}"], str(path)) from None
    if sets:
        if not isinstance(data, dict):
            raise SpecError([f"(top level): expected a mapping of keys, got {type(data).__name__}"], str(path))
        try:
            data = apply_sets(data, list(sets))
        except ValueError as e:
            raise SpecError([str(e)], str(path)) from None
    return parse_spec(data, str(path) + (" with --set " + " ".join(sets) if sets else ""))
