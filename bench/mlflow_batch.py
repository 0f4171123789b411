"""MLflow's sqlite store: CPU per metric value when one ``log_batch`` carries one step of a run
against several, side by side (the tracker's sender drains after every trial result, so each of
its calls carries one step of a run).

    python bench/mlflow_batch.py [--runs 16] [--metrics 14] [--steps 1 4] [--rounds 4]

A fresh sqlite store in a temporary folder, ``--runs`` runs (a pack's members; a bandit ADPO
trial logs 14 metrics a step); per round and per steps-per-call, 10 calls per run of
``--metrics`` metrics x that many steps, alternated. Prints one JSON line (process CPU ms per metric value, median over rounds), then
``ratio=<the most steps per call / one step per call>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--metrics", type=int, default=14)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        client = MlflowClient(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        experiment = client.create_experiment("bench")
        runs = [client.create_run(experiment).info.run_id for _ in range(args.runs)]
        keys = [f"metric_{i}" for i in range(args.metrics)]
        step, ms = 0, {n: [] for n in args.steps}
        for r in range(args.rounds):
            for n in (args.steps if r % 2 == 0 else reversed(args.steps)):
                t0 = time.process_time()
                for _ in range(10):
                    for run in runs:
                        client.log_batch(run, metrics=[Metric(k, 1.0, 0, step + s) for s in range(n) for k in keys])
                    step += n
                ms[n].append(1e3 * (time.process_time() - t0) / (10 * args.runs * n * args.metrics))
    med = {n: round(statistics.median(v), 4) for n, v in ms.items()}
    ratio = med[max(args.steps)] / med[min(args.steps)]
    print(json.dumps({"runs": args.runs, "metrics": args.metrics, "cpu_ms_per_value_by_steps_per_call": med,
                      "ratio": round(ratio, 3)}))
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
