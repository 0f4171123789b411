"""CPU that a launch spends outside its trials, per member result: the Tune driver (its loop, its
loggers, the MLflow tracker and the spool's sender) and Ray's own processes (GCS, raylet, agents).
The figure behind `DRIVER_CPU_S_PER_RESULT` in adpo_ray/orchestration/planning.py.

    python bench/driver.py [--config bandit_paper] [--seeds N1 N2] [--set KEY=VALUE ...]

Launches the spec's grid exactly as `run_grid.py` does (embedded Ray on this machine, trial
packs, an MLflow sqlite store in a temporary folder, no report) and measures, over the whole
launch, the CPU seconds of this process (every thread: Tune's loop, its CSV/JSON/TensorBoard
loggers, the tracker, the sender writing to MLflow), of Ray's processes that are not workers, and
of the machine. A member result is one training iteration of one trial (a pack of 16 reports 16
per iteration). Launches twice, each in a fresh process, the second with more seeds; prints a
JSON line for each, then the CPU seconds per member result (the slope between them: a launch's
fixed cost cancels) and ``ratio=<CPU outside the trials / CPU of the whole machine>`` of the
larger launch last.

By default slices of the bandit preset (hidden 64, no pretrained reference; seeds 0, then 0 and
1: 108 and 216 trials): short iterations, so results arrive fastest and the driver's share is
largest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_SETS = ["hidden_sizes=[64]", "anchors.init=null"]


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores)."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _ray_system_cpu_s() -> float:
    """CPU seconds of this process's descendants that are not Ray workers (``ray::...``): the
    GCS, the raylet, the dashboard and its agents."""
    import psutil

    total = 0.0
    for p in psutil.Process().children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith("ray::") or p.name().startswith("ray::"):
                continue
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def launch(spec) -> dict:
    """One launch of ``spec`` as ``run_grid.py`` makes it; its CPU figures (see the module doc)."""
    import ray

    from adpo_ray.orchestration.launch import GridOptions, run_grid
    from adpo_ray.orchestration.pack_trainable import MEMBERS

    with tempfile.TemporaryDirectory(prefix="adpo-ray-bench-driver-") as tmp:
        options = GridOptions(tracking_uri=f"sqlite:///{tmp}/mlflow.db", artifact_location=f"{tmp}/mlartifacts",
                              storage_path=f"{tmp}/ray_results", name="driver")
        wall0, own0, busy0 = time.perf_counter(), time.process_time(), _busy_cpu_s()
        run = run_grid(spec, options, verbose=0, report=False)
        wall, own, busy = time.perf_counter() - wall0, time.process_time() - own0, _busy_cpu_s() - busy0
        system = _ray_system_cpu_s()  # the embedded Ray the launch started, still up
        ray.shutdown()
    results = 0
    for r in run.results:
        members = r.metrics.get(MEMBERS)
        results += int(r.metrics.get("training_iteration") or 0) * (len(members) if members else 1)
    return {"trials": spec.trial_count(), "tune_trials": len(run.results), "member_results": results,
            "wall_s": round(wall, 1), "driver_cpu_s": round(own, 1), "ray_system_cpu_s": round(system, 1),
            "machine_busy_cpu_s": round(busy, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="bandit_paper")
    parser.add_argument("--set", dest="sets", action="append", default=None, metavar="KEY=VALUE",
                        help=f"spec overrides (default: {' '.join(DEFAULT_SETS)})")
    parser.add_argument("--seeds", type=int, nargs=2, default=[1, 2], metavar=("N1", "N2"),
                        help="launch twice, with the spec's first N1 and N2 seeds (default 1 2)")
    parser.add_argument("--launch", type=int, help=argparse.SUPPRESS)  # one launch, in this process
    args = parser.parse_args()
    sets = DEFAULT_SETS if args.sets is None else args.sets
    if args.launch:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        from adpo_ray.cli import resolve_config
        from adpo_ray.spec import load_spec

        base = load_spec(resolve_config(args.config), sets)
        if len(base.seeds) < args.launch:
            sys.exit(f"--seeds: the spec lists {len(base.seeds)} seed(s)")
        result = launch(base.model_copy(update={"seeds": base.seeds[:args.launch]}))
        print(json.dumps({"config": args.config, "seeds": args.launch, **result}), flush=True)
        return
    if not 0 < args.seeds[0] < args.seeds[1]:
        parser.error("--seeds N1 N2 needs 0 < N1 < N2")
    runs = []
    for n in args.seeds:  # each launch in a fresh process: its imports and Ray's start count in both
        cmd = [sys.executable, __file__, "--config", args.config, "--launch", str(n), *(f"--set={s}" for s in sets)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    a, b = runs
    outside = [r["driver_cpu_s"] + r["ray_system_cpu_s"] for r in runs]
    # a launch's fixed cost (imports, Ray's start, the first snapshot) cancels in the difference
    per_result = (outside[1] - outside[0]) / max(b["member_results"] - a["member_results"], 1)
    print(json.dumps({"cpu_s_per_member_result": round(per_result, 5),
                      "fixed_cpu_s": round(outside[0] - per_result * a["member_results"], 1)}), flush=True)
    print(f"ratio={outside[1] / b['machine_busy_cpu_s']:.3f}")


if __name__ == "__main__":
    main()
