"""The whole spec: :class:`ExperimentSpec`, its checks across sections, the layering of each
trial's knobs (built-in defaults, the env kind's, the spec's sections, ``env_overrides``, and
``ppo:`` for PPO trials), and a spec's sweep points (:meth:`ExperimentSpec.with_values`)."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from adpo_ray.core.choices import DISTILL_METHODS
from adpo_ray.core.noise import TWELVE, get_scenario
from adpo_ray.envs import ENVIRONMENTS
from adpo_ray.spec.knobs import TrialKnobs, derive_knobs
from adpo_ray.spec.packs import AUTO_PACK_SIZE, group_packs
from adpo_ray.spec.sections import (
    KIND_DEFAULTS,
    PL_KNOBS,
    TRAIN_KNOBS,
    ADPOParams,
    ADPOSection,
    Algorithm,
    Anchors,
    BanditParams,
    Budget,
    DistillParams,
    EnvName,
    EnvOverride,
    Evaluation,
    Hidden,
    PPOKLParams,
    Resources,
    Seed,
    Tracking,
    TrainParams,
    TrainSection,
    _Strict,
    fmt_loc,
    unique,
)
from adpo_ray.spec.trials import TrialSpec, base_count, check_identities, grid_trials
from adpo_ray.sweeps import SWEEP_SECTIONS, Distribution, Search, distribution_bounds

#: The most trials one grid may have.
MAX_TRIALS = 200_000
#: The sections whose knobs a trial reads, by the model that holds them once layered.
KNOB_SECTIONS: dict[str, type[BaseModel]] = {"train": TrainParams, "adpo": ADPOParams, "ppo": TrainParams}
#: The algorithms whose optimisation knobs take the ``ppo:`` overrides: PPO and the KL-penalty
#: policy gradient, which share the PPO family's tuned settings (e.g. MuJoCo's lr 3e-4).
PPO_FAMILY = ("ppo", "ppo_kl")


def _knob_names(model: type[BaseModel]) -> list[str]:
    return sorted(f.alias or n for n, f in model.model_fields.items())


def _move_train_knobs(data: dict) -> tuple[dict, list[str]]:
    """``data`` with the shared optimisation knobs that an older spec wrote under ``adpo:`` moved to
    ``train:`` (also in ``env_overrides``, sweep paths and ``departs_from_defaults``), and the paths
    moved. A knob given in both places is a ValueError naming both."""
    data = dict(data)
    moved: list[str] = []

    def move(section: dict, where: str) -> dict:
        adpo = section.get("adpo")
        if not isinstance(adpo, dict) or not TRAIN_KNOBS & set(adpo):
            return section
        if not isinstance(section.get("train") or {}, dict):
            return section  # the section's own validation names the error
        section = dict(section)
        train = dict(section.get("train") or {})
        adpo = dict(adpo)
        for knob in [k for k in adpo if k in TRAIN_KNOBS]:
            if knob in train:
                raise ValueError(f"{where}adpo.{knob}: also given as {where}train.{knob}; keep "
                                 f"{where}train.{knob} alone (`adpo:` holds ADPO's loss knobs)")
            train[knob] = adpo.pop(knob)
            moved.append(f"{where}adpo.{knob}")
        section.update(adpo=adpo, train=train)
        return section

    data = move(data, "")
    overrides = data.get("env_overrides")
    if isinstance(overrides, dict):
        data["env_overrides"] = {env: move(o, f"env_overrides.{env}.") if isinstance(o, dict) else o
                                 for env, o in overrides.items()}
    for field in ("sweep", "departs_from_defaults"):
        paths = data.get(field)
        if not isinstance(paths, dict):
            continue
        renamed = {}
        for path, value in paths.items():
            section, _, knob = str(path).partition(".")
            if section == "adpo" and knob in TRAIN_KNOBS:
                moved.append(f"{field}.{path}")
                path = f"train.{knob}"
                if path in paths:
                    raise ValueError(f"{field}.adpo.{knob}: also given as {field}.{path}; keep {field}.{path} alone")
            renamed[path] = value
        data[field] = renamed
    return data, moved


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
    #: the optimisation knobs every method shares
    train: TrainSection = Field(default_factory=TrainSection)
    #: ADPO's loss knobs
    adpo: ADPOSection = Field(default_factory=ADPOSection)
    bandit: BanditParams = Field(default_factory=BanditParams)
    resources: Resources = Field(default_factory=Resources)
    tracking: Tracking = Field(default_factory=Tracking)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    env_overrides: dict[EnvName, EnvOverride] = Field(default_factory=dict)
    distill: DistillParams | None = None
    #: knobs of the ``train`` section that PPO trials (the baseline, pretrained starts and
    #: distillation teachers) set differently, e.g. ``{lr: 0.0003}`` while ADPO runs at another
    ppo: dict[str, Any] = Field(default_factory=dict)
    #: the KL-penalty baseline's loss knobs (``algorithms: [ppo_kl]``)
    ppo_kl: PPOKLParams = Field(default_factory=PPOKLParams)
    #: knobs this spec sets away from :data:`KIND_DEFAULTS` on purpose, ``{<section>.<knob>: why}``
    #: (documentation that a test holds presets to; it changes no setting)
    departs_from_defaults: dict[str, Annotated[str, Field(min_length=1)]] = Field(default_factory=dict)
    #: knobs swept over, by dotted path: a list (a grid axis) or a distribution (with ``search``)
    sweep: dict[str, Any] = Field(default_factory=dict)
    #: a tuning search over the sweep (Tune search algorithm, metric, samples, early stopping)
    search: Search | None = None

    _with_values: dict[str, ExperimentSpec] = PrivateAttr(default_factory=dict)
    _moved: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _older_layout(cls, data: Any, handler) -> ExperimentSpec:
        moved: list[str] = []
        if isinstance(data, dict):
            data, moved = _move_train_knobs(data)
        spec = handler(data)
        spec._moved = tuple(moved)
        return spec

    @property
    def deprecations(self) -> list[str]:
        """What this spec writes in the older layout, one line each (empty: nothing): shared
        optimisation knobs under ``adpo:``, which mean the same under ``train:``."""
        if not self._moved:
            return []
        return [f"{', '.join(self._moved)}: the optimisation knobs every method shares now live in "
                "`train:` (and sweep / departs_from_defaults paths `train.<knob>`); `adpo:` keeps ADPO's "
                "loss knobs. They were read as train.<knob>; move them, as `adpo:` stops taking them in "
                "the next release"]

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
                    msgs = "; ".join(f"{fmt_loc(x['loc']) + ': ' if x['loc'] else ''}{x['msg'].removeprefix('Value error, ')}"
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
        return unique(v, "scenarios")

    @field_validator("environments", "algorithms", "hidden_sizes", "seeds")
    @classmethod
    def _no_dupes(cls, v: list, info) -> list:
        return unique(v, info.field_name)

    @model_validator(mode="after")
    def _combinations(self) -> ExperimentSpec:
        envs = set(self.environments)
        for env in self.env_overrides:
            if env not in envs:
                raise ValueError(f"env_overrides.{env}: not one of environments ({', '.join(self.environments)})")
            for section, layered in (("train", lambda e: self.train_for(e, "adpo")), ("adpo", self.adpo_for)):
                try:
                    layered(env)
                except ValidationError as e:
                    msgs = "; ".join(f"{fmt_loc(x['loc'])}: {x['msg']}" for x in e.errors())
                    raise ValueError(f"env_overrides.{env}.{section}: {msgs}") from None
        for env in self.environments:
            for section, layered in (("train", lambda e: self.train_for(e, "adpo")),
                                     ("ppo", lambda e: self.train_for(e, "ppo")), ("adpo", self.adpo_for)):
                try:
                    layered(env)
                except ValidationError as e:
                    msgs = "; ".join((f"{fmt_loc(x['loc'])}: " if x["loc"] else "")
                                     + x["msg"].removeprefix("Value error, ") for x in e.errors())
                    where = "train" if section == "ppo" and not self.ppo else section
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
        if self.search is not None and self.resources.pack not in (1, "auto"):
            raise ValueError(f"resources.pack: {self.resources.pack} with `search:`; a search runs each sample as "
                             "its own trial (its scheduler stops them one by one): use resources.pack 1 or auto")
        n = self.trial_count()
        if not n:
            raise ValueError("the grid is empty: no trial results from these axes")
        if n > MAX_TRIALS:
            raise ValueError(f"the grid has {n:,} trials; at most {MAX_TRIALS:,} (split it into several specs)")
        if self.grid_axes() and self.search is None:  # without a sweep, the grid's own axes tell trials apart
            check_identities(self.trials())
        return self

    def _check_departures(self) -> None:
        for path in self.departs_from_defaults:
            section, _, knob = path.partition(".")
            model = KNOB_SECTIONS.get(section)
            if model is None or knob not in _knob_names(model):
                raise ValueError(f"departs_from_defaults.{path}: not a knob; use train.<knob> or ppo.<knob> with "
                                 f"a knob of {', '.join(_knob_names(TrainParams))}, or adpo.<knob> with a knob "
                                 f"of {', '.join(_knob_names(ADPOParams))}")

    def _check_variants(self) -> None:
        if not any(a in self.algorithms for a in ("adpo", "dpo")):
            return
        for env in self.environments:
            p = self.adpo_for(env)
            if "adpo" in self.algorithms:
                if p.loss != "listwise" and (p.tau_alpha > 0 or p.q_center):
                    raise ValueError(f"adpo.tau_alpha / adpo.q_center: the listwise loss's variants; adpo.loss is "
                                     f"{p.loss!r} (set tau_alpha: 0 and q_center: false, or loss: listwise)")
                pl_set = [k for k, off in PL_KNOBS.items() if getattr(p, k) != off]
                if p.loss != "plackett_luce" and pl_set:
                    raise ValueError(f"adpo.{', adpo.'.join(pl_set)}: the plackett_luce loss's knobs; adpo.loss is "
                                     f"{p.loss!r} (remove them, or set loss: plackett_luce)")
                clamps = [k for k in ("clip_log_ratio", "clip_score") if getattr(p, k) > 0]
                if p.loss not in ("listwise", "plackett_luce") and clamps:
                    raise ValueError(f"adpo.{', adpo.'.join(clamps)}: the listwise losses' clamps (listwise, "
                                     f"plackett_luce); adpo.loss is {p.loss!r} (set them to 0)")
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
            return  # one pretrained policy per env and network size, on any env
        if isinstance(init.checkpoint, dict):
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
            base = base_count(self)
            if base != 1:
                raise ValueError(
                    f"search: tunes one setting, but environments x scenarios x methods x hidden_sizes x "
                    f"seeds give {base} trials; narrow them to one (sweep a knob to vary it)"
                )

    def _check_sweep_path(self, path: str) -> None:
        section = next((s for s in SWEEP_SECTIONS if path.startswith(s + ".")), None)
        hint = ("sweepable knobs are train.<knob>, adpo.<knob>, ppo.<knob>, ppo_kl.<knob>, bandit.<knob> and "
                "anchors.params.<mode>.<parameter>")
        if section is None:
            raise ValueError(f"sweep.{path}: not a sweepable knob; {hint}")
        rest = path[len(section) + 1:]
        if section in ("train", "adpo", "ppo", "ppo_kl", "bandit"):
            model = {"bandit": BanditParams, "ppo_kl": PPOKLParams}.get(section) or KNOB_SECTIONS[section]
            names = {f.alias or n for n, f in model.model_fields.items()} | set(model.model_fields)
            if rest not in names:
                raise ValueError(f"sweep.{path}: {section} has no knob {rest!r}; allowed: "
                                 f"{', '.join(_knob_names(model))}")
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

    def _kind(self, env: str) -> dict[str, dict[str, Any]]:
        return KIND_DEFAULTS[ENVIRONMENTS[env]["kind"]]

    def train_for(self, env: str, algorithm: str) -> TrainParams:
        """The optimisation knobs of ``algorithm``'s trials on ``env``: :class:`TrainParams`'s
        defaults, then the env kind's (:data:`KIND_DEFAULTS`), ``train:``, ``env_overrides.<env>.train``,
        and for PPO (the baseline, pretrained starts and distillation teachers) the kind's PPO
        defaults and ``ppo:`` on top (also for ``ppo_kl``, :data:`PPO_FAMILY`). Raises pydantic's ValidationError for an invalid mix."""
        override = self.env_overrides.get(env)
        layers = [self._kind(env)["train"], self.train.model_dump(by_alias=True, exclude_none=True),
                  override.train if override is not None else {}]
        if algorithm in PPO_FAMILY:
            layers += [self._kind(env)["ppo"], self.ppo]
        return _layered("train", json.dumps(layers, sort_keys=True))

    def adpo_for(self, env: str) -> ADPOParams:
        """The preference-loss knobs of ``env``'s trials: :class:`ADPOParams`'s defaults, then the
        env kind's, ``adpo:`` and ``env_overrides.<env>.adpo``."""
        override = self.env_overrides.get(env)
        layers = [self._kind(env)["adpo"], self.adpo.model_dump(by_alias=True, exclude_none=True),
                  override.adpo if override is not None else {}]
        return _layered("adpo", json.dumps(layers, sort_keys=True))

    def budget_for(self, env: str) -> Budget:
        """``env``'s budget: ``env_overrides.<env>.budget``, else ``budget``."""
        override = self.env_overrides.get(env)
        return override.budget if override is not None and override.budget is not None else self.budget

    def list_source(self, env: str) -> str:
        """Where ``env``'s ADPO lists come from (``auto`` resolved): ``actions`` or ``batch``."""
        source = self.adpo_for(env).list_source
        return ENVIRONMENTS[env]["list_source"] if source == "auto" else source

    def knobs(self, trial: TrialSpec) -> TrialKnobs:
        """The effective settings of one trial, its sweep point applied: the single record that
        the trainable, the RLlib config builders (:mod:`adpo_ray.rllib.factory`) and the MLflow
        params read."""
        return derive_knobs(self.with_values(dict(trial.sweep)) if trial.sweep else self, trial)

    def trial_count(self) -> int:
        """How many trials the launch runs: :meth:`trials` (a grid's points that train alike are
        one trial), or a search's samples. A grid too large to run is counted without listing it."""
        axes = 1
        for values in self.grid_axes().values():
            axes *= len(values)
        if self.search is not None:
            return self.search.num_samples * (1 if self.search.algorithm == "optuna" else axes)
        full = base_count(self) * axes
        return len(self.trials()) if axes > 1 and full <= MAX_TRIALS else full

    def grid_size(self) -> int:
        """The grid's axes multiplied out: base trials x sweep points, before the points that
        train alike are merged (:meth:`trial_count` is what runs)."""
        axes = 1
        for values in self.grid_axes().values():
            axes *= len(values)
        return base_count(self) * axes

    def trials(self) -> list[TrialSpec]:
        """Every trial of the grid, in a stable order: each base trial at every point of the
        sweep's grid where it trains differently (a sweep over ``adpo.loss`` runs a PPO trial once;
        :func:`~adpo_ray.spec.trials.grid_trials`). With ``search``, the base trial alone (Tune
        samples its sweep points)."""
        return grid_trials(self)

    def packs(self) -> list[list[TrialSpec]]:
        """The grid's trials as Tune runs them, one list per Tune trial: a pack's members, or one
        trial alone (``resources.pack`` 1, a search, a trial a pack cannot run: see
        :func:`~adpo_ray.spec.packs.group_packs`). Every trial once, in a stable order."""
        size = AUTO_PACK_SIZE if self.resources.pack == "auto" else self.resources.pack
        if size == 1 or self.search is not None:
            return [[t] for t in self.trials()]
        return group_packs(self.trials(), self.knobs, size)


@lru_cache(maxsize=4096)
def _layered(section: str, layers_json: str) -> TrainParams | ADPOParams:
    """A section's knobs from layers of them, later layers winning (cached: every trial asks)."""
    data: dict[str, Any] = {}
    for layer in json.loads(layers_json):
        data.update(layer)
    return KNOB_SECTIONS[section].model_validate(data)


def _swept_value(path: str, value: Any) -> Any:
    """A sweep value as its knob holds it once validated, so that values written differently
    compare equal (``1`` and ``1.0`` of a float knob, ``'1e-3'`` and ``0.001``, ``1`` and ``true``
    of a switch). Anchor parameters reach their schedule as written."""
    section, _, knob = path.partition(".")
    model = {"train": TrainSection, "adpo": ADPOSection, "ppo": TrainSection, "ppo_kl": PPOKLParams,
             "bandit": BanditParams}.get(section)
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
