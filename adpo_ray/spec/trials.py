"""Trials: the coordinates of one trial (:class:`TrialSpec`), how a spec's axes and sweep enumerate
them, the method names reports and MLflow use, and the check that every trial has its own
identity (:func:`check_identities`)."""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from adpo_ray.core.noise import SCENARIOS
from adpo_ray.envs import ENVIRONMENTS
from adpo_ray.sweeps import sweep_label


def method_name(algorithm: str, anchor_mode: str | None) -> str:
    """A trial's method as reports and MLflow tags name it: ``adpo-<anchor_mode>`` for ADPO
    (``adpo-dynamic``, ``adpo-fixed``...), else the algorithm (``ppo``, ``dpo``, ``kd``, ``bc``)."""
    return f"adpo-{anchor_mode}" if algorithm == "adpo" else algorithm


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
        return folder_name(self.tag)

    @property
    def noise_type(self) -> str:
        return SCENARIOS[self.scenario].noise_type

    @property
    def severity(self) -> str:
        return SCENARIOS[self.scenario].severity

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def folder_name(tag: str) -> str:
    """``tag`` as a folder name: as it is when it fits :data:`MAX_DIRNAME_BYTES` and holds only
    ``A-Za-z0-9_.,=+-``; else cut, other characters made ``_``, and a digest of the whole tag
    appended, so distinct tags keep distinct names."""
    if len(tag.encode()) <= MAX_DIRNAME_BYTES and _DIRNAME_SAFE.fullmatch(tag):
        return tag
    digest = hashlib.sha256(tag.encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", tag)
    return f"{safe[:MAX_DIRNAME_BYTES - len(digest) - 1]}_{digest}"


def pack_dirname(members: list[TrialSpec]) -> str:
    """A pack's Tune trial name and folder: ``pack<K>_<its first member's tag>`` (members are in
    one pack only, so the first member's tag tells packs apart; no trial tag starts with
    ``pack``), shortened as :func:`folder_name` does."""
    return folder_name(f"pack{len(members)}_{members[0].tag}")


def trials_of(config: dict[str, Any], trial_id: str = "") -> list[TrialSpec]:
    """The trials a Tune trial's ``config`` runs: a pack's members (``trials``), or its one trial
    (``trial``, see :meth:`TrialSpec.from_config`)."""
    if "trials" in config:
        return [TrialSpec(**t) for t in config["trials"]]
    return [TrialSpec.from_config(config, trial_id)]


def unit_name(config: dict[str, Any], trial_id: str = "") -> str:
    """The Tune trial name and folder of a Tune ``config``: a pack's (several ``trials``), else its
    one trial's :attr:`TrialSpec.dirname`."""
    members = trials_of(config, trial_id)
    return pack_dirname(members) if len(members) > 1 else members[0].dirname


def _anchor_modes(spec, env: str, algorithm: str) -> list[str]:
    """The anchor modes of ``algorithm``'s trials on ``env`` (empty: no such trial)."""
    if algorithm == "adpo":
        return list(spec.anchors.modes)
    if algorithm == "dpo":
        # DPO needs per-item preference labels (bandit only); its reference is the frozen initial policy
        return ["fixed"] if ENVIRONMENTS[env]["list_source"] == "actions" else []
    return ["none"]


def base_trials(spec) -> list[TrialSpec]:
    """Every trial of an :class:`~adpo_ray.spec.experiment.ExperimentSpec`'s own axes
    (environments x scenarios x methods x hidden sizes x seeds), before any sweep, in a stable order."""
    out: list[TrialSpec] = []
    for env, scen, algo, hidden, seed in itertools.product(
        spec.environments, spec.scenario_names, spec.algorithms, spec.hidden_sizes, spec.seeds
    ):
        for mode in _anchor_modes(spec, env, algo):
            out.append(TrialSpec(env, scen, algo, mode, hidden, seed))
    return out


def base_count(spec) -> int:
    """How many trials :func:`base_trials` gives, without making them."""
    methods = sum(len(_anchor_modes(spec, env, algo)) for env in spec.environments for algo in spec.algorithms)
    return methods * len(spec.scenario_names) * len(spec.hidden_sizes) * len(spec.seeds)


def grid_trials(spec) -> list[TrialSpec]:
    """Every trial a launch runs: each base trial at every point of the sweep's grid that trains
    it differently (:func:`_distinct_points`). With ``search``, the base trial alone (Tune samples
    its sweep points)."""
    base = base_trials(spec)
    axes = spec.grid_axes()
    if spec.search is not None or not axes:
        return base
    shape = [len(values) for values in axes.values()]
    combos = list(itertools.product(*(range(n) for n in shape)))
    labels: dict[tuple, list[tuple[int, ...]]] = {}
    out = []
    for t in base:
        # which points differ depends on the method, env and network, not on scenario or seed
        method = (t.env, t.algorithm, t.anchor_mode, t.hidden_size)
        if method not in labels:
            labels[method] = _distinct_points(spec, t, axes, combos)
        for label in labels[method]:
            point = tuple((path, axes[path][i]) for path, i in zip(axes, label, strict=True) if i is not None)
            out.append(TrialSpec(**{**t.as_dict(), "sweep": point}))
    return out


def _distinct_points(spec, base: TrialSpec, axes: dict[str, list], combos: list[tuple[int, ...]]) -> list[tuple]:
    """The sweep points (value indices per axis, ``None``: the axis left out of the trial's point)
    at which ``base`` trains differently. Points that give it the same knobs are one trial, the
    first in sweep order: a sweep over ``adpo.loss`` runs a PPO trial once, as PPO reads no
    ``adpo:`` knob. Each kept point names the axes of one value and those whose other values
    change the trial's knobs there; if two kept points would then read the same, every point
    names every axis."""
    def settings(combo: tuple[int, ...]) -> str:
        point = tuple((path, axes[path][i]) for path, i in zip(axes, combo, strict=True))
        knobs = spec.knobs(TrialSpec(**{**base.as_dict(), "sweep": point}))
        return repr([(f.name, getattr(knobs, f.name)) for f in fields(knobs) if f.name != "trial"])

    of = {combo: settings(combo) for combo in combos}
    kept: dict[str, tuple[int, ...]] = {}
    for combo in combos:
        kept.setdefault(of[combo], combo)
    labels = []
    for key, combo in kept.items():
        labels.append(tuple(
            i if len(values) == 1 or any(of[combo[:a] + (j,) + combo[a + 1:]] != key for j in range(len(values)))
            else None
            for a, (i, values) in enumerate(zip(combo, axes.values(), strict=True))))
    if len(set(labels)) < len(labels):
        return list(kept.values())
    return labels


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
