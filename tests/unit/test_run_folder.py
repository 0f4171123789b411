"""Every command that takes a run folder resolves it the same way (``run_folder.resolve_run_dir``):
a relative path, an absolute path and a path with a trailing slash name the same absolute folder;
a URI stays a URI (``file://`` here: a real URI the storage layer reads, with no network); a
command that reads local folders only says so for a URI, before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adpo_ray.cli import main
from adpo_ray.orchestration.evaluate import checkpoint_of
from adpo_ray.orchestration.run_folder import GridOptions, resolve_run_dir, write_grid_file
from adpo_ray.orchestration.tracking import spool_folder
from adpo_ray.spec import parse_spec

SPEC = {"name": "folders", "environments": ["PreferenceBandit"], "scenarios": ["clean"],
        "budget": {"iterations": 2, "checkpoint_every": 1}}


def spellings(tmp_path: Path, monkeypatch, folder: str = "grid") -> list[str]:
    """The local ways to name ``tmp_path/folder`` (the working directory becomes ``tmp_path``)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir(exist_ok=True)
    return [folder, f"./{folder}/", str(tmp_path / folder), str(tmp_path / folder) + "/",
            f"{tmp_path}/x/../{folder}"]


def test_resolve_run_dir_local_spellings(tmp_path, monkeypatch):
    target = str((tmp_path / "grid").resolve())
    for path in spellings(tmp_path, monkeypatch):
        assert resolve_run_dir(path) == target, path
    assert resolve_run_dir(Path("grid")) == target
    assert resolve_run_dir("other") != target  # control: another folder resolves elsewhere


@pytest.mark.parametrize("given,expected", [
    ("s3://bucket/x", "s3://bucket/x"),
    ("s3://bucket/x/", "s3://bucket/x"),
    ("s3://bucket/x//", "s3://bucket/x"),
    ("s3://bucket/x/?region=us-west-2", "s3://bucket/x?region=us-west-2"),
    ("gs://b/", "gs://b"),
    ("file:///abs/dir/", "file:///abs/dir"),
    ("file:///", "file:///"),
])
def test_resolve_run_dir_uris(given, expected):
    assert resolve_run_dir(given) == expected


@pytest.mark.parametrize("given,message", [
    ("s3:/bucket/x", "RUN_DIR 's3:/bucket/x': a URI needs '://' after its scheme, e.g. s3://bucket/x"),
    ("s3://", "no bucket or host after s3://"),
    ("file://rel", "file:///dir"),
])
def test_resolve_run_dir_malformed_uris(given, message):
    with pytest.raises(ValueError, match="RUN_DIR") as e:
        resolve_run_dir(given)
    assert message in str(e.value)


def grid_folder(tmp_path: Path) -> Path:
    """A grid folder as a launch leaves it before Tune writes anything: the grid file alone."""
    run_dir = tmp_path / "grid"
    spec = parse_spec(SPEC)
    options = GridOptions(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=None,
                          storage_path=str(tmp_path), name="grid")
    write_grid_file(str(run_dir), spec, options, {"concurrency": 1, "distill_runs": None, "init_runs": None})
    return run_dir


def test_status_resolves_every_spelling(tmp_path, monkeypatch, capsys):
    run_dir = grid_folder(tmp_path)
    for path in spellings(tmp_path, monkeypatch):
        assert main(["status", path]) == 0, path
        out = capsys.readouterr().out
        assert "grid: not running" in out and f"`adpo-ray resume {run_dir}` finishes it" in out, (path, out)


@pytest.mark.parametrize("uri", ["s3://bucket/x", "s3://bucket/x/", "file:///tmp/grid"])
def test_status_of_a_uri_says_local_folders_only(uri, capsys):
    assert main(["status", uri]) == 2
    err = capsys.readouterr().err
    assert f"RUN_DIR {uri.rstrip('/')}: adpo-ray status reads local folders only" in err, err


def test_sync_resolves_every_spelling(tmp_path, monkeypatch, capsys):
    run_dir = grid_folder(tmp_path)  # no MLflow spool yet: sync names the folder it looked in
    for path in spellings(tmp_path, monkeypatch):
        assert main(["sync", path]) == 2, path
        err = capsys.readouterr().err
        assert f"error: {run_dir} has no MLflow spool ({spool_folder(str(run_dir), 'grid')})" in err, (path, err)
    # a URI's spool is found by the URI's spelling: a trailing slash must not move it
    uri = f"file://{run_dir}"
    for path in (uri, uri + "/", uri + "//"):
        assert main(["sync", path]) == 2, path
        err = capsys.readouterr().err
        assert f"error: {uri} has no MLflow spool ({spool_folder(uri, 'grid')})" in err, (path, err)


