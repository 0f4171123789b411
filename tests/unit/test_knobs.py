"""One record of a trial's effective settings: the params MLflow logs are the values in the RLlib
config that trains, for every method (no Ray start: configs are built, not run)."""

from __future__ import annotations

import dataclasses

import pytest

from adpo_ray.rllib.algorithm import ADPOConfig
from adpo_ray.rllib.distill import DistillConfig
from adpo_ray.rllib.factory import build_algo_config, build_distill_config, rows_per_step
from adpo_ray.rllib.fused import FusedPPOConfig, PPOKLConfig
from adpo_ray.spec import TrialSpec, dataset_key, parse_spec, teacher_key
from adpo_ray.spec.knobs import ALL_RANKS

ONLINE = {
    "name": "knobs",
    "environments": ["PreferenceBandit", "Hopper-v5"],
    "scenarios": ["clean", "flip-high"],
    "algorithms": ["adpo", "ppo", "ppo_kl", "dpo"],
    "anchors": {"modes": ["fixed", "ema", "kl_triggered"], "params": {"ema": {"rate": 0.3}}},
    "hidden_sizes": [32, 96],
    "seeds": [3],
    "budget": {"iterations": 4, "env_steps": 100_000},
    "adpo": {"loss": "pairwise", "tau_anc": 0.7, "beta_q": 0.25, "list_size": 6},
    "train": {"lr": 0.002, "minibatch_size": 32, "train_batch_size": 256, "num_epochs": 3, "entropy_coeff": 0.01},
    "ppo": {"lr": 0.0004, "num_epochs": 7},
    "ppo_kl": {"kl_beta": 0.4, "kl_target": 0.02},
    "env_overrides": {"Hopper-v5": {"budget": {"env_steps": 4096}, "train": {"gamma": 0.97}, "adpo": {"loss": "listwise",
                      "target_norm": "list", "tau_alpha": 0.5, "tau_min": 0.1, "q_center": True, "anchor_kl_coeff": 0.2}}},
    "resources": {"num_envs_per_env_runner": 4},
    "evaluation": {"interval": 3, "episodes": 4, "explore": True},
    "bandit": {"num_items": 5, "eval_contexts": 64},
}
DISTILL = {
    "name": "students",
    "environments": ["HalfCheetah-v5"],
    "scenarios": ["gaussian-high"],
    "algorithms": ["adpo", "kd", "bc"],
    "anchors": {"modes": ["fixed", "dynamic"]},
    "budget": {"iterations": 9},
    "adpo": {"beta_q": 0.1, "tau_anc": 0.5},
    "train": {"lr": 0.0007},
    "distill": {"teacher": {"env_steps": 5000}, "dataset": {"states": 400, "candidates": 4},
                "states_per_iteration": 128, "minibatch_states": 32},
}


def _online_attrs(config) -> dict:
    """RLlib config attribute behind each logged param of an online trial."""
    return {
        "env": config.env_config["env"], "scenario": config.env_config["scenario"],
        "hidden_size": config.model_config["fcnet_hiddens"][0], "seed": config.seed,
        "lr": config.lr, "optimizer": config.torch_optimizer, "weight_decay": config.weight_decay,
        "grad_clip": config.grad_clip, "gamma": config.gamma, "lambda": config.lambda_,
        "num_epochs": config.num_epochs, "train_batch_size": config.train_batch_size_per_learner,
        "entropy_coeff": config.entropy_coeff, "vf_coeff": config.vf_loss_coeff,
        "clip_param": config.clip_param,
        "kl_beta": config.kl_coeff, "kl_target": config.kl_target, "kl_adaptive": getattr(config, "kl_adaptive", None),
        "resources.num_env_runners": config.num_env_runners,
        "resources.num_envs_per_env_runner": config.num_envs_per_env_runner,
        "resources.num_learners": config.num_learners,
        "resources.num_gpus_per_learner": config.num_gpus_per_learner,
        "resources.learner_update": config.learner_update,
        "resources.learner_compile": config.fused_compile,
        "evaluation.interval": config.evaluation_interval,
        "evaluation.episodes": config.evaluation_duration,
        "evaluation.explore": (config.evaluation_config or {}).get("explore"),
        **{f"bandit.{k}": v for k, v in config.env_config.items() if k not in ("env", "scenario")},
    }


