"""A real multi-process Ray cluster on this machine (head + one worker node), for tests.

Each node is started with `ray start` on 127.0.0.1 under its own temp dir and token; the
processes it started (and only those) are stopped afterwards, so other Ray instances on the
machine — the test session's own included — are untouched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    gcs_address: str
    dashboard_url: str
    token: str
    env: dict
    temp_dir: str


def _own_processes(temp_dir: str, gcs_port: int) -> list[int]:
    import psutil
    import ray  # noqa: F401  (puts Ray's vendored psutil on the path)

    me = {os.getpid(), *(a.pid for a in psutil.Process().parents())}
    roots = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.pid in me:
            continue
        args = p.info["cmdline"] or []
        if any(temp_dir in a or a.endswith(f":{gcs_port}") for a in args):
            roots.append(p)
    pids = set()
    for p in roots:
        pids.add(p.pid)
        with contextlib.suppress(psutil.Error):
            pids.update(c.pid for c in p.children(recursive=True))
    return sorted(pids - me)


def _stop(temp_dir: str, gcs_port: int) -> None:
    import psutil
    import ray  # noqa: F401

    pids = _own_processes(temp_dir, gcs_port)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    _, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=15)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


@contextlib.contextmanager
def ray_cluster(cpus_per_node: int = 1):
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Unix socket paths are limited
    gcs_port, dash_port = free_port(), free_port()
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    common = ["--num-cpus", str(cpus_per_node), "--disable-usage-stats"]
    try:
        # Each node its own temp dir, as on separate machines: nodes sharing one would also share
        # (and clean up) each other's runtime-env working directories.
        subprocess.run(
            [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
             "--temp-dir", f"{temp_dir}/h", *common],
            env=env, check=True, capture_output=True, timeout=120,
        )
        subprocess.run([RAY, "start", "--address", f"127.0.0.1:{gcs_port}", "--temp-dir", f"{temp_dir}/w", *common],
                       env=env, check=True, capture_output=True, timeout=120)
        cluster = Cluster(f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dash_port}", token, env, temp_dir)
        _wait_for_nodes(cluster, 2)
        yield cluster
    finally:
        _stop(temp_dir, gcs_port)


def _wait_for_nodes(cluster: Cluster, n: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run([RAY, "status", "--address", cluster.gcs_address], env=cluster.env,
                             capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.count("node_") >= n:
            return
        time.sleep(1)
    raise RuntimeError(f"the cluster did not reach {n} nodes: {out.stdout}\n{out.stderr}")
