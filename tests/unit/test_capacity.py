"""What a cluster holds and how many trials run at once: live nodes, autoscaler configs and the
shipped cluster YAMLs at full scale, fit checks, concurrency, GPU shares and the wall-time
estimate. Pure: no Ray is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from adpo_ray.orchestration.planning import (
    Capacity,
    NodeType,
    ResourceError,
    TrialPlan,
    capacity_from_cluster_config,
    capacity_from_nodes,
    capacity_from_yaml,
    check_fits,
    estimate_wall_time,
    gpu_share,
    max_concurrent,
    plan_trials,
    resolve_learner_gpus,
)
from adpo_ray.spec import SpecError, TrialSpec, parse_spec
from adpo_ray.spec.devices import LEARNER_MS, gpu_pays, nearest_measurement

ROOT = Path(__file__).resolve().parents[2]
T = TrialSpec("Hopper-v5", "flip-high", "adpo", "dynamic", 128, 7)
SPEC = {"name": "cap", "environments": ["Hopper-v5"], "scenarios": ["clean"], "budget": {"iterations": 10},
        "hidden_sizes": [64, 1024], "train": {"minibatch_size": 1024, "train_batch_size": 2048}}


def plan(cpu: float, gpu: float = 0.0, n_bundles: int = 1) -> TrialPlan:
    bundle = {"CPU": cpu / n_bundles, **({"GPU": gpu} if gpu else {})}
    return TrialPlan(T, [dict(bundle) for _ in range(n_bundles)], 1000)


def node(cpu: float, gpu: float = 0.0, alive: bool = True) -> dict:
    return {"Alive": alive, "Resources": {"CPU": cpu, "memory": 1e9, **({"GPU": gpu} if gpu else {})}}


def cap(*types: tuple[float, float, int], autoscaling: bool = False) -> Capacity:
    """A capacity of (CPU, GPU, count) node types."""
    return Capacity(tuple(NodeType(f"t{i}", {"CPU": c, **({"GPU": g} if g else {})}, n)
                          for i, (c, g, n) in enumerate(types)), "test", autoscaling)


FAKE = {
    "max_workers": 3,
    "head_node_type": "head",
    "available_node_types": {
        "head": {"resources": {"CPU": 1}, "max_workers": 0, "node_config": {}},
        "cpu": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 3, "node_config": {}},
        "gpu": {"resources": {"CPU": 8, "GPU": 1}, "min_workers": 0, "max_workers": 2, "node_config": {}},
    },
}


def test_check_fits_bundles_and_totals():
    check_fits([plan(2)], cap((2, 0, 1)))
    check_fits([plan(3, n_bundles=3)], cap((1, 0, 1), (2, 0, 1)))  # bundles spread over nodes
    with pytest.raises(ResourceError, match="one bundle needs"):
        check_fits([plan(2)], cap((1, 0, 2)))
    with pytest.raises(ResourceError, match="the trial needs"):
        check_fits([plan(4, n_bundles=4)], cap((1, 0, 1), (2, 0, 1)))
    with pytest.raises(ResourceError, match="learner_device: cpu"):
        check_fits([plan(1, gpu=0.5)], cap((8, 0, 1)))
    with pytest.raises(ResourceError):
        check_fits([plan(2)], cap((1, 0, 1), (4, 0, 0)))  # a node type of none fits nothing
    # a node type the autoscaler can add counts, though no such node is alive yet
    check_fits([plan(4)], cap((1, 0, 1), (4, 0, 3), autoscaling=True))


def test_capacity_from_live_nodes_groups_alike_and_skips_dead():
    capacity = capacity_from_nodes([node(2), node(2), node(8, gpu=1), node(4, alive=False)])
    assert sorted((t.resources["CPU"], t.resources.get("GPU", 0), t.count) for t in capacity.node_types) == [
        (2.0, 0, 2), (8.0, 1.0, 1)]
    assert capacity.total() == {"CPU": 12.0, "GPU": 1.0} and capacity.has_gpus and not capacity.autoscaling


def test_capacity_from_an_autoscaler_config_counts_full_scale():
    capacity = capacity_from_cluster_config(FAKE, "fake")
    # the global max_workers (3) is spent on the types in order: 3 cpu workers, no gpu worker
    assert {t.name: t.count for t in capacity.node_types} == {"head": 1, "cpu": 3, "gpu": 0}
    assert capacity.autoscaling and not capacity.has_gpus
    roomy = capacity_from_cluster_config({**FAKE, "max_workers": 10}, "fake")
    assert {t.name: t.count for t in roomy.node_types} == {"head": 1, "cpu": 3, "gpu": 2}
    assert roomy.total() == {"CPU": 20.0, "GPU": 2.0}
    blank = {**FAKE, "available_node_types": {**FAKE["available_node_types"], "cpu": {"resources": {}, "max_workers": 2}}}
    with pytest.raises(ResourceError, match="node type 'cpu' states no CPU"):
        capacity_from_cluster_config(blank, "fake")


def test_capacity_of_the_shipped_yamls():
    gpu = capacity_from_yaml(str(ROOT / "cluster" / "gpu.yaml"))
    assert gpu.total() == {"CPU": 72.0, "GPU": 9.0} and gpu.autoscaling  # head + 8 g5.2xlarge workers
    assert capacity_from_yaml(str(ROOT / "cluster" / "gpu.yaml"), max_workers=0).total() == {"CPU": 8.0, "GPU": 1.0}
    assert capacity_from_yaml(str(ROOT / "cluster" / "cpu.yaml")).total() == {"CPU": 144.0}
    with pytest.raises(ResourceError, match="provider: local"):
        capacity_from_yaml(str(ROOT / "cluster" / "local.yaml"))
    with pytest.raises(ResourceError, match="No such file"):
        capacity_from_yaml(str(ROOT / "cluster" / "nope.yaml"))


def test_max_concurrent_at_full_scale_and_cap():
    plans = [plan(2) for _ in range(10)]
    assert max_concurrent(plans, cap((7, 0, 1))) == 3
    assert max_concurrent(plans, cap((100, 0, 1))) == 10  # never more than the trials
    assert max_concurrent([plan(1, gpu=0.25)] * 10, cap((16, 1, 1))) == 4
    assert max_concurrent(plans, cap((1, 0, 1))) == 1
    assert max_concurrent(plans, cap((1, 0, 1)), cap=5) == 5
    # the regression: a 1-CPU head that can grow three 1-CPU workers runs 4 one-CPU trials at once,
    # not the 1 that the live head alone would allow
    ones = [plan(1) for _ in range(8)]
    assert max_concurrent(ones, capacity_from_cluster_config(FAKE, "fake")) == 4
    assert max_concurrent(ones, capacity_from_nodes([node(1)])) == 1


def test_gpu_share_fills_a_gpu_node_with_trials():
    assert gpu_share(cap((8, 1, 4)), cpus_per_trial=1) == 0.125  # 8 trials share the GPU
    assert gpu_share(cap((8, 1, 4)), cpus_per_trial=2) == 0.25
    assert gpu_share(cap((12, 1, 1)), cpus_per_trial=1) == 0.083  # rounded down: 12 fit
    assert gpu_share(cap((16, 0, 1), (8, 2, 1)), cpus_per_trial=1) == 0.25
    assert gpu_share(cap((16, 0, 1)), cpus_per_trial=1) == 0.0


def test_learner_device_rule_follows_the_measured_table():
    for (hidden, minibatch), (cpu_ms, gpu_ms) in LEARNER_MS.items():
        assert nearest_measurement(hidden, minibatch) == (hidden, minibatch)
        assert gpu_pays(hidden, minibatch) == (cpu_ms >= 1.25 * gpu_ms)
    assert not gpu_pays(64, 64) and not gpu_pays(256, 64) and gpu_pays(1024, 1024)
    assert gpu_pays(2048, 4096) and not gpu_pays(128, 128)


def test_resolve_learner_gpus_only_where_a_gpu_pays():
    gpus = cap((8, 1, 2))
    resolved = resolve_learner_gpus(parse_spec(SPEC), gpus)
    assert resolved.resources.num_gpus_per_learner == 0.125
    by_hidden = {p.trial.hidden_size: p.required.get("GPU", 0.0) for p in plan_trials(resolved)}
    assert by_hidden == {64: 0.0, 1024: 0.125}  # measured: a GPU learner pays at 1024 / 1024 only
    assert resolved.knobs(TrialSpec("Hopper-v5", "clean", "adpo", "fixed", 1024, 0)).num_gpus_per_learner == 0.125
    # no GPUs on the cluster, or learners pinned to CPU: nothing changes
    assert resolve_learner_gpus(parse_spec(SPEC), cap((8, 0, 2))).resources.num_gpus_per_learner == 0
    cpu = parse_spec({**SPEC, "resources": {"learner_device": "cpu"}})
    assert resolve_learner_gpus(cpu, gpus) is cpu
    forced = parse_spec({**SPEC, "resources": {"learner_device": "gpu"}})
    assert {p.required.get("GPU") for p in plan_trials(resolve_learner_gpus(forced, gpus))} == {0.125}
    # learner_device gpu with no cluster known: a whole GPU per learner
    assert {p.required.get("GPU") for p in plan_trials(forced)} == {1.0}
    with pytest.raises(SpecError, match="learner_device: cpu"):
        parse_spec({**SPEC, "resources": {"learner_device": "cpu", "num_gpus_per_learner": 0.5}})


@pytest.mark.parametrize("sampled", [False, True], ids=["grid", "search"])
def test_each_trial_reserves_what_its_own_sweep_point_builds(sampled):
    """With learner_device auto, a swept minibatch size moves the learner between CPU and GPU: each
    trial's placement group is the one its own config builds, not another point's."""
    from adpo_ray.orchestration.trainable import GridTrainable
    from adpo_ray.rllib.factory import build_algo_config

    data = {**SPEC, "hidden_sizes": [1024], "anchors": {"modes": ["dynamic"]}, "train": {"train_batch_size": 2048},
            "resources": {"num_gpus_per_learner": 0.25}}  # the share the launch resolved
    if sampled:
        data.update(sweep={"train.minibatch_size": {"choice": [64, 1024]}}, search={"num_samples": 2})
    else:
        data.update(sweep={"train.minibatch_size": [64, 1024]})
    spec = parse_spec(data)
    spec_dict = spec.model_dump(mode="json", by_alias=True)
    base = spec.trials()[0]
    gpus = {}
    for minibatch in (64, 1024):  # the order matters: the first point asked must not answer for both
        if sampled:  # Tune resolves a search's sample into the trial's config before asking
            config = {"spec": spec_dict, "trial": base.as_dict(), "sweep": {"train.minibatch_size": minibatch}}
        else:
            trial = next(t for t in spec.trials() if dict(t.sweep)["train.minibatch_size"] == minibatch)
            config = {"spec": spec_dict, "trial": trial.as_dict()}
        pgf = GridTrainable.default_resource_request(config)
        gpus[minibatch] = sum(b.get("GPU", 0.0) for b in pgf.bundles)
        knobs = spec.knobs(TrialSpec.from_config(config))
        built = build_algo_config(knobs)
        assert built.num_gpus_per_learner == knobs.num_gpus_per_learner
        assert [dict(b) for b in pgf.bundles] == [dict(b) for b in built.algo_class.default_resource_request(built).bundles]
    assert gpus == {64: 0.0, 1024: 0.25}  # measured: a GPU learner pays at 1024 / 1024 only


def test_estimate_wall_time_longest_first():
    t = [TrialPlan(T, [{"CPU": 1}], steps) for steps in (1000, 1000, 1000, 3000)]
    sps = {"Hopper-v5": 100.0}
    assert estimate_wall_time(t, 1, sps) == pytest.approx(60.0)
    assert estimate_wall_time(t, 2, sps) == pytest.approx(30.0)  # the 30 s trial alone, three 10 s beside it
    assert estimate_wall_time(t, 8, sps) == pytest.approx(30.0)


def test_the_launchs_own_cpu_work_is_taken_from_the_trials_cpus_it_leaves_none_idle():
    """DRIVER_CPU_S_PER_RESULT: the driver's, tracker's and Ray's CPU seconds per result, done on
    idle CPUs first, the rest taken from the CPUs the trials use."""
    t = [TrialPlan(T, [{"CPU": 1}], steps, results=10) for steps in (1000, 1000, 1000, 3000)]
    sps = {"Hopper-v5": 100.0}
    # 40 results x 0.5 s = 20 CPU s on 2 busy CPUs of 2: +10 s on the 30 s of the trials
    assert estimate_wall_time(t, 2, sps, cpus=2, cpu_s_per_result=0.5) == pytest.approx(40.0)
    # a third CPU, idle for 30 s, takes all 20 s: nothing added
    assert estimate_wall_time(t, 2, sps, cpus=3, cpu_s_per_result=0.5) == pytest.approx(30.0)
    # 80 CPU s: 30 on the idle CPU, 50 over the 2 busy ones
    assert estimate_wall_time(t, 2, sps, cpus=3, cpu_s_per_result=2.0) == pytest.approx(55.0)
    # one trial at a time on 1 CPU of 1: all of it
    assert estimate_wall_time(t, 1, sps, cpus=1, cpu_s_per_result=0.5) == pytest.approx(80.0)
    assert estimate_wall_time(t, 2, sps, cpus=2) == estimate_wall_time(t, 2, sps) == pytest.approx(30.0)
    assert estimate_wall_time(t, 2, sps, cpus=0, cpu_s_per_result=0.5) == pytest.approx(30.0)  # no CPUs known
    assert estimate_wall_time([], 2, sps, cpus=2, cpu_s_per_result=0.5) == 0.0


def test_a_plan_counts_the_results_each_trial_and_pack_reports():
    """TrialPlan.results: a trial's training iterations within its budget (whichever limit comes
    first), a pack's summed over its members."""
    spec = parse_spec({**SPEC, "hidden_sizes": [64], "budget": {"iterations": 10, "env_steps": 5000},
                       "resources": {"pack": 1}})
    solos = plan_trials(spec)
    assert solos and all(p.results == 3 for p in solos)  # 5,000 env steps in batches of 2,048: the third passes it
    bandit = parse_spec({"name": "b", "environments": ["PreferenceBandit"], "scenarios": ["clean", "flip-high"],
                         "seeds": [0, 1], "budget": {"iterations": 7}, "resources": {"pack": "auto"}})
    packs = plan_trials(bandit)
    assert sum(p.results for p in packs) == 7 * bandit.trial_count()
    assert all(p.results == 7 * len(p.trials) for p in packs)


