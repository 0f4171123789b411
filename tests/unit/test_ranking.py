"""Every method against every other: ranks, aggregate IQM, probability-of-improvement matrix and
performance profiles, on tables whose answers are known (exact where they can be)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import trim_mean

from adpo_ray.report import ranking as rk
from adpo_ray.report.build import build_report
from adpo_ray.report.data import GridData

METHODS = {"adpo-fixed": 0.40, "adpo-dynamic": 0.50, "adpo-ema": 0.45, "adpo-kl_triggered": 0.48, "ppo": 0.30, "dpo": 0.20}


def trials(seeds: int = 4, scenarios=("clean", "flip-high", "gaussian-low"), offsets=METHODS) -> pd.DataFrame:
    rows = []
    for scenario in scenarios:
        for seed in range(seeds):
            for method, value in offsets.items():
                algo, mode = ("adpo", method[5:]) if method.startswith("adpo") else (method, "none")
                rows.append({"trial": f"{scenario}_{method}_{seed}", "env": "PreferenceBandit", "scenario": scenario,
                             "noise_type": scenario.split("-")[0], "severity": "high", "algorithm": algo,
                             "anchor_mode": mode, "method": method, "hidden_size": 64, "seed": seed,
                             "status": "FINISHED", "eval/winmass": value + 0.01 * seed, "env_steps": 1000.0})
    return pd.DataFrame(rows)


def test_normalised_scores_per_task():
    tasks = rk.task_scores(trials(), "PreferenceBandit")
    assert len(tasks) == 3
    for scores in tasks.values():
        pooled = np.concatenate(list(scores.values()))
        assert pooled.min() == 0.0 and pooled.max() == 1.0
        # dpo's seed 0 is the worst trial (0.20), dynamic's seed 3 the best (0.53)
        assert scores["dpo"][0] == 0.0 and scores["adpo-dynamic"][3] == 1.0
        assert scores["adpo-fixed"][0] == pytest.approx((0.40 - 0.20) / (0.53 - 0.20))


def test_ranking_is_the_known_order_with_tight_cis():
    r = rk.ranking(trials())
    assert list(r["method"]) == ["adpo-dynamic", "adpo-kl_triggered", "adpo-ema", "adpo-fixed", "ppo", "dpo"]
    assert list(r["mean_rank"]) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0] and (r["tasks"] == 3).all()
    # the gaps (0.02-0.1) beat the seed spread (0.03) only for well separated methods
    dpo = r[r["method"] == "dpo"].iloc[0]
    assert dpo["ci_low"] == dpo["ci_high"] == 6.0
    dyn = r[r["method"] == "adpo-dynamic"].iloc[0]
    assert 1.0 == dyn["ci_low"] <= dyn["ci_high"] <= 2.0


def test_ranking_skips_tasks_a_method_did_not_run():
    t = trials()
    t = t[~((t["scenario"] == "clean") & (t["method"] == "ppo"))]
    assert (rk.ranking(t)["tasks"] == 2).all()


def test_aggregate_iqm_exact_point_and_ordered():
    t = trials()
    iqm = rk.aggregate_iqm(t).set_index("method")
    tasks = rk.task_scores(t, "PreferenceBandit")
    pooled = np.concatenate([s["ppo"] for s in tasks.values()])
    assert iqm.loc["ppo", "iqm"] == pytest.approx(trim_mean(pooled, 0.25))
    assert iqm.loc["ppo", "runs"] == 12 and iqm.loc["ppo", "tasks"] == 3
    assert (iqm["ci_low"] <= iqm["iqm"] + 1e-12).all() and (iqm["iqm"] <= iqm["ci_high"] + 1e-12).all()
    assert iqm["iqm"].idxmax() == "adpo-dynamic" and iqm["iqm"].idxmin() == "dpo"


def test_poi_matrix_known_pairs():
    point, low, high = rk.poi_matrix(trials(), "PreferenceBandit")
    assert point.loc["adpo-dynamic", "dpo"] == 1.0 and point.loc["dpo", "adpo-dynamic"] == 0.0
    assert low.loc["adpo-dynamic", "dpo"] == high.loc["adpo-dynamic", "dpo"] == 1.0
    for m in METHODS:
        assert point.loc[m, m] == 0.5  # a method ties itself
    # dynamic (0.50 .. 0.53) vs kl_triggered (0.48 .. 0.51), 4 seeds per task: of the 16 pairs,
    # 13 above (2 + 3 + 4 + 4) and 2 tied (0.50 = 0.50, 0.51 = 0.51), on every task
    assert point.loc["adpo-dynamic", "adpo-kl_triggered"] == pytest.approx((13 + 2 / 2) / 16)
    assert (point + point.T).round(12).eq(1.0).all().all()


def test_performance_profiles_fractions():
    prof = rk.performance_profiles(trials(), "PreferenceBandit", taus=[0.0, 0.5, 0.99])
    taus, frac, lo, hi = prof["dpo"]
    assert frac[0] == pytest.approx(9 / 12)  # each task's worst trial (dpo seed 0) scores exactly 0
    assert frac[2] == 0.0 and prof["adpo-dynamic"][1][0] == 1.0
    assert (lo <= frac + 1e-12).all() and (frac <= hi + 1e-12).all()


def test_report_ranks_every_method(tmp_path):
    """A launch with four anchor modes, PPO and DPO: every method in the ranking, the matrix and the
    profiles, and each against the reference."""
    t = trials()
    files = build_report(GridData(t, pd.DataFrame(columns=["trial", "env_steps", "metric", "value"]), "synthetic"),
                         tmp_path, reference="ppo")
    md = files["report.md"].read_text()
    section = md.split("## Ranking of every method")[1].split("## ")[0]
    matrix = md.split("## Probability of improvement: PreferenceBandit")[1].split("## ")[0]
    versus = md.split("## Every method against ppo")[1].split("## ")[0]
    for method in METHODS:
        assert method in section and method in matrix
        if method != "ppo":
            assert f"| {method} " in versus or f"{method} |" in versus
    assert files["profiles_PreferenceBandit.png"].stat().st_size > 10_000
    assert "min-max normalised per task" in md
