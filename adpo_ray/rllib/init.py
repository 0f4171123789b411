"""Start an online algorithm (ADPO, DPO or the PPO baseline) from a saved one: its policy, value
function and observation statistics, with ADPO's anchor at that policy (``anchors.init``).

The source is any RLlib algorithm checkpoint of the same network (a pretrained PPO policy, a
distillation teacher, a trial's checkpoint). :func:`start_from_checkpoint` runs once, right after
the algorithm is built; a trial restored from its own checkpoint overwrites all of it, so a
resumed trial continues where it was, never from the start again. A trial pack's members start
the same way, each from its own checkpoint, into its own slice of the pack
(:func:`start_pack_from_checkpoints`).
"""

from __future__ import annotations

import pickle
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


def _fitting_keys(own: dict, state: dict, who: str = "") -> list[str]:
    """The keys of ``own`` (a solo module's state dict) that a start loads: every one but the
    anchor's. Raises ``ValueError`` (prefixed with ``who``) when ``state`` misses one or holds it
    in another shape."""
    needed = [k for k in own if not k.startswith(ANCHOR_PREFIXES)]
    missing = [k for k in needed if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in needed
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        raise ValueError(f"anchors.init: {who}the checkpoint's network does not fit this trial's (hidden size or "
                         f"env differ): {'missing ' + ', '.join(missing[:4]) if missing else ', '.join(wrong[:4])}")
    return needed


def start_learner_from(learner, module_id: str, state: dict[str, np.ndarray], set_anchor: bool = True) -> None:
    """Load ``state`` into the learner's module (every parameter but the anchor's must be there,
    with its shape) and, for ADPO, copy the loaded policy into the anchor."""
    module = learner.module[module_id].unwrapped()
    own = module.state_dict()
    with torch.no_grad():
        for k in _fitting_keys(own, state):
            own[k].copy_(torch.as_tensor(state[k]))
    if set_anchor and hasattr(module, "anchor_parameters"):
        polyak_(module.anchor_parameters(), module.policy_parameters(), 1.0)


def start_pack_learner_from(learner, module_id: str, states: list[dict[str, np.ndarray] | None],
                            set_anchor: bool = True) -> None:
    """:func:`start_learner_from` for a trial pack's learner: member ``k`` of the
    :class:`~adpo_ray.rllib.pack_module.PackedTorchRLModule` gets ``states[k]`` (a solo module's
    parameters; ``None`` leaves the member as it is) in its row of ``theta`` and, for ADPO, its
    anchor row set to that policy. Raises ``ValueError`` naming the member whose checkpoint does
    not fit."""
    module = learner.module[module_id].unwrapped()
    own = module.member_state_dicts()
    for k, state in enumerate(states):  # every member checked before any is written
        if state is not None:
            _fitting_keys(own[k], state, f"member {k}: ")
    net = module.net
    with torch.no_grad():
        for k, state in enumerate(states):
            if state is None:
                continue
            # the learned layers only: the other entries are constants the members' shared
            # network config sets (RLlib's log-std clip), not learned
            module.theta[k].copy_(net.flatten([{n: torch.as_tensor(state[n]) for n, _ in net.layout}])[0])
            if set_anchor and hasattr(module, "anchor"):
                module.anchor[k].copy_(module.theta[k, :net.policy_size])


def saved_env_config(path: str | Path) -> dict:
    """The env config of the algorithm saved at ``path`` (an algorithm checkpoint folder), read
    from the file RLlib rebuilds the algorithm from (``class_and_ctor_args.pkl``: the algorithm's
    config, as a dict). Builds nothing and starts no Ray. Raises FileNotFoundError when ``path``
    holds no algorithm checkpoint."""
    file = Path(path) / Checkpointable.CLASS_AND_CTOR_ARGS_FILE_NAME
    if not file.exists():
        raise FileNotFoundError(f"{path} is not an RLlib algorithm checkpoint (no {file.name})")
    (config, *_), _ = pickle.loads(file.read_bytes())["ctor_args_and_kwargs"]
    return dict(config.get("env_config") or {})


def _env_to_module_dir(path: str | Path) -> Path:
    """Where an algorithm checkpoint keeps its local env runner's env-to-module pipeline."""
    return Path(path) / "env_runner" / "env_to_module_connector"


def saved_obs_norm(path: str | Path, member: int | None = None) -> dict:
    """The frozen observation normalisation (an :class:`~adpo_ray.envs.mujoco.ObsNorm` dict) of
    the algorithm saved at ``path``: its env runner's mean/std filter statistics, a trial pack's
    member ``member``'s. Read from the filter's state file (RLlib's ``MeanStdFilter`` state, by
    agent id ``None`` or, in a pack, by member): nothing is rebuilt and no Ray starts. Raises
    RuntimeError when the checkpoint holds no observation filter."""
    from ray.rllib.utils.filter import RunningStat

    from adpo_ray.envs.mujoco import ObsNorm

    folder = _env_to_module_dir(path)
    for piece in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        file = piece / "state.pkl"
        state = pickle.loads(file.read_bytes()) if file.exists() else None
        if isinstance(state, dict) and state and all(isinstance(v, dict) and "running_stats" in v
                                                     for v in state.values()):
            saved = state[next(iter(state)) if member is None else member]
            (stats,) = [RunningStat.from_state(s) for s in saved["running_stats"]]  # a flat Box
            return ObsNorm(stats.mean, stats.std, saved["clip_by_value"]).as_dict()
    raise RuntimeError(f"{path}: the saved env-to-module pipeline has no observation filter")


def observation_filter_state(path: str | Path):
    """The saved env-to-module pipeline's state (the observation filter's statistics), or None."""
    folder = _env_to_module_dir(path)
    if not folder.exists():
        return None
    return Checkpointable.from_checkpoint(str(folder)).get_state()


def member_filter_state(pipeline_state: dict | None):
    """The single-agent observation filter's state (``{None: ...}``) in a solo env-to-module
    pipeline's state (:func:`observation_filter_state`), or None when it holds no filter. Raises
    ``ValueError`` for a pipeline of several filters (no solo trial's)."""
    found = [v for v in (pipeline_state or {}).values() if isinstance(v, dict) and None in v]
    if len(found) > 1:
        raise ValueError(f"anchors.init: the checkpoint's env-to-module pipeline holds {len(found)} observation "
                         f"filters ({', '.join(map(str, pipeline_state))}); a start takes a solo trial's, with one")
    return {None: found[0][None]} if found else None


def set_member_filters(pipeline, filters: list) -> None:
    """Member ``k``'s statistics in a pack's env-to-module ``pipeline`` (its
    :class:`~adpo_ray.rllib.packed.PackedMeanStdFilter`) from ``filters[k]``, a solo filter state
    (:func:`member_filter_state`; ``None`` keeps the member's own). Raises ``ValueError`` when
    the pipeline has no such filter (an env without observation filtering)."""
    from adpo_ray.rllib.packed import PackedMeanStdFilter

    packed = [c for c in pipeline.connectors if isinstance(c, PackedMeanStdFilter)]
    if len(packed) != 1:
        raise ValueError("anchors.init: the checkpoint holds observation-filter statistics, but the pack's "
                         f"env-to-module pipeline has {len(packed)} PackedMeanStdFilter (need 1): another env kind?")
    members = PackedMeanStdFilter.member_states(packed[0].get_state())
    for k, state in enumerate(filters):
        if state is not None:
            members[k] = state
    packed[0].set_state(PackedMeanStdFilter.pack_states(members))


def _sets_anchor(algo) -> bool:
    """Whether a start moves ADPO's anchor to the loaded policy: unless ``anchor_init`` names another."""
    return not getattr(algo.config, "anchor_init", None)


def each_pipeline(algo, fn) -> None:
    """``fn(pipeline)`` on the env-to-module pipeline of every env runner and evaluation env
    runner of ``algo``, and on the algorithm's own if it has one."""
    def on_runner(runner):
        fn(rp.env_to_module(runner))

    for group in (algo.env_runner_group, algo.eval_env_runner_group):
        if group is not None:
            group.foreach_env_runner(on_runner, local_env_runner=True)
    if getattr(algo, "env_to_module_connector", None) is not None:
        fn(algo.env_to_module_connector)


def _sync_weights(algo) -> None:
    """The learner's weights to every env runner and evaluation env runner (inference-only)."""
    for group in (algo.env_runner_group, algo.eval_env_runner_group):
        if group is not None:
            group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)


