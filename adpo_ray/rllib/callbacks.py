"""RLlib callbacks shared by ADPO and the PPO baseline: clean evaluation metrics.

* ``eval/winmass`` (bandit): the policy's mass on the truly best item over fixed held-out nominal
  contexts, computed on the learner's own module after every training iteration.
* ``train/return_mean``: the return of each training episode under the *clean* reward (every env
  of the project reports ``info["clean_return"]`` at the episode's end), logged by the env runners
  as ``train_clean_return`` next to RLlib's noisy ``episode_return_mean``
  (``train/return_noisy_mean``).
"""

from __future__ import annotations

import numpy as np
import torch
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns

from adpo_ray.envs import ENVIRONMENTS, bandit_problem, winmass
from adpo_ray.metrics import CLEAN_RETURN_KEY, EVAL_GROUP, WINMASS_KEY


def _winmass_on_learner(learner, env_config: dict) -> float:
    return module_winmass(learner.module[DEFAULT_MODULE_ID], env_config)


def module_winmass(module, env_config: dict) -> float:
    """The WinMass of ``module`` (a solo RLModule with categorical action inputs) on the held-out
    nominal contexts of the bandit ``env_config`` describes (``eval_contexts`` of them, 1024 by
    default): a float in [0, 1]."""
    device = next(module.parameters()).device
    problem = bandit_problem(env_config)

    def probs(x: np.ndarray) -> np.ndarray:
        out = module.forward_inference({Columns.OBS: torch.as_tensor(x, device=device)})
        return torch.softmax(out[Columns.ACTION_DIST_INPUTS], dim=-1).cpu().numpy()

    return winmass(problem, probs, n=int(env_config.get("eval_contexts", 1024)))


class CleanMetricsCallbacks(RLlibCallback):
    """Logs the clean yardsticks of every online trial, ADPO, DPO and PPO alike: the bandit's
    ``eval/winmass`` after each iteration and each training episode's clean return."""

    def on_episode_end(self, *, episode, metrics_logger=None, **kwargs) -> None:
        last = episode.get_infos(-1)
        if metrics_logger is not None and isinstance(last, dict) and "clean_return" in last:
            metrics_logger.log_value(CLEAN_RETURN_KEY, float(last["clean_return"]), reduce="mean", window=100)

    def on_train_result(self, *, algorithm, metrics_logger=None, result: dict, **kwargs) -> None:
        env_config = dict(algorithm.config.env_config or {})
        if ENVIRONMENTS.get(env_config.get("env", ""), {}).get("kind") == "bandit":
            values = algorithm.learner_group.foreach_learner(lambda lr: _winmass_on_learner(lr, env_config))
            result.setdefault(EVAL_GROUP, {})[WINMASS_KEY] = float(np.mean([v.get() for v in values]))
