"""The grid on real Ray Tune with real MLflow (sqlite store, and a real `mlflow server`)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from adpo_ray.orchestration.launch import finish, run_grid
from adpo_ray.orchestration.planning import ResourceError, plan_trials
from adpo_ray.orchestration.trainable import GridTrainable
from adpo_ray.report.build import build_report, log_report
from adpo_ray.report.data import load_mlflow, load_tune_folder
from adpo_ray.report.summary import summary_frame
from adpo_ray.spec import parse_spec

from ..helpers.grid import (
    ROOT,
    SMALL,
    children,
    free_port,
    mlflow_server,
    new_store,
    options,
    run_py,
    steps,
)
from ..helpers.resume import (
    assert_same_curves,
    done_in_folder,
    kill_when,
    launch,
    results_seen,
    resume,
    trials_held,
    tune_snapshot,
    wait_until,
)

pytestmark = pytest.mark.slow


def check_grid_in_mlflow(client, spec, results, expected_iterations):
    parents, kids = children(client, spec.experiment_name)
    assert len(parents) == 1 and len(kids) == len(spec.trials())
    parent = parents[0]
    assert {k.data.tags["mlflow.parentRunId"] for k in kids} == {parent.info.run_id}
    assert "spec.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    by_tag = {k.data.tags["trial"]: k for k in kids}
    batch = spec.train_for(spec.environments[0], "adpo").train_batch_size
    for r in results:
        trial = r.config["trial"]
        kid = by_tag[f"{trial['env']}_{trial['scenario']}_adpo-{trial['anchor_mode']}_h{trial['hidden_size']}_s{trial['seed']}"]
        tags, params, metrics = kid.data.tags, kid.data.params, kid.data.metrics
        for key in ("scenario", "env", "anchor_mode", "seed"):
            assert tags[key] == str(trial[key])
        assert tags["hidden_size"] == str(trial["hidden_size"]) and tags["algorithm"] == "adpo"
        assert {"noise_type", "severity", "grid", "git_commit", "version.ray"} <= set(tags)
        assert params["tau_anc"] == str(spec.adpo_for(trial["env"]).tau_anc) and params["anchor_mode"] == trial["anchor_mode"]
        assert len(params) < 60  # curated (every knob that applies, off ones too), not RLlib's ~300 keys
        assert kid.info.status == "FINISHED"
        # Tune and MLflow agree on the final values and on the whole history
        assert metrics["eval/winmass"] == pytest.approx(r.metrics["eval/winmass"])
        assert metrics["env_steps"] == r.metrics["env_steps"]
        assert steps(client, kid.info.run_id) == [batch * i for i in range(1, expected_iterations + 1)]
        assert steps(client, kid.info.run_id, "eval/winmass") == [batch * i for i in range(1, expected_iterations + 1)]
        arts = [a.path for a in client.list_artifacts(kid.info.run_id)]
        assert "metrics.csv" in arts and "checkpoint" in arts
    return parent, kids


# the tests reading the grid run on one pytest-xdist worker (`--dist loadgroup`), so it is launched once
ON_SMALL_GRID = pytest.mark.xdist_group("small_grid")


@pytest.fixture(scope="module")
def small_grid(ray_local, tmp_path_factory):
    """One small real grid (4 trials) tracked through a real `mlflow server` on 127.0.0.1 (sqlite
    store behind it, artifacts proxied to a folder), shared by the tests that read its records."""
    tmp_path = tmp_path_factory.mktemp("small_grid")
    # solo trials: each child run holds its checkpoint, which `evaluate` restores (packs: test_pack_grid)
    spec = parse_spec({**SMALL, "resources": {**SMALL["resources"], "pack": 1}})
    with mlflow_server(new_store(tmp_path, "server.db"), tmp_path / "server-artifacts") as uri:
        opts = options(tmp_path, "e2e", uri=uri)
        results = run_grid(spec, opts, verbose=0)
        yield spec, opts, results, tmp_path


@ON_SMALL_GRID
def test_small_grid_tune_and_mlflow_agree(small_grid, tmp_path):
    spec, opts, results, grid_dir = small_grid
    assert len(results) == 4 and not results.errors
    client = MlflowClient(opts.tracking_uri)
    parent, kids = check_grid_in_mlflow(client, spec, results, 3)
    assert parent.info.status == "FINISHED"
    # the launch view: per-method numbers and the spec's knobs on the parent, a how-to on the experiment
    for method in ("adpo-fixed", "adpo-dynamic"):
        finals = [r.metrics["eval/winmass"] for r in results if r.config["trial"]["anchor_mode"] == method[5:]]
        prefix = f"summary/PreferenceBandit/{method}/winmass"
        assert parent.data.metrics[f"{prefix}_mean"] == pytest.approx(np.mean(finals))
        assert parent.data.metrics[f"{prefix}_n"] == 2
        assert parent.data.metrics[f"{prefix}_ci_low"] <= parent.data.metrics[f"{prefix}_mean"] <= parent.data.metrics[f"{prefix}_ci_high"]
    assert parent.data.params["spec.train.lr"] == "0.003" and parent.data.params["spec.budget.iterations"] == "3"
    note = client.get_experiment_by_name(spec.experiment_name).tags["mlflow.note.content"]
    assert "Compare anchor strategies" in note and "anchor_mode" in note
    # the metrics CSV artifact is the run's history
    kid = kids[0]
    csv = Path(client.download_artifacts(kid.info.run_id, "metrics.csv", str(tmp_path)))
    import pandas as pd

    table = pd.read_csv(csv)
    assert list(table["env_steps"]) == [128, 256, 384]
    assert table["eval/winmass"].iloc[-1] == pytest.approx(kid.data.metrics["eval/winmass"])
    frame = summary_frame(results)
    assert set(frame["method"]) == {"adpo-fixed", "adpo-dynamic"} and (frame["status"] == "TERMINATED").all()
    # artifacts went through the server to its destination folder
    assert list((grid_dir / "server-artifacts").rglob("metrics.csv"))
    assert list((grid_dir / "server-artifacts").rglob("spec.yaml"))


@ON_SMALL_GRID
def test_run_grid_writes_the_summary_and_the_report(small_grid):
    """run_grid() called from Python ends a grid as the CLI does: summary.csv in the folder (the
    summary it returns) and the report, read from MLflow, next to the results."""
    spec, opts, run, _ = small_grid
    run_dir = Path(opts.run_dir)
    import pandas as pd

    csv = pd.read_csv(run_dir / "summary.csv")
    assert len(csv) == 4 and (csv["status"] == "TERMINATED").all()
    assert list(csv.columns) == list(run.summary.columns) and len(run.summary) == 4
    by_trial = {(r.config["trial"]["scenario"], r.config["trial"]["anchor_mode"]): r.metrics["eval/winmass"] for r in run}
    for _, row in csv.iterrows():
        assert row["eval/winmass"] == pytest.approx(by_trial[(row["scenario"], row["anchor_mode"])])
    assert run.report["report.html"] == run_dir / "report" / "report.html" and run.report["report.html"].is_file()
    assert len(pd.read_csv(run_dir / "report" / "results.csv")) == 4
    assert run.notes == [] and run.mlflow_pending == 0 and not run.interrupted  # read from MLflow, no fallback
    # the end of a grid without a report, and of an interrupted one: the summary alone
    for kwargs in ({"report": False}, {"interrupted": True}):
        again = finish(spec, opts, run.results, mlflow_pending=0, **kwargs)
        assert again.report is None and again.notes == [] and len(again.summary) == 4, kwargs
    assert (run_dir / "summary.csv").read_text().count("\n") == 5  # header + 4 trials, rewritten whole


def tfevents_steps(folder: Path, tag: str) -> list[int]:
    """Steps of one scalar in a trial's TensorBoard event file (TFRecord frames of Event protos)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in folder.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        i = 0
        while i + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = Event.FromString(data[i + 12:i + 12 + length])
            i += 12 + length + 4
            out += [event.step for v in event.summary.value if v.tag == tag]
    return sorted(out)


