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


def side_by_side(config: str, variants: dict[str, list[str]], sets: list[str], repeats: int,
                 ) -> tuple[dict[str, float], dict[str, list[dict[str, str]]]]:
    """Launch ``config`` once per variant (its ``KEY=VALUE`` overrides, then ``sets``) per repeat,
    alternating; the best wall seconds and the summary rows of each variant. Exits when two
    variants ran different trials."""
    walls: dict[str, list[float]] = {name: [] for name in variants}
    tables: dict[str, list[dict[str, str]]] = {}
    for r in range(repeats):
        for name, overrides in variants.items():
            with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
                wall, rows = launch(config, [*overrides, *sets], Path(tmp), f"bench-{name}")
            walls[name].append(wall)
            tables[name] = rows
            print(f"{name} repeat {r}: {wall:.1f} s, {len(rows)} trials", file=sys.stderr)
    first, *others = tables.values()
    for rows in others:
        if sorted(map(trial_key, rows)) != sorted(map(trial_key, first)):
            raise SystemExit("the launches ran different trials")
    return {name: min(w) for name, w in walls.items()}, tables


def compare(doc: str, baseline: tuple[str, list[str]], other: tuple[str, list[str]]) -> None:
    """A bench's command line (``--config``, ``--set``, ``--repeats``): ``baseline`` and ``other``
    (a label and its ``KEY=VALUE`` overrides) launched side by side; prints one JSON line (each
    label's best wall seconds, the largest final difference per column), then
    ``ratio=<baseline wall / other wall>``. Exits when the two tables differ in trials or columns."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--config", default="smoke")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repeats", type=int, default=1, help="launches of each kind, alternating")
    args = parser.parse_args()

    (a, _), (b, _) = baseline, other
    best, tables = side_by_side(args.config, dict([baseline, other]), args.sets, args.repeats)
    if set(tables[a][0]) != set(tables[b][0]):
        raise SystemExit(f"the tables differ: columns only {a} {sorted(set(tables[a][0]) - set(tables[b][0]))}, "
                         f"only {b} {sorted(set(tables[b][0]) - set(tables[a][0]))}")
    print(json.dumps({
        "config": args.config, "sets": args.sets, "trials": len(tables[a]), "repeats": args.repeats,
        f"{a}_wall_s": round(best[a], 1), f"{b}_wall_s": round(best[b], 1),
        "largest_final_difference": {k: round(v, 9) for k, v in sorted(largest_difference(tables[a], tables[b]).items())},
    }))
    print(f"ratio={best[a] / best[b]:.2f}")


if __name__ == "__main__":
    compare(__doc__, ("solo", ["resources.pack=1"]), ("packed", ["resources.pack=auto"]))
