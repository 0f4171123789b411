"""Trial packs in the spec: which trials may share one RLlib algorithm (:func:`check_pack`,
:data:`SHAPE_KNOBS`) and how a grid's trials are grouped into packs (:func:`group_packs`, behind
:meth:`~adpo_ray.spec.ExperimentSpec.packs`). Pure: reads :class:`~adpo_ray.spec.TrialKnobs`."""

from __future__ import annotations

import math
from collections.abc import Callable

from adpo_ray.spec.sections import LEARNER_UPDATES
from adpo_ray.spec.trials import TrialSpec

FUSED = LEARNER_UPDATES[0]  # the only update path a pack runs
#: The methods a pack runs (online).
PACK_ALGORITHMS = ("adpo", "dpo", "ppo", "ppo_kl")

#: Knobs every member of a pack shares (they fix the network, the batch's shape, the loss and the
#: run), as ``TrialKnobs`` fields (``trial.<name>`` for the trial's coordinates).
SHAPE_KNOBS = (
    "trial.env", "trial.algorithm", "trial.hidden_size", "kind", "train_batch_size", "minibatch_size", "num_epochs",
    "list_size", "list_source", "loss", "target", "target_norm", "tau_alpha", "tau_min", "q_center", "gamma",
    "lambda_", "num_envs_per_env_runner", "num_env_runners", "num_learners", "num_gpus_per_learner",
    "learner_update", "learner_compile", "iterations", "env_steps", "checkpoint_every", "eval_interval",
    "eval_episodes", "eval_explore", "bandit", "kl_adaptive",
)

#: ``resources.pack: auto``: the most members of one pack. On CPU a pack's iteration speed-up over
#: its members run one after another grows little past 16 for HalfCheetah (whose clean evaluation
#: then dominates), while a pack's members all wait for its slowest (docs/results/benchmarks.md,
#: "Trial packs": 6.7x bandit and 5.2x HalfCheetah at 16 members).
AUTO_PACK_SIZE = 16


def _knob(knobs, name: str):
    obj = knobs
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def check_pack(knobs: list) -> None:
    """Check that ``knobs`` (``TrialKnobs``, one per member) can run as one pack.

    Raises:
        ValueError: no members; an offline (distillation) trial or a method not in
            :data:`PACK_ALGORITHMS`; the first knob of
            :data:`SHAPE_KNOBS` two members differ in, naming it, both members and values;
            what a pack does not run (RLlib's update path ``learner_update: rllib``,
            ``learner_compile``, more than one learner). Members may
            start from pretrained policies (``anchors.init``): each loads its own.
    """
    if not knobs:
        raise ValueError("a pack needs at least one member (knobs is empty)")
    first = knobs[0]
    for name in SHAPE_KNOBS:
        for k, kn in enumerate(knobs[1:], start=1):
            if _knob(kn, name) != _knob(first, name):
                raise ValueError(f"{name}: every member of a pack must share it; member 0 has "
                                 f"{_knob(first, name)!r}, member {k} has {_knob(kn, name)!r}")
    for k, kn in enumerate(knobs):
        if kn.trial.algorithm not in PACK_ALGORITHMS or kn.gamma is None:
            raise ValueError(f"member {k}: algorithm {kn.trial.algorithm!r}; a pack runs online "
                             f"{', '.join(PACK_ALGORITHMS[:-1])} or {PACK_ALGORITHMS[-1]}")
    if first.learner_update != FUSED:
        raise ValueError(f"learner_update={first.learner_update!r}; a pack runs only on the fused update ({FUSED})")
    if first.learner_compile:
        raise ValueError("learner_compile: a pack's update is not compiled; set it false")
    if first.num_learners > 1:
        raise ValueError(f"num_learners={first.num_learners}; a pack runs one learner (0 or 1)")


def packable(knobs) -> bool:
    """Whether the trial of ``knobs`` may be a pack's member (:func:`check_pack` takes it alone)."""
    try:
        check_pack([knobs])
    except ValueError:
        return False
    return True


def group_packs(trials: list[TrialSpec], knobs_of: Callable[[TrialSpec], object], size: int) -> list[list[TrialSpec]]:
    """``trials`` as packs of at most ``size`` members (``size`` >= 1): the packable trials that
    share every :data:`SHAPE_KNOBS` value form a group, split into the fewest packs of at most
    ``size``, as even as can be (17 at 16: 9 and 8), each in trial order; a trial
    :func:`check_pack` refuses is a pack of its own. Packs come in the order of their first
    member in ``trials``: the same trials give the same packs."""
    groups: dict[tuple, list[TrialSpec]] = {}
    order: list[tuple] = []
    for i, t in enumerate(trials):
        kn = knobs_of(t)
        key = ("shape", *(repr(_knob(kn, name)) for name in SHAPE_KNOBS)) if packable(kn) else ("solo", i)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(t)
    out: list[list[TrialSpec]] = []
    for key in order:
        members = groups[key]
        n = math.ceil(len(members) / size)
        base, extra = divmod(len(members), n)
        start = 0
        for j in range(n):
            end = start + base + (1 if j < extra else 0)
            out.append(members[start:end])
            start = end
    return out
