"""sweep:, search: and --set: what they expand to, and every malformed section rejected with the
field named, before anything starts."""

import pytest

from adpo_ray.spec import SpecError, TrialSpec, load_spec, parse_spec
from adpo_ray.sweeps import apply_sets, set_path

BASE = {"name": "s", "environments": ["PreferenceBandit"], "scenarios": ["clean"],
        "anchors": {"modes": ["dynamic", "ema"]}, "budget": {"iterations": 3}}


def test_grid_sweep_expands_every_trial_at_every_point():
    spec = parse_spec({**BASE, "sweep": {"adpo.beta_q": [0.5, 2.0], "train.lr": [0.001, 0.003, 0.01]}})
    trials = spec.trials()
    assert spec.trial_count() == len(trials) == 2 * 2 * 3  # modes x beta_q x lr
    assert len({t.tag for t in trials}) == len(trials)
    t = next(t for t in trials if dict(t.sweep) == {"adpo.beta_q": 2.0, "train.lr": 0.01} and t.anchor_mode == "ema")
    assert t.tag == "PreferenceBandit_clean_adpo-ema_h64_s0_adpo.beta_q=2,train.lr=0.01"
    assert t.method == "adpo-ema (adpo.beta_q=2,train.lr=0.01)" and t.base_method == "adpo-ema"
    knobs = spec.knobs(t)
    assert (knobs.beta_q, knobs.lr) == (2.0, 0.01)
    assert knobs.params()["beta_q"] == "2.0" and knobs.params()["lr"] == "0.01"
    assert spec.knobs(TrialSpec(**{**t.as_dict(), "sweep": ()})).lr == spec.train_for(t.env, t.algorithm).lr  # the point, not the spec


def test_sweep_of_ppo_bandit_and_anchor_params():
    spec = parse_spec({**BASE, "algorithms": ["adpo", "ppo"],
                       "sweep": {"ppo.lr": [0.0001, 0.0002], "bandit.num_items": [4, 16],
                                 "anchors.params.ema.rate": [0.1, 0.5]}})
    # each method at the points that change its knobs: adpo-dynamic reads bandit.num_items alone,
    # adpo-ema also its rate, ppo also ppo.lr (ADPO trials read adpo:, not ppo:)
    assert spec.trial_count() == len(spec.trials()) == 2 + 4 + 4
    assert spec.grid_size() == 3 * 8
    assert {t.sweep for t in spec.trials() if t.anchor_mode == "dynamic"} == {
        (("bandit.num_items", 4),), (("bandit.num_items", 16),)}
    ppo = next(t for t in spec.trials() if t.algorithm == "ppo" and dict(t.sweep)["ppo.lr"] == 0.0002)
    assert spec.knobs(ppo).lr == 0.0002 and spec.knobs(ppo).clip_param == 0.2
    ema = next(t for t in spec.trials() if t.anchor_mode == "ema" and dict(t.sweep)["anchors.params.ema.rate"] == 0.5)
    assert dict(spec.knobs(ema).anchor_params)["rate"] == 0.5
    assert dict(spec.knobs(ema).bandit)["num_items"] == dict(ema.sweep)["bandit.num_items"]


def test_points_that_train_a_method_alike_are_one_trial():
    """A sweep over ADPO's loss knobs runs each baseline once (its knobs are the same at every
    point), labelled without those axes; ADPO runs at every point."""
    spec = parse_spec({**BASE, "anchors": {"modes": ["fixed"]}, "algorithms": ["adpo", "ppo", "ppo_kl"],
                       "sweep": {"adpo.loss": ["listwise", "plackett_luce"], "adpo.beta_q": [0.5, 2.0],
                                 "train.lr": [0.001]}})
    trials = spec.trials()
    assert spec.grid_size() == 3 * 4 and spec.trial_count() == len(trials) == 4 + 1 + 1
    assert {(t.algorithm, t.sweep) for t in trials} == {
        *(("adpo", (("adpo.loss", loss), ("adpo.beta_q", beta), ("train.lr", 0.001)))
          for loss in ("listwise", "plackett_luce") for beta in (0.5, 2.0)),
        ("ppo", (("train.lr", 0.001),)),  # a one-value axis stays in every label, as it was
        ("ppo_kl", (("train.lr", 0.001),)),
    }
    assert len({t.tag for t in trials}) == len(trials)
    # a PPO trial left out would have trained exactly as the one kept: the same knobs
    ppo = next(t for t in trials if t.algorithm == "ppo")
    left_out = TrialSpec(**{**ppo.as_dict(), "sweep": (("adpo.loss", "plackett_luce"), ("adpo.beta_q", 2.0),
                                                       ("train.lr", 0.001))})
    assert spec.knobs(left_out).params() == spec.knobs(ppo).params()
    adpo = [t for t in trials if t.algorithm == "adpo"]
    assert len({tuple(sorted(spec.knobs(t).params().items())) for t in adpo}) == 4  # control: these differ


