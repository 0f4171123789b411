"""A whole grid of solo trials launched with and without Tune's actor reuse, side by side: wall
time of ``python run_grid.py --config C`` with ``resources.reuse_actors: false`` (a new process
per trial) and ``true`` (a process that ends a trial takes the next one of the same resources).

    python bench/actor_reuse.py [--config smoke] [--set KEY=VALUE ...] [--repeats 1]

Trials run solo (``resources.pack: 1``) unless ``--set resources.pack=...`` says otherwise. Each
launch runs in a fresh process with its own results folder and sqlite MLflow store. A reused
process builds each trial's algorithm afresh from its seed, so both launches must give the same
table with the same final metrics; the largest difference of a final metric is printed (expected
0). Prints one JSON line, then ``ratio=<wall without reuse / wall with reuse>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pack_grid import largest_difference, side_by_side  # noqa: E402 - after the path above


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="smoke")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repeats", type=int, default=1, help="launches of each kind, alternating")
    args = parser.parse_args()

    variants = {f"reuse-{reuse}": ["resources.pack=1", f"resources.reuse_actors={reuse}"] for reuse in ("false", "true")}
    best, tables = side_by_side(args.config, variants, args.sets, args.repeats)
    fresh, reused = tables["reuse-false"], tables["reuse-true"]
    print(json.dumps({
        "config": args.config, "sets": args.sets, "trials": len(fresh), "repeats": args.repeats,
        "new_process_wall_s": round(best["reuse-false"], 1), "reused_wall_s": round(best["reuse-true"], 1),
        "largest_final_difference": {k: round(v, 9) for k, v in sorted(largest_difference(fresh, reused).items())},
    }))
    print(f"ratio={best['reuse-false'] / best['reuse-true']:.2f}")


if __name__ == "__main__":
    main()
