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

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import gymnasium as gym
import numpy as np

from adpo_ray.core.noise import CLEAN, Scenario, get_scenario

__all__ = ["PreferenceBandit", "BanditProblem", "bandit_problem", "winmass"]

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
        return np.tanh(x @ self._w1 + self._b1) @ self._w2

    def utilities(self, x: np.ndarray) -> np.ndarray:
        """Clean utilities, shape ``(..., K)`` for contexts of shape ``(..., d)``."""
        return (self._raw(np.asarray(x, dtype=np.float64)) - self._mean) / self._std

    def eval_contexts(self, n: int = 1024) -> np.ndarray:
        """Fixed held-out nominal contexts (independent of any training seed)."""
        rng = np.random.default_rng(self.problem_seed + _EVAL_SEED_OFFSET)
        return rng.standard_normal((n, self.context_dim)).astype(np.float32)


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
    x = problem.eval_contexts(n)
    probs = np.asarray(policy_probs_fn(x), dtype=np.float64)
    if probs.shape != (n, problem.num_items):
        raise ValueError(f"policy_probs_fn returned shape {probs.shape}, expected {(n, problem.num_items)}")
    best = problem.utilities(x).argmax(axis=-1)
    return float(probs[np.arange(n), best].mean())


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
        x = self._mean + self.np_random.standard_normal(self.problem.context_dim)
        self._x = x.astype(np.float32)
        return self._x.copy(), {}

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
