"""The tracker's read of Tune's experiment snapshot at paper scale: each trial's state decoded at
every read, against only the states that changed since the last read (`snapshot_trials` with the
tracker's cache), side by side.

    python bench/snapshot.py [--from RUN_DIR] [--trials 207] [--changed 2] [--rounds 7]

Tune writes every trial's state into each experiment snapshot (about 100 KB per bandit trial pack
of 16), every 5 s, and the MLflow tracker reads the newest one at each snapshot to know which
records it may let out. Without ``--from``, a small real launch (`bandit_paper`: one scenario,
hidden 64, seeds 0-7, no pretrained reference: 72 trials as 6 packs of 8 and 16, about two
minutes) makes a snapshot; its three largest entries (packs of 16) are copied, each under a new
trial id, to ``--trials`` entries (207: the packs of the whole `bandit_paper` grid). Per round: ``--changed`` entries get a new last result
(the packs running between two snapshots), then one read with the warm cache and one without,
alternating which goes first. Prints one JSON line (CPU ms per read, medians, and the snapshot's
size), then ``ratio=<with the cache / without>``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAUNCH = ["--config", "bandit_paper", "--set", "hidden_sizes=[64]", "--set", "seeds=[0, 1, 2, 3, 4, 5, 6, 7]", "--set", "anchors.init=null",
          "--set", "scenarios=[flip-high]", "--no-report"]


def real_snapshot(run_dir: str | None, tmp: str) -> dict:
    """The newest experiment snapshot of ``run_dir``, or of a small launch made in ``tmp``."""
    if run_dir is None:
        root = Path(__file__).resolve().parents[1]
        cmd = [sys.executable, str(root / "run_grid.py"), *LAUNCH, "--storage-path", f"{tmp}/ray_results",
               "--tracking-uri", f"sqlite:///{tmp}/mlflow.db", "--name", "snap"]
        out = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stdout[-2000:] + out.stderr[-2000:])
        run_dir = f"{tmp}/ray_results/snap"
    files = sorted(glob.glob(os.path.join(run_dir, "experiment_state-*.json")))
    if not files:
        sys.exit(f"--from: no experiment_state-*.json in {run_dir}")
    return json.loads(Path(files[-1]).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="run_dir", help="a grid's results folder to take the snapshot from")
    parser.add_argument("--trials", type=int, default=207)
    parser.add_argument("--changed", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if not 0 <= args.changed <= args.trials:
        parser.error("--changed must be between 0 and --trials")
    from adpo_ray.orchestration.tracking import snapshot_trials

    with tempfile.TemporaryDirectory(prefix="adpo-ray-bench-snapshot-") as tmp:
        state = real_snapshot(args.run_dir, tmp)
        # the largest entries: trial packs (a grid's solo trials hold less)
        source = sorted(state["trial_data"], key=lambda e: -len(e[0]) - len(e[1] or ""))[:3]
        entries = []
        for i in range(args.trials):
            trial_json, metadata_json = source[i % len(source)]
            trial = json.loads(trial_json)
            trial["trial_id"] = f"bench_{i:05d}"
            entries.append([json.dumps(trial), metadata_json])
        folder = Path(tmp) / "snapshot"
        folder.mkdir()
        path = folder / "experiment_state-2026-01-01_00-00-00.json"
        cache: dict = {}
        times: dict[str, list[float]] = {"cached": [], "uncached": []}
        size = 0
        for r in range(args.rounds + 1):  # round 0 warms the cache and is not counted
            for k in range(args.changed):  # the packs running between two snapshots report once more
                metadata = json.loads(entries[k][1])
                last = metadata.get("last_result") or {}
                last = json.loads(last) if isinstance(last, str) else last
                last["training_iteration"] = int(last.get("training_iteration") or 0) + 1
                metadata["last_result"] = last
                entries[k][1] = json.dumps(metadata)
            text = json.dumps({**state, "trial_data": entries})
            path.write_text(text)
            size = len(text)
            for kind in (("cached", "uncached") if r % 2 else ("uncached", "cached")):
                t0 = time.process_time()
                out = snapshot_trials(str(folder), cache if kind == "cached" else None)
                if r:
                    times[kind].append(1e3 * (time.process_time() - t0))
                if len(out) != args.trials:
                    sys.exit(f"read {len(out)} trials of {args.trials}")
    med = {k: round(statistics.median(v), 1) for k, v in times.items()}
    print(json.dumps({"trials": args.trials, "changed": args.changed, "snapshot_mb": round(size / 1e6, 1),
                      "cpu_ms_per_read": med, "rounds": args.rounds}))
    print(f"ratio={med['cached'] / med['uncached']:.3f}")


if __name__ == "__main__":
    main()
