"""Write a grid's report: report.md, report.html, results.csv and PNG plots."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from adpo_ray.metrics import REPORT_COLUMNS
from adpo_ray.report import plots
from adpo_ray.report import ranking as rk
from adpo_ray.report.analysis import FIXED, compare, distill_table, group_stats, paper_claims
from adpo_ray.report.data import COORDS, GridData
from adpo_ray.report.stats import CONFIDENCE, N_RESAMPLES

METRIC_COLUMNS = list(REPORT_COLUMNS)


def _distill_view(table: pd.DataFrame) -> pd.DataFrame:
    if table.empty:
        return table
    v = table[["env", "scenario", "hidden_size", "method", "n"]].copy()

    def col(name, fmt, scale=1.0):
        if name not in table:
            return ["-"] * len(table)
        def cell(m, sd, lo, hi):
            if pd.isna(m):
                return "-"
            text = fmt.format(scale * m)
            if pd.notna(sd):
                text += f" ± {fmt.format(scale * sd)}"
            if pd.notna(lo):
                text += f" [{fmt.format(scale * lo)}, {fmt.format(scale * hi)}]"
            return text

        return [cell(*r) for r in zip(table[name], table[f"{name}_std"], table[f"{name}_ci_low"],
                                      table[f"{name}_ci_high"], strict=True)]

    v["clean return (mean ± std [95% CI])"] = col("return", "{:.1f}")
    v["% of teacher"] = col("of_teacher", "{:.0f}", 100.0)
    v["KL(teacher ‖ student)"] = col("kl_teacher", "{:.3g}")
    v["NDCG"] = col("ndcg", "{:.3f}")
    v["NDCG, random order"] = (table["ndcg_random"].map(lambda x: "-" if pd.isna(x) else f"{x:.3f}")
                               if "ndcg_random" in table else ["-"] * len(table))
    return v


def _fmt(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].map(lambda v: "-" if pd.isna(v) else f"{v:.3f}")
    return out


def _group_view(groups: pd.DataFrame) -> pd.DataFrame:
    if groups.empty:
        return groups
    view = groups.copy()
    view["95% CI"] = [f"[{lo:.3f}, {hi:.3f}]" if pd.notna(lo) else "-" for lo, hi in zip(view["ci_low"], view["ci_high"], strict=True)]
    return view[["env", "scenario", "hidden_size", "method", "metric", "n", "mean", "std", "iqm", "95% CI"]]


def _compare_view(comparisons: pd.DataFrame) -> pd.DataFrame:
    if comparisons.empty:
        return comparisons
    v = comparisons.copy()
    v["rel. improvement [95% CI]"] = [
        f"{100 * r:+.1f}% [{100 * lo:+.1f}, {100 * hi:+.1f}]" if pd.notna(lo) else f"{100 * r:+.1f}%"
        for r, lo, hi in zip(v["rel_improvement"], v["rel_ci_low"], v["rel_ci_high"], strict=True)
    ]
    v["P(a > b) [95% CI]"] = [
        f"{p:.2f} [{lo:.2f}, {hi:.2f}]" if pd.notna(lo) else f"{p:.2f}"
        for p, lo, hi in zip(v["p_improvement"], v["p_ci_low"], v["p_ci_high"], strict=True)
    ]
    v["min. detectable"] = [f"{100 * m:.1f}%" if pd.notna(m) else "-" for m in v.get("mde", [float("nan")] * len(v))]
    return v[["env", "level", "group", "hidden_size", "metric", "a", "b", "n_a", "n_b", "mean_a", "mean_b",
              "rel. improvement [95% CI]", "P(a > b) [95% CI]", "min. detectable"]]


def _ci_view(frame: pd.DataFrame, value: str, label: str, fmt: str) -> pd.DataFrame:
    if frame.empty:
        return frame
    v = frame.drop(columns=[value, "ci_low", "ci_high"]).copy()
    v[label] = [f"{fmt.format(x)} [{fmt.format(lo)}, {fmt.format(hi)}]"
                for x, lo, hi in zip(frame[value], frame["ci_low"], frame["ci_high"], strict=True)]
    return v


def _poi_view(trials: pd.DataFrame, env: str) -> pd.DataFrame:
    point, low, high = rk.poi_matrix(trials, env)
    if point.empty:
        return pd.DataFrame()
    cells = point.copy().astype(object)
    for a in point.index:
        for b in point.columns:
            p = point.loc[a, b]
            cells.loc[a, b] = "-" if pd.isna(p) else f"{p:.2f} [{low.loc[a, b]:.2f}, {high.loc[a, b]:.2f}]"
    return cells.rename_axis(f"{env}: P(row > column)").reset_index()


def _relative_view(trials: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Each method against ``reference``, pooled over the noisy scenarios (or on clean alone)."""
    frames = [compare(trials, a=m, b=reference) for m in sorted(trials["method"].unique()) if m != reference]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame()
    rows = pd.concat(frames, ignore_index=True)
    keep = rows[(rows["level"] == "overall") | ((rows["level"] == "scenario") & (rows["group"] == "clean"))]
    return _compare_view(keep)