@ON_SMALL_GRID
def test_evaluate_a_bandit_run(small_grid, tmp_path):
    spec, opts, results, _ = small_grid
    client = MlflowClient(opts.tracking_uri)
    _, kids = children(client, spec.experiment_name)
    kid = kids[0]
    res = run_py("-m", "adpo_ray.cli", "evaluate", kid.info.run_id, "--tracking-uri", opts.tracking_uri, cwd=tmp_path,
               env={**os.environ, "ADPO_RAY_CACHE": str(tmp_path / "cache")}, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    winmass = client.get_run(kid.info.run_id).data.metrics["evaluate/clean/winmass_mean"]
    # the restored policy is the trained one: the same WinMass as its final evaluation
    assert winmass == pytest.approx(kid.data.metrics["eval/winmass"], abs=1e-6)
    assert f"WinMass {winmass:.4f}" in res.stdout
    assert "Started a local Ray instance" not in res.stdout + res.stderr  # read from the files, no Ray
    bad = run_py("-m", "adpo_ray.cli", "evaluate", "no-such-run", "--tracking-uri", opts.tracking_uri, cwd=tmp_path)
    assert bad.returncode == 2 and "neither a checkpoint folder nor a run" in bad.stderr
    bad = run_py("-m", "adpo_ray.cli", "evaluate", kid.info.run_id, "--scenario", "noisy", cwd=tmp_path)
    assert bad.returncode == 2 and "--scenario: unknown scenario" in bad.stderr


@ON_SMALL_GRID
def test_tensorboard_plots_against_env_steps(small_grid):
    spec, opts, results, _ = small_grid
    for r in results:
        assert tfevents_steps(Path(r.path), "ray/tune/eval/winmass") == [128, 256, 384]


@ON_SMALL_GRID
def test_report_from_mlflow_and_from_tune_folder_agree(small_grid, tmp_path):
    spec, opts, results, _ = small_grid
    from_mlflow = load_mlflow(opts.tracking_uri, spec.experiment_name)
    from_tune = load_tune_folder(opts.run_dir)
    a = from_mlflow.trials.set_index("trial")["eval/winmass"].sort_index()
    b = from_tune.trials.set_index("trial")["eval/winmass"].sort_index()
    assert len(a) == 4 and list(a.index) == list(b.index)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy())
    for data in (from_mlflow, from_tune):
        assert (data.curves.groupby("trial").size() == 3).all()
    files = build_report(from_mlflow, tmp_path / "report")
    log_report(opts.tracking_uri, from_mlflow.parent_run_id, tmp_path / "report")
    arts = [a.path for a in MlflowClient(opts.tracking_uri).list_artifacts(from_mlflow.parent_run_id, "report")]
    assert "report/report.html" in arts and "report/results.csv" in arts
    assert sum(p.suffix == ".png" for p in files.values()) >= 3


