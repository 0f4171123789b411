"""Noise and shift for MuJoCo envs (HalfCheetah-v5, Hopper-v5): training signal only.

* ``gaussian`` / ``heavy_tailed`` / ``flip`` corrupt the per-step reward, with magnitudes in units of
  :data:`REWARD_SCALE` (each env's per-step reward spread) so that a severity means about the same
  on both.
* ``shift`` leaves the reward alone and rescales the dynamics per episode: every body mass and every
  geom's sliding friction is multiplied by its own factor drawn from
  ``[1 - dynamics_range, 1 + dynamics_range]`` at reset (nominal values restored first).

Actions are clipped to the action box. At the end of each episode ``info["clean_return"]`` carries
the episode's uncorrupted return, so the clean training return can be reported next to the noisy one
(per-step info keys would slow vectorized sampling down).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import gymnasium as gym
import numpy as np

from adpo_ray.core.noise import CLEAN, Scenario, get_scenario

__all__ = ["NoisyMujoco", "REWARD_SCALE", "ObsNorm", "make_mujoco", "import_mujoco", "gl_error"]

#: The unit of reward noise per env: the standard deviation of the per-step reward under a
#: uniform-random policy (20,000 steps, seed 0, measured with gymnasium 1.2.2 / mujoco 4.0.0:
#: HalfCheetah-v5 0.658, Hopper-v5 0.508), so that `sigma=1` is "one typical reward spread" on both.
REWARD_SCALE: dict[str, float] = {"HalfCheetah-v5": 0.66, "Hopper-v5": 0.51}


class NoisyMujoco(gym.Wrapper):
    """Apply a scenario to a MuJoCo env's training signal (reward) or dynamics (shift)."""

    def __init__(self, env: gym.Env, scenario: Scenario | str = CLEAN, reward_scale: float = 1.0):
        super().__init__(env)
        self._low, self._high = env.action_space.low, env.action_space.high
        self._clean_return = 0.0
        self.scenario = get_scenario(scenario) if isinstance(scenario, str) else scenario
        self.reward_scale = float(reward_scale)
        model = env.unwrapped.model
        self._nominal_mass = model.body_mass.copy()
        self._nominal_friction = model.geom_friction[:, 0].copy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._clean_return = 0.0
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        elif not hasattr(self, "_rng"):
            self._rng = np.random.default_rng()
        if self.scenario.noise_type == "shift":
            self._shift_dynamics()
        return obs, info

    def _shift_dynamics(self) -> None:
        model = self.env.unwrapped.model
        r = self.scenario.params["dynamics_range"]
        model.body_mass[:] = self._nominal_mass * self._rng.uniform(1 - r, 1 + r, self._nominal_mass.shape)
        model.geom_friction[:, 0] = self._nominal_friction * self._rng.uniform(
            1 - r, 1 + r, self._nominal_friction.shape
        )

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(np.clip(action, self._low, self._high))
        self._clean_return += reward
        if terminated or truncated:
            info = dict(info, clean_return=self._clean_return)
        return obs, self.corrupt(reward), terminated, truncated, info

    def corrupt(self, reward: float) -> float:
        """The training reward for the clean ``reward`` of one step: the scenario's noise drawn
        from this env's generator (``shift`` and ``clean`` leave it as it is)."""
        kind = self.scenario.noise_type
        if kind == "gaussian":  # the scalar fast path of Scenario.corrupt, on the hot loop
            reward += self.reward_scale * self.scenario.params["sigma"] * self._rng.standard_normal()
        elif kind not in ("clean", "shift"):
            reward = float(self.scenario.corrupt(reward, self._rng, scale=self.reward_scale))
        return float(reward)


