"""Environments: the preference bandit (and, later, noise/shift wrappers for MuJoCo)."""

from adpo_ray.envs.bandit import BanditProblem, PreferenceBandit, winmass

#: Environments a spec may name. ``list_source`` says how ADPO builds its lists there.
ENVIRONMENTS: dict[str, dict[str, str]] = {
    "PreferenceBandit": {"kind": "bandit", "action_space": "discrete", "list_source": "actions"},
    "HalfCheetah-v5": {"kind": "mujoco", "action_space": "continuous", "list_source": "batch"},
    "Hopper-v5": {"kind": "mujoco", "action_space": "continuous", "list_source": "batch"},
}

__all__ = ["ENVIRONMENTS", "BanditProblem", "PreferenceBandit", "winmass"]
