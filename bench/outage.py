"""A tracking outage does not slow a grid: the same grid with and without a 60-second MLflow
outage in its middle, side by side.

    python bench/outage.py [--outage 60] [--iterations 100]

Each run starts a real `mlflow server` on 127.0.0.1 and launches one grid (`run_grid.py`, 4
bandit trials, 2 at a time) against it. In the outage run the server is killed once the grid
has logged its first results and started again on the same port `--outage` seconds later; the
grid's tracker spools its writes meanwhile and delivers them once the server is back. Prints
each grid's wall time, the MLflow writes still pending at its end, and `ratio=<with outage /
without>` last (the goal: at most 1.10, i.e. the driver never waits on MLflow).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC = {
    "name": "outage_bench",
    "environments": ["PreferenceBandit"],
    "scenarios": ["clean", "flip-high"],
    "anchors": {"modes": ["fixed", "dynamic"]},
    "train": {"lr": 0.003, "train_batch_size": 256, "minibatch_size": 128, "num_epochs": 2},
    "adpo": {"beta_q": 0.5},
    "resources": {"pack": 1},  # 4 Tune trials, 2 at a time (one pack would take all 4)
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("mlflow server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run(iterations: int, outage: float | None) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        folder, port = Path(tmp), free_port()
        spec = {**SPEC, "budget": {"iterations": iterations, "checkpoint_every": 10},
                "resources": {"max_concurrent_trials": 2}}
        (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
        server = start_server(folder, port)
        start = time.perf_counter()
        grid = subprocess.Popen(
            [sys.executable, str(ROOT / "run_grid.py"), "--config", str(folder / "spec.yaml"),
             "--tracking-uri", f"http://127.0.0.1:{port}", "--storage-path", str(folder / "results"),
             "--name", "g", "--no-report"],
            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "ADPO_RAY_MLFLOW_FLUSH_S": "60"},
        )
        if outage:
            records = folder / "results" / "g" / "mlflow_spool" / "records.jsonl"
            while grid.poll() is None and not (records.exists() and '"op": "metrics"' in records.read_text()):
                time.sleep(0.2)
            stop_server(server)
            down = time.perf_counter()
            while grid.poll() is None and time.perf_counter() - down < outage:
                time.sleep(0.2)
            server = start_server(folder, port)
        out, _ = grid.communicate()
        took = time.perf_counter() - start
        stop_server(server)
        pending = next((line for line in out.splitlines() if "not delivered" in line), "pending: none")
        if grid.returncode != 0:
            raise RuntimeError(out[-3000:])
        return took, pending


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage", type=float, default=60.0)
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args()
    base, base_pending = run(args.iterations, None)
    print(f"no outage: {base:.1f} s  ({base_pending})")
    hit, hit_pending = run(args.iterations, args.outage)
    print(f"{args.outage:.0f} s outage: {hit:.1f} s  ({hit_pending})")
    print(f"ratio={hit / base:.3f}")


if __name__ == "__main__":
    main()
