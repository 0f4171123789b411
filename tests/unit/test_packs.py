"""How a grid's trials become trial packs (``resources.pack``, :meth:`ExperimentSpec.packs`): one
shape per pack, at most N members, refused trials and searches alone, a stable order; the spec's
errors; the Tune space, names and plans of a packed grid. No Ray start."""

from __future__ import annotations

import json

import pytest

from adpo_ray.orchestration.planning import Capacity, NodeType, max_concurrent, plan_trials
from adpo_ray.orchestration.tune_setup import param_space, unit_name
from adpo_ray.spec import (
    MAX_DIRNAME_BYTES,
    SpecError,
    TrialSpec,
    pack_dirname,
    parse_spec,
    trials_of,
)
from adpo_ray.spec.packs import AUTO_PACK_SIZE

BASE = {
    "name": "packs",
    "environments": ["PreferenceBandit"],
    "scenarios": ["clean", "flip-high"],
    "anchors": {"modes": ["fixed", "dynamic"]},
    "budget": {"iterations": 2},
}


def spec(pack, **extra):
    return parse_spec({**BASE, **extra, "resources": {"pack": pack, **extra.pop("resources", {})}})


def tags(packs):
    return [[t.tag for t in p] for p in packs]


def test_the_default_is_auto():
    s = parse_spec(BASE)
    assert s.resources.pack == "auto"
    assert tags(s.packs()) == tags(spec("auto").packs()) == [[t.tag for t in s.trials()]]  # one shape: one pack
    assert param_space(s, "sqlite:///x.db")["trials"] == {"grid_search": [[t.as_dict() for t in s.trials()]]}


def test_pack_1_is_one_trial_per_tune_trial_as_before():
    s = spec(1)
    assert s.packs() == [[t] for t in s.trials()]
    space = param_space(s, "sqlite:///x.db")
    assert "trials" not in space and space["trial"] == {"grid_search": [t.as_dict() for t in s.trials()]}
    assert [p.trial for p in plan_trials(s)] == s.trials() and not any(p.members for p in plan_trials(s))


def test_auto_packs_each_shape():
    s = spec("auto", algorithms=["adpo", "ppo", "ppo_kl"], hidden_sizes=[16, 32])
    packs = s.packs()
    by_shape = {}
    for t in s.trials():
        by_shape.setdefault((t.algorithm, t.hidden_size), []).append(t.tag)
    # one pack per (algorithm, hidden size), members in trial order
    assert len(by_shape) == 6 and sorted(tags(packs)) == sorted(by_shape.values())
    assert [len(p) for p in packs if p[0].algorithm == "adpo"] == [4, 4]
    assert [len(p) for p in packs if p[0].algorithm == "ppo_kl"] == [2, 2]
    # every trial once, packs in the order of their first member, the same on every call
    flat = [t for p in packs for t in p]
    assert sorted(t.tag for t in flat) == sorted(t.tag for t in s.trials())
    order = [s.trials().index(p[0]) for p in packs]
    assert order == sorted(order) and tags(s.packs()) == tags(packs)


def test_ppo_kl_members_share_whether_beta_adapts_not_its_start():
    s = spec("auto", algorithms=["ppo_kl"], scenarios=["clean"],
             sweep={"ppo_kl.kl_beta": [0.3, 1.0], "ppo_kl.kl_adaptive": [True, False]})
    packs = s.packs()
    assert len(s.trials()) == 4 and [len(p) for p in packs] == [2, 2]
    for p in packs:
        knobs = [s.knobs(t) for t in p]
        assert len({k.kl_adaptive for k in knobs}) == 1 and {k.kl_beta for k in knobs} == {0.3, 1.0}


def test_a_knob_a_pack_cannot_run_leaves_every_trial_alone():
    s = spec("auto", resources={"learner_update": "rllib"})
    assert s.packs() == [[t] for t in s.trials()]


def test_members_pack_across_anchor_kl_coeff():
    """ADPO's KL penalty to the anchor is a per-member knob: a sweep over it packs as one shape."""
    s = spec("auto", scenarios=["clean"], sweep={"adpo.anchor_kl_coeff": [0.0, 0.2]})
    packs = s.packs()
    assert len(packs) == 1 and len(packs[0]) == len(s.trials())
    assert {s.knobs(t).anchor_kl_coeff for t in packs[0]} == {0.0, 0.2}


