"""A small grid spec, a long sweep, launch options, MLflow look-ups, subprocess runs and a real
`mlflow server`, shared by the tests."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from adpo_ray.metrics import CURATED
from adpo_ray.orchestration.launch import GridOptions
from adpo_ray.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]

#: The tests' bandit grids sample 8 contexts per step, as the bandit presets do: with one, RLlib's
#: env runner steps a solo trial's one-step episodes one at a time, and the trial takes about
#: three times as long (sampling was 7.0 s of its 7.9 s).
BANDIT_ENVS = {"num_envs_per_env_runner": 8}

SMALL = {
    "name": "small",
    "environments": ["PreferenceBandit"],
    "scenarios": ["clean", "flip-high"],
    "anchors": {"modes": ["fixed", "dynamic"]},
    "budget": {"iterations": 3, "checkpoint_every": 2},
    "train": {"lr": 0.003, "train_batch_size": 128, "minibatch_size": 64, "num_epochs": 2},
    "adpo": {"beta_q": 0.5},
    "resources": {**BANDIT_ENVS},
}

#: 15 knobs with one value each: a 331-character tag, more than a folder name may hold
LONG = {"train.lr": [0.003], "adpo.tau_anc": [1.0], "adpo.beta_q": [1.0], "adpo.list_size": [8],
        "train.entropy_coeff": [0.0], "train.vf_coeff": [0.5], "train.gamma": [0.99], "train.lambda": [0.95],
        "train.num_epochs": [2], "train.minibatch_size": [64], "train.train_batch_size": [128],
        "train.grad_clip": [0.5], "bandit.num_items": [8], "bandit.context_dim": [8], "bandit.problem_seed": [0]}


def options(tmp_path: Path, name: str, uri: str | None = None) -> GridOptions:
    return GridOptions(
        tracking_uri=uri or f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "mlartifacts") if uri is None else None,
        storage_path=str(tmp_path / "ray_results"),
        name=name,
    )


@functools.cache
def _migrated_store() -> Path:
    """An empty MLflow sqlite store, made by MLflow (its schema migrations run) once per test
    process, removed when the process exits."""
    folder = Path(tempfile.mkdtemp(prefix="adpo-ray-tests-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def new_store(folder: Path, name: str = "mlflow.db") -> str:
    """The tracking URI of an empty MLflow sqlite store at ``folder/name``, a copy of one MLflow made
    in this process (kept if the file is there already).

    A new store costs about 1.1 s of CPU in the process that opens it first (MLflow's migrations),
    about 30 times over in the suite. The tests whose point is a store's first opening (two drivers
    opening one at once; no store made on refused input) start without one."""
    db = folder / name
    if not db.exists():
        shutil.copyfile(_migrated_store(), db)
    return f"sqlite:///{db}"


def children(client: MlflowClient, experiment: str):
    """(parent runs, child runs) of an MLflow experiment."""
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, kids


def steps(client: MlflowClient, run_id: str, key: str = "env_steps") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def run_py(*args, **kw) -> subprocess.CompletedProcess:
    """This Python on ``args`` (in the repository root unless ``cwd``), output captured."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=kw.pop("cwd", ROOT), **kw)


def _port_range() -> range:
    """Ports outside Ray's default worker ports (10002-19999) and outside the kernel's ephemeral
    range (``ip_local_port_range``, 32768-60999 by default), from which every bind to port 0
    draws: from 20000 up to that range, else above it; where it leaves too little room on either
    side, 20000-29999, guarded by :func:`free_port`'s check alone."""
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2])
    except (OSError, ValueError):
        low, high = 32768, 60999
    if low >= 21000:
        return range(20000, low)
    if high <= 64535:
        return range(high + 1, 65536)
    return range(20000, 30000)


def _own_ports(ports: range) -> range:
    """This test process's share of ``ports``: under pytest-xdist each worker takes every n-th
    port from its own offset, so two workers never pick the same port between the check here and
    their servers' bind."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count <= 1:
        return ports
    return ports[int(worker[2:]) % count::count]


_PORTS = _own_ports(_port_range())
_given: set[int] = set()


def free_port() -> int:
    """A TCP port free on every address, for a server a test starts (`mlflow server`, `ray start`),
    not given twice in this test session (xdist workers draw from disjoint shares).

    Taken at random from :func:`_port_range`, not by binding port 0: a port from the ephemeral
    range can go to any other process binding port 0 (a Ray agent, a worker, a gRPC client) before
    the server binds it; a cluster test's `ray start` failed so once (its metrics export port:
    "Address already in use")."""
    while True:
        port = random.choice(_PORTS)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("", port))  # every address: Ray's GCS listens on all of them
            except OSError:
                continue
        _given.add(port)
        return port


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, port: int | None = None):
    """A real `mlflow server` subprocess on 127.0.0.1; stopped (with its workers) afterwards."""
    port = port or free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend_uri,
         "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        # no job runner: its 7 processes (MLflow's GenAI jobs, which this project does not use)
        # cost about 15 s of CPU per server start
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail("mlflow server did not come up")
                time.sleep(1)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def check_complete(client: MlflowClient, experiment: str, spec_dict: dict, iterations: int, batch: int):
    """One parent; one FINISHED child per trial, every curated metric at every step exactly once,
    its metrics.csv present, and its checkpoint unless a trial pack ran it (the pack's stays in its
    Tune folder)."""
    from adpo_ray.orchestration.tracking import PACK_TAG

    parents, kids = children(client, experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(k.data.tags["trial"] for k in kids) == sorted(t.tag for t in parse_spec(spec_dict).trials())
    expected = [batch * i for i in range(1, iterations + 1)]
    for k in kids:
        assert k.info.status == "FINISHED", k.data.tags["trial"]
        logged = [m for m in k.data.metrics if m in CURATED]
        assert {"env_steps", "eval/winmass", "loss/adpo", "adpo/anchor_kl"} <= set(logged)
        for metric in logged:
            assert steps(client, k.info.run_id, metric) == expected, (k.data.tags["trial"], metric)
        arts = [a.path for a in client.list_artifacts(k.info.run_id)]
        assert "metrics.csv" in arts and ("checkpoint" in arts) == (PACK_TAG not in k.data.tags), arts