def test_sync_and_resume_of_a_malformed_uri(capsys):
    for command in ("sync", "resume"):
        assert main([command, "s3:/bucket/x"]) == 2
        assert "RUN_DIR 's3:/bucket/x': a URI needs '://'" in capsys.readouterr().err


def test_resume_resolves_every_spelling(tmp_path, monkeypatch, capsys):
    # a folder holding no grid: resume stops before Ray starts, naming the folder it resolved
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grid").mkdir()
    for path in [*spellings(tmp_path, monkeypatch), f"file://{tmp_path}/grid/"]:
        assert main(["resume", path]) == 2, path
        err = capsys.readouterr().err
        expected = f"file://{tmp_path}/grid" if path.startswith("file:") else str(tmp_path / "grid")
        assert f"error: {expected} is not an adpo-ray grid folder" in err, (path, err)


def test_grid_resolves_the_storage_path(tmp_path, monkeypatch, capsys):
    for path in [*spellings(tmp_path, monkeypatch, "rr"), "s3://bucket/rr/", "file:///data/rr/"]:
        assert main(["grid", "--config", str(Path(__file__).parents[2] / "tune_configs/smoke.yaml"), "--dry-run",
                     "--storage-path", path, "--name", "g"]) == 0, path
        out = capsys.readouterr().out
        expected = path.rstrip("/") + "/g" if "://" in path else str(tmp_path / "rr" / "g")
        assert f"results:  {expected}\n" in out, (path, out)


def tune_folder(tmp_path: Path) -> Path:
    """A Tune results folder with one finished trial (its params.json and progress.csv)."""
    trial = parse_spec(SPEC).trials()[0]
    folder = tmp_path / "grid" / trial.dirname
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"trial": trial.as_dict(), "spec": SPEC}))
    (folder / "progress.csv").write_text("env_steps,done\n128,False\n256,True\n")
    return folder.parent


def test_report_results_resolves_every_spelling(tmp_path, monkeypatch, capsys):
    tune_folder(tmp_path)
    for i, path in enumerate(spellings(tmp_path, monkeypatch)):
        assert main(["report", "--results", path, "--out", f"out{i}"]) == 0, path
        assert "report: " in capsys.readouterr().out
        assert (tmp_path / f"out{i}" / "results.csv").read_text().count("\n") == 2, path  # header + the trial


