"""The end-of-grid summary: one row per trial (a trial pack's members each their own), and the
headline table per env (Ray-free: it reads Tune's results by their attributes)."""

from __future__ import annotations

from typing import Any

from adpo_ray.envs import ENVIRONMENTS
from adpo_ray.metrics import HEADLINE, is_metric_key, member_results
from adpo_ray.spec import TrialSpec, trials_of

#: The columns of :func:`summary_frame`, there even when no trial has a row.
COLUMNS = [*TrialSpec.__dataclass_fields__, "method", "status"]


def summary_frame(results) -> Any:
    """One row per grid trial (a trial pack's Tune result gives one per member, with the pack's
    status): coordinates, status (``TERMINATED``: ran to its end; ``ERROR``; ``UNFINISHED``:
    stopped before its end, e.g. by Ctrl-C) and its last curated metrics (:data:`COLUMNS`, then
    the metrics). A trial that errored before its first result has no config in its result: its
    coordinates are read from the ``params.json`` in its folder."""
    import pandas as pd

    rows = []
    for r in results:
        config = r.config or (_params_of(r) if r.error else None)
        if not config:  # a trial that never started (the grid was interrupted first)
            continue
        done = bool((r.metrics or {}).get("done"))
        status = "ERROR" if r.error else "TERMINATED" if done else "UNFINISHED"
        # a trial pack's Tune result: one row per member, from the member's own result
        members = trials_of(config, (r.metrics or {}).get("trial_id", ""))
        for t, metrics in zip(members, member_results(config, r.metrics), strict=True):
            row = {**t.as_dict(), "method": t.method, "status": status}
            row.update({k: v for k, v in metrics.items() if is_metric_key(k)})
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS) if not rows else pd.DataFrame(rows)


def _params_of(result) -> dict | None:
    """The config Tune wrote into a trial's folder (``params.json``), or None if it cannot be read."""
    import json

    try:
        with result.filesystem.open_input_stream(f"{result.path}/params.json") as f:
            return json.loads(f.read())
    except Exception:  # noqa: BLE001 - no folder, no file, storage away: the trial goes unlisted
        return None


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
