"""Step many MuJoCo locomotion envs as columns: one trial pack's ``K * N`` HalfCheetah-v5 or
Hopper-v5 sub-envs in one call, with the numbers gymnasium's ``SyncVectorEnv`` gives.

Stepping a pack of MuJoCo envs one sub-env at a time pays, per sub-env and step, gymnasium's
wrapper chain, the env's Python step (an info dict, scalar reward arithmetic) and the vector
env's per-key info merge; on a pack of 64 HalfCheetah-v5 envs that Python is about as long as
MuJoCo's physics (``bench/pack_sampling.py``). :class:`MujocoBatch` keeps one Python call per
sub-env, the physics (``mj_step`` for the env's frame skip, then ``mj_rnePostConstraint``, as
gymnasium's ``MujocoEnv.do_simulation``), and computes what the env's ``step`` computes from the
state for all sub-envs at once: observation, reward, termination and info columns, then the
scenario's reward noise (:class:`~adpo_ray.envs.mujoco.NoisyMujoco`, each sub-env's own
generator, in sub-env order), the clean return, the time limit and gymnasium's next-step
autoreset. Resets go through each sub-env's own wrapper chain (gymnasium's reset noise, the
scenario's dynamics shift), as before.

Source: gymnasium 1.2's ``half_cheetah_v5.py`` and ``hopper_v5.py`` (``step``, ``_get_obs``,
``_get_rew``, ``is_healthy``), ``TimeLimit`` and ``SyncVectorEnv.step``; the env's construction
arguments (reward weights, healthy ranges, ...) are its class's defaults updated by what
``gym.make`` passed (:func:`construction_args`). Tested equal,
array for array and dtype for dtype, to stepping the same sub-envs through ``SyncVectorEnv``
(``tests/unit/test_mujoco_batch.py``).
"""

from __future__ import annotations

import inspect
from typing import Any

import gymnasium as gym
import numpy as np

from adpo_ray.envs.mujoco import NoisyMujoco, import_mujoco

import_mujoco()  # before gymnasium's MuJoCo envs import it (MUJOCO_GL)

import mujoco  # noqa: E402
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv  # noqa: E402
from gymnasium.envs.mujoco.hopper_v5 import HopperEnv  # noqa: E402

__all__ = ["BATCHED_ENVS", "STEP_ARGS", "MujocoBatch", "batchable", "construction_args"]

#: The env classes whose ``step`` :class:`MujocoBatch` computes as columns.
BATCHED_ENVS = (HalfCheetahEnv, HopperEnv)
#: The construction arguments their ``step`` reads (Hopper's healthy ranges among them).
STEP_ARGS = ("frame_skip", "forward_reward_weight", "ctrl_cost_weight", "exclude_current_positions_from_observation",
             "healthy_reward", "terminate_when_unhealthy", "healthy_state_range", "healthy_z_range",
             "healthy_angle_range")


def _chain(env: gym.Env) -> tuple[NoisyMujoco | None, gym.wrappers.TimeLimit | None]:
    """The scenario wrapper and time limit of ``env``'s wrapper chain, or ``(None, None)`` when the
    chain holds anything else (an observation transform, an env checker): such envs step one by
    one."""
    noisy = limit = None
    while isinstance(env, gym.Wrapper):
        if isinstance(env, NoisyMujoco) and noisy is None and limit is None:
            noisy = env
        elif isinstance(env, gym.wrappers.TimeLimit) and noisy is not None and limit is None:
            limit = env
        elif not isinstance(env, gym.wrappers.OrderEnforcing):
            return None, None
        env = env.env
    return noisy, limit


def construction_args(env: gym.Env) -> dict[str, Any]:
    """The arguments of :data:`STEP_ARGS` the MuJoCo env ``env`` (unwrapped) was built with: its
    class's defaults, updated by the keyword arguments ``gym.make`` passed (``env.spec.kwargs``);
    None for one its class does not take."""
    params = inspect.signature(type(env).__init__).parameters
    args = {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}
    args.update(env.spec.kwargs if env.spec is not None else {})
    return {name: args.get(name) for name in STEP_ARGS}


def batchable(envs: list[gym.Env]) -> bool:
    """Whether :class:`MujocoBatch` can step ``envs``: each a ``NoisyMujoco(TimeLimit(...))`` chain
    as :func:`~adpo_ray.envs.mujoco.make_mujoco` builds it (no observation transform) around one
    HalfCheetah-v5 or Hopper-v5 that does not render on its own (``render_mode`` other than
    ``human``), all of one class built with the same arguments and time limit."""
    if not envs:
        return False
    first = envs[0].unwrapped
    args, kind = construction_args(first), type(first)
    for env in envs:
        noisy, limit = _chain(env)
        base = env.unwrapped
        if noisy is None or limit is None or type(base) is not kind or not isinstance(base, BATCHED_ENVS) \
                or base.render_mode == "human" or construction_args(base) != args or base.frame_skip != first.frame_skip \
                or limit.spec is None or limit.spec.max_episode_steps != envs[0].spec.max_episode_steps:
            return False
    return True


