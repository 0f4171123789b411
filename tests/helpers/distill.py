"""The small distillation grid and a synthetic teacher dataset, shared by the distillation tests."""

from __future__ import annotations

import numpy as np

#: Hopper students of every method from a small teacher and dataset, a few iterations each.
DISTILL = {
    "name": "distill_small",
    "environments": ["Hopper-v5"],
    "scenarios": ["gaussian-high"],
    "algorithms": ["adpo", "kd", "bc"],
    "anchors": {"modes": ["fixed", "dynamic"]},
    "hidden_sizes": [32],
    "budget": {"iterations": 4, "checkpoint_every": 2},
    "train": {"train_batch_size": 512, "minibatch_size": 128, "num_epochs": 2, "lr": 0.001},
    "distill": {
        "teacher": {"env_steps": 1024, "hidden_size": 32, "seed": 5},
        "dataset": {"states": 240, "candidates": 4, "chunks": 2, "heldout_fraction": 0.25},
        "states_per_iteration": 128,
        "minibatch_states": 64,
    },
    "resources": {"num_envs_per_env_runner": 4},
    "evaluation": {"interval": 2, "episodes": 1},
}


def synthetic_dataset(n=600, seed=0):
    """A teacher far from any fresh student: mean 0.8 * tanh(obs W), std exp(-1). Arrays of ``n``
    Hopper states (obs ``(n, 11)``), 5 candidate actions each (actions ``(n, 5, 3)``, rewards and
    log-probabilities ``(n, 5)``), the teacher's Gaussian ``(n, 3)`` and a held-out mask ``(n,)``."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, 11)).astype(np.float32)
    mean = (0.8 * np.tanh(obs @ rng.normal(size=(11, 3)) / 3)).astype(np.float32)
    log_std = np.full((n, 3), -1.0, np.float32)
    actions = (mean[:, None] + np.exp(log_std)[:, None] * rng.normal(size=(n, 5, 3))).astype(np.float32)
    z = (actions - mean[:, None]) / np.exp(log_std)[:, None]
    logp = (-0.5 * z**2 - log_std[:, None] - 0.5 * np.log(2 * np.pi)).sum(-1).astype(np.float32)
    clean = -((actions - 0.5) ** 2).sum(-1).astype(np.float32)
    rewards = (clean + rng.normal(size=clean.shape)).astype(np.float32)  # the signal with noise
    return {"obs": obs, "actions": actions, "rewards": rewards, "rewards_clean": clean, "teacher_logp": logp,
            "teacher_mean": mean, "teacher_log_std": log_std, "heldout": rng.random(n) < 0.2}
