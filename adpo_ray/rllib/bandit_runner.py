"""A bandit trial pack's env runner: one-step episodes sampled as columns, no episode objects.

A bandit episode is one step: a context, an action, a reward. RLlib's ``SingleAgentEnvRunner``
builds an episode object per step, runs its callbacks and logs its metrics one at a time, and the
learner's connector pipeline turns each back into rows; on the bandit that Python work per
episode is most of an iteration, so a pack (K members x N envs) hardly beats its members run one
after another (docs/results/benchmarks.md, "Capacity plan").

:class:`BanditPackEnvRunner` is a ``SingleAgentEnvRunner`` (its env, module, spaces, state and
checkpoints are RLlib's) whose :meth:`~BanditPackEnvRunner.sample` steps the pack's sub-envs
together (:meth:`~adpo_ray.envs.bandit.PreferenceBandit.step_many`, each env's numbers as its own
``step``) and returns one :class:`BanditColumns`: every step of every sub-env, in the order
RLlib's runner returns its episodes (step ``t``, then sub-env ``i``). Each sub-env runs the
stream of RLlib's: its first reset seeded as the runner seeds it, then one unseeded reset before
each step, as gymnasium's next-step autoreset does. Actions come from the module's exploration
(or inference) distribution in one batched call per step. The pack's learner
(:meth:`~adpo_ray.rllib.pack_learner.PackedLearner.columns_batch`) makes the train batch from the
columns, row for row what RLlib's learner pipeline makes from the same steps as episodes.

Per member, the runner logs what :class:`~adpo_ray.rllib.packed.PackCallbacks` logs for its
episodes (``member/<k>/``: ``episode_return_mean`` and ``episode_len_mean`` over RLlib's window,
``train_clean_return`` over the last 100, ``num_env_steps_sampled_lifetime``), and for the pack
RLlib's step and episode counters (:func:`~adpo_ray.rllib._ray_private.count_sampled`) and its
episode return and length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.metrics import (
    EPISODE_LEN_MEAN,
    EPISODE_RETURN_MEAN,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
)

from adpo_ray.envs.bandit import PreferenceBandit
from adpo_ray.metrics import CLEAN_RETURN_KEY, MEMBER_GROUP
from adpo_ray.rllib import _ray_private as rp

#: The window of ``train_clean_return`` (as :class:`~adpo_ray.rllib.callbacks.CleanMetricsCallbacks`).
CLEAN_RETURN_WINDOW = 100


@dataclass
class BanditColumns:
    """``T`` steps of every sub-env of a bandit pack, row ``t * n_envs + i`` for step ``t`` of
    sub-env ``i`` (member ``member[row]``); every step ends its one-step episode.

    Attributes:
        obs: ``(R, obs_dim)`` float32, the context before the action.
        next_obs: ``(R, obs_dim)`` float32, the observation the step returned.
        actions: ``(R,)`` int64.
        rewards: ``(R,)`` float32, the (noisy) reward.
        terminated: ``(R,)`` bool, True on every row (a bandit episode ends on its step).
        action_logp: ``(R,)`` float32, the action's log-probability when it was sampled.
        action_dist_inputs: ``(R, n_actions)`` float32, the logits it was sampled from.
        list_signal: ``(R, n_actions)`` float32, ``info["utilities_noisy"]`` of the step.
        member: ``(R,)`` int64.
    """

    obs: np.ndarray
    next_obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    action_logp: np.ndarray
    action_dist_inputs: np.ndarray
    list_signal: np.ndarray
    member: np.ndarray

    def __len__(self) -> int:
        return len(self.actions)

    def env_steps(self) -> int:
        """Env steps (rows), as an episode's ``env_steps()``: what RLlib's sample loop counts."""
        return len(self.actions)

    agent_steps = env_steps


class BanditPackEnvRunner(SingleAgentEnvRunner):
    """The env runner of a bandit trial pack (see the module docstring). Its env is the pack's
    :class:`~adpo_ray.envs.packed.PackedVectorEnv` of one-step bandit envs."""

    def __init__(self, *, config, **kwargs):
        super().__init__(config=config, **kwargs)
        members = (config.env_config or {}).get("members") or []
        self._num_members = len(members)
        #: RLlib's episode-metrics window per env runner
        self._window = max(1, math.ceil(config.metrics_num_episodes_for_smoothing / (config.num_env_runners or 1)))

    def sample(self, *, num_timesteps: int | None = None, num_episodes: int | None = None,
               explore: bool | None = None, random_actions: bool = False, force_reset: bool = False):
        """``[BanditColumns]`` of at least ``num_timesteps`` steps (default: the rollout fragment
        times the envs, as RLlib's runner samples) or ``num_episodes`` episodes, rounded up to
        whole vector steps. ``random_actions`` draws actions from the action space instead.
        ``force_reset`` changes nothing: every step starts from a reset (one-step episodes).

        Raises:
            ValueError: both counts given, or sub-envs that are not
                :class:`~adpo_ray.envs.bandit.PreferenceBandit`."""
        if num_timesteps is not None and num_episodes is not None:
            raise ValueError("sample: give num_timesteps or num_episodes, not both")
        vec = self.env.unwrapped
        subs, n = vec.envs, self.num_envs
        wanted = num_timesteps if num_timesteps is not None else num_episodes
        if wanted is None:
            wanted = self.config.get_rollout_fragment_length(self.worker_index) * n
        steps = max(1, math.ceil(wanted / n))
        explore = self.config.explore if explore is None else explore
        first, seed = rp.take_initial_reset_seed(self)
        if not all(isinstance(e, PreferenceBandit) for e in subs):
            raise ValueError("BanditPackEnvRunner samples PreferenceBandit envs (one-step episodes); use RLlib's "
                             "SingleAgentEnvRunner for other envs")
        member = np.asarray([vec.member_of(i) for i in range(n)], dtype=np.int64)
        cols: dict[str, list] = {k: [] for k in ("obs", "next_obs", "actions", "rewards", "action_logp",
                                                  "action_dist_inputs", "list_signal")}
        clean = np.empty(steps * n, dtype=np.float64)
        for t in range(steps):
            if t == 0 and first:
                obs, _ = vec.reset(seed=seed)
            else:  # the next-step autoreset of every sub-env (each episode ended on its one step)
                obs = PreferenceBandit.reset_many(subs)
            obs = np.asarray(obs, dtype=np.float32)
            inputs, actions, logp = self._act(obs, explore, random_actions)
            out = PreferenceBandit.step_many(subs, actions)
            cols["obs"].append(obs)
            cols["next_obs"].append(out.obs)
            cols["actions"].append(actions)
            cols["rewards"].append(out.rewards.astype(np.float32))
            cols["action_logp"].append(logp)
            cols["action_dist_inputs"].append(inputs)
            cols["list_signal"].append(out.utilities_noisy.astype(np.float32))
            clean[t * n:(t + 1) * n] = out.clean_return
        columns = BanditColumns(**{k: np.concatenate(v) for k, v in cols.items()}, member=np.tile(member, steps),
                                terminated=np.ones(steps * n, dtype=bool))
        self._log(columns, clean)
        return [columns]

    def _act(self, obs: np.ndarray, explore: bool, random_actions: bool):
        """``(dist inputs, actions, logp)`` for every sub-env's observation, one module call."""
        module = self.module
        with torch.no_grad():
            batch = {Columns.OBS: torch.from_numpy(obs)}
            out = module.forward_exploration(batch) if explore else module.forward_inference(batch)
            inputs = out[Columns.ACTION_DIST_INPUTS]
            cls = module.get_exploration_action_dist_cls() if explore else module.get_inference_action_dist_cls()
            dist = cls.from_logits(inputs)
            if random_actions:
                actions = torch.as_tensor(np.asarray([self.env.single_action_space.sample() for _ in obs]))
            else:
                actions = (dist if explore else dist.to_deterministic()).sample()
            # RLlib's runner records a greedy action's log-probability as 0
            logp = dist.logp(actions) if explore or random_actions else torch.zeros(len(obs))
        return (inputs.numpy().astype(np.float32), actions.numpy().astype(np.int64), logp.numpy().astype(np.float32))

    def _log(self, columns: BanditColumns, clean: np.ndarray) -> None:
        """RLlib's counters, and each episode's return, length and clean return as RLlib's runner
        and :class:`~adpo_ray.rllib.packed.PackCallbacks` log them: the windows keep only each
        key's last values, so only those are logged (the same means, a fraction of the calls)."""
        metrics, win = self.metrics, self._window
        rp.count_sampled(self, len(columns), len(columns))
        returns = columns.rewards[-win:].tolist()
        rp.log_values(metrics, EPISODE_RETURN_MEAN, returns, window=win)
        rp.log_values(metrics, EPISODE_LEN_MEAN, [1] * len(returns), window=win)
        for k in range(self._num_members):
            rows = np.flatnonzero(columns.member == k)
            key = (MEMBER_GROUP, str(k))
            returns = columns.rewards[rows[-win:]].tolist()
            rp.log_values(metrics, (*key, EPISODE_RETURN_MEAN), returns, window=win)
            rp.log_values(metrics, (*key, EPISODE_LEN_MEAN), [1] * len(returns), window=win)
            rp.log_values(metrics, (*key, CLEAN_RETURN_KEY), clean[rows[-CLEAN_RETURN_WINDOW:]].tolist(),
                          reduce="mean", window=CLEAN_RETURN_WINDOW)
            metrics.log_value((*key, NUM_ENV_STEPS_SAMPLED_LIFETIME), len(rows), reduce="lifetime_sum")
