"""A grid launched with trial packs (``resources.pack``) against the same grid launched solo, both
in-process on real Ray Tune with a real sqlite MLflow store: the same MLflow child runs (tags and
params, metric steps), one summary.csv and report row per trial, fewer Tune trials; and each member
evaluated out of its pack's checkpoint as its solo trial's checkpoint is."""

from __future__ import annotations

import contextlib
import csv
import io
import os
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from ray.rllib.algorithms.algorithm import Algorithm

from adpo_ray.cli import main
from adpo_ray.metrics import CURATED, PPO_KL_BETA
from adpo_ray.orchestration.evaluate import checkpoint_of, evaluate
from adpo_ray.orchestration.launch import SUMMARY_FILE, resume_grid, run_grid
from adpo_ray.orchestration.spool import Spool
from adpo_ray.orchestration.status import grid_status
from adpo_ray.orchestration.tracking import (
    PACK_CHECKPOINT_TAG,
    PACK_MEMBER_TAG,
    PACK_TAG,
    spool_folder,
)
from adpo_ray.report.data import load_tune_folder
from adpo_ray.rllib.init import start_pack_from_checkpoints
from adpo_ray.rllib.packed import register_pack
from adpo_ray.spec import TrialSpec, parse_spec

from ..helpers.grid import SMALL, children, new_store, options, run_py, steps
from ..helpers.packs import RUNNER_TAGS
from ..helpers.resume import (
    assert_same_curves,
    checkpoints_written,
    kill_when,
    launch,
    results_seen,
    resume,
    trials_held,
    tune_snapshot,
)

pytestmark = pytest.mark.slow

# 2 scenarios x 2 anchor modes x 1 seed of ADPO (one shape: one pack under `auto`), and the
# KL-penalty baseline's 2 scenarios (another pack: each member adapts its own beta)
SPEC = {**SMALL, "algorithms": ["adpo", "ppo_kl"]}


def tune_result(results, trial_id: str):
    """The Tune result of the trial ``trial_id`` in a launch's ``results``."""
    return next(r for r in results if r.metrics["trial_id"] == trial_id)


def by_trial(client: MlflowClient, experiment: str) -> dict:
    parents, kids = children(client, experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    runs = {k.data.tags["trial"]: k for k in kids}
    assert len(runs) == len(kids)  # one child run per trial
    return runs


# the tests reading the launches run on one pytest-xdist worker (`--dist loadgroup`), so they are made once
ON_LAUNCHES = pytest.mark.xdist_group("pack_launches")


@pytest.fixture(scope="module")
def launches(ray_local, tmp_path_factory):
    """SPEC launched solo (``resources.pack: 1``) and packed (``auto``): ``{pack: (spec, options,
    result)}``; ``"printed"``: what the packed launch printed (Tune's progress table among it)."""
    tmp_path = tmp_path_factory.mktemp("launches")
    out = {}
    for pack in (1, "auto"):
        spec = parse_spec({**SPEC, "resources": {**SMALL["resources"], "pack": pack}})
        (tmp_path / str(pack)).mkdir()
        new_store(tmp_path / str(pack))
        opts = options(tmp_path / str(pack), "grid")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            out[pack] = (spec, opts, run_grid(spec, opts, verbose=1 if pack == "auto" else 0))
        if pack == "auto":
            out["printed"] = printed.getvalue()
    return out


@ON_LAUNCHES
def test_the_progress_table_shows_each_member_as_its_solo_trial(launches):
    """Tune's progress table of a packed launch: a row per member under its solo trial's name, with
    its own coordinates, iterations and env steps; the counts above it count members."""
    final = launches["printed"].split("== Status ==")[-1]  # the table printed at the end
    assert "Number of trials: 6/6 (6 TERMINATED)" in final, final
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in final.splitlines() if line.startswith("| ") and "TERMINATED" in line}
    trials = parse_spec(SPEC).trials()
    assert set(rows) == {t.dirname for t in trials}, final
    header = next(line for line in final.splitlines() if line.startswith("| Trial name"))
    columns = [c.strip() for c in header.split("|")[2:-1]]
    for t in trials:
        row = dict(zip(columns, rows[t.dirname], strict=True))
        assert (row["scenario"], row["algo"], row["anchor"], row["seed"]) == (
            t.scenario, t.algorithm, t.anchor_mode, str(t.seed)), (t.tag, row)
        assert (row["iter"], row["env steps"]) == ("3", "384"), (t.tag, row)
        assert 0.0 <= float(row["WinMass"]) <= 1.0, (t.tag, row)


