"""Report plots (matplotlib, Agg backend): learning curves, per-scenario comparison and hidden-size
scaling. Every function writes one PNG and returns its path."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from adpo_ray.metrics import EVAL_OVER_TEACHER, EVAL_RETURN, KL_TEACHER  # noqa: E402
from adpo_ray.report.analysis import headline  # noqa: E402

DPI = 100
#: Legend labels wrap at this many characters: a sweep point's method label names every swept knob
#: (``adpo-dynamic (train.lr=0.003, adpo.beta_q=0.5, ...)``) and would otherwise be wider than
#: the figure.
LEGEND_WIDTH = 40


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _legend(ax) -> None:
    """The axes' legend, each label wrapped at :data:`LEGEND_WIDTH` characters."""
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, [textwrap.fill(label, LEGEND_WIDTH) for label in labels], fontsize=8)


def _finish(fig, ax, path: Path, *, title: str, ylabel: str, xlabel: str | None = None,
            grid_axis: str = "both") -> Path:
    """Labels, legend and grid of a single-axes chart, then save it."""
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _legend(ax)
    ax.grid(axis=grid_axis, alpha=0.3)
    return _save(fig, path)


def _methods(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["method"].unique())


def _colors(methods: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def learning_curves(trials: pd.DataFrame, curves: pd.DataFrame, env: str, out: Path) -> Path | None:
    """Mean headline metric over seeds per method, with a 95% band (mean +- 1.96 SEM), one panel
    per scenario (the largest hidden size when there are several)."""
    metric = headline(env)
    keep = ["trial", "env", "scenario", "method", "hidden_size"]
    sub = curves[curves["metric"] == metric].merge(trials[keep], on="trial")
    sub = sub[sub["env"] == env]
    if sub.empty:
        return None
    hidden = int(sub["hidden_size"].max())
    sub = sub[sub["hidden_size"] == hidden]
    scenarios = list(dict.fromkeys(trials[trials["env"] == env]["scenario"]))
    cols = min(4, len(scenarios))
    rows = math.ceil(len(scenarios) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), dpi=DPI, squeeze=False, sharey=True)
    colors = _colors(_methods(sub))
    for ax, scenario in zip(axes.flat, scenarios, strict=False):
        for method, g in sub[sub["scenario"] == scenario].groupby("method"):
            agg = g.groupby("env_steps")["value"].agg(["mean", "std", "count"])
            sem = (agg["std"].fillna(0) / np.sqrt(agg["count"])).to_numpy()
            x, y = agg.index.to_numpy(), agg["mean"].to_numpy()
            ax.plot(x, y, label=method, color=colors[method])
            ax.fill_between(x, y - 1.96 * sem, y + 1.96 * sem, alpha=0.2, color=colors[method])
        ax.set_title(scenario, fontsize=10)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(scenarios):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(metric)
    _legend(axes.flat[0])
    fig.suptitle(f"{env}: learning curves, hidden {hidden} (mean over seeds, 95% band)")
    return _save(fig, out / f"curves_{env}.png")


def scenario_comparison(groups: pd.DataFrame, env: str, out: Path) -> Path | None:
    """Final headline metric per scenario and method (mean over seeds and hidden sizes), with the
    95% bootstrap CI of each group as error bars (largest hidden size shown when several)."""
    sub = groups[groups["env"] == env]
    if sub.empty:
        return None
    sub = sub[sub["hidden_size"] == sub["hidden_size"].max()]
    scenarios = list(dict.fromkeys(sub["scenario"]))
    methods = _methods(sub)
    colors = _colors(methods)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(12, 5), dpi=DPI)
    x = np.arange(len(scenarios))
    for i, method in enumerate(methods):
        g = sub[sub["method"] == method].set_index("scenario").reindex(scenarios)
        mean = g["mean"].to_numpy()
        err = np.vstack([mean - g["ci_low"].to_numpy(), g["ci_high"].to_numpy() - mean])
        err = np.nan_to_num(np.clip(err, 0, None))
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, mean, width, yerr=err, capsize=2,
               label=method, color=colors[method])
    ax.set_xticks(x, scenarios, rotation=45, ha="right")
    return _finish(fig, ax, out / f"scenarios_{env}.png", ylabel=f"final {headline(env)}", grid_axis="y",
                   title=f"{env}: per-scenario comparison (hidden {int(sub['hidden_size'].max())}, 95% CI)")


def hidden_scaling(trials: pd.DataFrame, env: str, out: Path) -> Path | None:
    """Final headline metric against hidden size per method, pooled over scenarios (mean and
    95% band over trials)."""
    metric = headline(env)
    sub = trials[trials["env"] == env]
    if sub.empty or metric not in sub:
        return None
    methods = _methods(sub)
    colors = _colors(methods)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=DPI)
    for method in methods:
        agg = sub[sub["method"] == method].groupby("hidden_size")[metric].agg(["mean", "std", "count"])
        sem = (agg["std"].fillna(0) / np.sqrt(agg["count"])).to_numpy()
        ax.errorbar(agg.index, agg["mean"], yerr=1.96 * sem, marker="o", capsize=3, label=method, color=colors[method])
    ax.set_xscale("log", base=2)
    hidden = sorted(sub["hidden_size"].unique())
    ax.set_xticks(hidden, [str(h) for h in hidden])
    return _finish(fig, ax, out / f"hidden_{env}.png", xlabel="hidden size", ylabel=f"final {metric}",
                   title=f"{env}: hidden-size scaling (all scenarios)")


def distill_tradeoff(trials: pd.DataFrame, env: str, out: Path) -> Path | None:
    """Distillation students: final clean return against KL(teacher ‖ student), one point per
    trial (log KL axis); the teacher's return as a dashed line when known."""
    kl, ret = KL_TEACHER, EVAL_RETURN
    sub = trials[trials["env"] == env]
    if sub.empty or kl not in sub or ret not in sub or sub[kl].isna().all():
        return None
    methods = _methods(sub)
    colors = _colors(methods)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=DPI)
    for method in methods:
        m = sub[sub["method"] == method]
        ax.scatter(m[kl].clip(lower=1e-6), m[ret], label=method, color=colors[method], alpha=0.8)
    if EVAL_OVER_TEACHER in sub:
        ratio = sub[EVAL_OVER_TEACHER].replace(0, np.nan)
        teacher = (sub[ret] / ratio).dropna()
        if len(teacher):
            ax.axhline(float(teacher.median()), color="grey", ls="--", lw=1, label="teacher")
    ax.set_xscale("log")
    return _finish(fig, ax, out / f"distill_{env}.png", xlabel="KL(teacher ‖ student), held-out states",
                   ylabel=f"final {ret}", title=f"{env}: distillation, return vs KL to teacher")


def performance_profiles(profiles: dict[str, tuple], env: str, out: Path) -> Path | None:
    """The fraction of each method's runs scoring above tau (normalised scores), with its 95%
    stratified-bootstrap band (:func:`adpo_ray.report.ranking.performance_profiles`)."""
    if not profiles:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=DPI)
    colors = _colors(sorted(profiles))
    for method, (taus, frac, lo, hi) in profiles.items():
        ax.plot(taus, frac, label=method, color=colors[method])
        ax.fill_between(taus, lo, hi, color=colors[method], alpha=0.2)
    ax.set_ylim(-0.02, 1.02)
    return _finish(fig, ax, out / f"profiles_{env}.png", xlabel="normalised score tau",
                   ylabel="fraction of runs with score > tau", title=f"{env}: performance profiles")
