"""One trial of a spec -> an RLlib AlgorithmConfig (ADPO, DPO or the PPO baseline)."""

from __future__ import annotations

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

from adpo_ray.config import ExperimentSpec, TrialSpec
from adpo_ray.envs import ENVIRONMENTS
from adpo_ray.rllib.algorithm import ADPOConfig
from adpo_ray.rllib.callbacks import ADPOCallbacks
from adpo_ray.rllib.connectors import BatchedMeanStdFilter
from adpo_ray.rllib.env import register


def env_config_for(spec: ExperimentSpec, trial: TrialSpec, scenario: str | None = None) -> dict:
    config = {"env": trial.env, "scenario": scenario or trial.scenario}
    if ENVIRONMENTS[trial.env]["kind"] == "bandit":
        config.update(spec.bandit.model_dump())
    return config


def model_config(trial: TrialSpec) -> DefaultModelConfig:
    """Every method's network: two tanh layers of ``hidden_size``, separate policy and value nets."""
    return DefaultModelConfig(
        fcnet_hiddens=[trial.hidden_size, trial.hidden_size], fcnet_activation="tanh", vf_share_layers=False
    )


def build_algo_config(spec: ExperimentSpec, trial: TrialSpec) -> AlgorithmConfig:
    """The RLlib config of one trial. Shared knobs (network, optimiser, batch sizes) are the same
    for every method, so ADPO, DPO and PPO differ only in their policy loss."""
    env_name = register()
    kind = ENVIRONMENTS[trial.env]["kind"]
    p, res = spec.params_for(trial.env, trial.algorithm), spec.resources
    # PPO's learner adds one masked artificial step per episode; the bandit's one-step episodes
    # double the rows, so minibatches are doubled to keep `minibatch_size` real samples each.
    rows_per_step = 2 if kind == "bandit" else 1

    config = ADPOConfig() if trial.algorithm in ("adpo", "dpo") else PPOConfig()
    config = (
        config.api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .environment(env_name, env_config=env_config_for(spec, trial))
        .env_runners(
            num_env_runners=res.num_env_runners,
            num_envs_per_env_runner=res.num_envs_per_env_runner,
            rollout_fragment_length="auto",
        )
        .learners(num_learners=res.num_learners, num_gpus_per_learner=res.num_gpus_per_learner)
        .training(
            lr=p.lr,
            gamma=p.gamma,
            lambda_=p.lambda_,
            train_batch_size_per_learner=p.train_batch_size,
            minibatch_size=p.minibatch_size * rows_per_step,
            num_epochs=p.num_epochs,
            entropy_coeff=p.entropy_coeff,
            vf_loss_coeff=p.vf_coeff,
            grad_clip=p.grad_clip,
            use_kl_loss=False,
        )
        .rl_module(model_config=model_config(trial))
        .callbacks(ADPOCallbacks)
        .debugging(seed=trial.seed)
    )
    if trial.algorithm == "ppo":
        config.training(clip_param=0.2)
    elif trial.algorithm == "dpo":
        config.training(adpo_loss="dpo", adpo_target="hard", tau_anc=p.tau_anc, list_source="actions",
                        anchor_mode="fixed", anchor_params={})
    else:
        config.training(
            adpo_loss=p.loss,
            adpo_target=p.target,
            tau_anc=p.tau_anc,
            beta_q=p.beta_q,
            list_source=spec.list_source(trial.env),
            list_size=p.list_size,
            anchor_mode=trial.anchor_mode,
            anchor_params=spec.anchors.schedule_params(trial.anchor_mode),
        )
    if kind == "mujoco":
        # Observation normalisation (running mean/std, batched per vector step); actions are
        # clipped to the box inside the env (NoisyMujoco), so RLlib's per-item action connector is
        # off; and a clean, nominal evaluation env.
        config.env_runners(env_to_module_connector=lambda env, spaces=None, device=None: BatchedMeanStdFilter())
        config.environment(normalize_actions=False, clip_actions=False)
        config.evaluation(
            evaluation_interval=spec.evaluation.interval,
            evaluation_duration=spec.evaluation.episodes,
            evaluation_duration_unit="episodes",
            evaluation_num_env_runners=0,
            evaluation_config=AlgorithmConfig.overrides(
                env_config=env_config_for(spec, trial, scenario="clean"), explore=False
            ),
        )
    return config


def build_distill_config(
    spec: ExperimentSpec,
    trial: TrialSpec,
    *,
    dataset=None,
    obs_norm: dict | None = None,
    teacher_return: float | None = None,
) -> AlgorithmConfig:
    """The RLlib config of one offline distillation student (``adpo``, ``kd`` or ``bc``). The
    dataset and teacher facts come from :func:`adpo_ray.orchestration.distill.student_inputs`
    (left out, the config still sizes the trial's resources)."""
    from adpo_ray.rllib.distill import DistillConfig

    env_name = register()
    p, res, d = spec.adpo_for(trial.env), spec.resources, spec.distill
    is_adpo = trial.algorithm == "adpo"
    return (
        DistillConfig()
        .api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .environment(env_name, env_config={"env": trial.env, "scenario": "clean", "obs_norm": obs_norm})
        .env_runners(num_env_runners=0)
        .learners(num_learners=res.num_learners, num_gpus_per_learner=res.num_gpus_per_learner)
        .training(
            lr=p.lr,
            grad_clip=p.grad_clip,
            distill_method=trial.algorithm,
            adpo_loss=p.loss,
            adpo_target=p.target,
            tau_anc=p.tau_anc,
            beta_q=p.beta_q,
            anchor_mode=trial.anchor_mode if is_adpo else "fixed",
            anchor_params=spec.anchors.schedule_params(trial.anchor_mode) if is_adpo else {},
            dataset=dataset,
            obs_norm=obs_norm,
            teacher_return=teacher_return,
            states_per_iteration=d.states_per_iteration,
            minibatch_states=d.minibatch_states,
            eval_interval=spec.evaluation.interval,
            eval_episodes=spec.evaluation.episodes,
            total_iterations=spec.budget_for(trial.env).iterations,
        )
        .rl_module(model_config=model_config(trial))
        .debugging(seed=trial.seed)
    )