def test_trial_round_trips_through_tune_config():
    spec = parse_spec({**BASE, "sweep": {"train.lr": [0.001]}})
    t = spec.trials()[0]
    import json

    again = TrialSpec.from_config(json.loads(json.dumps({"trial": t.as_dict()})))
    assert again == t and again.tag == t.tag
    sampled = TrialSpec.from_config({"trial": TrialSpec(**{**t.as_dict(), "sweep": ()}).as_dict(),
                                     "sweep": {"train.lr": 0.002}}, "abc_00003")
    assert dict(sampled.sweep) == {"train.lr": 0.002} and sampled.tag.endswith("train.lr=0.002_abc_00003")


def test_search_counts_samples_and_needs_one_setting():
    one = {**BASE, "anchors": {"modes": ["dynamic"]}}
    spec = parse_spec({**one, "sweep": {"train.lr": {"loguniform": [1e-4, 1e-2]}, "adpo.list_size": [4, 8]},
                       "search": {"algorithm": "random", "num_samples": 5, "metric": "eval/winmass"}})
    assert spec.trial_count() == 10 and len(spec.trials()) == 1  # Tune samples the points
    spec = parse_spec({**one, "sweep": {"train.lr": {"loguniform": [1e-4, 1e-2]}},
                       "search": {"algorithm": "optuna", "num_samples": 7, "asha": {"grace_period": 2}}})
    assert spec.trial_count() == 7 and spec.search.asha.reduction_factor == 2


MALFORMED = [
    ({"sweep": {"adpo.nope": [1]}}, "sweep.adpo.nope: adpo has no knob 'nope'"),
    ({"sweep": {"lr": [1]}}, "sweep.lr: not a sweepable knob"),
    ({"sweep": {"budget.iterations": [1, 2]}}, "sweep.budget.iterations: not a sweepable knob"),
    ({"sweep": {"train.lr": []}}, "sweep: train.lr: an empty list"),
    ({"sweep": {"train.lr": 0.1}}, "sweep: train.lr: 0.1 is neither a list"),
    ({"sweep": {"train.lr": [-1, 0.1]}}, "sweep.train.lr: value -1: Input should be greater than 0"),
    ({"sweep": {"adpo.loss": ["listwise", "ranked"]}}, "sweep.adpo.loss: value 'ranked'"),
    ({"sweep": {"train.lr": [0.1, 0.1]}}, "sweep.train.lr: a value is listed twice"),
    ({"sweep": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}, "sweep.train.lr: a distribution (loguniform) needs a `search:`"),
    ({"sweep": {"train.lr": {"loguniform": [0, 1e-2]}}, "search": {}}, "loguniform: both ends must be > 0"),
    ({"sweep": {"train.lr": {"uniform": [2, 1]}}, "search": {}}, "uniform: [low, high] with low < high"),
    ({"sweep": {"train.lr": {"uniform": [1, 2], "choice": [1]}}, "search": {}}, "give exactly one of uniform"),
    ({"sweep": {"train.lr": {"normal": [0, 1]}}, "search": {}}, "train.lr: normal: Extra inputs are not permitted"),
    ({"sweep": {"train.gamma": {"uniform": [0.5, 2]}}, "search": {}}, "sweep.train.gamma: value 2.0: Input should be less than or equal to 1"),
    ({"sweep": {"anchors.params.kl_triggered.threshold": [0.1]}}, "use anchors.params.<mode>.<parameter> with a mode of anchors.modes"),
    ({"sweep": {"anchors.params.ema.rate": [2.0]}}, "sweep.anchors.params.ema.rate: value 2.0"),
    ({"search": {"num_samples": 2}}, "search: needs a `sweep:` section"),
    ({"sweep": {"train.lr": [0.1]}, "search": {"metric": "reward"}}, "search.metric 'reward': not a metric the trials report"),
    ({"sweep": {"train.lr": [0.1]}, "search": {"algorithm": "hyperopt"}}, "search.algorithm: Input should be 'random', 'grid' or 'optuna'"),
    ({"sweep": {"train.lr": {"uniform": [0.1, 0.2]}}, "search": {"algorithm": "grid"}}, "search.algorithm 'grid' takes lists only"),
    ({"sweep": {"train.lr": [0.1]}, "search": {"asha": {"reduction_factor": 1}}}, "search.asha.reduction_factor: Input should be greater than 1"),
    ({"sweep": {"train.lr": [0.1]}, "search": {"num_samples": 0}}, "search.num_samples: Input should be greater than or equal to 1"),
    ({"sweep": {"train.lr": [0.1]}, "search": {"mode": "best"}}, "search.mode: Input should be 'max' or 'min'"),
    ({"sweep": {"train.lr": [0.1]}, "search": {"asha": {"grace": 3}}}, "search.asha.grace: unknown key"),
]


