"""Scale-out on Ray's own autoscaler: a head of 1 CPU whose fake multi-node provider may add up to
3 one-CPU workers. A grid of 8 trials as 4 one-CPU trial packs launched with `--address auto` must
make the autoscaler add nodes (Tune keeps packs pending, so the autoscaler sees the demand), run
packs at the same time, and leave exactly one MLflow child run per trial."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from adpo_ray.orchestration.tracking import PACK_TAG

from ..helpers.grid import free_port, new_store
from .raycluster import RAY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def fake_cluster_config(gcs_port: int) -> dict:
    """Ray's fake multi-node provider (the 2.60 wheel ships no example of it)."""
    return {
        "cluster_name": "adpo-fake",
        "max_workers": 3,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{gcs_port}"},
        "auth": {"ssh_user": "ubuntu"},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "max_workers": 0, "node_config": {}},
            "ray.worker.cpu": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 3, "node_config": {}},
        },
        **{k: [] for k in ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                           "setup_commands", "head_setup_commands", "worker_setup_commands",
                           "head_start_ray_commands", "worker_start_ray_commands")},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
    }


SPEC = {
    "name": "autoscale",
    "environments": ["PreferenceBandit"],
    "scenarios": ["clean", "flip-high"],
    "anchors": {"modes": ["fixed", "dynamic"]},
    "seeds": [0, 1],
    # long enough that packs still run when the added nodes join (a bandit pack iteration takes
    # a few tenths of a second: with 4 iterations the four packs once ran one after another on
    # the head before any worker joined; with 40 all four overlapped, each running 14-19 s)
    "budget": {"iterations": 40, "checkpoint_every": 20},
    "train": {"train_batch_size": 256, "minibatch_size": 128, "num_epochs": 2, "lr": 0.003},
    # 4 packs of 2: 4 one-CPU Tune trials, the demand that makes the autoscaler add nodes
    "resources": {"pack": 2},
}


def _stop_group(proc: subprocess.Popen) -> None:
    """The head, its autoscaler and every node it started share one process group."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _alive_nodes(env: dict, address: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", f"import ray; ray.init(address='{address}', log_to_driver=False); "
         "print(sum(n['Alive'] for n in ray.nodes()))"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else -1


@pytest.mark.long_running
def test_grid_grows_a_fake_autoscaling_cluster(tmp_path):
    temp_dir = Path(f"/tmp/fa{os.getpid()}")  # short: Unix socket paths are limited
    gcs_port = free_port()
    config = tmp_path / "autoscaler.yaml"
    config.write_text(yaml.safe_dump(fake_cluster_config(gcs_port)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HOME=str(tmp_path / "home"), RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1",
               RAY_AUTH_MODE="disabled", RAY_TMPDIR=str(temp_dir))
    os.makedirs(env["HOME"])
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
         f"--autoscaling-config={config}", f"--temp-dir={temp_dir}", "--include-dashboard=false",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    db = tmp_path / "mlflow.db"
    new_store(tmp_path)
    try:
        deadline = time.time() + 90
        while _alive_nodes(env, f"127.0.0.1:{gcs_port}") < 1 and time.time() < deadline:
            time.sleep(2)
        run = subprocess.run(
            [sys.executable, str(ROOT / "run_grid.py"), "--config", str(spec_file), "--address", "auto",
             "--tracking-uri", f"sqlite:///{db}", "--storage-path", str(tmp_path / "ray_results"),
             "--name", "grow", "--no-report"],
            # `--address auto` finds this cluster through RAY_ADDRESS, as on its head node: Ray's own
            # lookup may pick another cluster running here (this test session's Ray, for one)
            env={**env, "RAY_ADDRESS": f"127.0.0.1:{gcs_port}"}, capture_output=True, text=True, timeout=900,
            cwd=tmp_path,
        )
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        # the launch planned for the autoscaler's node types, not the lone head
        assert "up to 4 trial(s) at once" in run.stdout, run.stdout[-3000:]
        nodes_after = _alive_nodes(env, f"127.0.0.1:{gcs_port}")
        monitor = "".join(p.read_text(errors="replace") for p in temp_dir.glob("session_*/logs/monitor.*"))
    finally:
        _stop_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
    # the autoscaler added worker nodes
    assert "Adding" in monitor and "ray.worker.cpu" in monitor, monitor[-3000:]
    assert nodes_after >= 2, nodes_after

    # trials ran at the same time, by their own timestamps
    spans = []
    for progress in (tmp_path / "ray_results" / "grow").glob("*/progress.csv"):
        rows = pd.read_csv(progress)
        spans.append((rows["timestamp"].iloc[0] - rows["time_this_iter_s"].iloc[0], rows["timestamp"].iloc[-1]))
    assert len(spans) == 4  # one Tune trial folder per pack
    overlap = max(sum(1 for s, e in spans if s < t < e) for t in [s + 1e-3 for s, _ in spans])
    assert overlap >= 2, sorted(spans)

    # exactly one MLflow child run per trial, all finished
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("autoscale")
    kids = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(kids) == 8 and len({k.data.tags["trial"] for k in kids}) == 8
    assert all(k.info.status == "FINISHED" for k in kids)
    packs = {k.data.tags[PACK_TAG] for k in kids}  # each member tagged with its pack's Tune trial
    assert len(packs) == 4 and sorted(sum(k.data.tags[PACK_TAG] == p for k in kids) for p in packs) == [2] * 4
