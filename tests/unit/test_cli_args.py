"""Bad command-line input gets a clear error naming the argument and what is allowed, with exit
code 2, before anything starts (no Ray, no MLflow store, no results folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adpo_ray.cli import main
from adpo_ray.orchestration.launch import check_name, check_storage_path

ROOT = Path(__file__).resolve().parents[2]

BAD_ARGS = [
    # (extra arguments to `grid --config smoke --dry-run`, what the error says)
    (["--name", "../../x"], "--name '../../x': use 1-128 letters"),
    (["--name", "/abs/path"], "--name '/abs/path'"),
    (["--name", "a b"], "--name 'a b'"),
    (["--name", ".hidden"], "starting with a letter or digit"),
    (["--name", "x" * 129], "1-128"),
    (["--storage-path", "s3:/bucket/x"], "a URI needs '://' after its scheme, e.g. s3://bucket/x"),
    (["--storage-path", "gs:bucket"], "gs://bucket"),
    (["--storage-path", "s3://"], "no bucket or host after s3://"),
    (["--storage-path", "file://relative/dir"], "file:///dir"),
    (["--storage-path", "://x"], "not a folder, and not a URI"),
    (["--max-concurrent", "0"], "argument --max-concurrent: 0: must be a whole number >= 1"),
    (["--max-concurrent", "-3"], "must be a whole number >= 1"),
    (["--max-concurrent", "many"], "'many' is not a whole number"),
    (["--max-workers", "-1"], "argument --max-workers: -1: must be a whole number >= 0"),
    (["--steps-per-second", "0"], "--steps-per-second: 0 must be a positive number"),
    (["--steps-per-second", "nan"], "must be a positive number"),
    (["--steps-per-second", "inf"], "must be a positive number"),
    (["--steps-per-second", "fast"], "'fast' is not a number"),
    (["--cluster", "cluster/nope.yaml"], "--cluster cluster/nope.yaml: No such file"),
    (["--cluster", "cluster/local.yaml"], "a `provider: local` cluster lists 3 machine(s)"),
]


@pytest.mark.parametrize("extra,message", BAD_ARGS, ids=[" ".join(a)[:40] for a, _ in BAD_ARGS])
def test_bad_grid_arguments(extra, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    try:
        code = main(["grid", "--config", "smoke", "--dry-run", "--storage-path", str(tmp_path / "r"), *extra])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "r").exists() and not (tmp_path / "mlflow.db").exists()


def test_bad_config_names_presets(capsys):
    assert main(["grid", "--config", "no_such_preset", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "file not found" in err and "presets you can name instead" in err and "smoke" in err


@pytest.mark.parametrize("name", ["smoke", "a", "run-1.2_b", "x" * 128])
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("path", ["/tmp/results", "rel/dir", "s3://bucket/x", "s3://bucket/x?region=us-west-2",
                                  "gs://b", "file:///abs/dir", "C:/windows/dir"])
def test_good_storage_paths(path):
    assert check_storage_path(path) == path


def test_sync_and_resume_of_a_folder_that_is_no_grid(tmp_path, capsys):
    for command in ("sync", "resume"):
        assert main([command, str(tmp_path)]) == 2
        assert "is not an adpo-ray grid folder" in capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["report", "--experiment", "smoke", "--out", "rep"],
    ["status", "0123456789abcdef0123456789abcdef"],
    ["evaluate", "0123456789abcdef0123456789abcdef"],
])
def test_readers_of_a_missing_store_create_none(command, tmp_path, capsys, monkeypatch):
    """Run from a folder without the default store (``./mlflow.db``), the commands that only
    read MLflow say so and exit 2; MLflow would otherwise create an empty database there."""
    monkeypatch.chdir(tmp_path)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"no MLflow store at sqlite:///{tmp_path.resolve() / 'mlflow.db'}" in err and "--tracking-uri" in err
    assert list(tmp_path.iterdir()) == []


def test_make_mlflow_ui_is_offered_only_for_the_store_it_serves(tmp_path):
    """`make mlflow-ui` serves the repository's ./mlflow.db: a launch from another folder is told
    the `mlflow ui` command for its own store, not a make target that would show another one."""
    from adpo_ray.cli import make_ui_serves, ui_command
    from adpo_ray.orchestration.cluster import console_script
    from adpo_ray.orchestration.mlflow_store import default_tracking_uri

    assert make_ui_serves(default_tracking_uri(ROOT))
    assert not make_ui_serves(default_tracking_uri(tmp_path)) and not make_ui_serves("http://127.0.0.1:5000")
    mlflow = console_script("mlflow")
    assert ui_command(default_tracking_uri(tmp_path), str(tmp_path / "mlartifacts")) == (
        f"{mlflow} ui --backend-store-uri sqlite:///{tmp_path.resolve()}/mlflow.db --host 127.0.0.1 --port 5000 "
        f"--default-artifact-root {tmp_path}/mlartifacts")
    assert ui_command("http://127.0.0.1:5000") == f"{mlflow} ui --backend-store-uri http://127.0.0.1:5000 --host 127.0.0.1 --port 5000"


def test_printed_commands_name_the_tools_beside_this_python(monkeypatch, tmp_path):
    """A command printed for the user (`mlflow ui`, `ray get-auth-token`) names the script of
    this Python's environment: by its bare name where the shell finds that very one (an
    activated venv), else by its path (`make run` runs .venv/bin/python without activating it);
    None for a tool that is not installed."""
    import os
    import sys

    from adpo_ray.orchestration.cluster import console_script

    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "mlflow").exists()  # installed with the package
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin")
    assert console_script("mlflow") == "mlflow"
    monkeypatch.setenv("PATH", str(tmp_path))  # not activated: nothing named mlflow on the path
    assert console_script("mlflow") == str(bin_dir / "mlflow")
    assert console_script("no-such-tool-here") is None
