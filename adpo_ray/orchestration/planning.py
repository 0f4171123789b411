"""Trial planning: what each trial of a grid needs and how many can run at once. Starts no Ray.

* :func:`plan_trials`: per Tune trial (a trial or a trial pack), its bundles (RLlib's own placement
  group) and env-step budget;
* :class:`Capacity`: what the cluster can hold at full scale — read from a running cluster's
  autoscaler config, from a cluster YAML, or from the live nodes of a fixed cluster;
* :func:`check_fits`: every trial fits some node type, or a :class:`ResourceError` before launch;
* :func:`max_concurrent`: the concurrency cap handed to Tune (full scale, so the cluster can grow);
* :func:`resolve_learner_gpus`: the GPU share of GPU learners on this cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from adpo_ray.spec import ExperimentSpec, TrialKnobs, TrialSpec, pack_dirname


class ResourceError(RuntimeError):
    """A trial could never be scheduled on this cluster."""


@dataclass(frozen=True)
class TrialPlan:
    """One Tune trial: its trial (a pack's first member), the bundles it asks for, the env steps
    it samples (a pack's: all members'), a pack's members (empty for a solo trial), and the
    results it reports (training iterations, a pack's: summed over its members; 0: not counted)."""

    trial: TrialSpec
    bundles: list[dict[str, float]]
    env_steps: int
    members: tuple[TrialSpec, ...] = ()
    results: int = 0

    @property
    def trials(self) -> tuple[TrialSpec, ...]:
        """The grid trials this Tune trial runs."""
        return self.members or (self.trial,)

    @property
    def name(self) -> str:
        """The Tune trial's name: a pack's (:func:`~adpo_ray.spec.pack_dirname`), or the trial's tag."""
        return pack_dirname(list(self.members)) if self.members else self.trial.tag

    @property
    def required(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for b in self.bundles:
            for k, v in b.items():
                total[k] = total.get(k, 0.0) + v
        return total


def plan_trials(spec: ExperimentSpec) -> list[TrialPlan]:
    """Per Tune trial (a trial, or a pack of them: :meth:`ExperimentSpec.packs`), its resources
    (RLlib's own placement group; a pack's, one bundle) and env-step budget. Starts no Ray.
    Raises ValueError for a trial's (or pack's) invalid RLlib config."""
    from adpo_ray.orchestration.pack_trainable import PackTrainable
    from adpo_ray.orchestration.trainable import GridTrainable
    from adpo_ray.orchestration.tune_setup import packed

    spec_dict = spec.model_dump(mode="json", by_alias=True)
    plans = []
    for pack in (spec.packs() if packed(spec) else [[t] for t in spec.trials()]):
        knobs = [spec.knobs(t) for t in pack]
        steps = sum(trial_env_steps(k) for k in knobs)
        results = sum(trial_iterations(k) for k in knobs)
        if len(pack) == 1:
            pgf = GridTrainable.default_resource_request({"spec": spec_dict, "trial": pack[0].as_dict()})
            plans.append(TrialPlan(pack[0], [dict(b) for b in pgf.bundles], steps, results=results))
        else:
            pgf = PackTrainable.default_resource_request({"spec": spec_dict, "trials": [t.as_dict() for t in pack]})
            plans.append(TrialPlan(pack[0], [dict(b) for b in pgf.bundles], steps, tuple(pack), results))
    if spec.search is not None:  # every sample asks what the base trial asks (ASHA may stop some early)
        plans = plans * spec.trial_count()
    return plans


def trial_env_steps(knobs: TrialKnobs) -> int:
    """The env steps one trial samples (its budget, whichever limit comes first); for a
    distillation student, the dataset states it trains on."""
    if knobs.distill_states_per_iteration is not None:
        return knobs.iterations * knobs.distill_states_per_iteration
    by_iters = knobs.iterations * knobs.train_batch_size if knobs.iterations else None
    return int(min(v for v in (by_iters, knobs.env_steps) if v))


def trial_iterations(knobs: TrialKnobs) -> int:
    """The training iterations (results) one trial reports within its budget."""
    if knobs.distill_states_per_iteration is not None:
        return knobs.iterations
    return -(-trial_env_steps(knobs) // knobs.train_batch_size)


# -- what the cluster can hold ------------------------------------------------------------------
@dataclass(frozen=True)
class NodeType:
    """Nodes of one kind: their resources, and how many the cluster has at full scale."""

    name: str
    resources: dict[str, float]
    count: int


@dataclass(frozen=True)
class Capacity:
    """What a cluster can hold at full scale, and where that was read from."""

    node_types: tuple[NodeType, ...]
    source: str
    autoscaling: bool = False

    def total(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for t in self.node_types:
            for k, v in t.resources.items():
                out[k] = out.get(k, 0.0) + v * t.count
        return out

    @property
    def has_gpus(self) -> bool:
        return any(t.resources.get("GPU", 0) > 0 and t.count > 0 for t in self.node_types)

    def describe(self) -> str:
        kinds = ", ".join(
            f"{t.count} x {t.name} ({', '.join(f'{k}={v:g}' for k, v in sorted(t.resources.items()) if k in ('CPU', 'GPU'))})"
            for t in self.node_types if t.count
        )
        return f"{kinds} [{self.source}]"


#: Node resources that trials ask for (Ray's memory/object-store numbers are left out).
_COUNTED = ("CPU", "GPU")


def capacity_from_nodes(nodes: list[dict[str, Any]], source: str = "the live nodes") -> Capacity:
    """The nodes alive now (``ray.nodes()``), grouped by identical resources."""
    groups: dict[tuple, int] = {}
    for n in nodes:
        if n.get("Alive", True):
            res = tuple(sorted((k, float(v)) for k, v in n.get("Resources", {}).items() if k in _COUNTED))
            groups[res] = groups.get(res, 0) + 1
    types = tuple(NodeType(f"node{i}", dict(res), count) for i, (res, count) in enumerate(groups.items()))
    return Capacity(types, source)


def capacity_from_cluster_config(config: dict[str, Any], source: str) -> Capacity:
    """The node types of a cluster launcher / autoscaler config at full scale: the head, and each
    worker type at its ``max_workers`` (all workers together at most the top-level ``max_workers``).
    Raises :class:`ResourceError` for a node type whose resources the config does not state."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    budget = config.get("max_workers")
    out = []
    for name, t in types.items():
        res = {k: float(v) for k, v in (t.get("resources") or {}).items() if k in _COUNTED}
        if not res.get("CPU"):
            raise ResourceError(
                f"{source}: node type {name!r} states no CPU in `resources`; write its instance's "
                f"resources there, e.g. `resources: {{CPU: 8, GPU: 1}}`, so the plan can count it"
            )
        workers = int(t.get("max_workers", 0) or 0)
        if budget is not None:
            workers = min(workers, max(0, int(budget)))
            budget = int(budget) - workers
        out.append(NodeType(name, res, workers + (1 if name == head else 0)))
    autoscaling = any(t.get("max_workers", 0) > t.get("min_workers", 0) for t in types.values())
    return Capacity(tuple(out), source, autoscaling)


def capacity_from_yaml(path: str, max_workers: int | None = None) -> Capacity:
    """A cluster YAML's full-scale capacity (for a capacity plan before any machine starts);
    ``max_workers`` caps its worker nodes (e.g. 0: the head alone)."""
    import yaml

    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except OSError as e:
        raise ResourceError(f"--cluster {path}: {e.strerror}") from None
    if not isinstance(config, dict):
        raise ResourceError(f"--cluster {path}: not a Ray cluster config (a YAML mapping)")
    if config.get("provider", {}).get("type") == "local" and "available_node_types" not in config:
        hosts = 1 + len(config["provider"].get("worker_ips") or [])
        raise ResourceError(
            f"--cluster {path}: a `provider: local` cluster lists {hosts} machine(s), not their CPUs and "
            "GPUs; plan it on one of them without --cluster (this machine's CPUs and GPUs), and multiply"
        )
    if "available_node_types" not in config:
        raise ResourceError(f"--cluster {path}: no available_node_types (a Ray cluster launcher config has them)")
    if max_workers is not None:
        config["max_workers"] = min(max_workers, config.get("max_workers", max_workers))
        path = f"{path}, at most {max_workers} worker node(s)"
    return capacity_from_cluster_config(config, path)


def check_fits(plans: list[TrialPlan], capacity: Capacity) -> None:
    """Raise :class:`ResourceError` unless every trial can be placed on the cluster at full scale:
    each bundle on some node type, the whole trial within the cluster's total."""
    kinds = [t.resources for t in capacity.node_types if t.count > 0]
    totals = capacity.total()
    for plan in plans:
        # RLlib packs a trial's bundles; every bundle must fit some node, the whole trial the cluster.
        for bundle in plan.bundles:
            if not any(all(node.get(k, 0) >= v for k, v in bundle.items()) for node in kinds):
                raise ResourceError(_no_fit(plan, bundle, capacity, "one bundle"))
        if any(totals.get(k, 0) < v for k, v in plan.required.items()):
            raise ResourceError(_no_fit(plan, plan.required, capacity, "the trial"))


def _no_fit(plan: TrialPlan, need: dict, capacity: Capacity, what: str) -> str:
    return (
        f"trial {plan.name} can never be scheduled: {what} needs {need}, the cluster can "
        f"have {capacity.describe()}. Lower resources.num_env_runners / resources.num_learners / "
        f"resources.num_gpus_per_learner, set resources.learner_device: cpu, or add nodes."
    )


def max_concurrent(plans: list[TrialPlan], capacity: Capacity, cap: int | None = None) -> int:
    """How many trials run at once: ``cap`` if given (``--max-concurrent`` /
    ``resources.max_concurrent_trials``), else as many as the cluster holds *at full scale*, so
    that on an autoscaling cluster Tune keeps trials pending and the autoscaler sees the demand."""
    if cap:
        return cap
    totals = capacity.total()
    fits = len(plans)
    for k in _COUNTED:
        need = max((p.required.get(k, 0.0) for p in plans), default=0.0)
        if need > 0:
            fits = min(fits, int(totals.get(k, 0.0) // need + 1e-9))
    return max(1, fits)


def gpu_share(capacity: Capacity, cpus_per_trial: float) -> float:
    """The GPU share per GPU learner that lets every CPU of a GPU node run a trial: a node of
    C CPUs and G GPUs runs floor(C / cpus_per_trial) trials, each taking G / that of a GPU
    (rounded down to 1/1000; the smallest over the cluster's GPU node types)."""
    shares = []
    for t in capacity.node_types:
        gpus, cpus = t.resources.get("GPU", 0.0), t.resources.get("CPU", 0.0)
        if gpus > 0 and t.count > 0:
            slots = max(1, int(cpus // max(cpus_per_trial, 1e-9)))
            shares.append(math.floor(1000 * gpus / slots) / 1000)
    return min(shares) if shares else 0.0


def resolve_learner_gpus(spec: ExperimentSpec, capacity: Capacity) -> ExperimentSpec:
    """The spec with ``resources.num_gpus_per_learner`` chosen for this cluster when it is left
    at 0 and learners may use GPUs (``learner_device`` auto or gpu); otherwise ``spec`` as is."""
    res = spec.resources
    if res.learner_device == "cpu" or res.num_gpus_per_learner > 0 or not capacity.has_gpus:
        return spec
    cpus = 1 + res.num_env_runners  # the trial's main process and its env runners, one CPU each
    share = gpu_share(capacity, cpus)
    if share <= 0:
        return spec
    return spec.model_copy(update={"resources": res.model_copy(update={"num_gpus_per_learner": share})})


# -- what a grid costs ---------------------------------------------------------------------------
#: Env steps per second of one trial as the paper-scale preset runs it (sampling in its own
#: process, 1 CPU, torch on one thread; 10 epochs of minibatch 64 on MuJoCo), evaluation
#: included: the slower of hidden
#: 64 and 256, measured by `python bench/throughput.py --config twelve_scenarios [--set
#: 'hidden_sizes=[256]']` on a 2-core machine (docs/results/benchmarks.md, "Capacity plan"). Pass
#: --steps-per-second to plan with a figure of your own.
THROUGHPUT = {"PreferenceBandit": 1381.0, "HalfCheetah-v5": 986.9, "Hopper-v5": 1221.4}
#: Seconds from a trial's start to its first result (building the algorithm, its first
#: iteration), same bench: the largest of a solo trial and a pack of 16 at either hidden size.
STARTUP_S = {"PreferenceBandit": 1.5, "HalfCheetah-v5": 14.8, "Hopper-v5": 17.7}
THROUGHPUT_SOURCE = "measured by bench/throughput.py: a twelve_scenarios trial (1 CPU) on a 2-core machine"
#: CPU seconds a launch spends outside its trials per result a trial reports (one training
#: iteration of one trial; a pack of 16 reports 16): Tune's driver (its loop and loggers), the
#: MLflow tracker and its sender (a sqlite store), Ray's own processes. On the bandit, whose
#: iterations take a fraction of a second, this is a large part of a launch on a small machine.
#: `python bench/driver.py --seeds 2 8` (the slope between launches of 216 and 864 trials of the
#: bandit_paper preset, hidden 64) on a 2-core machine (docs/results/benchmarks.md, "Capacity plan").
DRIVER_CPU_S_PER_RESULT = 0.0067
#: Dataset states per second of one distillation student (2 at once on 2 cores, 2,048 states per
#: iteration, a 5-episode clean evaluation every 20 iterations included): the distill_check
#: students of the n-step check (README "Offline distillation"), on a 2-core machine otherwise quiet.
#: Students read no simulator while training: pricing them at env steps/s overstates them ~10x.
STUDENT_THROUGHPUT = {"HalfCheetah-v5": 13_300.0, "Hopper-v5": 31_500.0}
STUDENT_THROUGHPUT_SOURCE = "dataset states/s measured on distill_check students on a 2-core machine"


def stand_in(table: dict[str, float], env: str, slowest=min) -> str:
    """The env whose figure in ``table`` prices ``env``: ``env`` itself where measured; for an env
    the table lacks (one added to :data:`~adpo_ray.envs.ENVIRONMENTS` after the figures were
    measured), the measured env of its kind with the ``slowest`` figure (``min`` for a rate,
    ``max`` for a time), else the slowest of every measured env."""
    from adpo_ray.envs import ENVIRONMENTS

    if env in table:
        return env
    kind = ENVIRONMENTS.get(env, {}).get("kind")
    alike = [e for e in table if ENVIRONMENTS.get(e, {}).get("kind") == kind] or list(table)
    return slowest(alike, key=table.__getitem__)


def env_figure(table: dict[str, float], env: str, slowest=min) -> tuple[float, str | None]:
    """``table[env]`` (a per-env figure: :data:`THROUGHPUT`, :data:`STARTUP_S`,
    :data:`STUDENT_THROUGHPUT`) and None; for an env the table lacks, its :func:`stand_in`'s
    figure and a note that says so."""
    used = stand_in(table, env, slowest)
    return table[used], (None if used == env else f"{env}: not measured, priced as {used}")


#: A trial pack's env steps/s (all members together) over :data:`THROUGHPUT` (one solo trial's), by
#: env, hidden size and K, so that a pack is priced at the pack's own measured throughput: whole
#: training iterations of the grid's own trainables (sampling, learning, each member's
#: evaluation on the spec's schedule), ``bench/throughput.py --packs 4 16`` on the
#: twelve_scenarios preset (``num_env_runners: 0``, 1 CPU per trial and per pack, torch on one
#: thread as Ray gives a 1-CPU actor) on a 2-core CPU machine (docs/results/benchmarks.md,
#: "Capacity plan"). The bandit's figures are from the same run as its :data:`THROUGHPUT`, after
#: packs took their tanh from NumPy and stepped their envs together. The MuJoCo figures are from
#: a later run in which each pack and its solo trial trained by turns, an iteration each, after
#: MuJoCo packs stepped their sub-envs as columns; being ratios, they multiply the earlier solo
#: figure. A hidden size between two rows takes the larger's. A GPU learner was not measured.
PACK_SPEEDUP = {
    "PreferenceBandit": {64: {4: 11.32, 16: 15.98}, 128: {4: 7.64, 16: 10.44}, 256: {4: 4.44, 16: 5.22}},
    "HalfCheetah-v5": {64: {4: 2.24, 16: 3.63}, 128: {4: 2.57, 16: 3.50}, 256: {4: 1.66, 16: 2.11}},
    "Hopper-v5": {64: {4: 1.91, 16: 3.41}, 128: {4: 2.20, 16: 3.17}, 256: {4: 1.50, 16: 2.03}},
}


def pack_speedup(env: str, hidden_size: int, members: int) -> float:
    """The measured speed-up (:data:`PACK_SPEEDUP`) of a pack of ``members`` trials of
    ``hidden_size`` on ``env``: the row of the smallest measured hidden size
    at least ``hidden_size`` (the largest above all); between measured K (and from K=1, a solo
    trial: 1.0, to the smallest), the straight line between its neighbours, which lies under the
    speed-up as long as each added member gains less than the one before; above the largest
    measured K, that K's figure. An env without figures takes those of the env that prices its
    throughput (:func:`stand_in` of :data:`THROUGHPUT`: the slowest measured env of its kind)."""
    rows = PACK_SPEEDUP.get(env) or PACK_SPEEDUP.get(stand_in(THROUGHPUT, env))
    if not rows or members <= 1:
        return 1.0
    hidden = min((h for h in rows if h >= hidden_size), default=max(rows))
    points = sorted({1: 1.0, **rows[hidden]}.items())
    for (k0, s0), (k1, s1) in pairwise(points):
        if members == k1:
            return s1
        if members < k1:
            return s0 + (s1 - s0) * (members - k0) / (k1 - k0)
    return points[-1][1]


def estimate_wall_time(plans: list[TrialPlan], concurrency: int, steps_per_second: dict[str, float],
                       startup_s: dict[str, float] | None = None, cpus: float | None = None,
                       cpu_s_per_result: float = 0.0) -> float:
    """Seconds to run every trial, ``concurrency`` at a time, each taking its env's start-up
    time plus its env steps at its env's throughput: longest trials first, each on the slot
    that frees up first. A trial pack takes its members' env steps at that throughput times its
    measured speed-up (:func:`pack_speedup`).

    With ``cpus`` (the cluster's) and ``cpu_s_per_result`` (:data:`DRIVER_CPU_S_PER_RESULT`),
    the launch's own CPU work (the Tune driver, the MLflow tracker, Ray's processes: that many
    CPU seconds per result a trial reports, :attr:`TrialPlan.results`) is done first on the CPUs
    the trials leave idle, and the rest is taken from the trials' CPUs: the estimate grows by
    that rest over the CPUs the trials use."""
    import heapq

    startup_s = startup_s or {}
    durations = sorted((startup_s.get(p.trial.env, 0.0) + p.env_steps / steps_per_second[p.trial.env]
                        / (pack_speedup(p.trial.env, p.trial.hidden_size, len(p.members)) if p.members else 1.0)
                        for p in plans), reverse=True)
    slots = [0.0] * max(1, min(concurrency, len(durations)))
    for d in durations:
        heapq.heappush(slots, heapq.heappop(slots) + d)
    wall = max(slots, default=0.0)
    busy = min(cpus or 0.0, len(slots) * max((p.required.get("CPU", 1.0) for p in plans), default=0.0))
    if busy <= 0 or not cpu_s_per_result:
        return wall
    overhead = cpu_s_per_result * sum(p.results for p in plans)
    return wall + max(0.0, overhead - (cpus - busy) * wall) / busy
