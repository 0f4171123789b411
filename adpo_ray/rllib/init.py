"""Start an online algorithm (ADPO, DPO or the PPO baseline) from a saved one: its policy, value
function and observation statistics, with ADPO's anchor at that policy (``anchors.init``).

The source is any RLlib algorithm checkpoint of the same network (a pretrained PPO policy, a
distillation teacher, a trial's checkpoint). :func:`start_from_checkpoint` runs once, right after
the algorithm is built; a trial restored from its own checkpoint overwrites all of it, so a
resumed trial continues where it was, never from the start again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.utils.checkpoints import Checkpointable

from adpo_ray.core.anchors import polyak_
from adpo_ray.rllib import _ray_private as rp

#: Module-state keys of ADPO's anchor (never taken from a source: the anchor is set to the policy).
ANCHOR_PREFIXES = ("_anchor_encoder.", "_anchor_pi.")


def module_dir(path: str | Path, module_id: str = DEFAULT_MODULE_ID) -> Path:
    """The RLModule checkpoint inside ``path``: an algorithm checkpoint (its ``module_id``), a
    multi-module checkpoint or an RLModule checkpoint itself."""
    root = Path(path)
    candidates = [root / "learner_group" / "learner" / "rl_module" / module_id, root / module_id, root]
    found = next((c for c in candidates if (c / "module_state.pkl").exists() or (c / "module_state.pt").exists()), None)
    if found is None:
        raise FileNotFoundError(f"no RLModule checkpoint for {module_id!r} under {path} (expected an RLlib "
                                "algorithm checkpoint directory)")
    return found


def policy_state(path: str | Path, module_id: str = DEFAULT_MODULE_ID) -> dict[str, np.ndarray]:
    """The saved module's parameters (policy and value function) as numpy arrays, anchor left out."""
    source = RLModule.from_checkpoint(str(module_dir(path, module_id)))
    return {k: v.detach().cpu().numpy() for k, v in source.state_dict().items() if not k.startswith(ANCHOR_PREFIXES)}


def start_learner_from(learner, module_id: str, state: dict[str, np.ndarray], set_anchor: bool = True) -> None:
    """Load ``state`` into the learner's module (every parameter but the anchor's must be there,
    with its shape) and, for ADPO, copy the loaded policy into the anchor."""
    module = learner.module[module_id].unwrapped()
    own = module.state_dict()
    needed = [k for k in own if not k.startswith(ANCHOR_PREFIXES)]
    missing = [k for k in needed if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in needed
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        raise ValueError("anchors.init: the checkpoint's network does not fit this trial's (hidden size or "
                         f"env differ): {'missing ' + ', '.join(missing[:4]) if missing else ', '.join(wrong[:4])}")
    with torch.no_grad():
        for k in needed:
            own[k].copy_(torch.as_tensor(state[k]))
    if set_anchor and hasattr(module, "anchor_parameters"):
        polyak_(module.anchor_parameters(), module.policy_parameters(), 1.0)


def observation_filter_state(path: str | Path):
    """The saved env-to-module pipeline's state (the observation filter's statistics), or None."""
    folder = Path(path) / "env_runner" / "env_to_module_connector"
    if not folder.exists():
        return None
    return Checkpointable.from_checkpoint(str(folder)).get_state()


def start_from_checkpoint(algo, path: str | Path, module_id: str = DEFAULT_MODULE_ID) -> None:
    """Every learner, env runner and evaluation env runner of ``algo`` from the checkpoint at
    ``path``; ADPO's anchor at the loaded policy unless ``anchor_init`` names another."""
    state = policy_state(path, module_id)
    set_anchor = not getattr(algo.config, "anchor_init", None)
    algo.learner_group.foreach_learner(lambda learner: start_learner_from(learner, module_id, state, set_anchor))
    filt = observation_filter_state(path)
    if filt is not None:
        def set_filter(runner):
            rp.env_to_module(runner).set_state(filt)

        for group in (algo.env_runner_group, algo.eval_env_runner_group):
            if group is not None:
                group.foreach_env_runner(set_filter, local_env_runner=True)
        if getattr(algo, "env_to_module_connector", None) is not None:
            algo.env_to_module_connector.set_state(filt)
    for group in (algo.env_runner_group, algo.eval_env_runner_group):
        if group is not None:
            group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)
