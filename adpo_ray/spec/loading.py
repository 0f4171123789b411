"""Reading a spec: YAML and ``--set`` overrides in, a validated
:class:`~adpo_ray.spec.experiment.ExperimentSpec` or a :class:`SpecError` out, with every problem
on one ``field.path: message`` line (nothing starts before the whole file validates)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from adpo_ray.spec.experiment import ExperimentSpec
from adpo_ray.spec.sections import fmt_loc


class SpecError(ValueError):
    """A spec failed validation; ``errors`` holds one ``"field.path: message"`` line per problem."""

    def __init__(self, errors: list[str], source: str = "spec"):
        self.errors = errors
        self.source = source
        super().__init__(f"{source}: {len(errors)} error(s)\n" + "\n".join(f"  {e}" for e in errors))


class SpecDeprecationWarning(FutureWarning):
    """A spec in a layout that is still read, and will not be for long (shown to users by default,
    once per message)."""


_TOLD: dict = {}


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


def format_errors(err: ValidationError) -> list[str]:
    """A spec's validation errors as ``field.path: message`` lines (unknown keys with the keys
    allowed there), each once."""
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith(("literal[", "list["))))
        if e["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            allowed = sorted(f.alias or n for n, f in parent.model_fields.items()) if parent else []
            lines.append(f"{fmt_loc(loc)}: unknown key; allowed keys here: {', '.join(allowed)}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if not loc and re.match(r"^[A-Za-z_][\w.\[\]-]*: ", msg):  # a spec-wide check naming its field
            lines.append(msg)
            continue
        lines.append(f"{fmt_loc(loc)}: {msg}")
    return list(dict.fromkeys(lines))


def parse_spec(data: Any, source: str = "spec") -> ExperimentSpec:
    """Validate a spec from a mapping; raise :class:`SpecError` listing every problem. A spec in
    the older layout is read, with a :class:`SpecDeprecationWarning` naming what to move."""
    if not isinstance(data, dict):
        raise SpecError([f"(top level): expected a mapping of keys, got {type(data).__name__}"], source)
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_errors(e), source) from None
    for line in spec.deprecations:
        # told as the spec's own warning (its file, no line of this module's source), once per
        # process and message under Python's default filter
        warnings.warn_explicit(line, SpecDeprecationWarning, filename=source, lineno=0, module=__name__,
                               registry=_TOLD)
    return spec


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
