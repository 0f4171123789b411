"""Trial planning: what each trial of a grid needs and how many can run at once. Starts no Ray.

* :func:`plan_trials`: per-trial bundles (RLlib's own placement group) and env-step budget;
* :func:`check_fits`: every trial fits the cluster, or a :class:`ResourceError` before launch;
* :func:`max_concurrent`: the concurrency cap handed to Tune.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adpo_ray.spec import ExperimentSpec, TrialKnobs, TrialSpec


class ResourceError(RuntimeError):
    """A trial could never be scheduled on this cluster."""


@dataclass(frozen=True)
class TrialPlan:
    trial: TrialSpec
    bundles: list[dict[str, float]]
    env_steps: int

    @property
    def required(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for b in self.bundles:
            for k, v in b.items():
                total[k] = total.get(k, 0.0) + v
        return total


def plan_trials(spec: ExperimentSpec) -> list[TrialPlan]:
    """Per-trial resources (RLlib's own placement group) and env-step budget. Starts no Ray."""
    from adpo_ray.orchestration.trainable import GridTrainable

    spec_dict = spec.model_dump(mode="json", by_alias=True)
    plans = []
    for t in spec.trials():
        pgf = GridTrainable.default_resource_request({"spec": spec_dict, "trial": t.as_dict()})
        plans.append(TrialPlan(t, [dict(b) for b in pgf.bundles], trial_env_steps(spec.knobs(t))))
    return plans


def trial_env_steps(knobs: TrialKnobs) -> int:
    """The env steps one trial samples (its budget, whichever limit comes first); for a
    distillation student, the dataset states it trains on."""
    if knobs.distill_states_per_iteration is not None:
        return knobs.iterations * knobs.distill_states_per_iteration
    by_iters = knobs.iterations * knobs.train_batch_size if knobs.iterations else None
    return int(min(v for v in (by_iters, knobs.env_steps) if v))


def check_fits(plans: list[TrialPlan], nodes: list[dict[str, Any]]) -> None:
    """Raise :class:`ResourceError` unless every trial's bundles fit the alive nodes."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    for plan in plans:
        need = plan.required
        # RLlib packs a trial's bundles; every bundle must fit some node, the whole trial the cluster.
        for bundle in plan.bundles:
            if not any(all(node.get(k, 0) >= v for k, v in bundle.items()) for node in alive):
                raise ResourceError(_no_fit(plan, bundle, alive, "one bundle"))
        totals = {k: sum(node.get(k, 0) for node in alive) for k in need}
        if any(totals[k] < v for k, v in need.items()):
            raise ResourceError(_no_fit(plan, need, alive, "the trial"))


def _no_fit(plan: TrialPlan, need: dict, alive: list[dict], what: str) -> str:
    have = [{k: node.get(k, 0) for k in ("CPU", "GPU")} for node in alive]
    return (
        f"trial {plan.trial.tag} can never be scheduled: {what} needs {need}, the cluster's nodes "
        f"have {have}. Lower resources.num_env_runners / resources.num_learners / "
        f"resources.num_gpus_per_learner in the spec, or add nodes."
    )


def max_concurrent(plans: list[TrialPlan], cluster: dict[str, float], spec: ExperimentSpec) -> int:
    if spec.resources.max_concurrent_trials:
        return spec.resources.max_concurrent_trials
    worst = max((p.required.get("CPU", 1.0) for p in plans), default=1.0) or 1.0
    by_cpu = int(cluster.get("CPU", 1) // worst)
    gpu_need = max((p.required.get("GPU", 0.0) for p in plans), default=0.0)
    by_gpu = int(cluster.get("GPU", 0) // gpu_need) if gpu_need else by_cpu
    return max(1, min(by_cpu, by_gpu, len(plans)))
