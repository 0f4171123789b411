"""A whole grid launched as solo trials and as trial packs, side by side: wall time of
``python run_grid.py --config C`` (Ray start, planning, every trial, MLflow, summary and report,
exactly what ``make run`` does for ``smoke``) with ``resources.pack: 1`` and with ``auto``.

    python bench/pack_grid.py [--config smoke] [--set KEY=VALUE ...] [--repeats 1]

Each launch runs in a fresh process with its own results folder and sqlite MLflow store in a
temporary folder. Both launches must give the same table: the same trials (one ``summary.csv`` row
each) with the same columns; the largest difference of a final metric between a trial's solo and
packed runs is printed too (a pack batches its members' matrix products, so floats may differ in
their last bits, and training amplifies that). Prints one JSON line, then
``ratio=<solo wall time / packed wall time>``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adpo_ray.spec import TrialSpec  # noqa: E402 - after the path above


def launch(config: str, sets: list[str], folder: Path, name: str = "bench") -> tuple[float, list[dict[str, str]]]:
    """Wall seconds of one launch of ``config`` with ``sets`` (``KEY=VALUE`` overrides) in
    ``folder``, and its summary.csv rows."""
    command = [sys.executable, str(ROOT / "run_grid.py"), "--config", config, "--name", name,
               "--storage-path", str(folder / "ray_results"), "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--no-report"]
    for item in sets:
        command += ["--set", item]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(sets)}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    with open(folder / "ray_results" / name / "summary.csv", newline="") as f:
        return wall, list(csv.DictReader(f))


def trial_key(row: dict[str, str]) -> tuple[str, ...]:
    """A summary row's trial: its coordinates (the ``TrialSpec`` fields)."""
    return tuple(row[name] for name in TrialSpec.__dataclass_fields__)


def largest_difference(solo: list[dict[str, str]], packed: list[dict[str, str]]) -> dict[str, float]:
    """Per numeric summary column: the largest |solo - packed| over trials (matched by coordinates)."""
    by_trial = {trial_key(row): row for row in packed}
    out: dict[str, float] = {}
    for row in solo:
        other = by_trial[trial_key(row)]
        for column, value in row.items():
            try:
                a, b = float(value), float(other[column])
            except (TypeError, ValueError):
                continue
            if a == a and b == b:  # not NaN
                out[column] = max(out.get(column, 0.0), abs(a - b))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="smoke")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repeats", type=int, default=1, help="launches of each kind, alternating")
    args = parser.parse_args()

    walls: dict[str, list[float]] = {"1": [], "auto": []}
    tables: dict[str, list[dict[str, str]]] = {}
    for r in range(args.repeats):
        for pack in ("1", "auto"):
            with tempfile.TemporaryDirectory(prefix=f"pack-grid-{pack}-") as tmp:
                wall, rows = launch(args.config, [f"resources.pack={pack}", *args.sets], Path(tmp), f"bench-pack-{pack}")
            walls[pack].append(wall)
            tables[pack] = rows
            print(f"pack={pack} repeat {r}: {wall:.1f} s, {len(rows)} trials", file=sys.stderr)
    solo, packed = tables["1"], tables["auto"]
    same_trials = sorted(map(trial_key, solo)) == sorted(map(trial_key, packed))
    same_columns = set(solo[0]) == set(packed[0])
    if not (same_trials and same_columns):
        raise SystemExit(f"the tables differ: same trials {same_trials}; columns only solo "
                         f"{sorted(set(solo[0]) - set(packed[0]))}, only packed {sorted(set(packed[0]) - set(solo[0]))}")
    best = {k: min(v) for k, v in walls.items()}
    print(json.dumps({
        "config": args.config, "sets": args.sets, "trials": len(solo), "repeats": args.repeats,
        "solo_wall_s": round(best["1"], 1), "packed_wall_s": round(best["auto"], 1),
        "largest_final_difference": {k: round(v, 6) for k, v in sorted(largest_difference(solo, packed).items())},
    }))
    print(f"ratio={best['1'] / best['auto']:.2f}")


if __name__ == "__main__":
    main()