def test_trials_from_pretrained_policies_pack_and_find_their_start():
    """``anchors.init`` (a pretrained start, or a stored checkpoint) packs as any other knob: each
    method's trials form their pack (one start for all members), and the pack's Tune config
    carries the pinned runs and store as a solo trial's does."""
    pretrain = {"modes": ["fixed", "dynamic"], "init": {"pretrain": {"iterations": 3}}}
    s = spec("auto", algorithms=["adpo", "ppo", "ppo_kl"], anchors=pretrain)
    assert [len(p) for p in s.packs()] == [4, 2, 2]
    assert all(len({s.knobs(t).init for t in p}) == 1 and s.knobs(p[0]).init.startswith("pretrain:")
               for p in s.packs())
    space = param_space(s, "sqlite:///x.db", init_runs={"slot": "run"})
    assert space["init_runs"] == {"slot": "run"} and space["tracking_uri"] == "sqlite:///x.db"
    assert "trials" in space
    stored = spec(2, anchors={"modes": ["fixed", "dynamic"], "init": {"checkpoint": "/x"}})
    assert [len(p) for p in stored.packs()] == [2, 2]


def test_at_most_n_members_split_evenly():
    s = spec(3)  # 4 trials of one shape: 2 + 2, not 3 + 1
    assert [len(p) for p in s.packs()] == [2, 2]
    many = spec("auto", scenarios=["clean"], anchors={"modes": ["dynamic"]}, seeds=list(range(AUTO_PACK_SIZE + 1)))
    assert [len(p) for p in many.packs()] == [9, 8]
    assert [t.seed for p in many.packs() for t in p] == list(range(AUTO_PACK_SIZE + 1))


SEARCH = {"scenarios": ["clean"], "anchors": {"modes": ["dynamic"]}, "sweep": {"train.lr": [0.001, 0.01]},
          "search": {"metric": "eval/winmass", "num_samples": 1}}


def test_a_search_keeps_solo_trials():
    s = spec("auto", **SEARCH)
    assert s.packs() == [[t] for t in s.trials()]
    assert "trial" in param_space(s, "sqlite:///x.db")
    with pytest.raises(SpecError, match=r"resources.pack: 4 with `search:`.*use resources.pack 1 or auto"):
        spec(4, **SEARCH)


@pytest.mark.parametrize("value", [0, -1, 1025, 2.5, "all", True, None])
def test_bad_pack_values_are_named(value):
    with pytest.raises(SpecError, match=r"resources.pack: .*allowed: auto, or a whole number"):
        spec(value)


def test_a_packed_grid_gives_tune_one_trial_per_pack_with_readable_unique_names():
    s = spec("auto", algorithms=["adpo", "ppo_kl"], sweep={"adpo.beta_q": [0.25 + i / 1000 for i in range(40)]})
    space = param_space(s, "sqlite:///x.db")
    assert "trial" not in space
    units = space["trials"]["grid_search"]
    assert [trials_of({"trials": u}) for u in units] == s.packs()
    names = [unit_name({"spec": space["spec"], "trials": u}) for u in units]
    assert len(set(names)) == len(names) == len(s.packs())
    assert all(len(n.encode()) <= MAX_DIRNAME_BYTES for n in names)
    for unit, name in zip(units, names, strict=True):
        members = trials_of({"trials": unit})
        # a pack: its size and first member; a trial alone: its own folder, as a solo launch names it
        assert name.startswith(f"pack{len(members)}_{members[0].env}") if len(members) > 1 else name == members[0].dirname


def test_plans_count_packs_each_asking_what_its_solo_trial_asks():
    s = spec("auto", algorithms=["adpo", "ppo_kl"])
    plans = plan_trials(s)
    assert [len(p.trials) for p in plans] == [4, 2]
    solo = plan_trials(spec(1, algorithms=["adpo", "ppo_kl"]))
    assert plans[0].members == tuple(s.packs()[0]) and plans[0].bundles == solo[0].bundles
    # with env runners: RLlib's bundle per runner, which it places runner i in (never merged)
    runners = plan_trials(spec("auto", resources={"num_env_runners": 2}))
    assert [len(p.bundles) for p in runners] == [3] and runners[0].bundles[1] == runners[0].bundles[2] == {"CPU": 1}
    assert plans[0].env_steps == 2 * plans[1].env_steps and plans[0].name.startswith("pack4_")
    two_cpus = Capacity((NodeType("node", {"CPU": 2.0}, 1),), "test")
    assert max_concurrent(plans, two_cpus) == 2
    assert len(solo) == 6


