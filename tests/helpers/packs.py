"""Trial packs next to their solo trials: K members' knobs, the pack's and the solos' RLlib
algorithms, states and updates, and the run tags by which a pack member's run differs from a solo's."""

from __future__ import annotations

import copy
import dataclasses

import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

from adpo_ray.orchestration.tracking import PACK_CHECKPOINT_TAG, PACK_MEMBER_TAG, PACK_TAG
from adpo_ray.rllib import _ray_private as rp
from adpo_ray.rllib.packed import MEMBER
from adpo_ray.spec import TrialSpec, parse_spec

#: child-run tags that name the Tune trial that ran a trial (a pack: the member's place, the
#: pack's checkpoint), not the trial
RUNNER_TAGS = {"tune_trial_id", PACK_TAG, PACK_MEMBER_TAG, PACK_CHECKPOINT_TAG, "mlflow.parentRunId"}

#: Each member's train batch (env steps) and epochs per update.
BATCH, EPOCHS = 128, 2
#: Member k's seed, lr and beta_q.
SEEDS = [5, 17, 29]
LRS = [3e-3, 1e-3, 5e-3]
BETA_Q = [0.5, 1.0, 2.0]
#: ppo_kl's initial betas and KL targets: member 0's KL lies far above its target (beta doubles),
#: member 1's far below (beta halves), member 2's decides by its data
KL_BETA = [0.3, 1.0, 0.5]
KL_TARGET = [1e-7, 10.0, 0.01]
EMA_HOOK = "adpo_ray.core.anchors:EMA"  # an import-path schedule
#: ADPO's KL penalty to the anchor per member, where the spec turns it on (member 1: none)
ANCHOR_KL = [0.2, 0.0, 0.5]


def member_knobs(env, algorithm, modes, scenarios=("clean", "gaussian-high", "shift-high"), **adpo):
    """K members of one shape whose seeds, lr, beta_q (ppo_kl: initial beta and KL target;
    ``anchor_kl_coeff`` where ``adpo`` sets it: :data:`ANCHOR_KL`), scenario and anchor mode differ."""
    spec = parse_spec({
        "name": "pack", "environments": [env], "algorithms": [algorithm], "budget": {"iterations": 1},
        "scenarios": sorted(set(scenarios)),
        "train": {"train_batch_size": BATCH, "num_epochs": EPOCHS, "minibatch_size": 32},
        "adpo": adpo,
        "anchors": {"modes": sorted({"ema" if m == EMA_HOOK else m for m in modes}) if algorithm == "adpo" else ["dynamic"],
                    "params": {"kl_triggered": {"threshold": 1e-4, "window": 1}}},
        "resources": {"num_envs_per_env_runner": 2},
    })
    out = []
    for k, mode in enumerate(modes):
        spec_mode = "ema" if mode == EMA_HOOK else mode
        knobs = spec.knobs(TrialSpec(env, scenarios[k], algorithm, spec_mode, 16, SEEDS[k]))
        change = {"lr": LRS[k]}
        if knobs.beta_q is not None:
            change["beta_q"] = BETA_Q[k]
        if knobs.kl_beta is not None:
            change.update(kl_beta=KL_BETA[k], kl_target=KL_TARGET[k])
        if knobs.anchor_kl_coeff:
            change["anchor_kl_coeff"] = ANCHOR_KL[k]
        if mode == EMA_HOOK:
            change["anchor_mode"] = EMA_HOOK
        out.append(dataclasses.replace(knobs, **change))
    return out


def sampling_episodes(config):
    """``config`` sampling with RLlib's ``SingleAgentEnvRunner`` (episodes), which a bandit pack
    replaces by its columns (``BanditPackEnvRunner``, whose train batch is the episodes' one:
    tests/integration/test_bandit_runner.py)."""
    return config.env_runners(env_runner_cls=SingleAgentEnvRunner)


def build(config, shuffle):
    """The algorithm of ``config`` without evaluation, sampling episodes (:func:`sampling_episodes`);
    ``shuffle``: its ``fused_shuffle`` ("device" or "rllib")."""
    config.evaluation(evaluation_interval=None)
    config.training(fused_shuffle=shuffle)
    return sampling_episodes(config).build_algo()


def learner(algo):
    """The algorithm's local learner."""
    return rp.local_learner(algo.learner_group)


def solo_state(algo) -> dict[str, torch.Tensor]:
    """A copy of a solo algorithm's module parameters, by name."""
    return {k: v.detach().clone() for k, v in learner(algo).module[DEFAULT_MODULE_ID].state_dict().items()}


def pack_states(algo) -> list[dict[str, torch.Tensor]]:
    """Each pack member's parameters (copies) as a solo module's state dict."""
    return learner(algo).pack_module.member_state_dicts()


def split(episodes, k):
    """Member ``k``'s episodes of a pack's sample."""
    return [e for e in episodes if e.custom_data[MEMBER] == k]


def update(algo, episodes, steps):
    """One learner update on (a copy of) ``episodes``, ``steps`` the sampled lifetime env steps;
    the module's results."""
    return algo.learner_group.update(
        episodes=copy.deepcopy(episodes), timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: steps},
        num_epochs=EPOCHS, minibatch_size=algo.config.minibatch_size, shuffle_batch_per_epoch=True,
    )[0][DEFAULT_MODULE_ID]


def max_diff(a: dict, b: dict) -> float:
    """The largest absolute difference between two state dicts of the same names."""
    assert a.keys() == b.keys()
    return max(float((a[n] - b[n]).abs().max()) for n in a)
