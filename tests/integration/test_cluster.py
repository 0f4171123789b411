"""Cluster-readiness: a grid submitted with `ray job submit` runs through a real two-node Ray
cluster on this machine (the offline checks of the cluster files are in tests/unit)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from .raycluster import RAY, ray_cluster

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_FILES = sorted((ROOT / "cluster").glob("*.yaml"))


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