@pytest.mark.parametrize("section,message", MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_sweep_and_search_are_rejected(section, message):
    with pytest.raises(SpecError) as e:
        parse_spec({**BASE, **section})
    assert any(message in line for line in e.value.errors), e.value.errors


def test_search_rejects_a_grid_of_settings():
    with pytest.raises(SpecError, match="search: tunes one setting, but .* give 2 trials"):
        parse_spec({**BASE, "sweep": {"train.lr": [0.1]}, "search": {}})


def test_set_overrides_fields_and_sweeps(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: s\nenvironments: [PreferenceBandit]\nscenarios: [clean]\nbudget: {iterations: 3}\n")
    spec = load_spec(f, ["train.lr=0.002", "anchors.modes=[fixed, ema]", "resources.learner_update=rllib",
                         "sweep.adpo.beta_q=[0.5, 2]"])
    assert spec.train.lr == 0.002 and spec.anchors.modes == ["fixed", "ema"]
    assert spec.resources.learner_update == "rllib" and spec.sweep == {"adpo.beta_q": [0.5, 2]}
    assert spec.trial_count() == 4


@pytest.mark.parametrize("sets,message", [
    (["adpo.nope=1"], "adpo.nope: unknown key; allowed keys here:"),
    (["train.lr=-3"], "train.lr: Input should be greater than 0"),
    (["train.lr=fast"], "train.lr: Input should be a valid number"),
    (["budget=3"], "budget: Input should be a valid dictionary"),
    (["name.x=1"], "--set name.x: name is a value ('s'), not a section"),
    (["train.lr"], "--set 'train.lr': expected KEY=VALUE"),
    (["adpo..lr=1"], "not a dotted path"),
    (["train.lr=[1"], "the value is not valid YAML"),
])
def test_set_rejects_bad_paths_and_values(tmp_path, sets, message):
    f = tmp_path / "s.yaml"
    f.write_text("name: s\nenvironments: [PreferenceBandit]\nscenarios: [clean]\nbudget: {iterations: 3}\n")
    with pytest.raises(SpecError) as e:
        load_spec(f, sets)
    assert any(message in line for line in e.value.errors), e.value.errors


def test_set_path_creates_sections_and_keeps_sweep_keys_whole():
    data = {"adpo": {"lr": 1}}
    set_path(data, "anchors.params.ema.rate", 0.1)
    set_path(data, "sweep.anchors.params.ema.rate", [0.1, 0.2])
    assert data["anchors"] == {"params": {"ema": {"rate": 0.1}}}
    assert data["sweep"] == {"anchors.params.ema.rate": [0.1, 0.2]}
    assert apply_sets({}, ["a.b=[1, 2]", "c=true", "d=x"]) == {"a": {"b": [1, 2]}, "c": True, "d": "x"}


def test_paper_presets_never_search():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "tune_configs"
    for name in ("twelve_scenarios", "mujoco_online", "mujoco_check", "distill", "distill_check"):
        spec = load_spec(root / f"{name}.yaml")
        assert spec.search is None and not spec.sweep, name
