"""The suite's own pytest hooks (tests/conftest.py), run by an inner pytest in a subprocess."""

from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_a_failure_is_named_before_the_summary(pytester, monkeypatch, workers):
    """A failing call and a failing fixture are each named on their own line as they are reported,
    before pytest's summary at the end; a passing test is not."""
    monkeypatch.setenv("ADPO_RAY_TESTS_SHARED_RAY", "unused")  # the inner pytest starts no Ray
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_inner="""
        import pytest

        @pytest.fixture
        def broken():
            raise RuntimeError("setup fails")

        def test_fails():
            assert 1 == 2

        def test_setup_fails(broken):
            pass

        def test_passes():
            pass
    """)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", *workers)
    result.assert_outcomes(passed=1, failed=1, errors=1)
    lines = result.outlines
    summary = next(i for i, line in enumerate(lines) if "= ERRORS =" in line or "= FAILURES =" in line)
    named = [line for line in lines[:summary] if line.startswith("FAILED ")]
    assert sorted(named) == [
        "FAILED test_inner.py::test_fails (call); details in the summary at the end",
        "FAILED test_inner.py::test_setup_fails (setup); details in the summary at the end",
    ], lines