def make_flaky(marker_dir: Path):
    class FlakyTrainable(GridTrainable):
        """Raises once at iteration 3 of each trial; records the iteration it was restored at."""

        def step(self):
            result = super().step()
            flag = marker_dir / f"{self.trial.tag}.failed"
            if self.algo.iteration == 3 and not flag.exists():
                flag.write_text("1")
                raise RuntimeError("injected failure")
            return result

        def load_checkpoint(self, checkpoint_dir):
            super().load_checkpoint(checkpoint_dir)
            (marker_dir / f"{self.trial.tag}.restored").write_text(str(self.algo.iteration))

    return FlakyTrainable


def test_failed_trial_is_retried_from_its_checkpoint(ray_local, tmp_path):
    spec = parse_spec({**SMALL, "name": "flaky", "scenarios": ["clean"], "anchors": {"modes": ["dynamic"]},
                       "budget": {"iterations": 5, "checkpoint_every": 2}, "resources": {**SMALL["resources"], "max_failures": 1, "pack": 1}})
    markers = tmp_path / "markers"
    markers.mkdir()
    new_store(tmp_path)
    opts = options(tmp_path, "flaky")
    results = run_grid(spec, opts, trainable=make_flaky(markers), verbose=0)
    assert not results.errors
    (trial,) = spec.trials()
    assert (markers / f"{trial.tag}.failed").exists()
    assert (markers / f"{trial.tag}.restored").read_text() == "2"  # from the iteration-2 checkpoint
    assert results[0].metrics["training_iteration"] == 5
    client = MlflowClient(opts.tracking_uri)
    _, kids = children(client, "flaky")
    assert len(kids) == 1
    assert kids[0].data.tags["num_failures"] == "1" and kids[0].info.status == "FINISHED"
    assert steps(client, kids[0].info.run_id) == [128 * i for i in range(1, 6)]
    # a sqlite store: the artifacts really are under the configured absolute folder
    parents, _ = children(client, "flaky")
    assert Path(parents[0].info.artifact_uri).is_relative_to(opts.artifact_location)
    assert (Path(parents[0].info.artifact_uri) / "spec.yaml").is_file()


