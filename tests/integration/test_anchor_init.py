"""Online trials from a competent start (``anchors.init``) on real RLlib, Tune and MLflow: every
anchor mode and PPO start from the same pretrained parameters and observation statistics (the
anchor is that policy: KL 0 before the first update), the pretraining is trained once and reused
by a second launch, and each child run records which run it started from."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns

from adpo_ray.core.packed import StackedActorCritic
from adpo_ray.metrics import MEMBERS
from adpo_ray.orchestration.launch import GridOptions, run_grid
from adpo_ray.orchestration.policies import TEACHER_TAG
from adpo_ray.orchestration.spool import RUN_KEY_TAG
from adpo_ray.orchestration.tracking import PACK_MEMBER_TAG, PACK_TAG
from adpo_ray.report.build import build_report
from adpo_ray.report.data import load_mlflow, load_tune_folder
from adpo_ray.rllib._ray_private import env_to_module, local_learner
from adpo_ray.rllib.factory import build_algo_config
from adpo_ray.rllib.init import module_dir, policy_state, start_from_checkpoint
from adpo_ray.rllib.learner import kl_from_logits
from adpo_ray.rllib.module import ANCHOR_DIST_INPUTS
from adpo_ray.spec import TrialSpec, parse_spec, pretrained_of

from ..helpers.grid import BANDIT_ENVS, new_store, options
from ..helpers.packs import RUNNER_TAGS

pytestmark = pytest.mark.slow

INIT = {
    "name": "init_small",
    "environments": ["Hopper-v5"],
    "scenarios": ["gaussian-high"],
    "algorithms": ["adpo", "ppo"],
    "anchors": {"modes": ["fixed", "dynamic", "ema", "kl_triggered"],
                "init": {"pretrain": {"env_steps": 1024, "seed": 3}}},
    "hidden_sizes": [16],
    "budget": {"env_steps": 512, "checkpoint_every": 1},
    "train": {"train_batch_size": 512, "minibatch_size": 128, "num_epochs": 1},
    "resources": {"num_envs_per_env_runner": 4},
    "evaluation": {"interval": 1, "episodes": 1},
}


def _module_params(algo) -> dict[str, np.ndarray]:
    module = local_learner(algo.learner_group).module[DEFAULT_MODULE_ID].unwrapped()
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


@pytest.mark.long_running
def test_grid_pretrains_once_and_every_method_starts_there(ray_local, tmp_path, capsys):
    # solo runs (one child run and checkpoint each), then the ADPO ones again as one pack
    spec = parse_spec({**INIT, "resources": {**INIT["resources"], "pack": 1}})
    uri = new_store(tmp_path)
    opts = options(tmp_path, "first")
    results = run_grid(spec, opts, verbose=0)
    assert len(results) == 5 and not results.errors
    out = capsys.readouterr().out
    assert "pretrained policy" in out and "training RLlib PPO for 1024 env steps" in out

    client = MlflowClient(uri)
    stage = pretrained_of(spec, "Hopper-v5", 16)
    runs = client.search_runs([client.get_experiment_by_name("adpo-ray-teachers").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags[TEACHER_TAG] == stage.key
    pretrained = runs[0].info.run_id
    kids = [r for r in client.search_runs([client.get_experiment_by_name("init_small").experiment_id])
            if "trial" in r.data.tags]
    assert {k.data.tags["method"] for k in kids} == {"adpo-fixed", "adpo-dynamic", "adpo-ema", "adpo-kl_triggered", "ppo"}
    for k in kids:  # each child run records the run it (and its anchor) started from
        assert k.data.params["anchors.init.run_id"] == pretrained
        assert k.data.params["anchors.init"] == "pretrain:" + stage.key
    report = build_report(load_mlflow(uri, "init_small"), tmp_path / "report")
    assert "start: pretrained PPO" in report["report.md"].read_text()

    # a second launch, packed, reuses the pretrained run: nothing is trained again. Its Hopper
    # members, started from one pretrained policy, end their evaluation episodes at very different
    # lengths: the pack still gives each member its episodes and the grid ends (sampling by
    # episode count reset every env on each call, so a member whose episodes ran long never
    # finished one, and the pack hung in its second evaluation)
    opts2 = options(tmp_path, "second")
    packed = run_grid(parse_spec({**INIT, "algorithms": ["adpo"], "resources": {**INIT["resources"], "pack": "auto"}}),
                      opts2, verbose=0)
    assert len(packed) == 1 and not packed.errors  # one pack of the four anchor modes
    out = capsys.readouterr().out
    assert f"reusing MLflow run {pretrained}" in out and "training RLlib PPO" not in out
    assert len(client.search_runs([client.get_experiment_by_name("adpo-ray-teachers").experiment_id])) == 1
    members = [r for r in client.search_runs([client.get_experiment_by_name("init_small").experiment_id])
               if r.data.tags.get("trial") and PACK_TAG in r.data.tags]
    assert sorted(k.data.tags["method"] for k in members) == ["adpo-dynamic", "adpo-ema", "adpo-fixed", "adpo-kl_triggered"]
    last = packed[0].metrics[MEMBERS]
    for k in members:
        assert k.info.status == "FINISHED" and k.data.params["anchors.init.run_id"] == pretrained
        # each member evaluated every iteration up to its own stop (the one its env steps reached
        # the budget; members sample a few steps more or fewer, so they may stop apart)
        mine = last[int(k.data.tags[PACK_MEMBER_TAG])]
        assert mine["done"] is True and mine["env_steps"] >= 512
        history = client.get_metric_history(k.info.run_id, "eval/return_mean")
        assert len(history) == mine["training_iteration"] and all(np.isfinite(m.value) for m in history)
    # read from Tune's folder too, each member finished, its last row at its own stop
    trials = load_tune_folder(tmp_path / "ray_results" / "second").trials
    assert len(trials) == 4 and set(trials["status"]) == {"FINISHED"}


def test_every_mode_starts_from_the_same_parameters(ray_local, tmp_path):
    """From a saved PPO algorithm: the learner's policy and value function, the anchor, the env
    runner's policy and its observation filter are the saved ones; KL(policy || anchor) is 0."""
    spec = parse_spec({**INIT, "anchors": {**INIT["anchors"], "init": {"checkpoint": str(tmp_path / "src")}}})
    source = build_algo_config(spec.knobs(TrialSpec("Hopper-v5", "clean", "ppo", "none", 16, 7))).build_algo()
    try:
        source.train()
        source.save_to_path(str(tmp_path / "src"))
        saved_filter = env_to_module(source.env_runner).get_state()
    finally:
        source.stop()
    saved = policy_state(tmp_path / "src")
    obs = torch.randn(64, 11)
    for algorithm, mode in [("adpo", "fixed"), ("adpo", "dynamic"), ("adpo", "ema"), ("adpo", "kl_triggered"),
                            ("ppo", "none")]:
        algo = build_algo_config(spec.knobs(TrialSpec("Hopper-v5", "clean", algorithm, mode, 16, 0))).build_algo()
        try:
            before = _module_params(algo)
            assert any(not np.array_equal(before[k], v) for k, v in saved.items())  # a fresh init differs
            start_from_checkpoint(algo, tmp_path / "src")
            after = _module_params(algo)
            for k, v in saved.items():  # policy and value function
                np.testing.assert_array_equal(after[k], v)
            runner = algo.env_runner.module.state_dict()
            for k, v in runner.items():
                np.testing.assert_array_equal(v.detach().cpu().numpy(), saved[k])
            assert _filter_equal(env_to_module(algo.env_runner).get_state(), saved_filter)
            if algorithm == "adpo":
                module = local_learner(algo.learner_group).module[DEFAULT_MODULE_ID].unwrapped()
                for a, p in zip(module.anchor_parameters(), module.policy_parameters(), strict=True):
                    assert torch.equal(a, p)  # the anchor is the pretrained policy
                with torch.no_grad():
                    pi = module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
                    anchor = module.forward_target({Columns.OBS: obs})[ANCHOR_DIST_INPUTS]
                kl = kl_from_logits(module.get_train_action_dist_cls(), pi, anchor)
                assert float(kl.abs().max()) == 0.0
        finally:
            algo.stop()


