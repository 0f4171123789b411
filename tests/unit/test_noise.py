"""The scenario table and the noise models: reproducible, and at the rates the table says."""

import numpy as np
import pytest

from adpo_ray.core.noise import (
    CLEAN,
    NOISE_TYPES,
    SCENARIOS,
    SEVERITIES,
    SEVERITY_TABLE,
    TWELVE,
    corrupt,
    corrupt_rows,
    get_scenario,
    scenario_rows,
)


def test_twelve_scenarios():
    assert len(TWELVE) == 12
    assert [s.name for s in TWELVE][:3] == ["gaussian-low", "gaussian-medium", "gaussian-high"]
    assert {(s.noise_type, s.severity) for s in TWELVE} == {(t, v) for t in NOISE_TYPES for v in SEVERITIES}
    assert "clean" in SCENARIOS and CLEAN not in TWELVE
    assert len(scenario_rows()) == 13
    assert get_scenario("heavy_tailed-high").params == SEVERITY_TABLE["heavy_tailed"]["high"]


def test_severity_increases():
    for t, key in [("gaussian", "sigma"), ("heavy_tailed", "p"), ("flip", "p"), ("shift", "context_shift")]:
        vals = [SEVERITY_TABLE[t][s][key] for s in SEVERITIES]
        assert vals == sorted(vals) and len(set(vals)) == 3


def test_unknown_scenario_lists_allowed():
    with pytest.raises(ValueError, match="allowed: clean, gaussian-low"):
        get_scenario("gaussian-extreme")


@pytest.mark.parametrize("name", [s.name for s in TWELVE])
def test_same_seed_same_output(name):
    y = np.linspace(-2, 2, 800).reshape(100, 8)
    a = corrupt(y, name, 7, list_axis=True)
    b = corrupt(y, name, 7, list_axis=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(y, np.linspace(-2, 2, 800).reshape(100, 8))  # input untouched
    if SCENARIOS[name].noise_type != "shift":
        assert not np.array_equal(corrupt(y, name, 8, list_axis=True), a)


def test_clean_and_shift_leave_signal():
    y = np.arange(6.0)
    for name in ("clean", "shift-high"):
        np.testing.assert_array_equal(corrupt(y, name, 0), y)


N = 200_000


def _within(rate, p, n=N):
    return abs(rate - p) < 5 * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("sev", SEVERITIES)
def test_gaussian_sigma(sev):
    sigma = SEVERITY_TABLE["gaussian"][sev]["sigma"]
    noise = corrupt(np.zeros(N), f"gaussian-{sev}", 0, scale=2.0)
    assert abs(noise.std() - 2.0 * sigma) < 5 * 2.0 * sigma / np.sqrt(2 * N)
    assert abs(noise.mean()) < 5 * 2.0 * sigma / np.sqrt(N)


@pytest.mark.parametrize("sev", SEVERITIES)
def test_flip_rate(sev):
    p = SEVERITY_TABLE["flip"][sev]["p"]
    y = np.ones(N)
    out = corrupt(y, f"flip-{sev}", 1)
    assert set(np.unique(out)) <= {-1.0, 1.0}
    assert _within((out < 0).mean(), p)


@pytest.mark.parametrize(("row_shape", "list_axis"), [((8,), True), ((8,), False), ((), False), ((2, 5), True)])
def test_corrupt_rows_is_corrupt_of_each_row_bit_for_bit(row_shape, list_axis):
    """Rows of every scenario, mixed, some sharing one generator: each row and each generator's
    state as after one corrupt call per row, in row order."""
    names = [*SCENARIOS] * 3
    y = np.random.default_rng(0).standard_normal((len(names), *row_shape)) * 3

    def generators():
        shared = np.random.default_rng(99)
        return [shared if i % 5 == 0 else np.random.default_rng(i) for i in range(len(names))]

    together, alone = generators(), generators()
    out = corrupt_rows(y, [get_scenario(n) for n in names], together, list_axis=list_axis)
    want = np.stack([corrupt(y[i], n, alone[i], list_axis=list_axis) for i, n in enumerate(names)])
    assert out.shape == y.shape and out.dtype == np.float64
    np.testing.assert_array_equal(out, want)
    for a, b in zip(together, alone, strict=True):  # each generator drew what its calls drew
        assert a.random() == b.random()
    # control: the noisy rows did move, the clean and shift ones did not
    moved = [not np.array_equal(out[i], y[i]) for i in range(len(names))]
    assert not any(moved[i] for i, n in enumerate(names) if n == "clean" or n.startswith("shift"))
    assert any(moved[i] for i, n in enumerate(names) if n.startswith("gaussian"))


def test_corrupt_rows_refuses_mismatched_rows():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="3 rows need 3 scenarios and 3 generators, got 2 and 3"):
        corrupt_rows(np.zeros((3, 4)), [CLEAN, CLEAN], [rng] * 3)


def test_flip_reverses_whole_lists():
    y = np.tile(np.arange(1.0, 6.0), (N // 10, 1))
    out = corrupt(y, "flip-high", 2, list_axis=True)
    flipped = out[:, 0] < 0
    np.testing.assert_array_equal(out[flipped], -y[flipped])
    np.testing.assert_array_equal(out[~flipped], y[~flipped])
    assert _within(flipped.mean(), 0.35, N // 10)


@pytest.mark.parametrize("sev", SEVERITIES)
def test_contamination_rate(sev):
    p = SEVERITY_TABLE["heavy_tailed"][sev]["p"]
    out = corrupt(np.zeros(N), f"heavy_tailed-{sev}", 3)
    assert _within((out != 0).mean(), p)
    hits = out[out != 0]
    # Cauchy(0, c): median of |X| is c
    c = SEVERITY_TABLE["heavy_tailed"][sev]["cauchy_scale"]
    assert abs(np.median(np.abs(hits)) / c - 1) < 0.1