def test_trials_in_a_reused_process_train_as_in_new_ones(ray_local, tmp_path):
    """Tune's actor reuse (``resources.reuse_actors``, on by default): one trial at a time, the
    second trial runs in the first one's process, and each trial's final metrics equal, bit for
    bit, those of a launch with a new process per trial (each builds its algorithm afresh)."""
    base = {**SMALL, "name": "reuse", "scenarios": ["clean", "flip-high"], "anchors": {"modes": ["dynamic"]},
            "budget": {"iterations": 2}}
    finals = {}
    for reuse in (True, False):
        spec = parse_spec({**base, "resources": {**SMALL["resources"], "pack": 1, "max_concurrent_trials": 1, "reuse_actors": reuse}})
        folder = tmp_path / f"reuse-{reuse}"
        folder.mkdir()
        new_store(folder)
        results = run_grid(spec, options(folder, "r"), verbose=0)
        assert len(results) == 2 and not results.errors
        assert len({r.metrics["pid"] for r in results}) == (1 if reuse else 2)
        finals[reuse] = {r.config["trial"]["scenario"]: {k: v for k, v in r.metrics.items()
                                                         if k == "env_steps" or ("/" in k and not k.startswith("time/"))}
                         for r in results}
    assert set(finals[True]) == {"clean", "flip-high"} and "eval/winmass" in finals[True]["clean"]
    assert finals[True] == finals[False]


def test_unschedulable_trial_fails_before_launch(ray_local, tmp_path):
    spec = parse_spec({**SMALL, "name": "too_big", "resources": {"num_env_runners": 4}})
    opts = options(tmp_path, "too_big")
    with pytest.raises(ResourceError, match=r"can never be scheduled.*num_env_runners"):
        run_grid(spec, opts, verbose=0)
    assert not (tmp_path / "mlflow.db").exists()  # nothing started, nothing recorded
    assert not (Path(opts.run_dir) / ".adpo_launch.json").exists()  # the name is free for the fixed spec
    assert plan_trials(spec)[0].required["CPU"] == 5


def test_dry_run_starts_no_ray_and_counts_paper_grid(tmp_path):
    """The paper grid's plan on cluster/gpu.yaml, as trial packs (the preset's) and solo."""
    import re

    args = "'grid', '--config', 'tune_configs/twelve_scenarios.yaml', '--dry-run', '--cluster', 'cluster/gpu.yaml'"
    code = (
        "import sys, ray; from adpo_ray.cli import main; "
        f"rc = main([{args}, '--storage-path', '{tmp_path}']); print('=' * 40); "
        f"rc = rc or main([{args}, '--storage-path', '{tmp_path}', '--set', 'resources.pack=1']); "
        "assert not ray.is_initialized(), 'dry run started Ray'; sys.exit(rc)"
    )
    res = run_py("-c", code)
    assert res.returncode == 0, res.stderr
    packed, solo = res.stdout.split("=" * 40)
    for out in (packed, solo):
        assert "trials: 5760 = 3 env(s) x 12 scenario(s) x 6 method(s) x 3 hidden size(s) x 10 seed(s)" in out
        assert "HalfCheetah-v5" in out and "1,000,000" in out
        # the capacity plan: every node type at full scale, what runs at once, and the time it takes
        assert "1 x head.gpu (CPU=8, GPU=1), 8 x worker.gpu (CPU=8, GPU=1)" in out
    # the preset samples in each trial's own process: one CPU per trial, eight per node
    assert "{CPU=1}" in solo and "2 x {CPU=1}" not in solo and "at once: 72 trial(s)" in solo
    assert "trial packs (resources.pack: auto): 366 Tune trials for 5760 trials" in packed
    # a pack asks for its solo trial's placement group
    assert "each asking {CPU=1}" in packed and "at once: 72 Tune trial(s) (packs or trials)" in packed
    hours = [float(re.search(r"estimated wall time: ([0-9.]+) h", out).group(1)) for out in (packed, solo)]
    assert hours[0] < hours[1] / 1.3, hours  # packs priced at their measured speed-ups (about 1.5x on CPUs)
    assert "of it the launch's own CPU work (1,868,400 trial results" in packed  # 366 packs' members' iterations
    assert "measured by bench/throughput.py" in res.stdout and "packs at the speed-ups bench/throughput.py --packs" in packed
    assert "new API stack" not in res.stdout + res.stderr  # RLlib's banner stays out of the plan
    assert "DeprecationWarning" not in res.stdout + res.stderr
    assert not list(tmp_path.iterdir())  # nothing written
    res = run_py("run_grid.py", "--config", "tune_configs/smoke.yaml", "--dry-run")
    assert res.returncode == 0 and "trials: 24" in res.stdout


