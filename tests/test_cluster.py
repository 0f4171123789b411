"""Cluster-readiness: the cluster YAMLs validate offline, the Dockerfile lints clean, and a grid
submitted with `ray job submit` runs through a real two-node Ray cluster on this machine."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient
from ray.autoscaler._private.util import prepare_config, validate_config
from raycluster import RAY, ray_cluster

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILES = sorted((ROOT / "cluster").glob("*.yaml"))


def test_cluster_files_exist():
    assert {p.name for p in CLUSTER_FILES} >= {"gpu.yaml", "cpu.yaml", "local.yaml"}


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_yaml_validates_offline(path):
    config = yaml.safe_load(path.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    full = prepare_config(copy.deepcopy(config))  # Ray's own preparation and validation, no cloud calls
    validate_config(full)
    # the project reaches every node, and nothing is opened to the world
    assert any("adpo-ray" in target for target in config["file_mounts"])
    assert any("pip install" in c and "/home/ray/adpo-ray" in c for c in config["setup_commands"])
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "--host 127.0.0.1 --port 5000" in head
    if "docker" in config:
        assert any("--shm-size" in o for o in config["docker"]["run_options"])
        assert config["docker"]["image"].startswith("rayproject/ray:2.60.0-py311-")


def test_gpu_yaml_has_gpu_nodes():
    config = yaml.safe_load((ROOT / "cluster" / "gpu.yaml").read_text())
    assert config["docker"]["image"].endswith("-gpu")
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["node_config"]["InstanceType"].startswith(("g", "p"))
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(w["max_workers"] > w.get("min_workers", 0) for w in workers)  # autoscaling


def test_dockerfile_lints_clean():
    hadolint = Path(sys.executable).parent / "hadolint"
    res = subprocess.run([str(hadolint), str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "rayproject/ray:2.60.0-py311-${VARIANT}" in text and "ARG VARIANT=gpu" in text
    assert (ROOT / ".dockerignore").exists()


def test_run_grid_explains_a_missing_package(tmp_path):
    """`ray submit` copies run_grid.py alone: without the package it says what to do."""
    script = tmp_path / "run_grid.py"
    script.write_text((ROOT / "run_grid.py").read_text())
    res = subprocess.run([sys.executable, "-S", str(script), "--config", "smoke"], capture_output=True, text=True,
                         cwd=tmp_path, env={"PATH": os.environ["PATH"]})
    assert res.returncode != 0
    assert "adpo-ray is not installed" in res.stderr and "setup_commands" in res.stderr


@pytest.mark.slow
def test_job_submit_on_a_two_node_cluster(tmp_path):
    spec = {
        "name": "cluster_job",
        "environments": ["PreferenceBandit"],
        "scenarios": ["flip-high"],
        "anchors": {"modes": ["fixed", "dynamic"]},
        "budget": {"iterations": 2},
        "adpo": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 1},
    }
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    db = tmp_path / "mlflow.db"
    storage = tmp_path / "ray_results"
    with ray_cluster(cpus_per_node=1) as cluster:
        for _ in range(12):
            submit = subprocess.run(
                [RAY, "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(ROOT),
                 "--submission-id", "adpo-cluster-test", "--",
                 sys.executable, "run_grid.py", "--config", str(spec_file), "--tracking-uri", f"sqlite:///{db}",
                 "--storage-path", str(storage), "--name", "onjob", "--no-report"],
                env=cluster.env, capture_output=True, text=True, timeout=600,
            )
            # a busy machine can answer before the head's job agent is up: the job was not created
            if "No available agent to submit job" not in submit.stdout + submit.stderr:
                break
            time.sleep(5)
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
        assert "succeeded" in submit.stdout + submit.stderr

        def rest(path: str):
            request = urllib.request.Request(f"{cluster.dashboard_url}{path}",
                                             headers={"Authorization": f"Bearer {cluster.token}"})
            return json.loads(urllib.request.urlopen(request, timeout=30).read())

        # the dashboard's REST API, with the cluster's token, lists the job as SUCCEEDED
        job = next(j for j in rest("/api/jobs/") if j.get("submission_id") == "adpo-cluster-test")
        assert job["status"] == "SUCCEEDED"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{cluster.dashboard_url}/api/jobs/", timeout=30)
        assert denied.value.code == 401

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
