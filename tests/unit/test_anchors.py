"""Anchor-refresh schedules: when they fire, by how much, and that their state round-trips."""

import pytest
import torch

from adpo_ray.core.anchors import (
    SCHEDULES,
    AnchorSchedule,
    make_schedule,
    polyak_,
    register_schedule,
)


def run(schedule, kls, start_step=100):
    return [schedule.step(kl, timestep=start_step + i) for i, kl in enumerate(kls)]


def test_fixed_never_refreshes():
    s = make_schedule("fixed")
    assert run(s, [0.0, 1.0, 100.0] * 10) == [0.0] * 30
    assert s.refreshes == 0 and s.last_refresh_step == -1 and s.updates == 30


@pytest.mark.parametrize("every", [1, 3])
def test_dynamic_every_n(every):
    s = make_schedule("dynamic", every=every)
    rates = run(s, [0.01] * 9)
    assert rates == [1.0 if (i + 1) % every == 0 else 0.0 for i in range(9)]
    assert s.refreshes == 9 // every
    assert s.last_refresh_step == 100 + 8 - (9 % every)


def test_ema_rate_and_weights_move_by_the_right_amount():
    s = make_schedule("ema", rate=0.25)
    assert run(s, [0.0, 0.0]) == [0.25, 0.25]
    anchor, policy = [torch.zeros(3), torch.ones(2)], [torch.full((3,), 4.0), torch.full((2,), -2.0)]
    for _ in range(2):
        polyak_(anchor, policy, 0.25)
    # a_n = p * (1 - (1 - rate)^n)
    torch.testing.assert_close(anchor[0], torch.full((3,), 4.0 * (1 - 0.75**2)))
    torch.testing.assert_close(anchor[1], -2.0 + (1.0 + 2.0) * 0.75**2 * torch.ones(2))


def test_polyak_hard_copy_and_noop():
    a, p = [torch.zeros(2)], [torch.tensor([1.0, 2.0])]
    polyak_(a, p, 0.0)
    assert a[0].tolist() == [0.0, 0.0]
    polyak_(a, p, 1.0)
    assert a[0].tolist() == [1.0, 2.0]


def test_kl_triggered_fires_only_past_threshold():
    s = make_schedule("kl_triggered", threshold=0.1, window=1)
    assert run(s, [0.01, 0.05, 0.1, 0.11, 0.02, 0.5]) == [0, 0, 0, 1.0, 0, 1.0]
    assert s.refreshes == 2 and s.last_refresh_step == 105 and s.last_refresh_kl == 0.5


def test_kl_triggered_window_mean():
    s = make_schedule("kl_triggered", threshold=0.1, window=3)
    # window means: -, -, 0.0833 (not > 0.1), 0.1167 (fire, window resets), -, -, 0.3 (fire)
    assert run(s, [0.0, 0.1, 0.15, 0.1, 0.3, 0.3, 0.3]) == [0, 0, 0, 1.0, 0, 0, 1.0]


@pytest.mark.parametrize(
    "name,params", [("fixed", {}), ("dynamic", {"every": 2}), ("ema", {"rate": 0.1}),
                    ("kl_triggered", {"threshold": 0.05, "window": 3})]
)
def test_state_round_trip(name, params):
    a = make_schedule(name, **params)
    kls = [0.01, 0.2, 0.03, 0.4, 0.06]
    run(a, kls)
    b = make_schedule(name, **params)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    more = [0.02, 0.3, 0.05, 0.5]
    assert run(a, more) == run(b, more)
    assert a.state_dict() == b.state_dict()


def test_registry_and_import_path():
    @register_schedule("every_other_test")
    class EveryOther(AnchorSchedule):
        def decide(self, kl):
            return 1.0 if self.updates % 2 == 0 else 0.0

    assert SCHEDULES["every_other_test"] is EveryOther
    assert run(make_schedule("every_other_test"), [0] * 4) == [0, 1.0, 0, 1.0]
    by_path = make_schedule("adpo_ray.core.anchors:EMA", rate=0.5)
    assert by_path.decide(0.0) == 0.5
    del SCHEDULES["every_other_test"]


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("nope", {}, "allowed: fixed, dynamic, ema, kl_triggered"),
        ("dynamic", {"every": 0}, "every must be >= 1"),
        ("ema", {"rate": 1.5}, r"rate must be in \(0, 1\]"),
        ("kl_triggered", {"threshold": -1}, "threshold must be > 0"),
        ("fixed", {"bogus": 1}, "bad parameters for anchor mode 'fixed'"),
        ("os.path:join", {}, "not an AnchorSchedule"),
        ("no_such_pkg.mod:Cls", {}, "cannot import"),
    ],
)
def test_bad_schedules(name, params, match):
    with pytest.raises(ValueError, match=match):
        make_schedule(name, **params)


def test_decide_out_of_range_is_an_error():
    class Bad(AnchorSchedule):
        def decide(self, kl):
            return 2.0

    with pytest.raises(ValueError, match="must be in"):
        Bad().step(0.0)