class MujocoBatch:
    """The columnar step of ``n`` MuJoCo sub-envs (see the module docstring).

    Args:
        envs: the sub-envs, each as :func:`batchable` requires.

    Raises:
        ValueError: ``envs`` that :func:`batchable` refuses.
    """

    def __init__(self, envs: list[gym.Env]):
        if not batchable(envs):
            raise ValueError("MujocoBatch steps NoisyMujoco(TimeLimit(HalfCheetah-v5 | Hopper-v5)) envs of one kind, "
                             "as make_mujoco builds them without obs_norm or render_mode='human'")
        self.envs = list(envs)
        self.n = len(envs)
        chains = [_chain(env) for env in envs]
        self._noisy = [noisy for noisy, _ in chains]
        self._max_steps = envs[0].spec.max_episode_steps
        self._bases = [env.unwrapped for env in envs]
        base = self._bases[0]
        self._args = construction_args(base)
        # each sub-env's model and data, and views of its state (MuJoCo's arrays live as long as
        # the data; reading them through the bindings' properties builds a new view each time)
        self._models = [b.model for b in self._bases]
        self._datas = [b.data for b in self._bases]
        self._ctrl = [d.ctrl for d in self._datas]
        self._qpos = [d.qpos for d in self._datas]
        self._qvel = [d.qvel for d in self._datas]
        self._frame_skip = base.frame_skip
        self._quiet = all(n.scenario.noise_type in ("clean", "shift") for n in self._noisy)
        self._hopper = isinstance(base, HopperEnv)
        self._nu = base.model.nu
        self._low, self._high = self._noisy[0]._low, self._noisy[0]._high
        self.elapsed = np.zeros(self.n, dtype=np.int64)
        self.clean_return = np.zeros(self.n, dtype=np.float64)
        self.autoreset = np.zeros(self.n, dtype=bool)

    def reset_state(self) -> None:
        """What a reset of every sub-env sets: no steps taken, no return, no pending autoreset."""
        self.elapsed[:] = 0
        self.clean_return[:] = 0.0
        self.autoreset[:] = False

    def step(self, actions: np.ndarray):
        """One step of every sub-env, gymnasium's next-step autoreset included: a sub-env whose
        episode ended on the last step is reset instead (reward 0, not terminated or truncated,
        its reset info).

        Args:
            actions: ``(n, nu)``, clipped to the action box.

        Returns:
            ``(obs (n, obs_dim) float64, rewards (n,) float64, terminated (n,) bool,
            truncated (n,) bool, infos)``, ``infos`` gymnasium's vector info dict (each key an
            ``(n,)`` array beside its ``_key`` mask).

        Raises:
            ValueError: ``actions`` not of shape ``(n, nu)``.
        """
        actions = np.asarray(actions)
        if actions.shape != (self.n, self._nu):
            raise ValueError(f"actions must have shape {(self.n, self._nu)}, got {actions.shape}")
        actions = np.clip(actions, self._low, self._high)
        resets = np.flatnonzero(self.autoreset)
        stepped = np.flatnonzero(~self.autoreset)
        models, datas, ctrls, qposs, qvels = self._models, self._datas, self._ctrl, self._qpos, self._qvel
        fs, mj_step, rne = self._frame_skip, mujoco.mj_step, mujoco.mj_rnePostConstraint
        rows = stepped.tolist()
        x_before = np.empty(len(rows))
        for row, i in enumerate(rows):  # gymnasium's do_simulation, per sub-env
            model, data = models[i], datas[i]
            x_before[row] = qposs[i][0]
            ctrls[i][:] = actions[i]
            mj_step(model, data, nstep=fs)
            rne(model, data)
        qpos = np.stack([qposs[i] for i in rows]) if rows else None
        qvel = np.stack([qvels[i] for i in rows]) if rows else None

        obs = np.empty((self.n, *self._bases[0].observation_space.shape), dtype=np.float64)
        rewards = np.zeros(self.n, dtype=np.float64)
        terminated = np.zeros(self.n, dtype=bool)
        truncated = np.zeros(self.n, dtype=bool)
        columns: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if len(stepped):
            step_obs, reward, term, info = self._columns(stepped, actions[stepped], x_before, qpos, qvel)
            obs[stepped] = step_obs
            terminated[stepped] = term
            self.clean_return[stepped] += reward
            self.elapsed[stepped] += 1
            truncated[stepped] = self.elapsed[stepped] >= self._max_steps
            for key, value in info.items():
                _put(columns, key, stepped, value, self.n)
            ended = stepped[terminated[stepped] | truncated[stepped]]
            if len(ended):
                _put(columns, "clean_return", ended, self.clean_return[ended], self.n)
            rewards[stepped] = self._noise(stepped, reward)
        for i in resets.tolist():
            obs[i], info = self.envs[i].reset()
            self.elapsed[i] = 0
            self.clean_return[i] = 0.0
            for key, value in info.items():
                _put(columns, key, np.asarray([i]), np.asarray([value]), self.n)
        self.autoreset = terminated | truncated
        infos: dict[str, Any] = {}
        for key, (values, mask) in columns.items():
            infos[key], infos["_" + key] = values, mask
        return obs, rewards, terminated, truncated, infos

    def _columns(self, rows: np.ndarray, actions: np.ndarray, x_before: np.ndarray, qpos: np.ndarray,
                 qvel: np.ndarray):
        """``(obs, reward, terminated, info columns)`` of the stepped ``rows``, as the env's
        ``step`` computes them one sub-env at a time."""
        env, args = self._bases[rows[0]], self._args
        x_after = qpos[:, 0]
        x_velocity = (x_after - x_before) / env.dt
        forward = args["forward_reward_weight"] * x_velocity
        ctrl_cost = args["ctrl_cost_weight"] * np.sum(np.square(actions), axis=1)
        position = qpos[:, 1:] if args["exclude_current_positions_from_observation"] else qpos
        if not self._hopper:
            obs = np.concatenate((position, qvel), axis=1)
            reward = forward - ctrl_cost
            info = {"x_position": x_after, "x_velocity": x_velocity, "reward_forward": forward,
                    "reward_ctrl": -ctrl_cost}
            return obs, reward, np.zeros(len(rows), dtype=bool), info
        obs = np.concatenate((position, np.clip(qvel, -10, 10)), axis=1)
        healthy = _hopper_healthy(args, qpos, qvel)
        survive = healthy * float(args["healthy_reward"])
        reward = (forward + survive) - ctrl_cost
        terminated = ~healthy & bool(args["terminate_when_unhealthy"])
        info = {"x_position": x_after, "z_distance_from_origin": qpos[:, 1] - env.init_qpos[1],
                "x_velocity": x_velocity, "reward_forward": forward, "reward_ctrl": -ctrl_cost,
                "reward_survive": survive}
        return obs, reward, terminated, info

    def _noise(self, rows: np.ndarray, reward: np.ndarray) -> np.ndarray:
        """The scenario's training reward of each stepped sub-env, drawn from its own generator in
        sub-env order (:meth:`~adpo_ray.envs.mujoco.NoisyMujoco.corrupt`)."""
        if self._quiet:
            return reward
        noisy = self._noisy
        return np.asarray([noisy[i].corrupt(r) for i, r in zip(rows.tolist(), reward.tolist(), strict=True)],
                          dtype=np.float64)