@ON_LAUNCHES
def test_a_packed_grid_tracks_each_member_as_its_solo_trial(launches, tmp_path, capsys):
    trials = parse_spec(SPEC).trials()
    (solo_spec, solo_opts, solo), (_, packed_opts, packed) = launches[1], launches["auto"]
    assert not solo.errors and not packed.errors
    assert len(solo) == 6 and len(packed) == 2  # one pack of the 4 ADPO trials, one of the 2 ppo_kl trials

    solo_runs = by_trial(MlflowClient(solo_opts.tracking_uri), solo_spec.experiment_name)
    packed_client = MlflowClient(packed_opts.tracking_uri)
    packed_runs = by_trial(packed_client, solo_spec.experiment_name)
    assert set(solo_runs) == set(packed_runs) == {t.tag for t in trials}
    packs = {}
    for tag, run in packed_runs.items():
        mine = solo_runs[tag]
        assert run.info.status == "FINISHED" and run.info.run_name == mine.info.run_name
        assert run.data.params == mine.data.params, tag
        assert ({k: v for k, v in run.data.tags.items() if k not in RUNNER_TAGS}
                == {k: v for k, v in mine.data.tags.items() if k not in RUNNER_TAGS}), tag
        # a pack's member: its pack's Tune trial id, its place in the pack, the pack's checkpoint
        assert run.data.tags[PACK_TAG] == run.data.tags["tune_trial_id"], tag
        pack = tune_result(packed, run.data.tags[PACK_TAG])
        assert [TrialSpec(**t).tag for t in pack.config["trials"]][int(run.data.tags[PACK_MEMBER_TAG])] == tag
        assert run.data.tags[PACK_CHECKPOINT_TAG] == pack.checkpoint.path, tag
        packs.setdefault(run.data.tags[PACK_TAG], []).append(run.data.tags["algorithm"])
        assert set(run.data.metrics) == set(mine.data.metrics), tag  # every metric a solo trial logs
        logged = {m for m in run.data.metrics if m in CURATED}
        assert "eval/winmass" in logged, tag
        if run.data.tags["algorithm"] == "ppo_kl":  # its own beta, as the solo trial logs it
            assert PPO_KL_BETA in logged, tag
        for metric in logged:  # each member stepped by its own env steps, each step once
            assert steps(packed_client, run.info.run_id, metric) == [128, 256, 384], (tag, metric)
        artifacts = {a.path for a in packed_client.list_artifacts(run.info.run_id)}
        assert "metrics.csv" in artifacts
        assert ("checkpoint" in artifacts) == (PACK_TAG not in run.data.tags)  # a pack's stays in its folder
    assert sorted(packs.values()) == [["adpo"] * 4, ["ppo_kl"] * 2]

    # summary.csv and the report read from Tune's folder: one row per trial, as the solo launch's
    for run, opts in ((solo, solo_opts), (packed, packed_opts)):
        frame = pd.read_csv(f"{opts.run_dir}/{SUMMARY_FILE}")
        assert len(run.summary) == len(frame) == len(trials)
        assert set(frame.columns) == set(pd.read_csv(f"{solo_opts.run_dir}/{SUMMARY_FILE}").columns)
        assert sorted(frame["method"] + "/" + frame["scenario"]) == sorted(t.method + "/" + t.scenario for t in trials)
        assert set(frame["status"]) == {"TERMINATED"} and set(frame["env_steps"]) == {384}
        assert frame["eval/winmass"].notna().all()
        data = load_tune_folder(opts.run_dir)
        assert sorted(data.trials["trial"]) == sorted(t.dirname for t in trials)
        assert set(data.trials["status"]) == {"FINISHED"}
        curves = data.curves[data.curves["metric"] == "eval/winmass"]
        assert {trial: sorted(group["env_steps"]) for trial, group in curves.groupby("trial")} \
            == {t.dirname: [128, 256, 384] for t in trials}

    # the status of the folder counts members: every trial finished, every env step done
    status = grid_status(packed_opts.run_dir)
    assert status.trials["finished"] == len(trials) == sum(status.trials.values())
    (env,) = status.envs.values()
    assert env.steps_done == env.steps_budget == 384 * len(trials)
    # `adpo-ray status` on a member's run id: that member's own progress, then its launch's grid
    capsys.readouterr()
    member = next(r for r in packed_runs.values() if r.data.tags[PACK_MEMBER_TAG] == "1")
    tags = member.data.tags
    assert main(["status", member.info.run_id, "--tracking-uri", packed_opts.tracking_uri]) == 0
    out = capsys.readouterr().out
    assert f"trial {tags['trial']} ({tags['method']}, PreferenceBandit / {tags['scenario']}): finished" in out
    assert f"member 1 of the trial pack '{tags[PACK_TAG]}'" in out
    assert f"env steps: 384 / 384 (100%) in its MLflow run {member.info.run_id} (FINISHED)" in out
    assert f"launch folder: {packed_opts.run_dir}" in out and f"trials: {len(trials)} finished" in out
    solo_run = solo_runs[tags["trial"]]  # a solo trial's run: no pack
    assert main(["status", solo_run.info.run_id, "--tracking-uri", solo_opts.tracking_uri]) == 0
    out = capsys.readouterr().out
    assert f"trial {tags['trial']} (" in out and "trial pack" not in out and f"launch folder: {solo_opts.run_dir}" in out
    parent = member.data.tags["mlflow.parentRunId"]  # the launch's run: its grid alone
    assert main(["status", parent, "--tracking-uri", packed_opts.tracking_uri]) == 0
    out = capsys.readouterr().out
    assert f"trials: {len(trials)} finished" in out and "env steps:" not in out
    assert main(["status", "0" * 32, "--tracking-uri", packed_opts.tracking_uri]) == 2
    assert f"'{'0' * 32}' is neither a results folder nor a run at {packed_opts.tracking_uri}" in capsys.readouterr().err

    # a resume of the packed grid re-attaches every member's run and logs no step twice
    again = resume_grid(packed_opts.run_dir, verbose=0, report=False)
    assert len(again) == 2 and not again.errors
    assert by_trial(packed_client, solo_spec.experiment_name).keys() == packed_runs.keys()
    for run in packed_runs.values():
        assert steps(packed_client, run.info.run_id, "eval/winmass") == [128, 256, 384]


