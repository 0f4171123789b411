"""Statistics for comparing methods over seeds (numpy / scipy only).

* :func:`summarize`: mean, std, IQM (25% trimmed mean) and a 95% bootstrap CI of the mean.
* :func:`relative_improvement`: ``(mean(a) - mean(b)) / |mean(b)|`` with a bootstrap CI (paired
  when both samples come from the same seeds).
* :func:`probability_of_improvement`: ``P(A > B)`` (ties count 1/2) with a bootstrap CI — over all
  pairs (the Mann–Whitney statistic / ``n_a * n_b``), or over matched pairs when paired.
* :func:`verdict`: how a measured interval stands against a claimed range.

Bootstrap CIs use :func:`scipy.stats.bootstrap` (percentile method, fixed seed so reports are
reproducible). With fewer than 2 values, or a statistic undefined on some resample (a relative
improvement over a baseline resampled to mean 0), a CI is ``(nan, nan)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 2000
SEED = 0


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float
    iqm: float
    ci_low: float
    ci_high: float


def iqm(x) -> float:
    """Interquartile mean: the mean of the middle 50% (``scipy.stats.trim_mean(x, 0.25)``)."""
    x = np.asarray(x, dtype=float)
    return float(stats.trim_mean(x, 0.25)) if len(x) else float("nan")


def bootstrap_ci(data: tuple, statistic, *, paired: bool = False, vectorized: bool = True) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(*data)``; ``(nan, nan)`` if any sample has < 2 values
    or the statistic is undefined (NaN) on some resample; ``(value, value)`` if every sample is
    constant (a degenerate bootstrap distribution)."""
    data = tuple(np.asarray(d, dtype=float) for d in data)
    if any(len(d) < 2 for d in data):
        return float("nan"), float("nan")
    if all(np.all(d == d[0]) for d in data):
        value = float(statistic(*data)) if not vectorized else float(statistic(*data, axis=-1))
        return value, value
    with warnings.catch_warnings():
        # NaN resamples are answered below; scipy's warning about them speaks of BCa, not used here
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap(
            data,
            statistic,
            paired=paired,
            vectorized=vectorized,
            confidence_level=CONFIDENCE,
            n_resamples=N_RESAMPLES,
            method="percentile",
            rng=np.random.default_rng(SEED),
        )
    if not np.all(np.isfinite(res.bootstrap_distribution)):
        return float("nan"), float("nan")
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(x) -> Summary:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan, nan)
    low, high = bootstrap_ci((x,), np.mean)
    std = float(x.std(ddof=1)) if len(x) > 1 else float("nan")
    return Summary(len(x), float(x.mean()), std, iqm(x), low, high)


#: A baseline mean below this in magnitude counts as zero: no ratio to it is defined.
ZERO_BASELINE = 1e-12


def _rel(a, b, axis=-1):
    """The relative improvement per resample; NaN where the baseline's mean is ~0."""
    mb = np.mean(b, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(mb) < ZERO_BASELINE, np.nan, (np.mean(a, axis=axis) - mb) / np.abs(mb))


def relative_improvement(a, b, *, paired: bool = False) -> tuple[float, float, float]:
    """``(mean(a) - mean(b)) / |mean(b)|`` and its 95% percentile bootstrap CI, as
    ``(value, ci_low, ci_high)`` (fractions: 0.1 is +10%).

    The ratio is undefined where the baseline's mean is ~0 (``|mean| < ZERO_BASELINE``), and
    then it is NaN, never infinite:

    * the value and the CI are NaN when ``mean(b)`` itself is ~0 (or a sample is empty);
    * the CI alone is NaN when some bootstrap resample of ``b`` has a mean of ~0 — e.g. a
      baseline with zeros, where a resample can draw only its zeros: the ratio is unbounded over
      the resampling distribution, so no interval of it is meaningful (compare the difference of
      means instead). A baseline whose zero-mean resamples are too rare to be drawn keeps its CI.

    The CI is also NaN with fewer than 2 values per sample. ``paired``: resample matched pairs
    (same seed and setting); the samples must then have equal sizes (ValueError otherwise)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0 or abs(np.mean(b)) < ZERO_BASELINE:
        return float("nan"), float("nan"), float("nan")
    value = float(_rel(a, b))
    if paired and len(a) != len(b):
        raise ValueError(f"paired samples need equal sizes, got {len(a)} and {len(b)}")
    low, high = bootstrap_ci((a, b), _rel, paired=paired)
    return value, low, high


def _poi(a, b, axis=-1):
    a = np.expand_dims(a, -1)
    b = np.expand_dims(b, -2)
    return np.mean((a > b) + 0.5 * (a == b), axis=(-2, -1))


def _poi_paired(a, b, axis=-1):
    return np.mean((a > b) + 0.5 * (a == b), axis=axis)


def probability_of_improvement(a, b, *, paired: bool = False) -> tuple[float, float, float]:
    """``P(A > B) + P(A = B) / 2`` and its 95% bootstrap CI: over all pairs (independent samples),
    or over the matched pairs ``(a_i, b_i)`` (same seed and setting) when ``paired``."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan"), float("nan")
    if paired:
        if len(a) != len(b):
            raise ValueError(f"paired samples need equal sizes, got {len(a)} and {len(b)}")
        value = float(_poi_paired(a, b))
        low, high = bootstrap_ci((a, b), _poi_paired, paired=True)
        return value, low, high
    value = float(_poi(a, b))
    low, high = bootstrap_ci((a, b), _poi)
    return value, low, high


def minimum_detectable_effect(a, b, *, paired: bool = False, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest relative improvement ``(mean(a) - mean(b)) / |mean(b)|`` that a two-sided
    t-test at level ``alpha`` detects with probability ``power``, given these samples' measured
    variance: ``(t_{1-alpha/2} + t_{power}) * SE / |mean(b)|``, with ``SE`` of the paired
    differences (``n - 1`` degrees of freedom) or of the difference of means (Welch's). NaN when
    a sample has fewer than two values."""
    from scipy.stats import t as student_t

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2 or abs(np.mean(b)) < 1e-12:
        return float("nan")
    if paired:
        if len(a) != len(b):
            raise ValueError(f"paired samples need equal sizes, got {len(a)} and {len(b)}")
        se = np.std(a - b, ddof=1) / np.sqrt(len(a))
        df = len(a) - 1
    else:
        va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
        se = np.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb > 0 else len(a) + len(b) - 2
    mult = student_t.ppf(1 - alpha / 2, df) + student_t.ppf(power, df)
    return float(mult * se / abs(np.mean(b)))


SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_MEASURED = "supported", "contradicted", "inconclusive", "not measured"


def verdict(ci_low: float, ci_high: float, claimed_low: float) -> str:
    """A directional claim "the effect is at least ``claimed_low`` (> 0)" against a 95% CI.

    * supported: the CI excludes 0 on the positive side and reaches the claimed size;
    * contradicted: the whole CI lies below the claimed size (a smaller, null or reversed effect);
    * inconclusive: otherwise (the CI includes 0 but also the claimed size).
    """
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return INCONCLUSIVE
    if ci_high < claimed_low:
        return CONTRADICTED
    if ci_low > 0:
        return SUPPORTED
    return INCONCLUSIVE
