"""PreferenceBandit: a synthetic contextual bandit with full-feedback preference annotations.

* A context ``x ~ N(0, I_d)`` is the observation; the action picks one of ``K`` items.
* True utilities ``u(x) in R^K`` come from a fixed random two-layer network drawn from
  ``problem_seed`` (the same problem in every env copy, on every worker), standardised to unit scale.
* One step per episode. The reward is the chosen item's *noisy* utility; ``info`` carries the
  noisy utilities of all K items (``utilities_noisy``: the annotation a list-wise learner uses), the
  clean ones (``utilities``), the truly best item (``best_item``) and the episode's clean return
  (``clean_return``).
* The scenario's noise corrupts the training signal only; a ``shift`` scenario draws the training
  contexts around a shifted mean. :func:`winmass` evaluates on fixed nominal held-out contexts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import gymnasium as gym
import numpy as np

from adpo_ray.core.noise import CLEAN, Scenario, corrupt_rows, get_scenario

__all__ = ["PreferenceBandit", "BanditProblem", "BanditSteps", "bandit_problem", "winmass"]

_EVAL_SEED_OFFSET = 1_000_003


class BanditProblem:
    """The fixed utility function of one bandit problem (a pure function of its seed)."""

    def __init__(
        self, num_items: int = 8, context_dim: int = 8, hidden: int = 32, problem_seed: int = 0
    ):
        if num_items < 2:
            raise ValueError(f"num_items must be >= 2, got {num_items}")
        if context_dim < 1:
            raise ValueError(f"context_dim must be >= 1, got {context_dim}")
        self.num_items, self.context_dim, self.problem_seed = num_items, context_dim, problem_seed
        rng = np.random.default_rng(problem_seed)
        self._w1 = rng.standard_normal((context_dim, hidden)) / np.sqrt(context_dim)
        self._b1 = 0.5 * rng.standard_normal(hidden)
        self._w2 = rng.standard_normal((hidden, num_items)) / np.sqrt(hidden)
        direction = rng.standard_normal(context_dim)
        self.shift_direction = direction / np.linalg.norm(direction)
        ref = self._raw(rng.standard_normal((4096, context_dim)))
        self._mean, self._std = float(ref.mean()), float(ref.std())

    def _raw(self, x: np.ndarray) -> np.ndarray:
        # Products summed over the input axis in one fixed order, so that a row's utilities are
        # the same numbers in any batch (a BLAS matrix product's are not: its kernels depend on
        # the batch's shape), and a pack's envs stepped together equal each stepped alone.
        hidden = np.tanh((x[..., :, None] * self._w1).sum(axis=-2) + self._b1)
        return (hidden[..., :, None] * self._w2).sum(axis=-2)

    def utilities(self, x: np.ndarray) -> np.ndarray:
        """Clean utilities, shape ``(..., K)`` float64 for contexts of shape ``(..., d)``; each
        row's the same numbers whatever the batch it is in."""
        return (self._raw(np.asarray(x, dtype=np.float64)) - self._mean) / self._std

    def eval_contexts(self, n: int = 1024) -> np.ndarray:
        """Fixed held-out nominal contexts ``(n, d)`` float32 (independent of any training seed)."""
        return self._eval(n)[0].copy()

    def eval_best_items(self, n: int = 1024) -> np.ndarray:
        """The truly best item of each of :meth:`eval_contexts`, ``(n,)`` int64."""
        return self._eval(n)[1].copy()

    @lru_cache(maxsize=32)  # noqa: B019 (problems are few, cached for the process's life by bandit_problem)
    def _eval(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.problem_seed + _EVAL_SEED_OFFSET)
        x = rng.standard_normal((n, self.context_dim)).astype(np.float32)
        return x, self.utilities(x).argmax(axis=-1)


@lru_cache(maxsize=32)
def _cached_problem(num_items: int, context_dim: int, hidden: int, problem_seed: int) -> BanditProblem:
    return BanditProblem(num_items, context_dim, hidden, problem_seed)


def bandit_problem(config: dict[str, Any] | None = None) -> BanditProblem:
    """The (shared, read-only) problem an env config describes; built once per process."""
    config = config or {}
    return _cached_problem(
        int(config.get("num_items", 8)),
        int(config.get("context_dim", 8)),
        int(config.get("hidden", 32)),
        int(config.get("problem_seed", 0)),
    )


def winmass(
    problem: BanditProblem,
    policy_probs_fn: Callable[[np.ndarray], np.ndarray],
    n: int = 1024,
) -> float:
    """Mean probability the policy puts on the truly best item over held-out nominal contexts.

    ``policy_probs_fn`` maps contexts ``(n, d)`` to action probabilities ``(n, K)``.
    A uniform policy scores ``1/K``; a perfect one scores 1.
    """
    probs = np.asarray(policy_probs_fn(problem.eval_contexts(n)), dtype=np.float64)
    if probs.shape != (n, problem.num_items):
        raise ValueError(f"policy_probs_fn returned shape {probs.shape}, expected {(n, problem.num_items)}")
    return float(probs[np.arange(n), problem.eval_best_items(n)].mean())


