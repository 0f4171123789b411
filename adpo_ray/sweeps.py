"""Sweeps, searches and command-line overrides of a spec (no Ray import).

* ``sweep:`` maps a knob's dotted path (``train.lr``, ``adpo.beta_q``, ``ppo.lr``, ``bandit.num_items``,
  ``anchors.params.ema.rate``) to a grid (a list) or a distribution
  (``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``, ``{randint: [lo, hi]}``, both ends
  included, or ``{choice: [a, b, ...]}``).
* ``search:`` runs a tuning search over the sweep with a Tune search algorithm (``random`` /
  ``grid``: Tune's default generator; ``optuna``: Optuna through Tune) and optionally an ASHA
  scheduler that stops poor trials early.
* ``--set KEY=VALUE`` overrides any spec field by its dotted path before validation.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Distribution", "Search", "Asha", "SWEEP_SECTIONS", "apply_sets", "set_path", "sweep_label",
           "format_value", "distribution_bounds"]

#: Spec sections whose knobs can be swept, and how a path into them looks.
SWEEP_SECTIONS = ("train", "adpo", "ppo", "ppo_kl", "bandit", "anchors.params")
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(_Strict):
    """One of ``uniform`` / ``loguniform`` / ``randint`` (``[low, high]``, both included) or
    ``choice`` (a list of values)."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one(self) -> Distribution:
        given = [k for k in DISTRIBUTIONS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(DISTRIBUTIONS)} (got {', '.join(given) or 'none'})")
        kind = given[0]
        if kind != "choice":
            low, high = getattr(self, kind)
            if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
                raise ValueError(f"{kind}: [low, high] with low < high, got [{low}, {high}]")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform: both ends must be > 0, got [{low}, {high}]")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DISTRIBUTIONS if getattr(self, k) is not None)


def distribution_bounds(value: Distribution) -> list[Any]:
    """The values that bound a distribution (checked against the knob's own limits)."""
    return list(value.choice) if value.kind == "choice" else list(getattr(value, value.kind))


class Asha(_Strict):
    """ASHA early stopping: every trial runs ``grace_period`` iterations, then at each rung only
    the best ``1 / reduction_factor`` go on."""

    grace_period: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    reduction_factor: Annotated[float, Field(gt=1, le=100)] = 2.0


class Search(_Strict):
    """A tuning run over the sweep: which search algorithm, what it optimises, how many samples."""

    algorithm: Literal["random", "grid", "optuna"] = "random"
    metric: str = "eval/return_mean"
    mode: Literal["max", "min"] = "max"
    num_samples: Annotated[int, Field(ge=1, le=100_000)] = 10
    asha: Asha | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None  # the search algorithm's own seed


def set_path(data: dict, path: str, value: Any, *, where: str = "--set") -> None:
    """Set ``data[a][b][c] = value`` for ``path`` ``a.b.c``, creating sections as needed; the
    keys of ``sweep`` are dotted paths themselves (``sweep.train.lr`` sets ``sweep['train.lr']``)."""
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise ValueError(f"{where} {path!r}: not a dotted path such as train.lr")
    if parts[0] == "sweep" and len(parts) > 1:
        parts = ["sweep", ".".join(parts[1:])]
    node = data
    for i, key in enumerate(parts[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            raise ValueError(f"{where} {path}: {'.'.join(parts[:i + 1])} is a value ({child!r}), not a section")
        node = child
    node[parts[-1]] = value


def apply_sets(data: dict, sets: list[str]) -> dict:
    """``data`` with every ``KEY=VALUE`` of ``sets`` applied (VALUE is read as YAML: numbers,
    lists, booleans, strings); the result is validated like the file."""
    for item in sets:
        path, eq, raw = item.partition("=")
        if not eq:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.lr=0.001")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({e})") from None
        set_path(data, path.strip(), value)
    return data


def sweep_label(values: dict[str, Any] | tuple) -> str:
    """``train.lr=0.001,adpo.beta_q=2``: a sweep point, compact and exact (every value written so
    that it reads back as itself: distinct points never share a label)."""
    items = values.items() if isinstance(values, dict) else values
    return ",".join(f"{k}={format_value(v)}" for k, v in items)


def format_value(v: Any) -> str:
    """A sweep value as a label writes it: a float in the shortest text that reads back as the
    same float (Python's ``repr``: ``0.0030001``, ``1e-05``), without a trailing ``.0`` (``2``);
    anything else as ``str``."""
    if isinstance(v, float):
        text = repr(v)
        return text[:-2] if text.endswith(".0") else text
    return str(v)
