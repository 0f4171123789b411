"""Report statistics on synthetic runs with known values; plots and files; MLflow/Tune loading."""

from __future__ import annotations

import struct

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from adpo_ray.report import stats
from adpo_ray.report.analysis import compare, group_stats, paper_claims
from adpo_ray.report.build import build_report
from adpo_ray.report.data import GridData


def test_iqm_and_summary_exact():
    x = [1.0, 2.0, 3.0, 4.0, 100.0, 5.0, 6.0, 7.0]
    # trim 25% each side of 8 values: drop 2 lowest and 2 highest -> mean(3, 4, 5, 6)
    assert stats.iqm(x) == pytest.approx(4.5)
    s = stats.summarize(x)
    assert s.n == 8 and s.mean == pytest.approx(np.mean(x)) and s.std == pytest.approx(np.std(x, ddof=1))
    ref = sps.bootstrap((np.array(x),), np.mean, confidence_level=0.95, n_resamples=2000,
                        method="percentile", rng=np.random.default_rng(0))
    assert (s.ci_low, s.ci_high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert s.ci_low < s.mean < s.ci_high


def test_probability_of_improvement_constructed():
    # pairs (a > b): 3 beats 1, 2 and ties 3 (1/2); 4 and 5 beat all three -> 8.5 / 9
    p, low, high = stats.probability_of_improvement([3, 4, 5], [1, 2, 3])
    assert p == pytest.approx(8.5 / 9)
    assert 0 <= low <= p <= high <= 1
    assert stats.probability_of_improvement([10, 11], [1, 2])[0] == 1.0
    assert stats.probability_of_improvement([1, 2], [10, 11])[0] == 0.0
    # equals the Mann-Whitney U statistic / (n m)
    a, b = np.random.default_rng(1).normal(size=7), np.random.default_rng(2).normal(size=5)
    u = sps.mannwhitneyu(a, b).statistic
    assert stats.probability_of_improvement(a, b)[0] == pytest.approx(u / 35)


def test_paired_probability_of_improvement():
    # matched pairs (1, 0), (2, 3), (3, 2): a wins 2 of 3; unpaired it would be 5/9
    assert stats.probability_of_improvement([1, 2, 3], [0, 3, 2], paired=True)[0] == pytest.approx(2 / 3)
    assert stats.probability_of_improvement([1, 2, 3], [0, 3, 2])[0] == pytest.approx(5 / 9)
    # a = b + 0.1 on every seed: always better when paired, whatever the spread across seeds
    b = np.array([0.1, 0.5, 0.9, 0.3])
    assert stats.probability_of_improvement(b + 0.1, b, paired=True) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="equal sizes"):
        stats.probability_of_improvement([1, 2], [1], paired=True)


def test_report_skips_unfinished_trials():
    trials = synthetic_trials()
    trials.loc[trials["method"] == "adpo-fixed", "status"] = "FAILED"
    groups = group_stats(trials)
    assert "adpo-fixed" not in set(groups["method"])
    assert compare(trials).empty  # nothing finished to compare against