def test_run_grid_rejects_bad_spec_before_anything(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**SMALL, "anchors": {"modes": ["sticky"]}}))
    res = run_py(str(ROOT / "run_grid.py"), "--config", str(bad), "--storage-path", str(tmp_path / "rr"), cwd=tmp_path)
    assert res.returncode == 2
    assert "anchors: modes: unknown anchor mode 'sticky'" in res.stderr
    assert not (tmp_path / "rr").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.long_running
def test_sigkill_driver_then_resume(tmp_path):
    """Kill the driver mid-grid (SIGKILL) once a trial has finished and another has not, move its
    folder, cut its state files short, resume: trials not started before the kill start in the
    moved folder; MLflow never called finished a trial that Tune's snapshot did not hold as
    finished; each trial ends once, one parent and one child run each, the whole metric history
    present with no step twice and as in Tune's folder; finished trials are not re-run and keep
    their end time."""
    iters = 8
    # 3 trials, one at a time: the kill comes with a trial still to start, which Tune's variant
    # generator may not have created yet (it starts in the moved folder after the resume)
    spec_dict = {**SMALL, "name": "killed", "scenarios": ["clean", "flip-high", "shift-low"],
                 "anchors": {"modes": ["dynamic"]}, "budget": {"iterations": iters, "checkpoint_every": 2},
                 "train": {**SMALL["train"], "train_batch_size": 512, "minibatch_size": 128},
                 "resources": {**SMALL["resources"], "pack": 1, "max_concurrent_trials": 1}}
    uri = new_store(tmp_path)
    run_dir = tmp_path / "ray_results" / "k"
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "2"}
    proc = launch(spec_dict, tmp_path, uri, "k", env=env)
    client = MlflowClient(uri)

    def second_trial_reported() -> bool:
        # the first trial has ended (saved and stopped: they run one at a time), the second has
        # reported a result, the third has not
        return len(results_seen(run_dir, "k")) == 2

    def some_ended() -> bool:
        # one trial ended per MLflow or Tune's snapshot, another not
        try:
            _, kids = children(client, "killed")
            snapshot = tune_snapshot(run_dir)
        except Exception:  # noqa: BLE001 - the snapshot is being copied there right now
            return False
        return snapshot is not None and len(snapshot.finished) < 3 and (
            bool(snapshot.finished) or any(k.info.status == "FINISHED" for k in kids))

    # the trials held from then on: the grid cannot end before the kill, however fast they run
    with trials_held(proc, second_trial_reported, timeout=300, what="the second trial's first result"):
        wait_until(proc, lambda: len(done_in_folder(run_dir)) >= 1, timeout=300, what="a finished trial")
        # `adpo-ray status` while the grid runs: trials by state, env steps, an ETA, the parent run
        live = run_py("-m", "adpo_ray.cli", "status", str(run_dir), cwd=tmp_path)
        assert live.returncode == 0 and "k: running" in live.stdout, live.stdout + live.stderr
        assert "finished" in live.stdout and "ETA:" in live.stdout and "MLflow parent run:" in live.stdout
        kill_when(proc, some_ended, timeout=300)
    snapshot = tune_snapshot(run_dir)
    _, kids = children(client, "killed")
    finished_before = {k.data.tags["tune_trial_id"]: k.info.end_time for k in kids if k.info.status == "FINISHED"}
    assert set(finished_before) <= snapshot.finished, (finished_before, snapshot.status)
    assert 0 < len(snapshot.finished) < 3

    # the results folder moves (another disk, another machine) before the resume, and its state
    # files are cut short, as a full disk or a dying machine might leave them
    moved = tmp_path / "elsewhere" / "k"
    moved.parent.mkdir()
    run_dir.rename(moved)
    parent = moved / "adpo_mlflow_parent.json"
    parent.write_text(parent.read_text()[:7])
    with open(moved / "mlflow_spool" / "records.jsonl", "a") as f:
        f.write('{"op": "metrics", "key": "k/PreferenceBandit_cl')  # a torn last line
    res = resume(moved, expect="restore", cwd=tmp_path, env=env, timeout=600)
    assert "flip-high" in res.stdout  # the summary table
    assert "report: " in res.stdout and (moved / "report" / "report.html").exists()

    after = run_py("-m", "adpo_ray.cli", "status", str(moved), cwd=tmp_path)
    assert after.returncode == 0 and "trials: 3 finished" in after.stdout and "(100%)" in after.stdout, after.stdout
    parents, kids = children(client, "killed")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].info.run_id in after.stdout
    assert sorted(k.data.tags["trial"] for k in kids) == sorted(t.tag for t in parse_spec(spec_dict).trials())
    for k in kids:
        assert k.info.status == "FINISHED"
        assert steps(client, k.info.run_id) == [512 * i for i in range(1, iters + 1)], k.data.tags["trial"]
        assert steps(client, k.info.run_id, "eval/winmass") == [512 * i for i in range(1, iters + 1)]
        if k.data.tags["tune_trial_id"] in finished_before:  # not re-run, not finished again
            assert k.info.end_time == finished_before[k.data.tags["tune_trial_id"]]
    for trial_id in snapshot.finished:  # trained once: no step replayed in Tune's folder either
        progress = (moved / snapshot.dirname[trial_id] / "progress.csv").read_text().splitlines()
        assert len(progress) == 1 + iters, snapshot.dirname[trial_id]
    assert_same_curves(uri, "killed", moved)


