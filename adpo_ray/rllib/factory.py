"""One trial's effective settings (:class:`~adpo_ray.spec.TrialKnobs`) -> an RLlib AlgorithmConfig:
ADPO, DPO or the PPO baselines (clipped, and the KL penalty ``ppo_kl``) online, and the offline distillation students (``adpo``, ``kd``, ``bc``).

The builders read only the knobs record, which is also what MLflow logs as the trial's params:
every value as it is (a knob that is off is its off value), and a knob that does not apply to
the trial's method (``None``) is left at the config class's own setting."""

from __future__ import annotations

from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

from adpo_ray.rllib import _ray_private as rp
from adpo_ray.rllib.algorithm import ADPOConfig
from adpo_ray.rllib.callbacks import CleanMetricsCallbacks
from adpo_ray.rllib.connectors import BatchedMeanStdFilter
from adpo_ray.rllib.distill import LOSS_VARIANTS
from adpo_ray.rllib.env import register
from adpo_ray.rllib.fused import FusedPPOConfig, PPOKLConfig
from adpo_ray.spec import TrialKnobs
from adpo_ray.spec.knobs import ALL_RANKS


def rows_per_step(knobs: TrialKnobs) -> int:
    """PPO's learner adds one masked artificial step per episode; the bandit's one-step episodes
    double the rows, so its minibatches are doubled to keep ``minibatch_size`` real samples each."""
    return 2 if knobs.kind == "bandit" else 1


def model_config(hidden_size: int) -> DefaultModelConfig:
    """Every method's network: two tanh layers of ``hidden_size``, separate policy and value nets."""
    return DefaultModelConfig(
        fcnet_hiddens=[hidden_size, hidden_size], fcnet_activation="tanh", vf_share_layers=False
    )


def build_algo_config(knobs: TrialKnobs) -> AlgorithmConfig:
    """The RLlib config of one online trial. Shared knobs (network, optimiser, batch sizes) are
    the same for every method, so ADPO, DPO, PPO and ``ppo_kl`` differ only in their policy loss."""
    env_name = register()
    trial = knobs.trial
    config = {"adpo": ADPOConfig, "dpo": ADPOConfig, "ppo_kl": PPOKLConfig}.get(trial.algorithm, FusedPPOConfig)()
    config = (
        config.api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .environment(env_name, env_config=knobs.env_config)
        .env_runners(
            num_env_runners=knobs.num_env_runners,
            num_envs_per_env_runner=knobs.num_envs_per_env_runner,
            rollout_fragment_length="auto",
        )
        .learners(num_learners=knobs.num_learners, num_gpus_per_learner=knobs.num_gpus_per_learner)
        .training(
            lr=knobs.lr,
            gamma=knobs.gamma,
            lambda_=knobs.lambda_,
            train_batch_size_per_learner=knobs.train_batch_size,
            minibatch_size=knobs.minibatch_size * rows_per_step(knobs),
            num_epochs=knobs.num_epochs,
            entropy_coeff=knobs.entropy_coeff,
            vf_loss_coeff=knobs.vf_coeff,
            grad_clip=rllib_grad_clip(knobs),
            use_kl_loss=False,
            learner_update=knobs.learner_update,
            fused_compile=knobs.learner_compile,
            torch_optimizer=knobs.optimizer,
            weight_decay=knobs.weight_decay,
        )
        .rl_module(model_config=model_config(trial.hidden_size))
        .callbacks(CleanMetricsCallbacks)
        .debugging(seed=trial.seed)
    )
    if knobs.clip_param is not None:
        config.training(clip_param=knobs.clip_param)
    if knobs.kl_beta is not None:  # ppo_kl: the KL penalty instead of clipping
        config.training(use_kl_loss=True, kl_coeff=knobs.kl_beta, kl_target=knobs.kl_target,
                        kl_adaptive=knobs.kl_adaptive)
    if knobs.loss is not None:
        config.training(
            adpo_loss=knobs.loss,
            adpo_target=knobs.target,
            tau_anc=knobs.tau_anc,
            beta_q=knobs.beta_q,
            list_source=knobs.list_source,
            anchor_mode=knobs.anchor_mode,
            anchor_params=dict(knobs.anchor_params),
            **loss_variants(knobs),
        )
        if knobs.list_size is not None:
            config.training(list_size=knobs.list_size)
        if knobs.anchor_kl_coeff is not None:
            config.training(anchor_kl_coeff=knobs.anchor_kl_coeff)
    if knobs.kind == "mujoco":
        # Observation normalisation (running mean/std, batched per vector step); actions are
        # clipped to the box inside the env (NoisyMujoco), so RLlib's per-item action connector is
        # off; and a clean, nominal evaluation env with no more envs than episodes it runs, whose
        # filter normalises by the training runners' statistics (synced before each evaluation)
        # without learning from the evaluation's own observations.
        config.env_runners(env_to_module_connector=lambda env, spaces=None, device=None: BatchedMeanStdFilter())
        config.environment(normalize_actions=False, clip_actions=False)
        config.evaluation(
            evaluation_interval=knobs.eval_interval,
            evaluation_duration=knobs.eval_episodes,
            evaluation_duration_unit="episodes",
            evaluation_num_env_runners=0,
            evaluation_config=AlgorithmConfig.overrides(
                env_config={**knobs.env_config, "scenario": "clean"}, explore=knobs.eval_explore,
                num_envs_per_env_runner=eval_envs(knobs),
                **rp.env_to_module_override(
                    lambda env, spaces=None, device=None: BatchedMeanStdFilter(update_stats=False)),
            ),
        )
    return config


