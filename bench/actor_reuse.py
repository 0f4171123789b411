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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pack_grid import compare  # noqa: E402 - after the path above

if __name__ == "__main__":
    compare(__doc__, ("new_process", ["resources.pack=1", "resources.reuse_actors=false"]),
            ("reused", ["resources.pack=1", "resources.reuse_actors=true"]))