def _adpo_attrs(config) -> dict:
    return {"loss": config.adpo_loss, "target": config.adpo_target, "tau_anc": config.tau_anc,
            "beta_q": config.beta_q, "list_source": getattr(config, "list_source", None),
            "list_size": getattr(config, "list_size", None), "anchor_mode": config.anchor_mode,
            "target_norm": config.target_norm, "tau_alpha": config.tau_alpha, "tau_min": config.tau_min,
            "q_center": config.q_center, "anchor_kl_coeff": getattr(config, "anchor_kl_coeff", None),
            "pl_top_k": ALL_RANKS if config.pl_top_k is None else config.pl_top_k,
            "label_smoothing": config.label_smoothing, "poly_epsilon": config.poly_epsilon,
            "clip_log_ratio": config.clip_log_ratio, "clip_score": config.clip_score,
            **{f"anchor.{k}": v for k, v in config.anchor_params.items()}}


#: Params that are no RLlib config value: the trial's own budget (the trainable stops it), where
#: an online trial starts (the trainable loads it) and, for students, the dataset's identity and
#: size (the dataset is the config's input).
NOT_IN_CONFIG = {"algorithm", "budget.iterations", "budget.env_steps", "anchors.init", "distill.teacher_key",
                 "distill.dataset_key", "distill.states", "distill.candidates"}


@pytest.mark.parametrize("trial", parse_spec(ONLINE).trials(), ids=lambda t: t.tag)
def test_online_params_equal_the_rllib_config(trial):
    spec = parse_spec(ONLINE)
    knobs = spec.knobs(trial)
    config = build_algo_config(knobs)
    params = knobs.params()
    attrs = _online_attrs(config)
    if trial.algorithm in ("adpo", "dpo"):
        assert isinstance(config, ADPOConfig)
        attrs.update(_adpo_attrs(config))
    else:
        assert type(config) is {"ppo": FusedPPOConfig, "ppo_kl": PPOKLConfig}[trial.algorithm]
        assert "loss" not in params and "tau_anc" not in params
        assert params.pop("anchor_mode") == "none"  # PPO has no anchor
        # clipped PPO has no KL penalty; ppo_kl no clipping
        assert config.use_kl_loss == (trial.algorithm == "ppo_kl") and ("clip_param" in params) != config.use_kl_loss
    # minibatches count real samples; the bandit's one-step episodes double RLlib's rows
    assert config.minibatch_size == int(params.pop("minibatch_size")) * rows_per_step(knobs)
    unchecked = set(params) - set(attrs) - NOT_IN_CONFIG
    assert not unchecked, f"logged params with no config value to check: {unchecked}"
    for name, value in params.items():
        if name in attrs:
            assert str(attrs[name]) == value, (name, attrs[name], value)
    assert params["algorithm"] == trial.algorithm