def test_a_long_pack_name_is_cut_with_a_digest():
    long = (("anchors.params.dynamic.period", "x" * 150),)
    a, b, c = (TrialSpec("PreferenceBandit", "clean", "adpo", "dynamic", 64, seed, long) for seed in (0, 1, 2))
    names = {pack_dirname([a, b]), pack_dirname([b, c]), pack_dirname([a, b, c])}
    assert len(names) == 3 and all(len(n.encode()) <= MAX_DIRNAME_BYTES and n.startswith("pack") for n in names)


def test_the_dry_run_shows_the_packs(capsys, tmp_path):
    from adpo_ray.cli import main

    spec_file = tmp_path / "packed.yaml"
    spec_file.write_text(json.dumps({**BASE, "algorithms": ["adpo", "ppo_kl"], "resources": {"pack": "auto"}}))
    assert main(["grid", "--config", str(spec_file), "--dry-run", "--storage-path", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("trial packs (resources.pack: auto): 2 Tune trials for 6 trials: 1 pack(s) of 2 members, each asking "
            "{CPU=1}; 1 pack(s) of 4 members, each asking {CPU=1}; 0 trial(s) alone") in out
    assert "trials: 6 = 1 env(s) x 2 scenario(s) x 3 method(s)" in out and "Tune trial(s) (packs or trials)" in out


def test_a_pack_is_priced_at_its_measured_speed_up_read_conservatively():
    """The wall-time estimate prices a pack at bench/throughput.py's speed-up for its env, the
    smallest measured hidden size at least its own, and between measured sizes K (from K=1, a
    solo trial at 1.0) the straight line between them."""
    from adpo_ray.orchestration.planning import PACK_SPEEDUP, THROUGHPUT, pack_speedup

    rows = PACK_SPEEDUP["HalfCheetah-v5"]
    assert sorted(rows) == [64, 128, 256] and all(sorted(r) == [4, 16] for r in rows.values())
    assert pack_speedup("HalfCheetah-v5", 64, 16) == rows[64][16]
    assert pack_speedup("HalfCheetah-v5", 64, 4) == rows[64][4]
    assert pack_speedup("HalfCheetah-v5", 128, 16) == rows[128][16]
    assert pack_speedup("HalfCheetah-v5", 200, 16) == rows[256][16]  # priced as the next measured size up
    assert pack_speedup("HalfCheetah-v5", 32, 16) == rows[64][16]
    assert pack_speedup("HalfCheetah-v5", 1024, 70) == rows[256][16]  # above every measured size and K
    assert pack_speedup("HalfCheetah-v5", 64, 10) == pytest.approx(rows[64][4] + (rows[64][16] - rows[64][4]) * 6 / 12)
    assert pack_speedup("HalfCheetah-v5", 64, 2) == pytest.approx(1 + (rows[64][4] - 1) / 3)  # from a solo's 1.0
    assert pack_speedup("HalfCheetah-v5", 64, 1) == 1.0
    # an env without figures: those of the env that prices its throughput (planning.stand_in)
    assert pack_speedup("NotMeasured-v0", 64, 16) == PACK_SPEEDUP[min(THROUGHPUT, key=THROUGHPUT.__getitem__)][64][16]
    for env, by_hidden in PACK_SPEEDUP.items():  # every figure a speed-up, growing with K
        for by_k in by_hidden.values():
            figures = [by_k[k] for k in sorted(by_k)]
            assert figures == sorted(figures) and figures[0] >= 1.0, (env, by_k)


def test_tensorboards_warning_about_a_packs_members_is_dropped_and_others_kept(monkeypatch):
    """TensorBoard cannot plot a pack's ``members`` (a list of results): Tune's warning that it
    is an invalid value, with every member's result in it, is not printed; other warnings are."""
    import logging
    import os

    from adpo_ray.orchestration.tune_setup import tuner_env

    monkeypatch.setattr(os, "environ", dict(os.environ))  # Tune's settings stay in this test
    tuner_env()
    log = logging.getLogger("ray.tune.logger.tensorboardx")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    log.addHandler(handler)
    try:
        log.warning("You are trying to log an invalid value (ray/tune/members=[{'env_steps': 128.0}]) via TBXLoggerCallback!")
        log.warning("You are trying to log an invalid value (ray/tune/other=[[]]) via TBXLoggerCallback!")
    finally:
        log.removeHandler(handler)
    assert seen == ["You are trying to log an invalid value (ray/tune/other=[[]]) via TBXLoggerCallback!"]