@ON_LAUNCHES
def test_a_pack_member_is_evaluated_as_its_solo_trial(launches, tmp_path, monkeypatch):
    """`adpo-ray evaluate` takes a pack member's run id, or the pack's checkpoint folder and
    ``--member``: the member's own policy out of the pack's checkpoint, logged to its run. A pack
    holding the solo launch's final policies evaluates each member exactly as its solo trial's
    own checkpoint evaluates."""
    (spec, solo_opts, _), (_, opts, _) = launches[1], launches["auto"]
    monkeypatch.setenv("ADPO_RAY_CACHE", str(tmp_path / "cache"))  # checkpoints downloaded here (subprocesses too)
    client = MlflowClient(opts.tracking_uri)
    runs = {tag: r for tag, r in by_trial(client, spec.experiment_name).items() if r.data.tags["algorithm"] == "adpo"}
    order = sorted(runs, key=lambda tag: int(runs[tag].data.tags[PACK_MEMBER_TAG]))  # the pack's member order
    assert len(order) == 4 and [runs[t].data.tags[PACK_MEMBER_TAG] for t in order] == ["0", "1", "2", "3"]
    member = runs[order[1]]  # not the first member
    checkpoint = member.data.tags[PACK_CHECKPOINT_TAG]

    res = run_py("-m", "adpo_ray.cli", "evaluate", member.info.run_id, "--tracking-uri", opts.tracking_uri,
                 cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    winmass = client.get_run(member.info.run_id).data.metrics["evaluate/clean/winmass_mean"]
    # member 1's trained policy: its final evaluation in the pack, which ran every member in one
    # batched product (here member 1's network alone: float32 sums may differ in the last bits)
    assert winmass == pytest.approx(member.data.metrics["eval/winmass"], abs=1e-6)
    assert all(abs(winmass - runs[t].data.metrics["eval/winmass"]) > 1e-4 for t in order if t != order[1])
    assert f"trial pack member 1: PreferenceBandit / clean: WinMass {winmass:.4f}" in res.stdout
    assert f"logged to run {member.info.run_id}" in res.stdout
    res = run_py("-m", "adpo_ray.cli", "evaluate", checkpoint, "--member", "1", cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"trial pack member 1: PreferenceBandit / clean: WinMass {winmass:.4f}" in res.stdout
    # a --member that is not the run's, or given with a solo trial's run: refused before Ray starts
    res = run_py("-m", "adpo_ray.cli", "evaluate", member.info.run_id, "--member", "2", "--tracking-uri",
                 opts.tracking_uri, cwd=tmp_path)
    assert res.returncode == 2 and (f"--member 2: run {member.info.run_id} is member 1 of the trial pack "
                                    f"'{member.data.tags[PACK_TAG]}'") in res.stderr, res.stderr
    solo_runs = by_trial(MlflowClient(solo_opts.tracking_uri), spec.experiment_name)
    with pytest.raises(ValueError, match="--member 0: run .* is a solo trial's"):
        checkpoint_of(solo_runs[order[0]].info.run_id, solo_opts.tracking_uri, 0)
    # the pack's checkpoint needs a member in 0..3
    with pytest.raises(ValueError, match=r"a trial pack's checkpoint of 4 members; pick one with --member 0\.\.3 "
                                         r"\(none given;"):
        evaluate(Path(checkpoint))

    # the pack with each member set to its solo trial's final policy (solo launch, same trials)
    solos = [checkpoint_of(solo_runs[t].info.run_id, solo_opts.tracking_uri)[0] for t in order]
    register_pack()
    algo = Algorithm.from_checkpoint(checkpoint)
    try:
        start_pack_from_checkpoints(algo, solos)
        algo.save_to_path(str(tmp_path / "solos_packed"))
    finally:
        algo.stop()
    values = []
    for k, solo in enumerate(solos):
        want = evaluate(solo)
        assert evaluate(tmp_path / "solos_packed", member=k) == want, order[k]
        values.append(want.mean)
    assert len(set(values)) == 4  # four policies, each evaluated as its own


@pytest.mark.long_running
def test_a_pack_killed_mid_run_resumes_with_every_member_step_once(tmp_path):
    """The driver is SIGKILLed while the pack trains, its snapshot holding a result past the pack's
    checkpoint: `adpo-ray resume` restores the pack from that checkpoint, the steps it trains again
    are replayed, and each member's MLflow run holds every step once, as Tune's folder reads."""
    spec_dict = {**SMALL, "name": "packkill", "budget": {"iterations": 12, "checkpoint_every": 4},
                 "resources": {**SMALL["resources"], "pack": "auto"}}
    uri = new_store(tmp_path)
    run_dir = tmp_path / "ray_results" / "p"
    # a snapshot every 0.5 s: the one that holds the held pack's newest result comes soon
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0.5"}
    proc = launch(spec_dict, tmp_path, uri, "p", env=env)

    def driver_past_the_first_checkpoint() -> bool:
        # the pack has saved its first checkpoint (iteration 4: checkpoints go into the folder as
        # they are saved), not its second, and the driver has a result past it
        return (sorted(checkpoints_written(run_dir).values()) == [1]
                and max(results_seen(run_dir, "p").values(), default=0) > 4)

    def past_a_checkpoint(snapshot) -> bool:
        (pack,) = snapshot.status  # one trial: the pack
        return (snapshot.status[pack] == "RUNNING" and not snapshot.last_result[pack].get("done")
                and snapshot.last_result[pack].get("training_iteration", 0) > snapshot.checkpoint_iteration[pack] > 0)

    def snapshot_past_a_checkpoint() -> bool:
        # judged from Tune's snapshot in the folder, what a resume restores
        try:
            snapshot = tune_snapshot(run_dir)
        except ValueError:  # being copied there right now
            return False
        return snapshot is not None and past_a_checkpoint(snapshot)

    # the pack held from then on, until the snapshot holds that result and the grid is killed
    with trials_held(proc, driver_past_the_first_checkpoint, what="a result past the first checkpoint"):
        kill_when(proc, snapshot_past_a_checkpoint, timeout=120)
    snapshot = tune_snapshot(run_dir)
    assert past_a_checkpoint(snapshot), snapshot  # no newer snapshot came before the kill
    (pack,) = snapshot.status
    # the kill may land while Tune copies its state files into the folder; cut the grid's variant
    # generator state short, as such a kill does: the resume takes Tune's own copy on this machine
    # (without it Tune would drop the pack and start a new one)
    (variants,) = run_dir.glob("basic-variant-state-*.json")
    variants.write_bytes(b"")
    # so may the pack's result.json be, several results short of the checkpoint the pack restarts
    # from: the resume completes it from the driver's copy (else those results would be missing)
    results = run_dir / snapshot.dirname[pack] / "result.json"
    data = results.read_bytes()
    results.write_bytes(data[:data.index(b"\n") + 100])
    res = resume(run_dir, "--no-report", expect="restore", cwd=tmp_path, env=env)
    assert "report: " not in res.stdout and not (run_dir / "report").exists()  # as asked
    assert f"{variants.name} was cut short by the kill; restored from Tune's copy" in res.stdout, res.stdout[-2000:]
    assert f"{snapshot.dirname[pack]}/result.json was cut short by the kill; completed from Tune's copy" in res.stdout
    assert set(tune_snapshot(run_dir).status) == {pack}  # the same pack went on
    # the pack went on from its checkpoint: Tune's folder holds the first attempt (at least as far
    # as the snapshot went), then the iterations from the checkpoint on again
    with open(run_dir / snapshot.dirname[pack] / "progress.csv", newline="") as f:
        its = [int(row["training_iteration"]) for row in csv.DictReader(f)]
    again = next(i for i in range(1, len(its)) if its[i] <= its[i - 1])
    assert its[:again] == list(range(1, again + 1)) and again >= snapshot.last_result[pack]["training_iteration"], its
    assert its[again:] == list(range(snapshot.checkpoint_iteration[pack] + 1, 13)), its
    client = MlflowClient(uri)
    runs = by_trial(client, "packkill")
    assert set(runs) == {t.tag for t in parse_spec(spec_dict).trials()}
    for tag, run in runs.items():
        assert run.info.status == "FINISHED" and PACK_TAG in run.data.tags
        for metric in ("env_steps", "eval/winmass", "loss/adpo"):
            assert steps(client, run.info.run_id, metric) == [128 * i for i in range(1, 13)], (tag, metric)
    assert_same_curves(uri, "packkill", run_dir)  # both hold the first attempt of each step
    # the launch's own record (its spool) holds each member's step once too, replayed steps left out
    spool = Spool(spool_folder(str(run_dir), "p"))
    recorded: dict[str, list[int]] = {}
    for record, _ in spool.records():
        if record["op"] == "metrics" and record["key"] != "p":
            recorded.setdefault(record["key"], []).append(record["step"])
    spool.close()
    assert recorded == {f"p/{tag}": [128 * i for i in range(1, 13)] for tag in runs}