@dataclass
class BanditSteps:
    """One step of each of ``n`` bandit envs (:meth:`PreferenceBandit.step_many`): row ``i`` is
    ``envs[i].step(actions[i])``.

    Attributes:
        obs: ``(n, d)`` float32, the observation each step returned (its context).
        rewards: ``(n,)`` float64, the chosen item's noisy utility.
        utilities_noisy: ``(n, K)`` float64, every item's noisy utility (``info["utilities_noisy"]``
            as float64).
        utilities: ``(n, K)`` float64, the clean utilities.
        clean_return: ``(n,)`` float64, the chosen item's clean utility.
    """

    obs: np.ndarray
    rewards: np.ndarray
    utilities_noisy: np.ndarray
    utilities: np.ndarray
    clean_return: np.ndarray


class PreferenceBandit(gym.Env):
    """Gymnasium env; ``config`` keys: ``num_items`` (8), ``context_dim`` (8), ``hidden`` (32),
    ``problem_seed`` (0), ``scenario`` (``"clean"`` or a scenario name / :class:`Scenario`)."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, config: dict[str, Any] | None = None):
        config = dict(config or {})
        self.problem = bandit_problem(config)
        scenario = config.get("scenario", CLEAN)
        self.scenario: Scenario = get_scenario(scenario) if isinstance(scenario, str) else scenario
        d, k = self.problem.context_dim, self.problem.num_items
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(d,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(k)
        self._mean = np.zeros(d)
        if self.scenario.noise_type == "shift":
            self._mean = self.scenario.params["context_shift"] * self.problem.shift_direction
        self._x = np.zeros(d, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return self._new_context().copy(), {}

    def _new_context(self) -> np.ndarray:
        self._x = (self._mean + self.np_random.standard_normal(self.problem.context_dim)).astype(np.float32)
        return self._x

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} not in {self.action_space}")
        clean = self.problem.utilities(self._x)
        noisy = self.scenario.corrupt(clean, self.np_random, list_axis=True)
        info = {
            "utilities_noisy": noisy.astype(np.float32),
            "utilities": clean.astype(np.float32),
            "best_item": int(clean.argmax()),
            "clean_return": float(clean[int(action)]),  # one step: the episode's clean return
        }
        return self._x.copy(), float(noisy[int(action)]), True, False, info

    @staticmethod
    def reset_many(envs: Sequence[PreferenceBandit]) -> np.ndarray:
        """``reset()`` (unseeded) of every env of ``envs``: their observations, ``(n, d)`` float32,
        each env's context drawn from its own generator, the same numbers as ``n`` resets.

        Raises:
            ValueError: envs whose contexts differ in size."""
        d = envs[0].problem.context_dim
        if any(env.problem.context_dim != d for env in envs):
            raise ValueError(f"reset_many: every env must have context_dim {d}, as envs[0]")
        draws = np.empty((len(envs), d))
        for i, env in enumerate(envs):
            env.np_random.standard_normal(out=draws[i])
        x = (np.stack([env._mean for env in envs]) + draws).astype(np.float32)
        for env, row in zip(envs, x, strict=True):
            env._x = row
        return x.copy()

    @staticmethod
    def step_many(envs: Sequence[PreferenceBandit], actions: np.ndarray) -> BanditSteps:
        """``envs[i].step(actions[i])`` for every ``i`` (each episode ends on its step), the
        utilities of envs that share a problem computed together: the same numbers, each env's
        noise drawn from its own generator, in a fraction of the time of ``n`` steps.

        Args:
            envs: ``n`` envs whose action spaces are one ``Discrete(K)``.
            actions: ``(n,)`` ints in ``[0, K)``.

        Raises:
            ValueError: an action out of range, or action spaces that differ.
        """
        n, k = len(envs), envs[0].problem.num_items
        actions = np.asarray(actions)
        if any(env.problem.num_items != k for env in envs):
            raise ValueError(f"step_many: every env must have {k} items, as envs[0]")
        if actions.shape != (n,) or not np.issubdtype(actions.dtype, np.integer) or actions.min() < 0 or actions.max() >= k:
            raise ValueError(f"step_many: actions must be {n} ints in [0, {k}), got {actions!r}")
        x = np.stack([env._x for env in envs])
        clean = np.empty((n, k))
        for problem in {id(env.problem): env.problem for env in envs}.values():
            rows = [i for i, env in enumerate(envs) if env.problem is problem]
            clean[rows] = problem.utilities(x[rows])
        noisy = corrupt_rows(clean, [env.scenario for env in envs], [env.np_random for env in envs], list_axis=True)
        rows = np.arange(n)
        return BanditSteps(obs=x, rewards=noisy[rows, actions], utilities_noisy=noisy, utilities=clean,
                           clean_return=clean[rows, actions])