class ObsNorm:
    """A frozen observation normalisation: ``clip((obs - mean) / (std + eps), -clip, clip)``, the
    same arithmetic as RLlib's ``MeanStdFilter`` with its running statistics frozen. Offline
    students see the teacher's observations through the teacher's frozen filter."""

    EPS = 1e-6  # RLlib's SMALL_NUMBER

    def __init__(self, mean, std, clip: float | None = 10.0):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.clip = None if clip is None else float(clip)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        out = (np.asarray(obs, dtype=np.float64) - self.mean) / (self.std + self.EPS)
        if self.clip:
            out = np.clip(out, -self.clip, self.clip)
        return out.astype(np.float32)

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "clip": self.clip}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObsNorm:
        return cls(d["mean"], d["std"], d.get("clip"))


#: Why MuJoCo's OpenGL backend (``MUJOCO_GL``) could not be loaded in this process; None when it
#: was, or before MuJoCo is imported.
_GL_ERROR: str | None = None


def import_mujoco() -> None:
    """Import ``mujoco`` so that ``MUJOCO_GL`` matters only where something renders.

    ``import mujoco`` loads the OpenGL backend that ``MUJOCO_GL`` names
    (``mujoco.rendering.classic.gl_context``), and a backend that cannot load fails the import
    itself, simulation included: ``osmesa`` without OSMesa raises PyOpenGL's AttributeError
    (which MuJoCo does not catch), an unknown name a RuntimeError. Then MuJoCo is imported with
    rendering off (``MUJOCO_GL=disable`` during the import, the environment restored after) and
    the reason kept for :func:`make_mujoco`, which refuses to render with it. Errors that are not
    the backend's (MuJoCo missing) propagate."""
    global _GL_ERROR
    if "mujoco" in sys.modules:
        return
    saved = {k: os.environ.get(k) for k in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    try:
        import mujoco  # noqa: F401
        return
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 - the GL backend's failure, whatever its type
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    os.environ["MUJOCO_GL"] = "disable"
    try:
        import mujoco  # noqa: F401, F811
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    _GL_ERROR = reason


def gl_error(render_mode: str) -> str | None:
    """Why this process cannot render (``render_mode``) with MuJoCo, naming ``MUJOCO_GL`` and the
    fix; None when its OpenGL backend loaded. Call after :func:`import_mujoco`."""
    if _GL_ERROR is None:
        return None
    gl = os.environ.get("MUJOCO_GL", "")
    return (f"render_mode={render_mode!r} needs MuJoCo's OpenGL backend, and MUJOCO_GL={gl!r} could not be "
            f"loaded ({_GL_ERROR}). Set MUJOCO_GL=egl (a GPU, or Mesa's EGL), MUJOCO_GL=osmesa with OSMesa "
            "installed (e.g. apt-get install libosmesa6), or MUJOCO_GL=glfw with a display")


def make_mujoco(name: str, config: dict[str, Any] | None = None) -> gym.Env:
    """``gym.make(name)`` with actions clipped to the action box and the scenario from
    ``config["scenario"]`` applied; ``config["obs_norm"]`` (an :class:`ObsNorm` dict) adds a
    frozen observation normalisation; ``config["render_mode"]`` (e.g. ``rgb_array``) renders.
    Without ``render_mode`` it works whatever ``MUJOCO_GL`` says; with it, a ``MUJOCO_GL`` whose
    backend cannot load is a RuntimeError naming the variable and the fix (:func:`gl_error`)."""
    config = dict(config or {})
    extra = {"render_mode": config["render_mode"]} if config.get("render_mode") else {}
    import_mujoco()  # before gymnasium's MuJoCo envs import it
    if extra and gl_error(extra["render_mode"]):
        raise RuntimeError(gl_error(extra["render_mode"]))
    env = gym.make(name, disable_env_checker=True, **extra)  # checked in the tests; it costs every step
    env = NoisyMujoco(env, config.get("scenario", CLEAN), REWARD_SCALE.get(name, 1.0))
    if config.get("obs_norm"):
        norm = ObsNorm.from_dict(config["obs_norm"])
        space = gym.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32)
        env = gym.wrappers.TransformObservation(env, norm, space)
    return env
