"""Every method against every other, across scenarios (rliable-style aggregates).

A *task* is one scenario at one hidden size of one env; a method's score on a task is the final
headline metric of a finished trial (one per seed). Scores are min-max normalised per task over
all finished trials of the launch (0 = the task's worst trial, 1 = its best), so tasks of
different scale weigh alike. Every CI is a percentile bootstrap that resamples trials *within*
each task (stratified), as rliable does.

* :func:`ranking`: mean rank of each method over the tasks where every method ran (1 = best);
* :func:`aggregate_iqm`: IQM of each method's normalised scores over all its tasks;
* :func:`poi_matrix`: P(row beats column), the average over tasks of P(X > Y) (ties 1/2);
* :func:`performance_profiles`: the fraction of a method's runs whose normalised score exceeds
  each threshold tau, with a CI band.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata, trim_mean

from adpo_ray.report.analysis import finished, headline
from adpo_ray.report.stats import CONFIDENCE, N_RESAMPLES, SEED

TASK = ["scenario", "hidden_size"]
NORMALISATION = ("scores min-max normalised per task (env x scenario x hidden size) over every finished trial "
                 "of the launch: 0 = the task's worst trial, 1 = its best")


def _alpha() -> float:
    return (1 - CONFIDENCE) / 2


def task_scores(trials: pd.DataFrame, env: str) -> dict[tuple, dict[str, np.ndarray]]:
    """``{task: {method: normalised scores}}`` of one env's finished trials."""
    sub = finished(trials)
    sub = sub[sub["env"] == env]
    metric = headline(env)
    if metric not in sub:
        return {}
    sub = sub.dropna(subset=[metric])
    out: dict[tuple, dict[str, np.ndarray]] = {}
    for task, g in sub.groupby(TASK, sort=False):
        lo, hi = g[metric].min(), g[metric].max()
        norm = (g[metric] - lo) / (hi - lo) if hi > lo else g[metric] * 0 + 0.5
        out[task] = {m: norm[g["method"] == m].to_numpy(float) for m in dict.fromkeys(g["method"])}
    return out


def _resampled_means(x: np.ndarray, rng: np.random.Generator, b: int) -> np.ndarray:
    return x[rng.integers(0, len(x), (b, len(x)))].mean(axis=1)


def ranking(trials: pd.DataFrame, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> pd.DataFrame:
    """Per env: each method's mean rank over the tasks where every method of the env ran."""
    rows = []
    for env in dict.fromkeys(trials["env"]):
        tasks = task_scores(trials, env)
        methods = sorted({m for t in tasks.values() for m in t})
        full = [t for t in tasks.values() if all(m in t and len(t[m]) for m in methods)]
        if len(methods) < 2 or not full:
            continue
        rng = np.random.default_rng(seed)
        point = np.mean([rankdata([-t[m].mean() for m in methods]) for t in full], axis=0)
        boot = np.mean([rankdata(-np.stack([_resampled_means(t[m], rng, n_resamples) for m in methods], axis=1), axis=1)
                        for t in full], axis=0)
        lo, hi = np.quantile(boot, [_alpha(), 1 - _alpha()], axis=0)
        for i, m in enumerate(methods):
            rows.append({"env": env, "method": m, "tasks": len(full), "mean_rank": point[i],
                         "ci_low": lo[i], "ci_high": hi[i]})
    frame = pd.DataFrame(rows)
    return frame.sort_values(["env", "mean_rank"]).reset_index(drop=True) if not frame.empty else frame


def _iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return trim_mean(x, 0.25, axis=axis)


def aggregate_iqm(trials: pd.DataFrame, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> pd.DataFrame:
    """Per env and method: IQM of the normalised scores pooled over the method's tasks, with a
    stratified bootstrap CI."""
    rows = []
    for env in dict.fromkeys(trials["env"]):
        tasks = task_scores(trials, env)
        for m in sorted({m for t in tasks.values() for m in t}):
            parts = [t[m] for t in tasks.values() if m in t and len(t[m])]
            if not parts:
                continue
            rng = np.random.default_rng(seed)
            boot = _iqm(np.concatenate([p[rng.integers(0, len(p), (n_resamples, len(p)))] for p in parts], axis=1))
            lo, hi = np.quantile(boot, [_alpha(), 1 - _alpha()])
            rows.append({"env": env, "method": m, "tasks": len(parts), "runs": sum(map(len, parts)),
                         "iqm": float(_iqm(np.concatenate(parts))), "ci_low": lo, "ci_high": hi})
    frame = pd.DataFrame(rows)
    return frame.sort_values(["env", "iqm"], ascending=[True, False]).reset_index(drop=True) if not frame.empty else frame


def _poi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + P(X = Y) / 2 over all pairs; the last axis holds the samples (batched)."""
    gt = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    eq = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return gt + eq / 2


def poi_matrix(trials: pd.DataFrame, env: str, n_resamples: int = N_RESAMPLES,
               seed: int = SEED) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """P(row method beats column method): the mean over the tasks both ran of P(X > Y), and its
    95% CI; three method x method frames (point, low, high)."""
    tasks = task_scores(trials, env)
    methods = sorted({m for t in tasks.values() for m in t})
    point = pd.DataFrame(np.nan, index=methods, columns=methods)
    low, high = point.copy(), point.copy()
    rng = np.random.default_rng(seed)
    for a in methods:
        for b in methods:
            shared = [t for t in tasks.values() if a in t and b in t and len(t[a]) and len(t[b])]
            if not shared:
                continue
            point.loc[a, b] = np.mean([_poi(t[a], t[b]) for t in shared])
            boot = np.mean([_poi(t[a][rng.integers(0, len(t[a]), (n_resamples, len(t[a])))],
                                 t[b][rng.integers(0, len(t[b]), (n_resamples, len(t[b])))]) for t in shared], axis=0)
            low.loc[a, b], high.loc[a, b] = np.quantile(boot, [_alpha(), 1 - _alpha()])
    return point, low, high


def performance_profiles(trials: pd.DataFrame, env: str, taus: np.ndarray | None = None,
                         n_resamples: int = N_RESAMPLES, seed: int = SEED) -> dict[str, tuple]:
    """``{method: (taus, fraction of runs with score > tau, CI low, CI high)}``."""
    taus = np.linspace(0, 1, 51) if taus is None else np.asarray(taus, float)
    tasks = task_scores(trials, env)
    out = {}
    for m in sorted({m for t in tasks.values() for m in t}):
        parts = [t[m] for t in tasks.values() if m in t and len(t[m])]
        if not parts:
            continue
        pooled = np.concatenate(parts)
        frac = (pooled[:, None] > taus[None, :]).mean(axis=0)
        rng = np.random.default_rng(seed)
        boot = np.concatenate([p[rng.integers(0, len(p), (n_resamples, len(p)))] for p in parts], axis=1)
        boot_frac = (boot[:, :, None] > taus[None, None, :]).mean(axis=1)
        lo, hi = np.quantile(boot_frac, [_alpha(), 1 - _alpha()], axis=0)
        out[m] = (taus, frac, lo, hi)
    return out
