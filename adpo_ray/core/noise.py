"""The twelve noise scenarios (4 noise types x 3 severities) plus the ``clean`` reference.

Noise corrupts the *training signal only* (rewards, utilities, preference labels); evaluation
always uses the clean signal. Every number that defines a scenario lives in :data:`SEVERITY_TABLE`,
and every corruption is a pure function of ``(clean signal, scenario, seed)``.

Units: noise magnitudes are in units of the signal's natural scale (``scale`` argument, 1.0 for the
preference bandit whose utilities are standardised; environments pass their own reward scale).

* ``gaussian``      y + scale * sigma * N(0, 1), element-wise.
* ``heavy_tailed``  with probability ``p`` per element, y + scale * cauchy_scale * Cauchy(0, 1).
* ``flip``          with probability ``p`` per feedback event, y -> -y (a whole list flips
                    together: the preference order of that annotation is reversed).
* ``shift``         the signal is left untouched; the *inputs* move instead: bandit training
                    contexts are drawn around a shifted mean (``context_shift`` standard deviations
                    along a fixed direction) and MuJoCo dynamics are scaled per episode by factors
                    drawn from ``[1 - dynamics_range, 1 + dynamics_range]``. Evaluation is nominal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NOISE_TYPES: tuple[str, ...] = ("gaussian", "heavy_tailed", "flip", "shift")
SEVERITIES: tuple[str, ...] = ("low", "medium", "high")

#: The one table of concrete numbers behind every scenario.
SEVERITY_TABLE: dict[str, dict[str, dict[str, float]]] = {
    "gaussian": {
        "low": {"sigma": 0.25},
        "medium": {"sigma": 0.5},
        "high": {"sigma": 1.0},
    },
    "heavy_tailed": {
        "low": {"p": 0.05, "cauchy_scale": 2.0},
        "medium": {"p": 0.10, "cauchy_scale": 5.0},
        "high": {"p": 0.20, "cauchy_scale": 10.0},
    },
    "flip": {
        "low": {"p": 0.10},
        "medium": {"p": 0.20},
        "high": {"p": 0.35},
    },
    "shift": {
        "low": {"context_shift": 0.5, "dynamics_range": 0.1},
        "medium": {"context_shift": 1.0, "dynamics_range": 0.2},
        "high": {"context_shift": 2.0, "dynamics_range": 0.3},
    },
}


@dataclass(frozen=True)
class Scenario:
    """One noise scenario: a noise type at a severity with its concrete parameters."""

    name: str
    noise_type: str  # one of NOISE_TYPES, or "clean"
    severity: str  # one of SEVERITIES, or "none"
    params: dict[str, float] = field(default_factory=dict)

    @property
    def is_clean(self) -> bool:
        return self.noise_type == "clean"

    def corrupt(
        self,
        y: np.ndarray | float,
        rng: np.random.Generator | int | None,
        *,
        scale: float = 1.0,
        list_axis: bool = False,
    ) -> np.ndarray:
        """Return a corrupted copy of the clean signal ``y``.

        ``list_axis=True`` says the last axis of ``y`` is one feedback event's list of candidates
        (e.g. the K utilities of one bandit context): a ``flip`` then reverses the whole list.
        Otherwise every element is its own event. ``rng`` may be a seed, which makes this a pure
        function of its arguments.
        """
        return corrupt(y, self, rng, scale=scale, list_axis=list_axis)


def _scenario(noise_type: str, severity: str) -> Scenario:
    return Scenario(
        name=f"{noise_type}-{severity}",
        noise_type=noise_type,
        severity=severity,
        params=dict(SEVERITY_TABLE[noise_type][severity]),
    )


CLEAN = Scenario(name="clean", noise_type="clean", severity="none", params={})

#: The twelve scenarios, in table order (noise type major, severity minor).
TWELVE: tuple[Scenario, ...] = tuple(_scenario(t, s) for t in NOISE_TYPES for s in SEVERITIES)

#: Every known scenario by name: the twelve plus ``clean``.
SCENARIOS: dict[str, Scenario] = {CLEAN.name: CLEAN, **{s.name: s for s in TWELVE}}


def get_scenario(name: str) -> Scenario:
    """Look a scenario up by name (``clean`` or ``<type>-<severity>``)."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(
            f"unknown scenario {name!r}; allowed: {', '.join(SCENARIOS)}"
        ) from None


