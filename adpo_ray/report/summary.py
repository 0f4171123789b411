"""The end-of-grid summary: one row per trial, and the headline table per env (Ray-free: it
reads Tune's results by their attributes)."""

from __future__ import annotations

from typing import Any

from adpo_ray.envs import ENVIRONMENTS
from adpo_ray.metrics import HEADLINE, is_metric_key
from adpo_ray.spec import TrialSpec


def summary_frame(results) -> Any:
    """One row per trial: coordinates, status (``TERMINATED``: ran to its end; ``ERROR``;
    ``UNFINISHED``: stopped before its end, e.g. by Ctrl-C) and its last curated metrics."""
    import pandas as pd

    rows = []
    for r in results:
        if not r.config:  # a trial that never started (the grid was interrupted first)
            continue
        t = TrialSpec.from_config(r.config, (r.metrics or {}).get("trial_id", ""))
        done = bool((r.metrics or {}).get("done"))
        row = {**t.as_dict(), "method": t.method,
               "status": "ERROR" if r.error else "TERMINATED" if done else "UNFINISHED"}
        row.update({k: v for k, v in (r.metrics or {}).items() if is_metric_key(k)})
        rows.append(row)
    return pd.DataFrame(rows)


def headline_table(frame, env: str):
    """Scenarios (rows) x methods (columns) of the env's headline metric (mean over seeds/hidden),
    over the trials that ran to their end (a partial value is no final one)."""
    metric = HEADLINE[ENVIRONMENTS[env]["kind"]]
    if "env" not in frame:
        return None, metric
    sub = frame[(frame["env"] == env) & (frame["status"] == "TERMINATED")]
    if metric not in sub:
        return None, metric
    return sub.pivot_table(index="scenario", columns="method", values=metric, aggfunc="mean"), metric