def test_distillation_on_several_nodes_needs_a_shared_tracking_store():
    from adpo_ray.orchestration.policies import check_shared_tracking

    one, many = cap((8, 0, 1)), cap((8, 0, 1), (8, 0, 2), autoscaling=True)
    for uri in ("sqlite:////tmp/mlflow.db", "http://127.0.0.1:5000", "http://localhost:5000", "/tmp/mlruns"):
        check_shared_tracking(uri, one)  # one node: its own store is everyone's
        with pytest.raises(ValueError, match="3 nodes needs a tracking store every node reaches"):
            check_shared_tracking(uri, many)
    check_shared_tracking("http://10.0.0.10:5000", many)
    check_shared_tracking("https://mlflow.example.org", many)


def test_a_trial_runs_torch_on_the_cpus_of_its_first_bundle():
    """AlgorithmTrainable.pin_torch_threads: a trial's process and local learner use the CPUs of
    its placement group's first bundle, whatever OMP_NUM_THREADS the node holds."""
    from ray.tune import PlacementGroupFactory

    from adpo_ray.orchestration.trainable import torch_threads

    assert torch_threads(PlacementGroupFactory([{"CPU": 1, "GPU": 0.25}, {"CPU": 1}])) == 1  # env runner apart
    assert torch_threads(PlacementGroupFactory([{"CPU": 4}])) == 4
    assert torch_threads(PlacementGroupFactory([{"CPU": 0.5}])) == 1
    assert torch_threads(None) is None  # built outside Tune: torch as it is