@pytest.mark.parametrize("uri", ["s3://bucket/x/", "file:///tmp/grid"])
def test_report_results_of_a_uri_says_local_folders_only(uri, tmp_path, capsys):
    assert main(["report", "--results", uri, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"--results {uri.rstrip('/')}: adpo-ray report --results reads local folders only" in err, err
    assert not (tmp_path / "out").exists()


def test_evaluate_resolves_a_checkpoint_folder(tmp_path, monkeypatch):
    (tmp_path / "grid").mkdir()
    for path in spellings(tmp_path, monkeypatch):
        folder, run_id, member = checkpoint_of(path, f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert folder == tmp_path / "grid" and folder.is_absolute() and run_id is None and member is None, path
        assert checkpoint_of(path, f"sqlite:///{tmp_path / 'mlflow.db'}", 2)[2] == 2  # --member goes on


def test_evaluate_of_a_uri_says_local_folders_only(tmp_path, capsys):
    assert main(["evaluate", "s3://bucket/ckpt/", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    err = capsys.readouterr().err
    assert "CHECKPOINT s3://bucket/ckpt: adpo-ray evaluate reads local folders only" in err, err
    assert not (tmp_path / "mlflow.db").exists()  # stopped before the tracking store was opened


def test_a_cut_short_tune_state_file_is_restored_from_tunes_copy_or_refused(tmp_path, monkeypatch):
    """A resume first makes Tune's state files whole: a file a kill cut short is replaced by
    Tune's atomic copy in its driver staging folder on this machine; with none, a clear error
    names the file (Tune would otherwise drop the trials and start them again)."""
    import ray.cloudpickle as cloudpickle

    from adpo_ray.orchestration.launch import repair_tune_state

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "tmp"))
    run_dir = tmp_path / "results" / "grid-xyz"
    run_dir.mkdir(parents=True)
    (run_dir / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')
    state = {"_finished": True}
    torn = run_dir / "basic-variant-state-2026-01-01_00-00-00.json"
    torn.write_bytes(cloudpickle.dumps(state)[:5])
    assert repair_tune_state(str(tmp_path / "results")) == []  # control: another folder, nothing torn

    with pytest.raises(ValueError, match=r"basic-variant-state-2026-01-01_00-00-00.json is cut short .* no copy"):
        repair_tune_state(str(run_dir))
    staging = tmp_path / "tmp" / "ray" / "session_1" / "artifacts" / "2026-01-01_00-00-00" / "grid-xyz" / "driver_artifacts"
    staging.mkdir(parents=True)
    (staging / torn.name).write_bytes(b"")  # an unreadable copy is never used
    with pytest.raises(ValueError, match="no copy"):
        repair_tune_state(str(run_dir))
    (staging / torn.name).write_bytes(cloudpickle.dumps(state))
    assert repair_tune_state(str(run_dir)) == [str(torn)]
    assert cloudpickle.loads(torn.read_bytes()) == state
    assert repair_tune_state(str(run_dir)) == []  # whole now: left alone


def test_trial_logs_a_kill_cut_short_are_completed_from_tunes_copy_or_cut_at_a_whole_line(tmp_path, monkeypatch):
    """A resume makes each trial's result.json and progress.csv whole: a file the kill left older
    or cut short is completed from the same driver's staging copy where that copy extends it
    (results the restored trial would not log again), else its cut last line is dropped, so the
    restored trial's next result starts a line of its own."""
    from adpo_ray.orchestration.launch import repair_trial_logs

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "tmp"))
    run_dir = tmp_path / "results" / "grid-xyz"
    assert repair_trial_logs(str(run_dir)) == []  # no snapshot: the grid starts over, nothing to repair
    snapshot = "experiment_state-2026-01-01_00-00-00.json"
    (run_dir / "a").mkdir(parents=True)
    (run_dir / "b").mkdir()
    (run_dir / snapshot).write_text('{"trial_data": []}')
    lines = [json.dumps({"training_iteration": i, "env_steps": 128 * i}).encode() + b"\n" for i in range(1, 6)]
    (run_dir / "a" / "result.json").write_bytes(b"".join(lines[:2]))  # as of an earlier snapshot
    (run_dir / "a" / "progress.csv").write_bytes(b"training_iteration\n1\n2\n")  # whole: left alone
    (run_dir / "b" / "result.json").write_bytes(b"".join(lines[:3]) + lines[3][:7])  # cut mid-line
    sessions = tmp_path / "tmp" / "ray"
    same = sessions / "session_1" / "artifacts" / "2026-01-01_00-00-00" / "grid-xyz" / "driver_artifacts"
    (same / "a").mkdir(parents=True)
    (same / snapshot).write_text('{"trial_data": []}')
    (same / "a" / "result.json").write_bytes(b"".join(lines[:4]) + lines[4][:9])  # its own last line cut too
    (same / "a" / "progress.csv").write_bytes(b"training_iteration\n1\n2\n")
    # another grid of the same name, launched at another time: its copies are never used
    other = sessions / "session_2" / "artifacts" / "2026-02-02_00-00-00" / "grid-xyz" / "driver_artifacts"
    (other / "b").mkdir(parents=True)
    (other / "experiment_state-2026-02-02_00-00-00.json").write_text('{"trial_data": []}')
    (other / "b" / "result.json").write_bytes(b"".join(lines))

    assert repair_trial_logs(str(run_dir)) == [str(run_dir / "a" / "result.json"), str(run_dir / "b" / "result.json")]
    assert (run_dir / "a" / "result.json").read_bytes() == b"".join(lines[:4])
    assert (run_dir / "a" / "progress.csv").read_bytes() == b"training_iteration\n1\n2\n"
    assert (run_dir / "b" / "result.json").read_bytes() == b"".join(lines[:3])
    assert repair_trial_logs(str(run_dir)) == []  # whole now: left alone

    # a copy that does not begin with the folder's results is another run's, whatever its name
    (same / "a" / "result.json").write_bytes(lines[1] + lines[0] + b"".join(lines[2:]))
    assert repair_trial_logs(str(run_dir)) == []


def test_tunes_copies_are_found_once_and_a_vanished_one_is_passed_over(tmp_path, monkeypatch):
    """Tune's copies are listed per Ray session, not through ``session_latest`` (which every new
    Ray session on the machine moves), and a listed copy that is gone by the time it is read
    is passed over for the next one rather than failing the resume."""
    import ray.cloudpickle as cloudpickle

    from adpo_ray.orchestration import _ray_private
    from adpo_ray.orchestration.launch import repair_tune_state

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "tmp"))
    name = "basic-variant-state-2026-01-01_00-00-00.json"
    staging = tmp_path / "tmp" / "ray" / "session_1" / "artifacts" / "2026-01-01_00-00-00" / "grid-xyz" / "driver_artifacts"
    staging.mkdir(parents=True)
    (staging / name).write_bytes(cloudpickle.dumps({"_finished": True}))
    (tmp_path / "tmp" / "ray" / "session_latest").symlink_to(tmp_path / "tmp" / "ray" / "session_1")
    (tmp_path / "tmp" / "ray" / "session_gone").symlink_to(tmp_path / "tmp" / "ray" / "session_2")  # dangling
    assert _ray_private.driver_staging_copies("grid-xyz", name) == [str(staging / name)]

    run_dir = tmp_path / "results" / "grid-xyz"
    run_dir.mkdir(parents=True)
    torn = run_dir / name
    torn.write_bytes(b"")
    listed = [str(tmp_path / "vanished" / name), str(staging / name)]
    monkeypatch.setattr(_ray_private, "driver_staging_copies", lambda experiment, filename: listed)
    assert repair_tune_state(str(run_dir)) == [str(torn)]
    assert cloudpickle.loads(torn.read_bytes()) == {"_finished": True}



