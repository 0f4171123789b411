"""The ``train:`` section (the optimisation knobs every method shares, the optimiser among them),
the older layout that wrote them under ``adpo:`` (read for one release, with a warning naming the
keys to move), and off values as real, logged values (no Ray start)."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID

from adpo_ray.rllib.factory import build_algo_config, build_distill_config
from adpo_ray.spec import SpecDeprecationWarning, SpecError, TrialSpec, load_spec, parse_spec

BASE = {"name": "t", "environments": ["PreferenceBandit", "Hopper-v5"], "scenarios": ["clean"],
        "algorithms": ["adpo", "ppo"], "anchors": {"modes": ["dynamic"]}, "budget": {"iterations": 2}}
NEW = {**BASE, "train": {"lr": 0.002, "num_epochs": 3, "gamma": 0.9}, "adpo": {"beta_q": 0.5},
       "env_overrides": {"Hopper-v5": {"train": {"minibatch_size": 32}, "adpo": {"tau_anc": 0.3}}},
       "sweep": {"train.entropy_coeff": [0.0, 0.01]}, "departs_from_defaults": {"train.lr": "why"}}
OLD = {**BASE, "adpo": {"lr": 0.002, "num_epochs": 3, "gamma": 0.9, "beta_q": 0.5},
       "env_overrides": {"Hopper-v5": {"adpo": {"minibatch_size": 32, "tau_anc": 0.3}}},
       "sweep": {"adpo.entropy_coeff": [0.0, 0.01]}, "departs_from_defaults": {"adpo.lr": "why"}}


def test_the_older_layout_means_the_same_and_says_which_keys_to_move():
    new = parse_spec(NEW)
    with pytest.warns(SpecDeprecationWarning) as caught:
        old = parse_spec(OLD)
    # pytest.warns records every warning of the block: another module's, imported for the first
    # time in this test process, may warn here too (a fresh-clone run saw two)
    told = [w for w in caught if w.category is SpecDeprecationWarning]
    assert len(told) == 1, [(w.category.__name__, str(w.message)[:200]) for w in caught]
    text = str(told[0].message)
    for path in ("adpo.lr", "adpo.num_epochs", "adpo.gamma", "env_overrides.Hopper-v5.adpo.minibatch_size",
                 "sweep.adpo.entropy_coeff", "departs_from_defaults.adpo.lr"):
        assert path in text, path
    assert "adpo.beta_q" not in text and "`train:`" in text
    assert old.model_dump() == new.model_dump()
    assert [old.knobs(t) for t in old.trials()] == [new.knobs(t) for t in new.trials()]
    assert not new.deprecations  # the new layout is quiet


def test_the_older_layout_is_told_once_per_load_and_not_again_by_its_sweep_points(recwarn):
    spec = parse_spec(OLD)
    assert len([w for w in recwarn if w.category is SpecDeprecationWarning]) == 1
    for t in spec.trials():
        spec.knobs(t)  # each sweep point is a spec validated again, from the new layout
    assert len([w for w in recwarn if w.category is SpecDeprecationWarning]) == 1


def test_older_set_paths_are_read_as_train(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: s\nenvironments: [PreferenceBandit]\nscenarios: [clean]\nbudget: {iterations: 3}\n")
    with pytest.warns(SpecDeprecationWarning, match="adpo.lr"):
        spec = load_spec(f, ["adpo.lr=0.002"])
    assert spec.train.lr == 0.002 and spec.knobs(spec.trials()[0]).lr == 0.002


def test_a_knob_in_both_places_is_an_error_naming_both():
    with pytest.raises(SpecError) as e:
        parse_spec({**BASE, "adpo": {"lr": 0.1}, "train": {"lr": 0.2}})
    assert e.value.errors == ["adpo.lr: also given as train.lr; keep train.lr alone (`adpo:` holds ADPO's loss knobs)"]
    with pytest.raises(SpecError, match=r"sweep\.adpo\.lr: also given as sweep\.train\.lr"):
        parse_spec({**BASE, "sweep": {"adpo.lr": [0.1], "train.lr": [0.2]}})
    with pytest.raises(SpecError, match=r"adpo\.clip_param: unknown key"):
        parse_spec({**BASE, "ppo": {"lr": 0.1}, "adpo": {"clip_param": 0.1}})
    with pytest.raises(SpecError, match=r"ppo: .*tau_anc.*Extra inputs are not permitted"):
        parse_spec({**BASE, "ppo": {"tau_anc": 0.1}})  # ppo: overrides train knobs only


@pytest.mark.parametrize("path", ["fused", "rllib"])
def test_the_optimizer_reaches_the_online_learners(path):
    spec = parse_spec({**BASE, "environments": ["Hopper-v5"], "train": {"optimizer": "adamw", "weight_decay": 0.01},
                       "resources": {"learner_update": path}})
    env = gym.make("Hopper-v5")
    spaces = {DEFAULT_MODULE_ID: (env.observation_space, env.action_space)}
    for trial in spec.trials():  # ADPO and PPO
        knobs = spec.knobs(trial)
        assert knobs.params()["optimizer"] == "adamw" and knobs.params()["weight_decay"] == "0.01"
        learner = build_algo_config(knobs).build_learner(spaces=spaces)
        (_, optimizer), = learner.get_optimizers_for_module(DEFAULT_MODULE_ID)
        assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["weight_decay"] == 0.01
        assert bool(optimizer.defaults["fused"]) == (path == "fused")
    env.close()


def test_the_optimizer_reaches_the_distillation_learner_and_adam_is_the_default():
    data = {"name": "s", "environments": ["Hopper-v5"], "scenarios": ["clean"], "algorithms": ["kd"],
            "budget": {"iterations": 2}, "distill": {}}
    env = gym.make("Hopper-v5")
    spaces = {DEFAULT_MODULE_ID: (env.observation_space, env.action_space)}
    for train, cls, decay in (({}, torch.optim.Adam, 0.0), ({"optimizer": "adamw", "weight_decay": 0.1}, torch.optim.AdamW, 0.1)):
        spec = parse_spec({**data, "train": train})
        learner = build_distill_config(spec.knobs(spec.trials()[0])).build_learner(spaces=spaces)
        (_, optimizer), = learner.get_optimizers_for_module(DEFAULT_MODULE_ID)
        assert type(optimizer) is cls and optimizer.defaults["weight_decay"] == decay
    env.close()
    with pytest.raises(SpecError, match="train.optimizer: Input should be 'adam' or 'adamw'"):
        parse_spec({**data, "train": {"optimizer": "sgd"}})


def test_off_is_a_logged_value_and_reaches_the_config_as_it_is():
    spec = parse_spec({**BASE, "environments": ["PreferenceBandit"], "algorithms": ["adpo", "ppo", "dpo"],
                       "train": {"grad_clip": 0}, "adpo": {"tau_min": 0.2}})
    adpo = spec.knobs(TrialSpec("PreferenceBandit", "clean", "adpo", "dynamic", 64, 0))
    params = adpo.params()
    assert {k: params[k] for k in ("grad_clip", "tau_alpha", "tau_min", "q_center", "target_norm",
                                   "anchor_kl_coeff", "clip_log_ratio", "clip_score", "anchors.init")} == {
        "grad_clip": "0.0", "tau_alpha": "0.0", "tau_min": "0.2", "q_center": "False", "target_norm": "none",
        "anchor_kl_coeff": "0.0", "clip_log_ratio": "0.0", "clip_score": "0.0", "anchors.init": "none"}
    config = build_algo_config(adpo)
    assert config.tau_min == 0.2 and config.tau_alpha == 0.0  # the spec's value, not a default
    assert config.grad_clip is None  # RLlib's "no clipping"
    # None: does not apply to the method (not logged)
    ppo, dpo = (spec.knobs(TrialSpec("PreferenceBandit", "clean", a, m, 64, 0)) for a, m in
                (("ppo", "none"), ("dpo", "fixed")))
    assert ppo.tau_min is None and "tau_min" not in ppo.params() and ppo.params()["clip_param"] == "0.2"
    assert dpo.tau_min is None and dpo.params()["target_norm"] == "none" and "anchor_kl_coeff" not in dpo.params()