def build_report(data: GridData, out_dir: str | Path, reference: str = FIXED) -> dict[str, Path]:
    """Write every report file into ``out_dir``; returns name -> path. ``reference``: the method
    every other is measured against (default: the fixed anchor)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials = data.trials
    files: dict[str, Path] = {}

    cols = ["trial", *[c for c in COORDS if c in trials], "status", *[c for c in METRIC_COLUMNS if c in trials]]
    trials[cols].to_csv(out / "results.csv", index=False)
    files["results.csv"] = out / "results.csv"

    groups = group_stats(trials)
    comparisons = compare(trials)
    claims = paper_claims(trials, comparisons)
    distill = distill_table(trials)

    ranks, iqms = rk.ranking(trials), rk.aggregate_iqm(trials)
    images: list[Path] = []
    for env in dict.fromkeys(trials["env"]):
        for fn in (
            lambda e=env: plots.performance_profiles(rk.performance_profiles(trials, e), e, out),
            lambda e=env: plots.learning_curves(trials, data.curves, e, out),
            lambda e=env: plots.scenario_comparison(groups, e, out),
            lambda e=env: plots.hidden_scaling(trials, e, out),
            lambda e=env: plots.distill_tradeoff(trials, e, out),
        ):
            path = fn()
            if path:
                images.append(path)
    files.update({p.name: p for p in images})

    claims_frame = pd.DataFrame([c.__dict__ for c in claims])[
        ["version", "claim", "comparison", "paper", "measured", "mde", "verdict", "note"]
    ].rename(columns={"mde": "min. detectable"})
    sections = [
        ("Paper claims", claims_frame,
         "Each claim of each paper version (v2, v3 and v6 abstracts, the December 2025 manuscript), "
         "with the comparison the row makes. Verdicts at 95%: *supported* — the CI excludes no effect "
         "and reaches the claimed size; *contradicted* — the whole CI lies below the claimed size; "
         "*inconclusive* — otherwise; *not measured* — the launch ran no trials for it. Counts of "
         "scenarios are judged by their excess over the share of methods that would win by chance. "
         "`min. detectable`: the relative effect (a ratio for KL rows) a t-test at 5% detects with "
         "80% power at this launch's seeds. \"ADPO\" is the listwise (softmax) ADPO with the dynamic "
         "anchor where run, else the fixed one; \"listwise variants\" are ADPO with the listwise or "
         "plackett_luce loss."),
        *([("Distillation students", _distill_view(distill),
            "Final clean return of each student's mean action (same evaluation episodes as the teacher's), "
            "as a percentage of the teacher's return, and the exact KL(teacher ‖ student) of the diagonal "
            "Gaussians averaged over held-out dataset states, and the NDCG of the student's ranking of each "
            "held-out state's candidates (by its log-probability) against their clean signal's ranking "
            "(gain = the candidate's rank under the signal; Järvelin & Kekäläinen 2002); mean ± std over "
            "seeds with a 95% bootstrap CI of the mean. `NDCG, random order`: what a uniformly random "
            "order of the same lists scores in expectation (0.804 for 8 distinct candidates), the level "
            "a student's ranking must beat to carry information. adpo-fixed: the anchor is the teacher; other "
            "ADPO modes: self-anchored.")] if not distill.empty else []),
        ("Ranking of every method", _ci_view(ranks, "mean_rank", "mean rank [95% CI]", "{:.2f}"),
         "Mean rank of each method over the tasks (scenario x hidden size) where every method of the env "
         "ran, 1 = best, from the mean final headline metric per task; stratified bootstrap CI (trials "
         "resampled within each task)."),
        ("Aggregate IQM", _ci_view(iqms, "iqm", "IQM [95% CI]", "{:.3f}"),
         f"Interquartile mean of the {rk.NORMALISATION}; pooled over each method's tasks, with a "
         "stratified bootstrap CI."),
        *[(f"Probability of improvement: {env}", _poi_view(trials, env),
           "P(row beats column): the mean over the tasks both methods ran of P(X > Y) (ties count 1/2), "
           "with a stratified bootstrap 95% CI.") for env in dict.fromkeys(trials["env"])],
        (f"Every method against {reference}", _relative_view(trials, reference),
         f"Each method (a) against the reference b = {reference} (`adpo-ray report --reference`): "
         "relative improvement and P(a > b) pooled over the noisy scenarios (or on clean alone), as below."),
        ("Dynamic vs fixed anchor", _compare_view(comparisons),
         "Relative improvement `(mean(a) - mean(b)) / |mean(b)|` and probability of improvement "
         "`P(a > b)` (ties 1/2), with percentile-bootstrap CIs; paired by seed and setting when every "
         "trial has its partner (then P is over the matched pairs). `noise_type` and `overall` rows "
         "pool the noisy scenarios (clean excluded). Only finished trials count. `min. detectable`: "
         "the relative effect a t-test at 5% detects with 80% power given the measured variance "
         "(smaller effects can pass unseen at this number of seeds)."),
        ("Per group", _group_view(groups),
         f"Final headline metric over seeds: mean, std, IQM (25% trimmed mean) and "
         f"{int(CONFIDENCE * 100)}% bootstrap CI of the mean ({N_RESAMPLES} resamples)."),
    ]
    n_failed = int((trials["status"] != "FINISHED").sum())
    header = (f"{len(trials)} trials ({n_failed} not finished) from {data.source}. "
              f"Environments: {', '.join(dict.fromkeys(trials['env']))}; methods: "
              f"{', '.join(sorted(trials['method'].unique()))}.")

    md = ["# adpo-ray report", "", header, ""]
    for title, frame, note in sections:
        md += [f"## {title}", "", note, "", _fmt(frame).to_markdown(index=False) if not frame.empty else "_no data_", ""]
    md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images] + [""]
    (out / "report.md").write_text("\n".join(md))
    files["report.md"] = out / "report.md"

    body = [f"<h1>adpo-ray report</h1><p>{html.escape(header)}</p>"]
    for title, frame, note in sections:
        table = _fmt(frame).to_html(index=False, border=0, classes="t") if not frame.empty else "<p><em>no data</em></p>"
        body.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(note)}</p>{table}")
    body.append("<h2>Plots</h2>" + "".join(f'<p><img src="{p.name}" alt="{p.stem}"></p>' for p in images))
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
             "table.t{border-collapse:collapse;font-size:13px}table.t td,table.t th{padding:3px 8px;"
             "border-bottom:1px solid #ddd;text-align:right}img{max-width:100%}")
    (out / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>adpo-ray report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
    files["report.html"] = out / "report.html"
    return files


def log_report(tracking_uri: str, parent_run_id: str, out_dir: str | Path) -> None:
    """Attach the report files to the grid's parent MLflow run (under ``report/``)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri).log_artifacts(parent_run_id, str(out_dir), artifact_path="report")