def start_from_checkpoint(algo, path: str | Path, module_id: str = DEFAULT_MODULE_ID) -> None:
    """Every learner, env runner and evaluation env runner of ``algo`` from the checkpoint at
    ``path``; ADPO's anchor at the loaded policy unless ``anchor_init`` names another."""
    state = policy_state(path, module_id)
    set_anchor = _sets_anchor(algo)
    algo.learner_group.foreach_learner(lambda learner: start_learner_from(learner, module_id, state, set_anchor))
    filt = observation_filter_state(path)
    if filt is not None:
        each_pipeline(algo, lambda pipeline: pipeline.set_state(filt))
    _sync_weights(algo)


def start_pack_from_checkpoints(algo, paths: list[str | Path | None], module_id: str = DEFAULT_MODULE_ID) -> None:
    """:func:`start_from_checkpoint` for a trial pack (``algo`` built by
    :func:`~adpo_ray.rllib.pack_factory.build_pack_config`): member ``k`` from the checkpoint at
    ``paths[k]`` (``None``: it keeps its fresh start), its parameters and anchor on every learner
    (:func:`start_pack_learner_from`), its observation-filter statistics in its filter of every
    env runner's and evaluation env runner's pipeline (:func:`set_member_filters`), then the
    weights synced to the env runners. Raises ``ValueError`` for ``len(paths)`` other than the
    pack's members, or a checkpoint that does not fit its member."""
    k = len(algo.config.env_config.get("members") or [])
    if len(paths) != k:
        raise ValueError(f"anchors.init: need one checkpoint (or None) per member of the pack ({k}), got {len(paths)}")
    loaded: dict[str, tuple] = {}  # members usually share one checkpoint: read it once
    for path in paths:
        if path is not None and str(path) not in loaded:
            loaded[str(path)] = (policy_state(path, module_id), member_filter_state(observation_filter_state(path)))
    states = [None if p is None else loaded[str(p)][0] for p in paths]
    filters = [None if p is None else loaded[str(p)][1] for p in paths]
    set_anchor = _sets_anchor(algo)
    algo.learner_group.foreach_learner(
        lambda learner: start_pack_learner_from(learner, module_id, states, set_anchor))
    if any(f is not None for f in filters):
        each_pipeline(algo, lambda pipeline: set_member_filters(pipeline, filters))
    _sync_weights(algo)
