"""The adaptive KL coefficient of ``ppo_kl``: the PPO paper's rule (Schulman et al. 2017, sec. 4)
on each branch and at the band's edges, and where it differs from RLlib's PPO rule (the control:
a learner that used RLlib's rule would fail these)."""

import pytest

from adpo_ray.core.kl_penalty import adapt_kl_beta


@pytest.mark.parametrize("kl,expected", [
    (0.001, 0.5),            # d < d_targ / 1.5: halve
    (0.05, 2.0),             # d > d_targ * 1.5: double
    (0.01, 1.0),             # inside the band: keep
    (0.01 / 1.5, 1.0),       # the edges keep
    (0.01 * 1.5, 1.0),
    (float("nan"), 1.0),     # no evidence: keep
])
def test_each_branch(kl, expected):
    assert adapt_kl_beta(1.0, kl, 0.01) == expected


def test_where_rllibs_rule_would_differ():
    # RLlib's PPO: x1.5 above 2 d_targ, x0.5 below d_targ / 2, else keep
    assert adapt_kl_beta(0.3, 0.016, 0.01) == 0.6   # RLlib keeps 0.3
    assert adapt_kl_beta(0.3, 0.006, 0.01) == 0.15  # RLlib keeps 0.3
    assert adapt_kl_beta(0.3, 0.03, 0.01) == 0.6    # RLlib: 0.45


def test_bad_coefficients_are_errors():
    with pytest.raises(ValueError, match="kl_beta and kl_target must be > 0"):
        adapt_kl_beta(0.0, 0.01, 0.01)
    with pytest.raises(ValueError, match="kl_beta and kl_target must be > 0"):
        adapt_kl_beta(1.0, 0.01, -1.0)