def test_relative_improvement_and_ci():
    a, b = np.array([1.1, 1.2, 1.3, 1.25]), np.array([1.0, 1.0, 1.1, 1.05])
    rel, low, high = stats.relative_improvement(a, b, paired=True)
    assert rel == pytest.approx((a.mean() - b.mean()) / b.mean())
    ref = sps.bootstrap((a, b), lambda x, y, axis=-1: (x.mean(axis) - y.mean(axis)) / np.abs(y.mean(axis)),
                        paired=True, confidence_level=0.95, n_resamples=2000, method="percentile",
                        rng=np.random.default_rng(0))
    assert (low, high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert np.isnan(stats.relative_improvement([1.0], [2.0])[1])  # one seed: no CI


@pytest.mark.parametrize("low,high,expected", [(0.06, 0.2, "supported"), (-0.1, 0.04, "contradicted"),
                                               (-0.05, 0.3, "inconclusive"), (float("nan"), 1, "inconclusive")])
def test_verdicts(low, high, expected):
    assert stats.verdict(low, high, 0.05) == expected


def synthetic_trials(seeds=5, hidden=(64, 256)) -> pd.DataFrame:
    """Known values: dynamic = fixed + 0.1 on every noisy scenario; DPO lower, more so at 64."""
    rows = []
    for scenario, noise in [("clean", "clean"), ("flip-high", "flip"), ("gaussian-low", "gaussian")]:
        for h in hidden:
            for seed in range(seeds):
                base = 0.4 + 0.01 * seed
                for method, value in [("adpo-fixed", base), ("adpo-dynamic", base + 0.1),
                                      ("dpo", base - (0.05 if h == 64 else 0.2))]:
                    algo, mode = (("adpo", method.split("-")[1]) if method.startswith("adpo") else ("dpo", "fixed"))
                    rows.append({"trial": f"{scenario}_{method}_{h}_{seed}", "env": "PreferenceBandit",
                                 "scenario": scenario, "noise_type": noise, "severity": "high", "algorithm": algo,
                                 "anchor_mode": mode, "method": method, "hidden_size": h, "seed": seed,
                                 "status": "FINISHED", "eval/winmass": value, "env_steps": 1000.0})
    return pd.DataFrame(rows)


def test_group_stats_exact():
    trials = synthetic_trials()
    groups = group_stats(trials)
    assert len(groups) == 3 * 2 * 3  # scenarios x hidden x methods: every group listed
    g = groups[(groups["scenario"] == "flip-high") & (groups["hidden_size"] == 64) & (groups["method"] == "adpo-dynamic")].iloc[0]
    values = 0.5 + 0.01 * np.arange(5)
    assert g["n"] == 5 and g["mean"] == pytest.approx(values.mean()) and g["iqm"] == pytest.approx(sps.trim_mean(values, 0.25))
    ref = sps.bootstrap((values,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(0))
    assert g["ci_low"] == pytest.approx(ref.confidence_interval.low)


def test_compare_and_claims():
    trials = synthetic_trials()
    comp = compare(trials)
    overall = comp[comp["level"] == "overall"].iloc[0]
    fixed_noisy = trials[(trials["method"] == "adpo-fixed") & (trials["noise_type"] != "clean")]["eval/winmass"]
    assert overall["rel_improvement"] == pytest.approx(0.1 / fixed_noisy.mean())
    assert overall["paired"] and overall["n_a"] == 2 * 2 * 5
    assert overall["p_improvement"] > 0.5
    assert set(comp[comp["level"] == "noise_type"]["group"]) == {"flip", "gaussian"}
    claims = {c.claim.split(" (")[0]: c for c in paper_claims(trials, comp)}
    assert claims["Online RL under noise"].verdict == "supported"
    assert claims["Offline distillation: fixed anchor = teacher beats KD"].verdict == "not measured"
    scaling = [c for c in paper_claims(trials, comp) if c.claim.startswith("Larger models")][0]
    assert scaling.verdict == "supported"  # the gap over DPO grows from 0.15 to 0.30
    assert "+0.150" in scaling.measured


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_build_report_files(tmp_path):
    trials = synthetic_trials()
    curves = pd.DataFrame([
        {"trial": t, "env_steps": s, "metric": "eval/winmass", "value": v * s / 1000}
        for t, v in zip(trials["trial"], trials["eval/winmass"], strict=True) for s in (250, 500, 1000)
    ])
    files = build_report(GridData(trials, curves, "synthetic"), tmp_path)
    for name in ("report.md", "report.html", "results.csv"):
        assert files[name].exists()
    assert _png_size(files["scenarios_PreferenceBandit.png"]) == (1200, 500)
    assert _png_size(files["hidden_PreferenceBandit.png"]) == (600, 400)
    assert _png_size(files["curves_PreferenceBandit.png"]) == (1200, 300)  # 3 scenarios in one row
    md = files["report.md"].read_text()
    for scenario in ("clean", "flip-high", "gaussian-low"):
        for method in ("adpo-fixed", "adpo-dynamic", "dpo"):
            assert any(scenario in line and method in line for line in md.splitlines())
    assert "## Paper claims" in md and "supported" in md
    results = pd.read_csv(files["results.csv"])
    assert len(results) == len(trials) and {"scenario", "method", "seed", "eval/winmass"} <= set(results.columns)
    assert "<img" in files["report.html"].read_text()


def test_summary_skips_trials_that_never_started():
    """An interrupted grid's results include trials without a config: the end-of-grid table lists
    the others instead of crashing."""
    from types import SimpleNamespace

    from adpo_ray.report.summary import summary_frame

    trial = {"env": "PreferenceBandit", "scenario": "clean", "algorithm": "adpo", "anchor_mode": "fixed",
             "hidden_size": 64, "seed": 0}
    results = [SimpleNamespace(config={"trial": trial}, metrics={"eval/winmass": 0.5}, error=None),
               SimpleNamespace(config=None, metrics=None, error=None)]
    frame = summary_frame(results)
    assert len(frame) == 1 and frame["method"].tolist() == ["adpo-fixed"] and frame["eval/winmass"].tolist() == [0.5]


def test_report_builds_when_no_trial_has_finished(tmp_path):
    """A launch interrupted before any trial finished still gets its report (tables empty)."""
    import pandas as pd

    from adpo_ray.report.build import build_report
    from adpo_ray.report.data import GridData

    trials = pd.DataFrame([{"trial": "t", "env": "Hopper-v5", "scenario": "clean", "noise_type": "", "severity": "",
                            "algorithm": "adpo", "anchor_mode": "dynamic", "method": "adpo-dynamic",
                            "hidden_size": 64, "seed": 0, "status": "RUNNING", "eval/return_mean": 12.0}])
    curves = pd.DataFrame(columns=["trial", "env_steps", "metric", "value"])
    files = build_report(GridData(trials, curves, "test"), tmp_path)
    assert (tmp_path / "report.html").exists() and "results.csv" in files


def test_minimum_detectable_effect_hand_computed():
    # paired: differences 1, 2, 3 (sd 1, n 3), mean(b) 10; t(0.975, 2) = 4.302653, t(0.8, 2) = 1.060660
    b = np.array([10.0, 10.0, 10.0])
    a = b + np.array([1.0, 2.0, 3.0])
    expected = (4.302653 + 1.060660) * (1.0 / np.sqrt(3)) / 10.0
    assert stats.minimum_detectable_effect(a, b, paired=True) == pytest.approx(expected, abs=1e-6)
    # independent samples of equal variance and size: Welch's df = 2 (n - 1) = 4
    a2, b2 = np.array([9.0, 10.0, 11.0]), np.array([19.0, 20.0, 21.0])
    se = np.sqrt(1.0 / 3 + 1.0 / 3)
    expected2 = (2.776445 + 0.940965) * se / 20.0  # t(0.975, 4), t(0.8, 4)
    assert stats.minimum_detectable_effect(a2, b2) == pytest.approx(expected2, abs=1e-6)
    # more seeds detect smaller effects; one value detects nothing
    rng = np.random.default_rng(0)
    small = stats.minimum_detectable_effect(100 + rng.normal(size=5), 100 + rng.normal(size=5), paired=True)
    large = stats.minimum_detectable_effect(100 + rng.normal(size=50), 100 + rng.normal(size=50), paired=True)
    assert large < small
    assert np.isnan(stats.minimum_detectable_effect([1.0], [2.0]))


def test_claims_say_where_trials_started_and_what_they_can_detect():
    trials = synthetic_trials()
    claims = paper_claims(trials, compare(trials))
    online = [c for c in claims if c.claim.startswith("Online RL under noise")][0]
    assert "start: random init" in online.note and "minimum detectable effect" in online.note
    started = trials.assign(start="pretrained PPO")
    online = [c for c in paper_claims(started, compare(started)) if c.claim.startswith("Online RL")][0]
    assert "start: pretrained PPO" in online.note


def test_summary_survives_a_grid_where_no_trial_produced_a_result(tmp_path, capsys):
    """Every trial errored before its first result (Tune's results then carry no config): the
    end-of-grid summary lists them by their coordinates from params.json, or, with no folder to
    read, prints an empty table, instead of a KeyError."""
    import json
    from types import SimpleNamespace

    from pyarrow import fs

    from adpo_ray.cli import print_summary
    from adpo_ray.orchestration.launch import finish
    from adpo_ray.report.summary import summary_frame
    from adpo_ray.spec import parse_spec

    trial = {"env": "Hopper-v5", "scenario": "clean", "algorithm": "adpo", "anchor_mode": "dynamic",
             "hidden_size": 64, "seed": 0, "sweep": [], "sample": ""}
    folder = tmp_path / "Hopper-v5_clean_adpo-dynamic_h64_s0"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps({"trial": trial}))
    failed = SimpleNamespace(config=None, metrics={"trial_id": "a_00000"}, error=RuntimeError("GL"),
                             path=str(folder), filesystem=fs.LocalFileSystem())
    lost = SimpleNamespace(config=None, metrics={"trial_id": "a_00001"}, error=RuntimeError("GL"),
                           path=str(tmp_path / "gone"), filesystem=fs.LocalFileSystem())
    spec = parse_spec({"name": "h", "environments": ["Hopper-v5"], "scenarios": ["clean"],
                       "anchors": {"modes": ["dynamic"]}, "budget": {"iterations": 1}})
    options = SimpleNamespace(run_dir=str(tmp_path), tracking_uri="sqlite:///m.db", artifact_location=None)

    frame = summary_frame([lost])
    assert frame.empty and {"env", "scenario", "method", "status"} <= set(frame.columns)
    print_summary(finish(spec, options, [lost], report=False))
    assert "errored" not in capsys.readouterr().out

    frame = summary_frame([failed, lost])
    assert frame[["env", "method", "status"]].values.tolist() == [["Hopper-v5", "adpo-dynamic", "ERROR"]]
    print_summary(finish(spec, options, [failed, lost], report=False))
    assert "1 trial(s) errored: Hopper-v5:clean:adpo-dynamic" in capsys.readouterr().out


def test_relative_improvement_against_a_baseline_with_zeros():
    """A baseline whose resamples can have mean 0 (only its zeros drawn): the ratio is unbounded
    there, so its CI is NaN, without warnings; the value itself stays (mean(b) is not 0)."""
    import warnings

    a, b = [1.0, 2.0, 3.0, 2.0], [0.0, 0.0, 0.0, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero or scipy warnings
        for paired in (False, True):
            rel, low, high = stats.relative_improvement(a, b, paired=paired)
            assert rel == 7.0 and np.isnan(low) and np.isnan(high)  # (2 - 0.25) / 0.25
        assert all(np.isnan(stats.relative_improvement(a, [0.0, 0.0, 0.0, 0.0])))  # no ratio at all
        # one zero among ten: a resample of ten zeros (p = 1e-10) is never drawn, the CI stands
        a, b = np.array([1.0, 2, 3, 2, 2, 2, 2, 2, 2, 2]), np.array([0.0, 5, 5, 5, 5, 5, 5, 5, 5, 5])
        rel, low, high = stats.relative_improvement(a, b)
    ref = sps.bootstrap((a, b), lambda x, y, axis=-1: (x.mean(axis) - y.mean(axis)) / np.abs(y.mean(axis)),
                        confidence_level=0.95, n_resamples=2000, method="percentile", rng=np.random.default_rng(0))
    assert rel == pytest.approx(2.0 / 4.5 - 1)
    assert (low, high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert np.isfinite(low) and np.isfinite(high)


def test_summary_table_calls_no_partial_value_final():
    """A trial cut short (Ctrl-C: its last result is not ``done``) is UNFINISHED and left out of
    the headline table, which averages the trials that ran to their end."""
    from types import SimpleNamespace

    from adpo_ray.report.summary import headline_table, summary_frame

    def trial(seed: int) -> dict:
        return {"env": "PreferenceBandit", "scenario": "clean", "algorithm": "adpo", "anchor_mode": "fixed",
                "hidden_size": 64, "seed": seed}

    results = [SimpleNamespace(config={"trial": trial(0)}, metrics={"eval/winmass": 0.5, "done": True}, error=None),
               SimpleNamespace(config={"trial": trial(1)}, metrics={"eval/winmass": 0.1, "done": False}, error=None)]
    frame = summary_frame(results)
    assert frame["status"].tolist() == ["TERMINATED", "UNFINISHED"]
    pivot, metric = headline_table(frame, "PreferenceBandit")
    assert metric == "eval/winmass" and pivot.loc["clean", "adpo-fixed"] == 0.5


@pytest.mark.parametrize("done", [True, False])
def test_a_grid_left_with_an_unfinished_trial_exits_1_and_names_the_resume(tmp_path, capsys, done):
    """A grid that was not interrupted but ended with a trial short of its budget and no error
    (Tune gave up on it) does not exit 0: the CLI exits 1 and names `adpo-ray resume`. Control:
    the same grid with every trial done exits 0."""
    from types import SimpleNamespace

    from adpo_ray.cli import _after_grid
    from adpo_ray.orchestration.launch import GridRun
    from adpo_ray.orchestration.run_folder import GridOptions
    from adpo_ray.report.summary import summary_frame
    from adpo_ray.spec import parse_spec

    spec = parse_spec({"name": "u", "environments": ["PreferenceBandit"], "scenarios": ["clean"],
                       "anchors": {"modes": ["fixed"]}, "seeds": [0, 1], "budget": {"iterations": 2}})

    class Results(list):
        errors: list = []

    results = Results(SimpleNamespace(config={"trial": t.as_dict()}, error=None,
                                      metrics={"eval/winmass": 0.5, "done": done or t.seed == 0})
                      for t in spec.trials())
    run = GridRun(results, spec, GridOptions(f"sqlite:///{tmp_path / 'm.db'}", None, str(tmp_path), "u"),
                  summary_frame(results), 0, False)
    code = _after_grid(run)
    out = capsys.readouterr().out
    assert run.unfinished == (0 if done else 1)
    if done:
        assert code == 0 and "adpo-ray resume" not in out
    else:
        assert code == 1 and f"adpo-ray resume {tmp_path}/u" in out and "1 trial(s) ended before their budget" in out


def test_plots_fit_a_long_sweeps_method_labels(tmp_path):
    """A sweep point's method label names every swept knob (hundreds of characters for a long
    sweep): the plots' legends wrap it, so every figure keeps its size and its layout (matplotlib
    warned "Tight layout not applied" and drew a legend wider than the figure)."""
    import warnings

    knobs = ", ".join(f"train.knob_{i}={0.001 * i}" for i in range(14))
    trials = synthetic_trials()
    trials["method"] = trials["method"] + f" ({knobs})"
    assert trials["method"].str.len().min() > 300
    curves = pd.DataFrame([
        {"trial": t, "env_steps": s, "metric": "eval/winmass", "value": v * s / 1000}
        for t, v in zip(trials["trial"], trials["eval/winmass"], strict=True) for s in (250, 500, 1000)
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        files = build_report(GridData(trials, curves, "synthetic"), tmp_path)
    assert _png_size(files["scenarios_PreferenceBandit.png"]) == (1200, 500)
    assert _png_size(files["hidden_PreferenceBandit.png"]) == (600, 400)
    assert _png_size(files["curves_PreferenceBandit.png"]) == (1200, 300)