def eval_envs(knobs: TrialKnobs) -> int:
    """Envs of a MuJoCo trial's evaluation env runner: its training envs per env runner, but no
    more than the episodes one evaluation runs (``evaluation.episodes``). An evaluation takes
    the first episodes to end from a reset of every env, so envs beyond that count only step
    episodes that are thrown away (with 8 envs and 5 episodes, 3 of every 8 simulated steps); the
    first ``n`` envs are seeded as before and the evaluation's filter does not update, so with
    episodes of one length (HalfCheetah's 1,000 steps) the evaluation is the same."""
    return min(knobs.num_envs_per_env_runner, knobs.eval_episodes or knobs.num_envs_per_env_runner)


def build_distill_config(
    knobs: TrialKnobs,
    *,
    dataset=None,
    obs_norm: dict | None = None,
    teacher_return: float | None = None,
) -> AlgorithmConfig:
    """The RLlib config of one offline distillation student (``adpo``, ``kd`` or ``bc``). The
    dataset and teacher facts come from :func:`adpo_ray.orchestration.datasets.student_inputs`
    (left out, the config still sizes the trial's resources)."""
    from adpo_ray.rllib.distill import DistillConfig

    env_name = register()
    trial = knobs.trial
    config = (
        DistillConfig()
        .api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .environment(env_name, env_config={"env": trial.env, "scenario": "clean", "obs_norm": obs_norm})
        .env_runners(num_env_runners=0)
        .learners(num_learners=knobs.num_learners, num_gpus_per_learner=knobs.num_gpus_per_learner)
        .training(
            lr=knobs.lr,
            grad_clip=rllib_grad_clip(knobs),
            torch_optimizer=knobs.optimizer,
            weight_decay=knobs.weight_decay,
            distill_method=trial.algorithm,
            dataset=dataset,
            obs_norm=obs_norm,
            teacher_return=teacher_return,
            states_per_iteration=knobs.distill_states_per_iteration,
            minibatch_states=knobs.distill_minibatch_states,
            eval_interval=knobs.eval_interval,
            eval_episodes=knobs.eval_episodes,
            eval_explore=knobs.eval_explore,
            total_iterations=knobs.iterations,
        )
        .rl_module(model_config=model_config(trial.hidden_size))
        .debugging(seed=trial.seed)
    )
    if knobs.loss is not None:  # an ADPO student; kd and bc have no preference loss
        config.training(adpo_loss=knobs.loss, adpo_target=knobs.target, tau_anc=knobs.tau_anc,
                        beta_q=knobs.beta_q, anchor_mode=knobs.anchor_mode,
                        anchor_params=dict(knobs.anchor_params), **loss_variants(knobs))
    return config


def rllib_grad_clip(knobs: TrialKnobs) -> float | None:
    """The trial's global-norm clip as RLlib takes it: ``None`` is RLlib's "no clipping" (a 0
    would scale every gradient to 0 on RLlib's update path)."""
    return knobs.grad_clip if knobs.grad_clip > 0 else None


def loss_variants(knobs: TrialKnobs) -> dict:
    """The author's loss variants that apply to the trial's loss, as config knobs (the rest keep
    the config's settings). Every rank counting (:data:`~adpo_ray.spec.knobs.ALL_RANKS`) is the
    loss's ``pl_top_k=None``."""
    out = {name: getattr(knobs, name) for name in LOSS_VARIANTS if getattr(knobs, name) is not None}
    if out.get("pl_top_k") == ALL_RANKS:
        out["pl_top_k"] = None
    return out
