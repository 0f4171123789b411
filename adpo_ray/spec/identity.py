"""The MLflow identity of what a grid stores and finds again: clean-env PPO policies
(distillation teachers and pretrained starts, :class:`CleanPPO`) and distillation datasets. A key
holds every setting that changes what is stored, so equal settings find the same run."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from adpo_ray.envs import ENVIRONMENTS
from adpo_ray.spec.sections import TrainParams
from adpo_ray.spec.trials import TrialSpec

#: The ``train`` knobs a stored PPO policy's key holds (``optimizer`` and ``weight_decay`` only
#: where they differ from the defaults, so the keys of policies trained before they existed stand).
_KEY_KNOBS = {"lr", "gamma", "lambda_", "num_epochs", "minibatch_size", "train_batch_size",
              "entropy_coeff", "vf_coeff", "grad_clip"}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class CleanPPO:
    """A PPO policy trained on the clean env, kept in MLflow under ``key`` in ``experiment``: a
    distillation teacher, or the pretrained start of online trials (``anchors.init.pretrain``)."""

    env: str
    env_steps: int
    hidden_size: int
    seed: int
    experiment: str
    key: str
    iterations: int | None = None  # with env_steps: whichever comes first

    @property
    def budget(self) -> str:
        """The budget in words: ``1024 env steps`` or ``30 iterations (at most 1024 env steps)``."""
        steps = f"{self.env_steps} env steps"
        return steps if self.iterations is None else f"{self.iterations} iterations (at most {steps})"

    @property
    def trial(self) -> TrialSpec:
        """The training run as a trial: PPO on the clean env, with this network and seed."""
        return TrialSpec(self.env, "clean", "ppo", "none", self.hidden_size, self.seed)


def clean_ppo(spec, env: str, env_steps: int, hidden_size: int, seed: int, experiment: str,
              iterations: int | None = None) -> CleanPPO:
    """The identity of a clean-env PPO policy of ``spec`` (an
    :class:`~adpo_ray.spec.experiment.ExperimentSpec`): env, budget (``env_steps``, and
    ``iterations`` when set: whichever comes first), seed, network and the PPO knobs it trains
    with (and, on MuJoCo, the evaluation episodes of its recorded return; on the bandit, the
    problem's knobs)."""
    train = spec.train_for(env, "ppo")
    knobs = train.model_dump(include=_KEY_KNOBS)
    for name in ("optimizer", "weight_decay"):
        if getattr(train, name) != TrainParams.model_fields[name].default:
            knobs[name] = getattr(train, name)
    if ENVIRONMENTS[env]["kind"] == "bandit":  # another problem is another policy
        knobs["bandit"] = spec.bandit.model_dump()
    else:
        knobs["evaluation_episodes"] = spec.evaluation.episodes
        if spec.evaluation.explore:
            knobs["evaluation_explore"] = True
    budget = f"{env_steps}steps" + (f"_{iterations}iters" if iterations is not None else "")
    key = f"{env}_ppo_{budget}_h{hidden_size}_s{seed}_{_digest(knobs)}"
    return CleanPPO(env, env_steps, hidden_size, seed, experiment, key, iterations)


def teacher_of(spec, env: str) -> CleanPPO:
    """``env``'s distillation teacher (``distill.teacher``) of a distillation spec."""
    t = spec.distill.teacher
    return clean_ppo(spec, env, t.env_steps, t.hidden_size, t.seed, t.experiment)


def teacher_key(spec, env: str) -> str:
    """A distillation teacher's identity: env, budget, seed, network and the PPO knobs it trains with."""
    return teacher_of(spec, env).key


def pretrained_of(spec, env: str, hidden_size: int) -> CleanPPO | None:
    """The pretrained starting policy of ``env``'s online trials of ``hidden_size``, if any."""
    init = spec.anchors.init
    if init is None or init.pretrain is None or spec.distill is not None:
        return None
    p = init.pretrain
    return clean_ppo(spec, env, p.env_steps, hidden_size, p.seed, p.experiment, p.iterations)


def pretrained_policies(spec) -> list[CleanPPO]:
    """Every pretrained starting policy the grid needs: one per env and network size."""
    out = [pretrained_of(spec, env, h) for env in spec.environments for h in spec.hidden_sizes]
    return [p for p in out if p is not None]


def init_slot(env: str, hidden_size: int) -> str:
    """Where a trial's pinned starting policy is found in the launch's ``init_runs``."""
    return f"{env}/h{hidden_size}"


def dataset_key(spec, env: str, scenario: str) -> str:
    """A distillation dataset's identity (under its teacher's run): scenario and dataset knobs."""
    d = spec.distill.dataset
    return f"{scenario}_{d.states}x{d.candidates}_{_digest(d.key_fields())}"
