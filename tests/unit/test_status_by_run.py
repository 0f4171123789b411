"""`adpo-ray status RUN_ID` on runs that lead to no grid on this machine, against a real sqlite
MLflow store (no Ray): a run that is not a grid's is refused with what it is; a trial whose launch
folder is elsewhere gets its progress from MLflow alone, and the CLI says where the grid is."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from adpo_ray.cli import main
from adpo_ray.orchestration.status import run_status

from ..helpers.grid import new_store


@pytest.fixture
def store(tmp_path):
    uri = new_store(tmp_path)
    client = MlflowClient(uri)
    return uri, client, client.create_experiment("grid")


def test_a_run_that_is_not_a_grids_is_refused(store):
    uri, client, exp = store
    teacher = client.create_run(exp, tags={"teacher": "Hopper-v5_h64", "env": "Hopper-v5"}).info.run_id
    with pytest.raises(ValueError, match=rf"run {teacher} is neither a grid's launch .* \(tags: env, teacher\)"):
        run_status(teacher, uri)
    with pytest.raises(FileNotFoundError, match=rf"'{'f' * 32}' is neither a results folder nor a run at {uri}"):
        run_status("f" * 32, uri)


def test_a_trial_whose_launch_folder_is_elsewhere(store, capsys, tmp_path, monkeypatch):
    uri, client, exp = store
    parent = client.create_run(exp, tags={"kind": "grid", "run_dir": "s3://bucket/ray_results/g"}).info.run_id
    kid = client.create_run(exp, tags={"mlflow.parentRunId": parent, "trial": "PreferenceBandit_clean_adpo-fixed_h64_s0",
                                       "method": "adpo-fixed", "env": "PreferenceBandit", "scenario": "clean",
                                       "pack": "a1b2c3", "pack_member": "2"}).info.run_id
    client.log_metric(kid, "env_steps", 256, step=256)
    found = run_status(kid, uri)
    assert found.grid is None and found.run_dir == "s3://bucket/ray_results/g" and "local folders only" in found.note
    t = found.trial
    assert (t.trial, t.pack, t.member, t.logged_steps, t.run_status) == (
        "PreferenceBandit_clean_adpo-fixed_h64_s0", "a1b2c3", 2, 256, "RUNNING")
    assert t.state is None and t.steps_budget is None  # the folder is not here: MLflow alone
    assert main(["status", kid, "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "trial PreferenceBandit_clean_adpo-fixed_h64_s0 (adpo-fixed, PreferenceBandit / clean): running" in out
    assert "member 2 of the trial pack 'a1b2c3'" in out and f"env steps: 256 in its MLflow run {kid} (RUNNING)" in out
    assert "launch folder: s3://bucket/ray_results/g (" in out and "`adpo-ray status RUN_DIR` on a machine" in out
    # a run id needs no --tracking-uri when the store is the default one of the working directory
    monkeypatch.chdir(tmp_path)
    assert main(["status", "f" * 32]) == 2
    assert f"is neither a results folder nor a run at {uri}" in capsys.readouterr().err