def test_online_knobs_follow_overrides_and_methods():
    spec = parse_spec(ONLINE)
    hopper = spec.knobs(TrialSpec("Hopper-v5", "clean", "adpo", "ema", 32, 3))
    assert (hopper.loss, hopper.gamma, hopper.list_source, hopper.list_size) == ("listwise", 0.97, "batch", 6)
    assert hopper.params()["budget.env_steps"] == "4096" and hopper.params()["anchor.rate"] == "0.3"
    ppo = spec.knobs(TrialSpec("Hopper-v5", "clean", "ppo", "none", 32, 3))
    assert (ppo.lr, ppo.num_epochs, ppo.loss, ppo.clip_param) == (0.0004, 7, None, 0.2)
    dpo = spec.knobs(TrialSpec("PreferenceBandit", "clean", "dpo", "fixed", 32, 3))
    assert (dpo.loss, dpo.target, dpo.list_source, dpo.anchor_params) == ("dpo", "hard", "actions", ())
    bandit = spec.knobs(TrialSpec("PreferenceBandit", "clean", "adpo", "fixed", 32, 3))
    assert bandit.list_size is None and "list_size" not in bandit.params()  # lists are all K items
    assert bandit.eval_interval is None and "bandit.num_items" in bandit.params()
    with pytest.raises(dataclasses.FrozenInstanceError):
        bandit.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("trial", parse_spec(DISTILL).trials(), ids=lambda t: t.tag)
def test_student_params_equal_the_rllib_config(trial):
    spec = parse_spec(DISTILL)
    knobs = spec.knobs(trial)
    config = build_distill_config(knobs)
    assert isinstance(config, DistillConfig)
    params = knobs.params()
    attrs = {
        "env": config.env_config["env"], "hidden_size": config.model_config["fcnet_hiddens"][0],
        "seed": config.seed, "lr": config.lr, "grad_clip": config.grad_clip,
        "optimizer": config.torch_optimizer, "weight_decay": config.weight_decay,
        "distill.states_per_iteration": config.states_per_iteration,
        "distill.minibatch_states": config.minibatch_states,
        "evaluation.interval": config.eval_interval, "evaluation.episodes": config.eval_episodes,
        "evaluation.explore": config.eval_explore,
        "resources.num_env_runners": config.num_env_runners,
        "resources.num_envs_per_env_runner": config.num_envs_per_env_runner,
        "resources.num_learners": config.num_learners,
        "resources.num_gpus_per_learner": config.num_gpus_per_learner,
        "scenario": trial.scenario,  # the student's dataset scenario; it evaluates on clean
    }
    assert config.distill_method == params["algorithm"] == trial.algorithm
    assert str(config.total_iterations) == params["budget.iterations"] == "9"
    if trial.algorithm == "adpo":
        attrs.update({k: v for k, v in _adpo_attrs(config).items() if k not in ("list_source", "list_size")})
    else:  # kd and bc: no preference loss, no anchor knobs logged
        assert not {"loss", "target", "tau_anc", "beta_q"} & set(params)
        assert params.pop("anchor_mode") == "none"
    assert params["distill.teacher_key"] == teacher_key(spec, trial.env)
    assert params["distill.dataset_key"] == dataset_key(spec, trial.env, trial.scenario)
    assert not {"gamma", "num_epochs", "train_batch_size", "minibatch_size"} & set(params)  # the teacher's
    unchecked = set(params) - set(attrs) - NOT_IN_CONFIG
    assert not unchecked, f"logged params with no config value to check: {unchecked}"
    for name in set(params) & set(attrs):
        assert str(attrs[name]) == params[name], (name, attrs[name], params[name])


def test_teacher_knobs_are_ppo_on_the_clean_env():
    spec = parse_spec({**DISTILL, "ppo": {"lr": 0.0002}})
    teacher = spec.knobs(TrialSpec("HalfCheetah-v5", "clean", "ppo", "none", 64, 0))
    config = build_algo_config(teacher)
    assert type(config) is FusedPPOConfig and config.lr == 0.0002 and config.env_config["scenario"] == "clean"
    assert teacher.distill_teacher_key is None
    # the teacher's key changes with its knobs, the dataset's with its own
    assert teacher_key(spec, "HalfCheetah-v5") != teacher_key(parse_spec(DISTILL), "HalfCheetah-v5")
    other = parse_spec({**DISTILL, "distill": {**DISTILL["distill"], "dataset": {"states": 500}}})
    assert dataset_key(spec, "HalfCheetah-v5", "gaussian-high") != dataset_key(other, "HalfCheetah-v5", "gaussian-high")