CHROMIUM = "/usr/bin/chromium"


@ON_SMALL_GRID
def test_mlflow_ui_in_a_real_browser(small_grid, tmp_path):
    """The MLflow UI, served by a real `mlflow server` over the grid's store, in headless Chromium:
    the experiment page lists the child runs, with the anchor_mode and scenario tags as columns.
    With ``ADPO_RAY_DOCS_SCREENSHOTS=DIR`` its screenshots are kept in DIR (the docs' pictures of
    the MLflow UI are made this way)."""
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("ADPO_RAY_DOCS_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    spec, opts, results, grid_dir = small_grid
    uri = opts.tracking_uri  # the grid's own server
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(spec.experiment_name)
    parents, kids = children(client, spec.experiment_name)
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 2200, "height": 1000})
            page.goto(f"{uri}/#/experiments/{exp.experiment_id}/runs")
            page.get_by_text(parents[0].info.run_name, exact=True).wait_for(timeout=60_000)
            # expand the launch's parent run to list its child runs
            page.locator("button[data-component-id*='runnamecellrenderer']").first.click()
            for kid in kids:
                page.get_by_text(kid.info.run_name, exact=True).wait_for(timeout=20_000)
            # show the two tags as columns, as a researcher comparing anchor strategies would
            page.get_by_role("button", name="Columns", exact=True).click()
            search = page.get_by_placeholder("Search columns")
            for tag in ("anchor_mode", "scenario"):
                search.fill(tag)
                # the Tags group comes last in the column tree: its leaf is the last node
                page.locator(".du-bois-light-tree-treenode").last.locator(".du-bois-light-tree-title").click()
            page.keyboard.press("Escape")
            close = page.get_by_role("button", name="Close")
            if close.count():
                close.first.click()  # the assistant side panel
            cells = {}
            for tag in ("anchor_mode", "scenario"):
                column = page.locator(f"[role=gridcell][col-id='tags.`{tag}`']")
                column.first.wait_for(timeout=20_000)
                cells[tag] = set(column.all_inner_texts())
            page.screenshot(path=str(shots / "mlflow_ui.png"), full_page=True)

            # the launch view: the parent row shows its per-method summary metric
            metric = "summary/PreferenceBandit/adpo-dynamic/winmass_mean"
            page.get_by_role("button", name="Columns", exact=True).click()
            page.get_by_placeholder("Search columns").fill(metric)
            page.locator(".du-bois-light-tree-treenode").last.locator(".du-bois-light-tree-title").click()
            page.keyboard.press("Escape")
            summary_cells = page.locator(f"[role=gridcell][col-id='metrics.`{metric}`']")
            summary_cells.first.wait_for(timeout=20_000)
            shown = [t for t in summary_cells.all_inner_texts() if t.strip() not in ("", "-")]
            # the children, grouped by anchor_mode, in the chart view: one line per anchor strategy
            page.get_by_role("button", name="Group by", exact=True).click()
            page.get_by_placeholder("Search").last.fill("anchor_mode")
            page.locator("[data-radix-popper-content-wrapper]").get_by_text("anchor_mode", exact=True).first.click()
            page.keyboard.press("Escape")
            page.locator("input[type=radio][value=CHART]").dispatch_event("click")
            page.get_by_text(re.compile(r"^fixed \(")).first.wait_for(timeout=30_000)
            body = page.inner_text("body")
            page.screenshot(path=str(shots / "mlflow_charts.png"))
        finally:
            browser.close()
    assert {"fixed", "dynamic"} <= cells["anchor_mode"]
    assert {"clean", "flip-high"} <= cells["scenario"]
    assert (shots / "mlflow_ui.png").stat().st_size > 10_000
    parent_value = parents[0].data.metrics[metric]
    assert shown and float(shown[0]) == pytest.approx(parent_value)
    assert "Group: fixed" in body and "Group: dynamic" in body
    assert re.search(r"fixed \((adpo|eval|loss)/", body) and re.search(r"dynamic \((adpo|eval|loss)/", body)
    assert "summary/ENV/METHOD/METRIC_mean" in body  # the experiment's how-to, as the UI renders it