def test_start_refuses_a_network_of_another_size(ray_local, tmp_path):
    spec = parse_spec({**INIT, "hidden_sizes": [16, 24]})
    source = build_algo_config(spec.knobs(TrialSpec("Hopper-v5", "clean", "ppo", "none", 24, 0))).build_algo()
    source.save_to_path(str(tmp_path / "src"))
    source.stop()
    algo = build_algo_config(spec.knobs(TrialSpec("Hopper-v5", "clean", "adpo", "fixed", 16, 0))).build_algo()
    try:
        with pytest.raises(Exception, match="does not fit"):
            start_from_checkpoint(algo, tmp_path / "src")
    finally:
        algo.stop()


def _filter_equal(a, b) -> bool:
    """Two connector-pipeline states hold the same numbers (nested dicts of arrays and scalars)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_filter_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_filter_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


BANDIT = {
    "name": "init_bandit",
    "environments": ["PreferenceBandit"],
    "scenarios": ["flip-high"],
    "algorithms": ["adpo", "ppo", "ppo_kl", "dpo"],
    "anchors": {"modes": ["fixed", "dynamic"], "init": {"pretrain": {"iterations": 3, "seed": 3}}},
    "hidden_sizes": [16],
    "budget": {"iterations": 1, "checkpoint_every": 1},
    "train": {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 1},
    "bandit": {"eval_contexts": 64},
    "resources": {**BANDIT_ENVS},
}


@pytest.mark.long_running
def test_bandit_pretrains_once_and_every_method_starts_there(ray_local, tmp_path, capsys):
    """The bandit as MuJoCo: ``iterations`` of clean PPO stored in MLflow with its clean WinMass,
    every method (ADPO modes, PPO, ppo_kl, DPO) recording it as its start, reused by a later
    launch; and each method built from that checkpoint holds its parameters, ADPO's and DPO's
    anchor at KL 0."""
    spec = parse_spec({**BANDIT, "resources": {**BANDIT["resources"], "pack": 1}})  # solo runs, the packed launch's reference
    uri = new_store(tmp_path)
    opts = options(tmp_path, "first")
    results = run_grid(spec, opts, verbose=0)
    assert len(results) == 5 and not results.errors
    assert "training RLlib PPO for 3 iterations" in capsys.readouterr().out

    client = MlflowClient(uri)
    stage = pretrained_of(spec, "PreferenceBandit", 16)
    runs = client.search_runs([client.get_experiment_by_name("adpo-ray-teachers").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags[TEACHER_TAG] == stage.key
    pretrained = runs[0]
    assert pretrained.data.params["iterations"] == "3" and 0 <= pretrained.data.metrics["eval/winmass"] <= 1
    assert pretrained.data.metrics["env_steps"] == 3 * 128  # three iterations, not 300,000 env steps
    kids = [r for r in client.search_runs([client.get_experiment_by_name("init_bandit").experiment_id])
            if "trial" in r.data.tags]
    assert {k.data.tags["method"] for k in kids} == {"adpo-fixed", "adpo-dynamic", "ppo", "ppo_kl", "dpo"}
    for k in kids:
        assert k.data.params["anchors.init.run_id"] == pretrained.info.run_id
        assert k.data.params["anchors.init"] == "pretrain:" + stage.key

    # a second launch, packed: the two ADPO trials as one pack (ppo_kl's one trial alone),
    # each member started from the same pretrained run and tracked as its solo trial was
    second = run_grid(parse_spec({**BANDIT, "algorithms": ["adpo", "ppo_kl"], "resources": {**BANDIT["resources"], "pack": "auto"}}),
                      GridOptions(tracking_uri=uri, artifact_location=str(tmp_path / "mlartifacts"),
                                  storage_path=str(tmp_path / "ray_results"), name="second"), verbose=0)
    assert len(second) == 2 and not second.errors  # 2 Tune trials for 3 trials
    out = capsys.readouterr().out
    assert f"reusing MLflow run {pretrained.info.run_id}" in out and "training RLlib PPO" not in out
    launches: dict[str, dict] = {}
    for run in client.search_runs([client.get_experiment_by_name("init_bandit").experiment_id]):
        if "trial" in run.data.tags:
            launches.setdefault(run.data.tags["mlflow.parentRunId"], {})[run.data.tags["trial"]] = run
    solo_runs, packed_runs = sorted(launches.values(), key=len, reverse=True)
    assert len(solo_runs) == 5 and len(packed_runs) == 3
    assert {r.data.tags.get(PACK_TAG) is not None for r in packed_runs.values()
            if r.data.tags["algorithm"] == "adpo"} == {True}
    for tag, run in packed_runs.items():
        mine = solo_runs[tag]
        assert run.info.status == "FINISHED" and run.data.params == mine.data.params, tag
        # the same tags but those naming the Tune trial and the launch (the spool's run key)
        assert run.data.tags[RUN_KEY_TAG] == f"second/{tag}" and mine.data.tags[RUN_KEY_TAG] == f"first/{tag}"
        assert ({k: v for k, v in run.data.tags.items() if k not in {*RUNNER_TAGS, RUN_KEY_TAG}}
                == {k: v for k, v in mine.data.tags.items() if k not in {*RUNNER_TAGS, RUN_KEY_TAG}}), tag

    from adpo_ray.orchestration.mlflow_store import download

    source = download(uri, pretrained.info.run_id, "checkpoint")
    saved = policy_state(source)
    # the pack started from it: its final checkpoint holds the fixed member's anchor (never
    # refreshed) at the pretrained policy, bit for bit
    (pack_dir,) = (tmp_path / "ray_results" / "second").glob("pack2_*")
    modes = [t["anchor_mode"] for t in json.loads((pack_dir / "params.json").read_text())["trials"]]
    (checkpoint,) = pack_dir.glob("checkpoint_*")
    anchors = pickle.loads((module_dir(checkpoint) / "module_state.pkl").read_bytes())["anchor"]
    pretrained_policy = StackedActorCritic.from_state_dicts(
        [{n: torch.as_tensor(v) for n, v in saved.items()}], "categorical").anchor()[0]
    np.testing.assert_array_equal(anchors[modes.index("fixed")], pretrained_policy.numpy())
    obs = torch.randn(32, 8)
    for algorithm, mode in [("adpo", "fixed"), ("adpo", "dynamic"), ("ppo", "none"), ("ppo_kl", "none"),
                            ("dpo", "fixed")]:
        algo = build_algo_config(spec.knobs(TrialSpec("PreferenceBandit", "flip-high", algorithm, mode, 16, 0))).build_algo()
        try:
            start_from_checkpoint(algo, source)
            after = _module_params(algo)
            for k, v in saved.items():
                np.testing.assert_array_equal(after[k], v)
            if algorithm in ("adpo", "dpo"):
                module = local_learner(algo.learner_group).module[DEFAULT_MODULE_ID].unwrapped()
                with torch.no_grad():
                    pi = module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
                    anchor = module.forward_target({Columns.OBS: obs})[ANCHOR_DIST_INPUTS]
                assert float(kl_from_logits(module.get_train_action_dist_cls(), pi, anchor).abs().max()) == 0.0
        finally:
            algo.stop()
