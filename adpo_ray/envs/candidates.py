"""Candidate actions and their signals, read by restoring the MuJoCo simulator state.

The distillation dataset (:func:`collect`) follows the teacher through the env. At every visited
state it samples ``K`` candidate actions from the teacher, restores the simulator state
(``qpos``, ``qvel``) before each candidate and reads that candidate's signal, applies the
scenario's noise to the ``K`` signals (a ``flip`` flips the whole list, like a preference flip),
then restores the state again and moves on with one teacher sample. ``shift`` scenarios perturb
the dynamics per episode, so their candidates are scored in the shifted simulator.

Signals (:data:`SIGNALS`), each from the restored state:

* ``reward``: the one-step reward ``r(s, a)``;
* ``q_lookahead``: ``r(s, a) + gamma * V_teacher(s')``, the teacher's own value of the next state
  (no bootstrap past a terminal state);
* ``nstep``: the discounted return of ``horizon`` steps, the candidate first and the teacher's
  mean action after (stopping at a terminal state); ``horizon: 1`` is ``reward``.

Pure numpy + gymnasium: the teacher is any callable ``obs -> (mean, log_std)``, its value any
callable ``obs -> float`` (both on normalised observations).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from adpo_ray.envs.mujoco import REWARD_SCALE, ObsNorm, make_mujoco

__all__ = ["COLUMNS", "SIGNALS", "Policy", "Signal", "collect", "dataset_metadata", "probe", "read_dataset",
           "sim_state", "write_dataset"]

Policy = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
Value = Callable[[np.ndarray], float]
SIGNALS = ("reward", "q_lookahead", "nstep")

#: Dataset columns (one row per visited state; ``K`` candidates, ``A`` action dims, ``O`` obs dims).
COLUMNS: dict[str, str] = {
    "obs": "(O,) teacher-normalised observation: the students' input",
    "qpos": "MuJoCo qpos at the state",
    "qvel": "MuJoCo qvel at the state",
    "actions": "(K, A) candidate actions sampled from the teacher (before clipping)",
    "rewards": "(K,) the candidates' signals (dataset.signal: reward, q_lookahead or nstep), with the scenario's noise",
    "rewards_clean": "(K,) the same signals without noise",
    "teacher_logp": "(K,) log pi_teacher(candidate | state)",
    "teacher_mean": "(A,) the teacher's Gaussian mean",
    "teacher_log_std": "(A,) the teacher's Gaussian log std",
    "heldout": "True for held-out states (evaluation only)",
    "episode": "rollout episode index within the chunk",
}


def sim_state(env: gym.Env) -> tuple[np.ndarray, np.ndarray]:
    data = env.unwrapped.data
    return data.qpos.copy(), data.qvel.copy()


class Signal:
    """How a candidate is scored from a restored state (see the module docstring)."""

    def __init__(self, kind: str = "reward", *, gamma: float = 0.99, horizon: int = 1,
                 policy: Policy | None = None, value: Value | None = None, obs_norm: ObsNorm | None = None):
        if kind not in SIGNALS:
            raise ValueError(f"signal {kind!r}; allowed: {', '.join(SIGNALS)}")
        if kind == "q_lookahead" and value is None:
            raise ValueError("signal q_lookahead needs the teacher's value function")
        if kind == "nstep" and (policy is None or horizon < 1):
            raise ValueError("signal nstep needs the teacher's policy and horizon >= 1")
        self.kind, self.gamma, self.horizon = kind, gamma, horizon
        self.policy, self.value = policy, value
        self.norm = obs_norm if obs_norm is not None else (lambda obs: obs)

    def __call__(self, env: gym.Env, qpos: np.ndarray, qvel: np.ndarray, action: np.ndarray) -> float:
        base = env.unwrapped
        base.set_state(qpos, qvel)
        obs, reward, terminated = _bare_step(base, action)
        if self.kind == "reward":
            return reward
        if self.kind == "q_lookahead":
            return reward if terminated else reward + self.gamma * float(self.value(self.norm(obs)))
        total, discount = reward, 1.0
        for _ in range(self.horizon - 1):
            if terminated:
                break
            discount *= self.gamma
            mean, _ = self.policy(self.norm(obs))
            obs, reward, terminated = _bare_step(base, np.asarray(mean, dtype=np.float64))
            total += discount * reward
        return total

    @property
    def steps_per_candidate(self) -> int:
        """Simulator steps to score one candidate (at most)."""
        return self.horizon if self.kind == "nstep" else 1


def _bare_step(base, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
    action = np.clip(action, base.action_space.low, base.action_space.high)
    obs, reward, terminated, *_ = base.step(action)
    return obs, float(reward), bool(terminated)


def probe(env: gym.Env, actions: np.ndarray, signal: Signal | None = None) -> np.ndarray:
    """The clean signal of each action from the env's current state (default: the one-step
    reward); the state is restored afterwards, so the episode goes on as if nothing happened."""
    signal = signal or Signal("reward")
    qpos, qvel = sim_state(env)
    values = np.array([signal(env, qpos, qvel, a) for a in actions])
    env.unwrapped.set_state(qpos, qvel)
    return values


def collect(
    env_name: str,
    scenario: str,
    policy: Policy,
    obs_norm: ObsNorm,
    *,
    num_states: int,
    num_candidates: int,
    seed: int,
    heldout_fraction: float,
    signal: str = "reward",
    gamma: float = 0.99,
    horizon: int = 1,
    value: Value | None = None,
) -> dict[str, np.ndarray]:
    """Roll the teacher out for ``num_states`` states and return the dataset columns
    (:data:`COLUMNS`) as arrays, each candidate scored by ``signal`` (``value``: the teacher's
    value function, for ``q_lookahead``). A pure function of its arguments."""
    scorer = Signal(signal, gamma=gamma, horizon=horizon, policy=policy, value=value, obs_norm=obs_norm)
    env = make_mujoco(env_name, {"scenario": scenario})
    rng = np.random.default_rng(seed)
    scale = REWARD_SCALE.get(env_name, 1.0)
    cols: dict[str, list[Any]] = {k: [] for k in COLUMNS}
    obs, _ = env.reset(seed=seed)
    episode = 0
    for _ in range(num_states):
        x = obs_norm(obs)
        mean, log_std = (np.asarray(v, dtype=np.float64) for v in policy(x))
        cands = mean + np.exp(log_std) * rng.standard_normal((num_candidates, mean.shape[-1]))
        qpos, qvel = sim_state(env)
        clean = probe(env, cands, scorer)
        noisy = env.scenario.corrupt(clean, rng, scale=scale, list_axis=True)
        for key, value in (
            ("obs", x), ("qpos", qpos), ("qvel", qvel), ("actions", cands), ("rewards", noisy),
            ("rewards_clean", clean),
            ("teacher_mean", mean), ("teacher_log_std", log_std), ("episode", episode),
        ):
            cols[key].append(value)
        # the rollout moves on with one more teacher sample (not a candidate: no selection bias)
        action = mean + np.exp(log_std) * rng.standard_normal(mean.shape)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
            episode += 1
    env.close()
    cols["heldout"] = list(rng.random(num_states) < heldout_fraction)
    out = {k: np.asarray(v) for k, v in cols.items() if k != "teacher_logp"}
    out["teacher_logp"] = _teacher_logp(out["actions"], out["teacher_mean"], out["teacher_log_std"])
    out = {k: out[k] for k in COLUMNS}  # the documented column order
    for k in ("obs", "actions", "rewards", "rewards_clean", "teacher_logp", "teacher_mean", "teacher_log_std"):
        out[k] = out[k].astype(np.float32)
    return out


def _teacher_logp(actions: np.ndarray, mean: np.ndarray, log_std: np.ndarray) -> np.ndarray:
    """``log pi_teacher`` of every candidate, ``(N, K)``, by the core's diagonal-Gaussian formula."""
    import torch

    from adpo_ray.core.distill import diag_gaussian_logp

    t = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in (("a", actions), ("m", mean), ("s", log_std))}
    return diag_gaussian_logp(t["a"], t["m"][:, None], t["s"][:, None]).numpy()