def _trainable(config):  # a Tune function trainable; never run here
    return {"x": 1}


def _generator(search: str):
    """A grid's variant generator, or a search's generator over Optuna (as launches build them)."""
    from optuna.distributions import FloatDistribution
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, SearchGenerator
    from ray.tune.search.optuna import OptunaSearch

    if search == "grid":
        return BasicVariantGenerator()
    return SearchGenerator(ConcurrencyLimiter(
        OptunaSearch(space={"x": FloatDistribution(0, 1)}, metric="x", mode="max", seed=0), 2))


@pytest.mark.parametrize("search", ["grid", "search"])
def test_trials_created_after_a_moved_folder_resumes_write_to_it(tmp_path, search):
    """A folder moved between a kill and the resume: the trials Tune's restored variant generator
    (a grid) or search generator (a search) has yet to create are created in the folder as it
    is now, not the old one (where their first checkpoint would fail). Real Tune objects, saved
    and restored as Tune saves and restores them; no Ray starts."""
    from ray import tune
    from ray.tune.experiment import Experiment

    from adpo_ray.orchestration.launch import follow_moved_folder

    old, moved = tmp_path / "ray_results" / "k", tmp_path / "elsewhere" / "moved"
    config = {"x": tune.grid_search([1, 2, 3])} if search == "grid" else {}
    generator = _generator(search)
    generator.add_configurations([Experiment("k", _trainable, config=config, num_samples=1 if search == "grid" else 3,
                                             storage_path=str(old.parent))])
    first = generator.next_trial()  # created before the kill
    assert first.storage.experiment_fs_path == str(old)
    old.mkdir(parents=True, exist_ok=True)
    generator.save_to_dir(str(old), session_str="2026-01-01_00-00-00")
    if search == "search":
        generator.searcher.save_to_dir(str(old), session_str="2026-01-01_00-00-00")
    moved.parent.mkdir()
    old.rename(moved)  # the folder moves, under another parent and another name

    def created_after_restore(folder):
        restored = _generator(search)
        restored.restore_from_dir(str(folder))
        trial = restored.next_trial()
        assert trial is not None
        return trial

    # control: as Tune restores it, the generator creates trials in the old folder
    assert created_after_restore(moved).storage.experiment_fs_path == str(old)
    assert follow_moved_folder(str(moved)) != []
    assert follow_moved_folder(str(moved)) == []  # once followed, nothing to rewrite
    later = created_after_restore(moved)
    assert later.storage.experiment_fs_path == str(moved)
