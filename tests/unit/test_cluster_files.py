"""Cluster files, offline: the cluster YAMLs validate against Ray's schema, the Dockerfile lints
clean, and `run_grid.py` copied alone explains what is missing. Starts no Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from adpo_ray.orchestration._ray_private import prepared_cluster_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_FILES = sorted((ROOT / "cluster").glob("*.yaml"))


def test_cluster_files_exist():
    assert {p.name for p in CLUSTER_FILES} >= {"gpu.yaml", "cpu.yaml", "local.yaml"}


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_yaml_validates_offline(path):
    config = yaml.safe_load(path.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    prepared_cluster_config(config)  # Ray's own preparation and validation, no cloud calls
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
    # the image has no .git: the commit is a build arg, seen by the tracker's run tags
    assert "ARG GIT_COMMIT" in text and "ENV ADPO_RAY_GIT_COMMIT=${GIT_COMMIT}" in text


def test_git_commit_of_an_image_without_git(monkeypatch, tmp_path):
    from adpo_ray.orchestration import tracking

    def no_git(*args, **kwargs):
        raise OSError("no git here")

    monkeypatch.setattr("subprocess.run", no_git)
    monkeypatch.setenv("ADPO_RAY_GIT_COMMIT", "abc123")
    assert tracking._git_commit() == "abc123"
    monkeypatch.setenv("ADPO_RAY_GIT_COMMIT", "unknown")
    assert tracking._git_commit() is None


def test_run_grid_explains_a_missing_package(tmp_path):
    """`ray submit` copies run_grid.py alone: without the package it says what to do."""
    script = tmp_path / "run_grid.py"
    script.write_text((ROOT / "run_grid.py").read_text())
    res = subprocess.run([sys.executable, "-S", str(script), "--config", "smoke"], capture_output=True, text=True,
                         cwd=tmp_path, env={"PATH": os.environ["PATH"]})
    assert res.returncode != 0
    assert "adpo-ray is not installed" in res.stderr and "setup_commands" in res.stderr


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_yaml_turns_token_auth_on_everywhere(path):
    """Every node starts Ray with token authentication, from a token file-mounted from the
    user's machine (never a file of this repo); the containers' drivers use it too."""
    config = yaml.safe_load(path.read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), (key, starts)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("RAY_AUTH_MODE=token" in o for o in config["docker"]["run_options"])
    assert not list(ROOT.glob("**/auth_token"))  # no token in the checkout, which file_mounts copies


@pytest.mark.parametrize("path", [p for p in CLUSTER_FILES if "aws" in p.read_text()], ids=lambda p: p.name)
def test_aws_node_types_have_an_instance_profile_and_resources(path):
    config = yaml.safe_load(path.read_text())
    assert config["provider"]["type"] == "aws"
    for name, node_type in config["available_node_types"].items():
        profile = node_type["node_config"].get("IamInstanceProfile", {})
        assert profile.get("Arn", "").startswith("arn:aws:iam::"), f"{path.name}: {name} has no instance profile"
        assert node_type["resources"].get("CPU", 0) > 0, f"{path.name}: {name} states no CPUs for the plan"
    assert "EDIT" in path.read_text().split("IamInstanceProfile")[1].splitlines()[1]
