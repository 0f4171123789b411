"""Cluster-readiness on this machine: each shipped cluster YAML's own head and worker start
commands (once per distinct set: YAMLs that share them share one start) bring up a two-node Ray cluster with token authentication on (the jobs REST API answers
401 without the token, 200 with it), and a grid submitted with `ray job submit` runs through
the gpu.yaml one (the offline checks of the cluster files are in tests/unit)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ..helpers.grid import new_store
from .raycluster import RAY, yaml_cluster

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_FILES = sorted((ROOT / "cluster").glob("*.yaml"))
pytestmark = pytest.mark.slow


def _get(url: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30)


def _token() -> str:
    """A token made as the README says (`ray get-auth-token --generate`), in a throwaway HOME."""
    import tempfile

    with tempfile.TemporaryDirectory() as home:
        out = subprocess.run([RAY, "get-auth-token", "--generate"], env={"HOME": home, "PATH": str(Path(RAY).parent)},
                             capture_output=True, text=True, timeout=60, check=True)
    assert len(out.stdout.strip()) >= 32
    return out.stdout.strip()


def submit_grid_job(cluster, tmp_path: Path):
    spec = {
        "name": "cluster_job",
        "environments": ["PreferenceBandit"],
        "scenarios": ["flip-high"],
        "anchors": {"modes": ["fixed", "dynamic"]},
        "budget": {"iterations": 2},
        "train": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 1},
        "resources": {"pack": 1},  # two trials, two actors on the two nodes
    }
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    db = tmp_path / "mlflow.db"
    new_store(tmp_path)
    storage = tmp_path / "ray_results"
    deadline = time.time() + 300
    while True:
        submit = subprocess.run(
            [RAY, "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(ROOT),
             "--submission-id", "adpo-cluster-test", "--",
             sys.executable, "run_grid.py", "--config", str(spec_file), "--tracking-uri", f"sqlite:///{db}",
             "--storage-path", str(storage), "--name", "onjob", "--no-report"],
            env=cluster.env, capture_output=True, text=True, timeout=600,
        )
        # a busy machine can answer before the head's job agent is up: the job was not created
        if "No available agent to submit job" not in submit.stdout + submit.stderr or time.time() > deadline:
            break
        time.sleep(5)
    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
    assert "succeeded" in submit.stdout + submit.stderr

    def rest(path: str):
        return json.loads(_get(f"{cluster.dashboard_url}{path}", cluster.token).read())

    job = next(j for j in rest("/api/jobs/") if j.get("submission_id") == "adpo-cluster-test")
    assert job["status"] == "SUCCEEDED"
    # the trials ran as actors of this cluster, spread over its two one-CPU nodes
    actors = rest("/api/v0/actors?limit=1000&detail=1&filter_keys=class_name"
                  "&filter_predicates=%3D&filter_values=GridTrainable")["data"]["result"]["result"]
    assert len(actors) == 2, actors
    assert len({a["node_id"] for a in actors}) == 2

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("cluster_job")
    runs = client.search_runs([exp.experiment_id])
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(kids) == 2 and all(k.info.status == "FINISHED" for k in kids)
    assert {k.data.tags["anchor_mode"] for k in kids} == {"fixed", "dynamic"}
    assert all(k.data.metrics["training_iteration"] == 2 for k in kids)


def _ray_starts(cluster_yaml: Path) -> tuple:
    config = yaml.safe_load(cluster_yaml.read_text())
    return tuple(tuple(c for c in config[key] if "ray start" in c)
                 for key in ("head_start_ray_commands", "worker_start_ray_commands"))


# YAMLs whose `ray start` lines are the same start the same cluster: one start covers them all
# (gpu.yaml first, as it also runs a grid job)
SAME_STARTS: dict[tuple, list[Path]] = {}
for _file in sorted(CLUSTER_FILES, key=lambda p: p.name != "gpu.yaml"):
    SAME_STARTS.setdefault(_ray_starts(_file), []).append(_file)


@pytest.mark.long_running
@pytest.mark.parametrize("cluster_yamls", list(SAME_STARTS.values()), ids=lambda g: "+".join(p.name for p in g))
def test_cluster_yaml_starts_a_locked_cluster(cluster_yamls, tmp_path):
    cluster_yaml = cluster_yamls[0]
    token = _token()
    with yaml_cluster(cluster_yaml, token) as cluster:
        # the worker joined with the token it was given; the REST API wants it
        with pytest.raises(urllib.error.HTTPError) as denied:
            _get(f"{cluster.dashboard_url}/api/jobs/")
        assert denied.value.code == 401
        with pytest.raises(urllib.error.HTTPError) as wrong:
            _get(f"{cluster.dashboard_url}/api/jobs/", "0" * 64)
        assert wrong.value.code in (401, 403)
        assert _get(f"{cluster.dashboard_url}/api/jobs/", token).status == 200
        if cluster_yaml.name == "gpu.yaml":  # the headline cluster also runs a grid job
            submit_grid_job(cluster, tmp_path)