def _hopper_healthy(args: dict[str, Any], qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
    """Hopper-v5's ``is_healthy`` for each row: the state (``qpos[2:]``, ``qvel``) strictly inside
    the healthy state range, the height ``qpos[1]`` and angle ``qpos[2]`` strictly inside theirs."""
    lo, hi = args["healthy_state_range"]
    state = np.concatenate((qpos, qvel), axis=1)[:, 2:]
    z, angle = qpos[:, 1], qpos[:, 2]
    min_z, max_z = args["healthy_z_range"]
    min_angle, max_angle = args["healthy_angle_range"]
    return (np.all((lo < state) & (state < hi), axis=1) & (min_z < z) & (z < max_z)
            & (min_angle < angle) & (angle < max_angle))


def _put(columns: dict[str, tuple[np.ndarray, np.ndarray]], key: str, rows: np.ndarray, values: np.ndarray,
         n: int) -> None:
    """Set ``values`` (an array, one value per row) at ``rows`` of info ``key``, creating the
    column as gymnasium's ``VectorEnv._add_info`` does for numeric values: zeros of the values'
    type, and a False mask."""
    if key not in columns:
        columns[key] = (np.zeros(n, dtype=values.dtype), np.zeros(n, dtype=bool))
    column, mask = columns[key]
    column[rows] = values
    mask[rows] = True