def corrupt(
    y: np.ndarray | float,
    scenario: Scenario | str,
    rng: np.random.Generator | int | None,
    *,
    scale: float = 1.0,
    list_axis: bool = False,
) -> np.ndarray:
    """Corrupt a clean signal according to ``scenario`` (see the module docstring)."""
    if isinstance(scenario, str):
        scenario = get_scenario(scenario)
    rng = np.random.default_rng(rng)
    y = np.asarray(y, dtype=np.float64)
    p: dict[str, Any] = scenario.params
    kind = scenario.noise_type
    if kind in ("clean", "shift"):
        return y.copy()
    if kind == "gaussian":
        return y + scale * p["sigma"] * rng.standard_normal(y.shape)
    if kind == "heavy_tailed":
        hit = rng.random(y.shape) < p["p"]
        return y + hit * (scale * p["cauchy_scale"] * rng.standard_cauchy(y.shape))
    if kind == "flip":
        event_shape = y.shape[:-1] if (list_axis and y.ndim >= 1) else y.shape
        flip = rng.random(event_shape) < p["p"]
        if list_axis and y.ndim >= 1:
            flip = flip[..., None]
        return np.where(flip, -y, y)
    raise ValueError(f"unknown noise type {kind!r}; allowed: clean, {', '.join(NOISE_TYPES)}")


def corrupt_rows(
    y: np.ndarray,
    scenarios: Sequence[Scenario],
    rngs: Sequence[np.random.Generator],
    *,
    list_axis: bool = False,
) -> np.ndarray:
    """:func:`corrupt` of every row of ``y``, each with its own scenario and generator: row ``i``
    of the result is ``corrupt(y[i], scenarios[i], rngs[i], list_axis=list_axis)``, bit for bit,
    and each generator is left where that call leaves it. The draws are made row by row in row
    order (so generators shared between rows draw as the calls one after another would); the
    arithmetic runs once per noise type over its rows, not once per row (a bandit pack steps
    128 sub-envs at a time).

    Args:
        y: ``(n, ...)`` clean signals, row ``i`` one call's ``y``.
        scenarios: ``n`` scenarios (:class:`Scenario`, not names).
        rngs: ``n`` numpy generators (not seeds).
        list_axis: as in :func:`corrupt`, for every row.

    Returns:
        ``(n, ...)`` float64.

    Raises:
        ValueError: ``scenarios`` or ``rngs`` not of ``n`` entries; an unknown noise type.
    """
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if len(scenarios) != n or len(rngs) != n:
        raise ValueError(f"corrupt_rows: {n} rows need {n} scenarios and {n} generators, "
                         f"got {len(scenarios)} and {len(rngs)}")
    shape = y.shape[1:]
    lists = list_axis and len(shape) >= 1
    event_shape = shape[:-1] if lists else shape
    draws = np.empty(y.shape)  # gaussian rows: N(0, 1); heavy-tailed rows: U(0, 1)
    cauchy = np.empty(y.shape)  # heavy-tailed rows: Cauchy(0, 1)
    events = np.empty((n, *event_shape))  # flip rows: U(0, 1) per event
    rows: dict[str, list[int]] = {"gaussian": [], "heavy_tailed": [], "flip": []}
    for i, (scenario, rng) in enumerate(zip(scenarios, rngs, strict=True)):
        kind = scenario.noise_type
        if kind not in ("clean", *NOISE_TYPES):
            raise ValueError(f"unknown noise type {kind!r}; allowed: clean, {', '.join(NOISE_TYPES)}")
        if kind == "gaussian":
            rng.standard_normal(out=draws[i:i + 1])
        elif kind == "heavy_tailed":
            rng.random(out=draws[i:i + 1])
            cauchy[i] = rng.standard_cauchy(shape)
        elif kind == "flip":
            events[i] = rng.random(event_shape)
        if kind in rows:
            rows[kind].append(i)

    def column(at: list[int], name: str, ndim: int) -> np.ndarray:
        """The rows' scenario parameter ``name``, broadcast over ``ndim`` axes of a row."""
        return np.asarray([scenarios[i].params[name] for i in at]).reshape(len(at), *(1,) * ndim)

    out = y.copy()  # clean and shift rows stay as they are
    # each noise type's rows at once, with corrupt's operations in corrupt's order
    if at := rows["gaussian"]:
        out[at] = y[at] + column(at, "sigma", len(shape)) * draws[at]
    if at := rows["heavy_tailed"]:
        hit = draws[at] < column(at, "p", len(shape))
        out[at] = y[at] + hit * (column(at, "cauchy_scale", len(shape)) * cauchy[at])
    if at := rows["flip"]:
        flip = events[at] < column(at, "p", len(event_shape))
        out[at] = np.where(flip[..., None] if lists else flip, -y[at], y[at])
    return out


def scenario_rows() -> list[dict[str, str]]:
    """The scenario table as rows (used by ``adpo-ray scenarios`` and the README)."""
    rows = []
    for s in (*TWELVE, CLEAN):
        params = ", ".join(f"{k}={v:g}" for k, v in s.params.items()) or "-"
        rows.append(
            {
                "scenario": s.name,
                "type": s.noise_type,
                "severity": s.severity,
                "params": params,
                "in_twelve": "yes" if not s.is_clean else "reference",
            }
        )
    return rows
