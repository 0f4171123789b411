"""A real multi-process Ray cluster on this machine (head + one worker node), for tests, started
by a cluster YAML's own start commands.

Each node runs on 127.0.0.1 under its own temp dir, HOME and ports, with the cluster's token; the
processes it started (and only those) are stopped afterwards, so other Ray instances on the
machine — the test session's own included — are untouched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..helpers.grid import free_port

RAY = str(Path(sys.executable).parent / "ray")


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


def _wait_for_nodes(cluster: Cluster, n: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run([RAY, "status", "--address", cluster.gcs_address], env=cluster.env,
                             capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.count("node_") >= n:
            return
        time.sleep(1)
    raise RuntimeError(f"the cluster did not reach {n} nodes: {out.stdout}\n{out.stderr}")


def _own_ports() -> str:
    """Free ports for a node's agents: two nodes on one machine (or another Ray here) would
    otherwise both take the defaults (the dashboard agent's 52365), and the job agent of one
    fails to start ("No available agent to submit job")."""
    return (f" --dashboard-agent-listen-port={free_port()} --dashboard-agent-grpc-port={free_port()}"
            f" --metrics-export-port={free_port()} --runtime-env-agent-port={free_port()}")


def localize(command: str, *, gcs_port: int, temp_dir: str, dash_port: int | None) -> str:
    """A cluster YAML's `ray start` command, run here: the head's address is loopback, ports are
    free ones, each node has its own temp dir and one CPU, and the autoscaler's bootstrap file
    (written by `ray up` on a real head) is left out."""
    command = command.replace("$RAY_HEAD_IP", "127.0.0.1")
    command = re.sub(r"--port=6379\b", f"--port={gcs_port}", command)
    command = command.replace(":6379", f":{gcs_port}")
    command = re.sub(r"--object-manager-port=\d+", f"--object-manager-port={free_port()}", command)
    command = command.replace("--autoscaling-config=~/ray_bootstrap_config.yaml", "")
    extra = (f" --num-cpus=1 --node-ip-address=127.0.0.1 --temp-dir={temp_dir} --disable-usage-stats"
             + _own_ports())
    if dash_port:
        extra += f" --include-dashboard=true --dashboard-port={dash_port} --ray-client-server-port={free_port()}"
    return command.replace("ray start", f"{RAY} start{extra}", 1)


def _start_node(command: str, env: dict, temp_dir: str) -> None:
    """Run one node's `ray start`; if it fails, the error carries what it printed and the last
    lines of the node's own logs (the dashboard's, the GCS's, the raylet's), which name the cause."""
    try:
        out = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=420)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"`ray start` ran past {e.timeout} s\n{_node_logs(temp_dir)}") from None
    if out.returncode != 0:
        raise RuntimeError(f"`ray start` exited {out.returncode}: {command}\n--- its stdout:\n{out.stdout[-3000:]}"
                           f"\n--- its stderr:\n{out.stderr[-6000:]}\n{_node_logs(temp_dir)}")


def _node_logs(temp_dir: str, lines: int = 25) -> str:
    logs = Path(temp_dir) / "session_latest" / "logs"
    names = ("dashboard.log", "dashboard.err", "gcs_server.out", "gcs_server.err", "raylet.out", "raylet.err")
    parts = []
    for name in names:
        f = logs / name
        if f.is_file() and f.stat().st_size:
            tail = f.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {f}:\n" + "\n".join(tail))
    return "\n".join(parts) or f"(no node logs under {logs})"


@contextlib.contextmanager
def yaml_cluster(cluster_yaml: Path, token: str):
    """Head and one worker started by the YAML's own `head_start_ray_commands` and
    `worker_start_ray_commands` (its `ray stop` and MLflow lines aside), each node with a fresh
    HOME holding the cluster's token, as the YAML's file_mounts put it there."""
    import yaml

    config = yaml.safe_load(cluster_yaml.read_text())
    temp_dir = tempfile.mkdtemp(prefix="yc", dir="/tmp")
    gcs_port, dash_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env["PATH"] = f"{Path(RAY).parent}:{env.get('PATH', '')}"
    # A cloud head starts its dashboard and GCS on idle cores; here they share two with the rest of
    # the suite, so they get longer than Ray's 60 s (dashboard) and ~20 s (GCS connect) to come up.
    env.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "300")
    env.setdefault("RAY_gcs_server_port_wait_time_s", "120")
    homes = {}
    for role in ("head", "worker"):
        homes[role] = Path(temp_dir) / f"home-{role}"
        (homes[role] / ".ray").mkdir(parents=True)
        (homes[role] / ".ray" / "auth_token").write_text(token)
    starts = {
        "head": [c for c in config["head_start_ray_commands"] if "ray start" in c],
        "worker": [c for c in config["worker_start_ray_commands"] if "ray start" in c],
    }
    try:
        for role, commands in starts.items():
            assert commands, f"{cluster_yaml.name}: no `ray start` in the {role} start commands"
            node_dir = f"{temp_dir}/{role[0]}"
            for command in commands:
                local = localize(command, gcs_port=gcs_port, temp_dir=node_dir,
                                 dash_port=dash_port if role == "head" else None)
                _start_node(local, env={**env, "HOME": str(homes[role])}, temp_dir=node_dir)
        # a driver of this cluster: the token mode and the token, as the YAML's docker env gives them
        client_env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
        cluster = Cluster(f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dash_port}", token, client_env, temp_dir)
        _wait_for_nodes(cluster, 2, timeout=120)
        yield cluster
    finally:
        _stop(temp_dir, gcs_port)
        shutil.rmtree(temp_dir, ignore_errors=True)  # a failed start's logs are in its error already