# -- Parquet ------------------------------------------------------------------------------------
def to_table(columns: dict[str, np.ndarray], metadata: dict[str, Any] | None = None):
    """Columns -> a pyarrow Table: per-row arrays become fixed-size lists; their shapes and
    ``metadata`` travel in the schema metadata (``adpo_ray`` key, JSON)."""
    import json

    import pyarrow as pa

    arrays, shapes = {}, {}
    for name, values in columns.items():
        values = np.ascontiguousarray(values)
        shapes[name] = list(values.shape[1:])
        if values.ndim == 1:
            arrays[name] = pa.array(values)
        else:
            width = int(np.prod(values.shape[1:]))
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), width)
    table = pa.table(arrays)
    meta = {"shapes": shapes, **(metadata or {})}
    return table.replace_schema_metadata({"adpo_ray": json.dumps(meta)})


def write_dataset(folder, parts: list[dict[str, np.ndarray]], metadata: dict[str, Any]) -> None:
    """Write ``parts`` as ``folder/part-00000.parquet``, ... (one file per generation chunk)."""
    from pathlib import Path

    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(parts):
        pq.write_table(to_table(part, metadata), folder / f"part-{i:05d}.parquet")


def dataset_metadata(folder) -> dict[str, Any]:
    import json
    from pathlib import Path

    import pyarrow.parquet as pq

    first = sorted(Path(folder).glob("part-*.parquet"))
    if not first:
        raise FileNotFoundError(f"no dataset parts (part-*.parquet) in {folder}")
    return json.loads(pq.read_schema(first[0]).metadata[b"adpo_ray"])


def read_dataset(folder) -> dict[str, np.ndarray]:
    """Read a dataset folder back into numpy columns with their per-row shapes."""
    from pathlib import Path

    import pyarrow.parquet as pq

    meta = dataset_metadata(folder)
    files = sorted(Path(folder).glob("part-*.parquet"))
    table = pq.ParquetDataset([str(f) for f in files]).read()
    out = {}
    for name, shape in meta["shapes"].items():
        col = table.column(name).combine_chunks()
        if shape:
            values = col.values.to_numpy(zero_copy_only=False)
            out[name] = values.reshape(len(col), *shape)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out
