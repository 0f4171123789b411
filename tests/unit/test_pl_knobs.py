"""The Plackett-Luce loss's knobs as spec knobs: validated against the loss, carried by the trial's
knobs into the RLlib config, and what the online and the distillation learners compute is
``adpo_loss`` with them (no Ray start: learners are built locally)."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns

from adpo_ray.core.distill import diag_gaussian_logp
from adpo_ray.core.losses import adpo_loss
from adpo_ray.rllib.factory import build_algo_config, build_distill_config
from adpo_ray.rllib.module import split_gaussian
from adpo_ray.spec import SpecError, parse_spec

PL = {"loss": "plackett_luce", "pl_top_k": 3, "label_smoothing": 0.2, "poly_epsilon": 0.5,
      "clip_log_ratio": 1.0, "clip_score": 1.5}
ONLINE = {"name": "pl", "environments": ["Hopper-v5"], "scenarios": ["clean"], "budget": {"iterations": 1},
          "anchors": {"modes": ["dynamic"]}, "adpo": {**PL, "tau_anc": 0.7, "list_size": 4}}
STUDENT = {"name": "pl_students", "environments": ["Hopper-v5"], "scenarios": ["clean"], "algorithms": ["adpo"],
           "anchors": {"modes": ["fixed"]}, "budget": {"iterations": 2}, "adpo": {**PL, "tau_anc": 0.7},
           "distill": {"dataset": {"states": 100, "candidates": 5}, "states_per_iteration": 64, "minibatch_states": 16}}
KNOBS = ("pl_top_k", "label_smoothing", "poly_epsilon", "clip_log_ratio", "clip_score")
#: adpo_loss's keyword arguments for PL, as the spec gives them
EXPECTED = dict(loss="plackett_luce", tau_anc=0.7, pl_top_k=3, label_smoothing=0.2, poly_epsilon=0.5,
                clip_log_ratio=1.0, clip_score=1.5)


def _spaces():
    env = gym.make("Hopper-v5")
    spaces = {DEFAULT_MODULE_ID: (env.observation_space, env.action_space)}
    env.close()
    return spaces


@pytest.mark.parametrize("data,build", [(ONLINE, build_algo_config), (STUDENT, build_distill_config)],
                         ids=["online", "student"])
def test_a_spec_with_pl_knobs_builds_a_config_carrying_them(data, build):
    spec = parse_spec(data)
    knobs = spec.knobs(spec.trials()[0])
    params = knobs.params()
    assert {k: params[k] for k in KNOBS} == {"pl_top_k": "3", "label_smoothing": "0.2", "poly_epsilon": "0.5",
                                            "clip_log_ratio": "1.0", "clip_score": "1.5"}
    assert "tau_alpha" not in params and "q_center" not in params  # the listwise loss's, not PL's
    config = build(knobs)
    assert config.adpo_loss == "plackett_luce"
    assert {k: getattr(config, k) for k in KNOBS} == {k: PL[k] for k in KNOBS}


def test_every_rank_is_the_default_and_reaches_the_loss_as_none():
    spec = parse_spec({**ONLINE, "adpo": {"loss": "plackett_luce"}})
    knobs = spec.knobs(spec.trials()[0])
    assert knobs.params()["pl_top_k"] == "all" and knobs.params()["label_smoothing"] == "0.0"
    config = build_algo_config(knobs)
    assert config.pl_top_k is None and (config.label_smoothing, config.poly_epsilon) == (0.0, 0.0)


def test_the_online_learner_computes_adpo_loss_with_the_knobs():
    config = build_algo_config(parse_spec(ONLINE).knobs(parse_spec(ONLINE).trials()[0]))
    learner = config.build_learner(spaces=_spaces())
    module = learner.module[DEFAULT_MODULE_ID].unwrapped()
    torch.manual_seed(0)
    n = 8  # two lists of list_size 4
    batch = {Columns.OBS: torch.randn(n, 11), Columns.ACTIONS: torch.randn(n, 3),
             Columns.ADVANTAGES: torch.randn(n), Columns.VALUE_TARGETS: torch.randn(n)}
    with torch.no_grad():
        fwd = module.forward_train(batch)
        anchor_logits = fwd[Columns.ACTION_DIST_INPUTS] + 0.5 * torch.randn(n, 6)  # an anchor apart
        dist_cls = module.get_train_action_dist_cls()
        anchor_logp = dist_cls.from_logits(anchor_logits).logp(batch[Columns.ACTIONS])
        _, stats, _ = learner.adpo_terms(DEFAULT_MODULE_ID, learner.config.get_config_for_module(DEFAULT_MODULE_ID),
                                         batch, fwd, anchor_logp, anchor_logits)
        s = dist_cls.from_logits(fwd[Columns.ACTION_DIST_INPUTS]).logp(batch[Columns.ACTIONS])
        lists = [x.reshape(2, 4) for x in (s, anchor_logp, batch[Columns.ADVANTAGES])]
        expected = adpo_loss(*lists, **EXPECTED).mean()
        plain = adpo_loss(*lists, loss="plackett_luce", tau_anc=0.7).mean()
    assert float(stats[0]) == pytest.approx(float(expected), rel=1e-6)
    assert abs(float(expected) - float(plain)) > 1e-3  # the knobs change the loss on this batch


def test_the_distillation_learner_computes_adpo_loss_with_the_knobs():
    spec = parse_spec(STUDENT)
    config = build_distill_config(spec.knobs(spec.trials()[0]))
    learner = config.build_learner(spaces=_spaces())
    module = learner.module[DEFAULT_MODULE_ID].unwrapped()
    torch.manual_seed(1)
    b, k = 6, 5
    batch = {Columns.OBS: torch.randn(b, 11), "actions": torch.randn(b, k, 3), "rewards": torch.randn(b, k),
             "teacher_logp": torch.randn(b, k) * 2, "teacher_mean": torch.randn(b, 3),
             "teacher_log_std": torch.zeros(b, 3)}
    with torch.no_grad():
        fwd = module.forward_train(batch)
        loss = learner.compute_loss_for_module(module_id=DEFAULT_MODULE_ID,
                                               config=learner.config.get_config_for_module(DEFAULT_MODULE_ID),
                                               batch=batch, fwd_out=fwd)
        mean, log_std = split_gaussian(fwd[Columns.ACTION_DIST_INPUTS])
        logp = diag_gaussian_logp(batch["actions"], mean.unsqueeze(-2), log_std.unsqueeze(-2))
        expected = adpo_loss(logp, batch["teacher_logp"], batch["rewards"], **EXPECTED).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("adpo,message", [
    ({"loss": "listwise", "pl_top_k": 2}, "adpo.pl_top_k: the plackett_luce loss's knobs; adpo.loss is 'listwise'"),
    ({"loss": "pairwise", "label_smoothing": 0.1, "poly_epsilon": 1.0},
     "adpo.label_smoothing, adpo.poly_epsilon: the plackett_luce loss's knobs; adpo.loss is 'pairwise'"),
    ({"loss": "pairwise", "clip_score": 2.0}, "adpo.clip_score: the listwise losses' clamps"),
    ({"loss": "plackett_luce", "tau_alpha": 0.5}, "adpo.tau_alpha / adpo.q_center: the listwise loss's variants"),
    ({"loss": "plackett_luce", "pl_top_k": 0}, "adpo.pl_top_k: Input should be greater than or equal to 1"),
    ({"loss": "plackett_luce", "label_smoothing": 1.5}, "adpo.label_smoothing: Input should be less than or equal to 1"),
])
def test_pl_knobs_are_validated_naming_the_knob(adpo, message):
    with pytest.raises(SpecError) as e:
        parse_spec({**ONLINE, "adpo": adpo})
    assert any(message in line for line in e.value.errors), e.value.errors
