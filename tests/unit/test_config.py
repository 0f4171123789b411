"""Experiment specs: the shipped presets validate; malformed specs fail naming the field."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adpo_ray.spec import (
    SpecError,
    TrialSpec,
    init_slot,
    load_spec,
    parse_spec,
    pretrained_of,
    pretrained_policies,
)

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = {
    "name": "t",
    "environments": ["PreferenceBandit"],
    "budget": {"iterations": 2},
}


def test_smoke_preset_has_24_trials():
    spec = load_spec(ROOT / "tune_configs" / "smoke.yaml")
    trials = spec.trials()
    assert len(trials) == 24
    assert {t.anchor_mode for t in trials} == {"fixed", "dynamic"}
    assert len({t.scenario for t in trials}) == 12
    assert len(set(trials)) == 24


def test_every_preset_validates():
    files = sorted((ROOT / "tune_configs").glob("*.yaml"))
    assert files
    for f in files:
        assert load_spec(f).trials(), f


def test_defaults_and_trial_axes():
    spec = parse_spec({**MINIMAL, "algorithms": ["adpo", "ppo", "dpo"], "scenarios": ["clean", "flip-high"],
                       "hidden_sizes": [64, 256], "seeds": [0, 1, 2]})
    trials = spec.trials()
    # per (scenario, hidden, seed): adpo x 2 modes + ppo + dpo = 4
    assert len(trials) == 2 * 2 * 3 * 4
    assert {t.method for t in trials} == {"adpo-fixed", "adpo-dynamic", "ppo", "dpo"}
    assert spec.train_for("PreferenceBandit", "adpo").lambda_ == 0.95 and spec.experiment_name == "t"


def test_dpo_only_on_bandit_in_mixed_grid():
    spec = parse_spec({**MINIMAL, "environments": ["PreferenceBandit", "Hopper-v5"],
                       "algorithms": ["dpo", "ppo"], "scenarios": ["clean"]})
    assert {(t.env, t.algorithm) for t in spec.trials()} == {
        ("PreferenceBandit", "dpo"), ("PreferenceBandit", "ppo"), ("Hopper-v5", "ppo")}


def test_lambda_alias_in_yaml():
    spec = parse_spec({**MINIMAL, "train": {"lambda": 0.9}})
    assert spec.train_for(spec.environments[0], "adpo").lambda_ == 0.9


def _with(path: str, value):
    d = copy.deepcopy(MINIMAL)
    *parents, leaf = path.split(".")
    cur = d
    for p in parents:
        cur = cur.setdefault(p, {})
    if value is _DELETE:
        cur.pop(leaf)
    else:
        cur[leaf] = value
    return d


_DELETE = object()

BAD = [
    # (mutation path, value, expected field in the message, expected hint)
    ("bogus", 1, "bogus", "unknown key; allowed keys here: adpo, algorithms"),
    ("adpo.tau", 0.5, "adpo.tau", "unknown key; allowed keys here: anchor_kl_coeff, beta_q"),
    ("budget.iterations", -5, "budget.iterations", "greater than or equal to 1"),
    ("budget", {}, "budget", "set iterations or env_steps"),
    ("budget", _DELETE, "budget", "Field required"),
    ("environments", ["CartPole-v1"], "environments[0]", "'PreferenceBandit', 'HalfCheetah-v5' or 'Hopper-v5'"),
    ("environments", [], "environments", "at least 1 item"),
    ("scenarios", ["gaussian-extreme"], "scenarios", "allowed: clean, gaussian-low"),
    ("scenarios", [], "scenarios", "empty list"),
    ("anchors.modes", ["sticky"], "anchors", "unknown anchor mode 'sticky'; allowed: fixed, dynamic"),
    ("anchors.modes", [], "anchors.modes", "at least 1 item"),
    ("anchors.params", {"ema": {"rate": 2.0}}, "anchors", "ema.rate must be in (0, 1]"),
    ("hidden_sizes", [0], "hidden_sizes[0]", "greater than or equal to 1"),
    ("hidden_sizes", [64, 64], "hidden_sizes", "duplicate hidden_sizes: 64"),
    ("seeds", ["a"], "seeds[0]", "valid integer"),
    ("adpo.loss", "hinge", "adpo.loss", "'listwise', 'plackett_luce', 'pairwise' or 'dpo'"),
    ("adpo.target", "soft", "adpo.target", "'softmax', 'kde' or 'hard'"),
    ("adpo.tau_anc", 0, "adpo.tau_anc", "greater than 0"),
    ("adpo.list_size", 1, "adpo.list_size", "greater than or equal to 2"),
    ("train.minibatch_size", 4096, "train", "minibatch_size (4096) must be <= train_batch_size"),
    ("algorithms", ["sac"], "algorithms[0]", "'adpo', 'ppo', 'ppo_kl', 'dpo', 'kd' or 'bc'"),
    ("name", "has space", "name", "should match pattern"),
    ("resources.num_learners", 3, "resources.num_learners", "less than or equal to 1"),
    ("resources.gpus", 1, "resources.gpus", "unknown key"),
    ("tracking.uri", "x", "tracking.uri", "allowed keys here: artifact_location, experiment, tracking_uri"),
    # sizes and counts have upper bounds: a typo is an error naming the field and the range
    ("hidden_sizes", [1_000_000], "hidden_sizes[0]", "less than or equal to 8192"),
    ("budget.iterations", 10**12, "budget.iterations", "less than or equal to 10000000"),
    ("budget.env_steps", 10**13, "budget.env_steps", "less than or equal to 100000000000"),
    ("bandit.eval_contexts", 10**12, "bandit.eval_contexts", "less than or equal to 1000000"),
    ("bandit.num_items", 100_000, "bandit.num_items", "less than or equal to 4096"),
    ("seeds", [-1], "seeds[0]", "greater than or equal to 0"),
    ("seeds", [2**40], "seeds[0]", "less than or equal to 2147483647"),
    ("seeds", list(range(10_001)), "seeds", "at most 10000 items"),
    ("train.num_epochs", 0, "train.num_epochs", "greater than or equal to 1"),
    ("train.train_batch_size", 10**9, "train.train_batch_size", "less than or equal to 10000000"),
    ("train.lr", 1e9, "train.lr", "less than or equal to 1000000"),
    ("evaluation.episodes", 10**6, "evaluation.episodes", "less than or equal to 10000"),
    ("resources.num_env_runners", 1000, "resources.num_env_runners", "less than or equal to 64"),
    ("resources.max_concurrent_trials", 0, "resources.max_concurrent_trials", "greater than or equal to 1"),
    ("resources.learner_device", "tpu", "resources.learner_device", "'auto', 'cpu' or 'gpu'"),
    ("resources.max_failures", -1, "resources.max_failures", "greater than or equal to 0"),
    ("seeds", list(range(9000)), "(top level)", "216,000 trials; at most 200,000"),
]


@pytest.mark.parametrize("path,value,field,hint", BAD, ids=[b[0] + "=" + str(b[1])[:20] for b in BAD])
def test_malformed_spec_names_field(path, value, field, hint):
    with pytest.raises(SpecError) as exc:
        parse_spec(_with(path, value))
    text = "\n".join(exc.value.errors)
    assert any(line.startswith(field + ":") for line in exc.value.errors), text
    assert hint in text, text


def test_bad_combination_list_source_actions_on_mujoco():
    with pytest.raises(SpecError) as exc:
        parse_spec({**MINIMAL, "environments": ["Hopper-v5"], "adpo": {"list_source": "actions"}})
    assert "list_source='actions' does not fit Hopper-v5" in str(exc.value)


DISTILL = {"name": "d", "environments": ["Hopper-v5"], "algorithms": ["adpo", "kd", "bc"],
           "budget": {"iterations": 5}, "distill": {}}


def test_distill_spec_trials_and_defaults():
    spec = parse_spec(DISTILL)
    assert spec.distill.teacher.env_steps == 300_000 and spec.distill.dataset.candidates == 8
    assert sorted(t.method for t in spec.trials() if t.scenario == "gaussian-low") == [
        "adpo-dynamic", "adpo-fixed", "bc", "kd"]


@pytest.mark.parametrize("change,message", [
    ({"distill": _DELETE}, "algorithms: kd, bc are offline distillation students; add a `distill:` section"),
    ({"algorithms": ["adpo", "ppo"]}, "algorithms: ppo cannot be a distillation student; allowed with `distill`: adpo, kd, bc"),
    ({"environments": ["PreferenceBandit"]}, "environments: distillation needs MuJoCo envs"),
    ({"budget": {"env_steps": 1000}}, "budget: distillation students train offline; give `iterations`"),
    ({"distill": {"minibatch_states": 4096}}, "distill: minibatch_states (4096) must be <= states_per_iteration (2048)"),
    ({"distill": {"dataset": {"heldout_fraction": 1.5}}}, "distill.dataset.heldout_fraction: Input should be less than 1"),
    ({"distill": {"teacher": {"steps": 5}}}, "distill.teacher.steps: unknown key; allowed keys here: env_steps, experiment, hidden_size, seed"),
])
def test_bad_distill_spec_names_field(change, message):
    data = {**DISTILL, **change}
    data = {k: v for k, v in data.items() if v is not _DELETE}
    with pytest.raises(SpecError) as exc:
        parse_spec(data)
    assert message in str(exc.value), str(exc.value)


def test_dpo_without_bandit():
    with pytest.raises(SpecError, match="'dpo' needs an environment with per-item"):
        parse_spec({**MINIMAL, "environments": ["Hopper-v5"], "algorithms": ["dpo"]})


def test_all_errors_reported_together():
    with pytest.raises(SpecError) as exc:
        parse_spec({**MINIMAL, "bogus": 1, "hidden_sizes": [0], "seeds": [-1]})
    assert len(exc.value.errors) == 3


def test_not_a_mapping_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="expected a mapping"):
        parse_spec(["a"])
    f = tmp_path / "bad.yaml"
    f.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="yaml"):
        load_spec(f)
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "missing.yaml")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "adpo_ray.cli", *args], capture_output=True, text=True)


def test_cli_validate_ok_and_error(tmp_path):
    ok = _cli("validate", str(ROOT / "tune_configs" / "smoke.yaml"))
    assert ok.returncode == 0 and "ok, 24 trials" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**MINIMAL, "anchor_modes": ["fixed"]}))
    res = _cli("validate", str(bad))
    assert res.returncode == 2
    assert "anchor_modes: unknown key" in res.stderr


def test_cli_scenarios_table():
    res = _cli("scenarios")
    assert res.returncode == 0
    for name in ("gaussian-low", "heavy_tailed-high", "flip-medium", "shift-high", "clean"):
        assert name in res.stdout


def test_ppo_overrides_only_ppo_trials():
    spec = parse_spec({**MINIMAL, "environments": ["Hopper-v5"], "algorithms": ["adpo", "ppo"],
                       "train": {"lr": 0.001}, "ppo": {"lr": 0.0003}})
    assert spec.train_for("Hopper-v5", "adpo").lr == 0.001
    assert spec.train_for("Hopper-v5", "ppo").lr == 0.0003
    with pytest.raises(SpecError, match="ppo: .*lrate.*Extra inputs are not permitted"):
        parse_spec({**MINIMAL, "ppo": {"lrate": 0.1}})
    with pytest.raises(SpecError, match="ppo: lr: Input should be greater than 0"):
        parse_spec({**MINIMAL, "ppo": {"lr": -1}})


INIT_SPEC = {"name": "init", "environments": ["Hopper-v5"], "algorithms": ["adpo", "ppo"], "hidden_sizes": [16],
             "budget": {"env_steps": 512}, "anchors": {"init": {"pretrain": {"env_steps": 1024}}}}


def test_init_spec_errors_name_the_field():
    with pytest.raises(SpecError, match="anchors.init: give exactly one of checkpoint"):
        parse_spec({**INIT_SPEC, "anchors": {"init": {}}})
    with pytest.raises(SpecError, match="anchors.init.pretrain.iterations: Input should be greater than or equal to 1"):
        parse_spec({**INIT_SPEC, "anchors": {"init": {"pretrain": {"iterations": 0}}}})
    with pytest.raises(SpecError, match=r"anchors.init.checkpoint: one path for 2 environments"):
        parse_spec({**INIT_SPEC, "environments": ["HalfCheetah-v5", "Hopper-v5"],
                    "anchors": {"init": {"checkpoint": "/x"}}})
    ok = parse_spec({**INIT_SPEC, "environments": ["HalfCheetah-v5", "Hopper-v5"],
                     "anchors": {"init": {"checkpoint": {"HalfCheetah-v5": "/a", "Hopper-v5": "/b"}}}})
    assert ok.knobs(ok.trials()[0]).init == "/a" and init_slot("Hopper-v5", 16) == "Hopper-v5/h16"


def test_the_bandit_pretrains_like_mujoco():
    """``anchors.init.pretrain`` on the bandit: one pretrained policy per env and network size,
    its budget in iterations (the manuscript's 30 steps) or env steps, its key naming both and
    the bandit problem it was trained on."""
    spec = parse_spec({**INIT_SPEC, "environments": ["PreferenceBandit", "Hopper-v5"],
                       "algorithms": ["adpo", "ppo", "ppo_kl", "dpo"],
                       "anchors": {"init": {"pretrain": {"iterations": 30}}}})
    bandit, hopper = pretrained_policies(spec)
    assert (bandit.env, bandit.iterations, bandit.env_steps) == ("PreferenceBandit", 30, 300_000)
    assert bandit.key.startswith("PreferenceBandit_ppo_300000steps_30iters_h16_s0_")
    assert hopper.key.startswith("Hopper-v5_ppo_300000steps_30iters_h16_s0_")
    for trial in spec.trials():  # every method starts from its env's pretrained policy
        if trial.env == "PreferenceBandit":
            assert spec.knobs(trial).init == "pretrain:" + bandit.key, trial.tag
    other = parse_spec({**INIT_SPEC, "environments": ["PreferenceBandit"], "bandit": {"problem_seed": 1},
                        "anchors": {"init": {"pretrain": {"iterations": 30}}}})
    assert pretrained_policies(other)[0].key != bandit.key  # another problem, another policy
    steps = parse_spec({**INIT_SPEC, "environments": ["PreferenceBandit"]})
    assert pretrained_policies(steps)[0].key.startswith("PreferenceBandit_ppo_1024steps_h16_s0_")
    # a MuJoCo key without iterations is unchanged (policies stored before stay found)
    assert pretrained_of(parse_spec(INIT_SPEC), "Hopper-v5", 16).key == "Hopper-v5_ppo_1024steps_h16_s0_9fc12d19"


def test_ppo_kl_knobs_and_their_errors():
    spec = parse_spec({**MINIMAL, "environments": ["PreferenceBandit", "Hopper-v5"], "algorithms": ["ppo_kl"],
                       "ppo": {"lr": 0.0002}, "ppo_kl": {"kl_beta": 0.5, "kl_adaptive": False}})
    knobs = spec.knobs(TrialSpec("Hopper-v5", "clean", "ppo_kl", "none", 64, 0))
    assert (knobs.kl_beta, knobs.kl_target, knobs.kl_adaptive, knobs.clip_param) == (0.5, 0.01, False, None)
    assert knobs.lr == 0.0002 and knobs.trial.base_method == "ppo_kl"  # the PPO family's optimisation knobs
    assert spec.knobs(TrialSpec("Hopper-v5", "clean", "ppo", "none", 64, 0)).kl_beta is None
    with pytest.raises(SpecError, match="ppo_kl.kl_target: Input should be greater than 0"):
        parse_spec({**MINIMAL, "ppo_kl": {"kl_target": 0}})
    with pytest.raises(SpecError, match="ppo_kl.kl_coeff: unknown key; allowed keys here: kl_adaptive, kl_beta, kl_target"):
        parse_spec({**MINIMAL, "ppo_kl": {"kl_coeff": 1.0}})
    swept = parse_spec({**MINIMAL, "algorithms": ["ppo_kl"], "scenarios": ["clean"], "sweep": {"ppo_kl.kl_target": [0.01, 0.02]}})
    assert [swept.knobs(t).kl_target for t in swept.trials()] == [0.01, 0.02]
