"""MuJoCo's rendering backend (MUJOCO_GL) matters only where something renders: a broken one
leaves simulation working, on the driver and in Ray workers, and rendering says what to set."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys

import pytest

from ..helpers.grid import ROOT

pytestmark = pytest.mark.skipif(ctypes.util.find_library("OSMesa") is not None,
                                reason="OSMesa is installed here: MUJOCO_GL=osmesa is not a broken backend")

SCRIPT = r"""
import ray
from adpo_ray.envs import make_env

def rollout(config):
    env = make_env(config)
    obs, _ = env.reset(seed=0)
    total = 0.0
    for _ in range(5):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample() * 0)
        total += reward
    env.close()
    return obs.shape, round(total, 6)

config = {"env": "Hopper-v5", "scenario": "shift-high"}
print("driver", rollout(config))
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
print("worker", ray.get(ray.remote(num_cpus=1)(rollout).remote(config)))
ray.shutdown()
try:
    make_env({**config, "render_mode": "rgb_array"})
except RuntimeError as e:
    print("render", e)
"""


def test_a_broken_gl_backend_leaves_simulation_working_and_rendering_explained():
    env = {**os.environ, "MUJOCO_GL": "osmesa", "RAY_AUTH_MODE": "disabled"}
    env.pop("PYOPENGL_PLATFORM", None)
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in res.stdout.splitlines() if line.startswith(("driver", "worker", "render")))
    assert lines["driver"] == lines["worker"]  # the same rollout in a Ray worker, which inherits MUJOCO_GL
    assert lines["driver"].startswith("((11,), ")
    assert lines["render"] == (
        "render_mode='rgb_array' needs MuJoCo's OpenGL backend, and MUJOCO_GL='osmesa' could not be loaded "
        "(AttributeError: 'NoneType' object has no attribute 'glGetError'). Set MUJOCO_GL=egl (a GPU, or "
        "Mesa's EGL), MUJOCO_GL=osmesa with OSMesa installed (e.g. apt-get install libosmesa6), or "
        "MUJOCO_GL=glfw with a display")