@pytest.mark.long_running
def test_mujoco_trials_through_the_grid_log_clean_eval(ray_local, tmp_path):
    """A few iterations of ADPO and of PPO on each MuJoCo env through the grid entry point, with the
    clean evaluation return logged to MLflow."""
    spec = parse_spec({
        "name": "mujoco_small", "environments": ["HalfCheetah-v5", "Hopper-v5"], "scenarios": ["gaussian-high"],
        "algorithms": ["adpo", "ppo"], "anchors": {"modes": ["dynamic"]}, "budget": {"iterations": 5},
        "train": {"train_batch_size": 256, "minibatch_size": 64, "num_epochs": 1},
        "resources": {"num_envs_per_env_runner": 4}, "evaluation": {"interval": 2, "episodes": 1},
    })
    new_store(tmp_path)
    opts = options(tmp_path, "mujoco")
    results = run_grid(spec, opts, verbose=0)
    assert len(results) == 4 and not results.errors
    client = MlflowClient(opts.tracking_uri)
    _, kids = children(client, "mujoco_small")
    assert {(k.data.tags["env"], k.data.tags["algorithm"]) for k in kids} == {
        ("HalfCheetah-v5", "adpo"), ("HalfCheetah-v5", "ppo"), ("Hopper-v5", "adpo"), ("Hopper-v5", "ppo")}
    for k in kids:
        assert k.info.status == "FINISHED"
        # evaluated at iterations 2 and 4 (the interval) and once more at the end (5), never repeated
        history = client.get_metric_history(k.info.run_id, "eval/return_mean")
        env_steps = sorted(m.step for m in client.get_metric_history(k.info.run_id, "env_steps"))
        assert sorted(m.step for m in history) == [env_steps[1], env_steps[3], env_steps[4]], (history, env_steps)
        assert len({m.value for m in history}) == 3
        assert np.isfinite(k.data.metrics["eval/return_mean"])
        assert np.isfinite(k.data.metrics["loss/vf"]) and np.isfinite(k.data.metrics["policy/entropy"])
        if k.data.tags["algorithm"] == "adpo":
            assert k.data.metrics["adpo/anchor_refreshes"] == 5

    # `adpo-ray evaluate` on a trained policy: by child run id (logged back to it) and by folder
    kid = next(k for k in kids if k.data.tags["env"] == "Hopper-v5" and k.data.tags["algorithm"] == "adpo")
    res = run_py("-m", "adpo_ray.cli", "evaluate", kid.info.run_id, "--scenario", "shift-high", "--episodes", "2",
               "--video", "--video-dir", str(tmp_path / "videos"), "--tracking-uri", opts.tracking_uri,
               cwd=tmp_path, env={**os.environ, "ADPO_RAY_CACHE": str(tmp_path / "cache"), "MUJOCO_GL": "egl"},
               timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Hopper-v5 / shift-high: clean return" in res.stdout and "over 2 episode(s)" in res.stdout
    # offscreen rendering through EGL (Mesa's software EGL on a machine without a GPU): an MP4 on the
    # run; where no EGL is installed the option says so plainly instead
    if "video: " in res.stdout:
        assert list((tmp_path / "videos").glob("*.mp4"))
        assert [a.path for a in client.list_artifacts(kid.info.run_id, "evaluate")][0].endswith(".mp4")
    else:
        assert "--video: MuJoCo could not render offscreen" in res.stdout, res.stdout
    logged = client.get_run(kid.info.run_id).data.metrics
    assert np.isfinite(logged["evaluate/shift-high/return_mean"]) and logged["evaluate/shift-high/return_std"] >= 0
    folder = next((tmp_path / "ray_results" / "mujoco").glob("HalfCheetah-v5_*_ppo_*/checkpoint_*"))
    res = run_py("-m", "adpo_ray.cli", "evaluate", str(folder), "--episodes", "1", cwd=tmp_path, timeout=600)
    assert res.returncode == 0 and "HalfCheetah-v5 / clean: clean return" in res.stdout, res.stdout + res.stderr


def test_grid_on_uri_storage(ray_local, tmp_path, monkeypatch):
    """--storage-path as a URI (here file://, the same code path as s3:// or gs://)."""
    monkeypatch.setenv("ADPO_RAY_SPOOL_DIR", str(tmp_path / "spools"))  # object storage takes no appends
    spec = parse_spec({**SMALL, "name": "uri_storage", "scenarios": ["clean"], "anchors": {"modes": ["dynamic"]}})
    new_store(tmp_path)
    opts = options(tmp_path, "onuri")
    opts.storage_path = f"file://{tmp_path / 'remote'}"
    results = run_grid(spec, opts, verbose=0)
    assert not results.errors
    assert (tmp_path / "remote" / "onuri" / "adpo_grid.json").exists()
    assert (tmp_path / "remote" / "onuri" / "adpo_mlflow_parent.json").exists()
    assert len(list((tmp_path / "spools").glob("onuri-*/records.jsonl"))) == 1
    client = MlflowClient(opts.tracking_uri)
    _, kids = children(client, "uri_storage")
    assert len(kids) == 1 and "checkpoint" in [a.path for a in client.list_artifacts(kids[0].info.run_id)]


def test_unreachable_tracking_server_fails_fast_before_ray(tmp_path):
    port = free_port()  # nothing listens there
    start = time.time()
    code = (
        "import sys, ray; from adpo_ray.cli import main; "
        f"rc = main(['grid', '--config', 'smoke', '--tracking-uri', 'http://127.0.0.1:{port}', "
        f"'--storage-path', '{tmp_path / 'rr'}']); "
        "assert not ray.is_initialized(), 'Ray started'; sys.exit(rc)"
    )
    res = run_py("-c", code)
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"cannot reach the MLflow tracking store 'http://127.0.0.1:{port}'" in res.stderr
    assert time.time() - start < 90
    assert not (tmp_path / "rr").exists()


def test_embedded_grid_serves_its_dashboard(tmp_path):
    """`make run`'s embedded Ray prints its dashboard URL; the dashboard's REST API (with the token
    Ray made for it) lists the grid's trial actors while the grid runs; then Ctrl-C ends the grid
    as a user's would (exit 130)."""
    import json as _json
    import re
    import threading

    spec = {**SMALL, "name": "watched", "scenarios": ["clean"], "anchors": {"modes": ["fixed", "dynamic"]},
            # solo trials (GridTrainable actors); it runs until the test has seen the dashboard
            "budget": {"iterations": 1000}, "resources": {**SMALL["resources"], "pack": 1}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["HOME"] = str(home)
    env["ADPO_RAY_DASHBOARD"] = "1"  # as `make run` starts it (the other tests start Ray without it)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_grid.py"), "--config", str(tmp_path / "spec.yaml"), "--tracking-uri",
         f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage-path", str(tmp_path / "rr"), "--name", "w", "--no-report"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    actors, url = [], None
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            time.sleep(1)
            found = [m for line in list(lines) if (m := re.search(r"Ray dashboard: (http://127\.0\.0\.1:\d+)", line))]
            if not found:
                continue
            url = found[0].group(1)
            token_file = home / ".ray" / "auth_token"
            headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"} if token_file.exists() else {}
            request = urllib.request.Request(
                f"{url}/api/v0/actors?limit=100&detail=1&filter_keys=class_name&filter_predicates=%3D"
                "&filter_values=GridTrainable", headers=headers)
            try:
                actors = _json.loads(urllib.request.urlopen(request, timeout=10).read())["data"]["result"]["result"]
            except OSError:
                continue
            if actors:
                break
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out_code = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        reader.join(timeout=10)
    assert url is not None, "".join(lines)[-3000:]
    assert actors, "the dashboard listed no trial actor while the grid ran"
    assert out_code == 130, "".join(lines)[-3000:]
