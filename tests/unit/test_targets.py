"""Targets: softmax / pairwise / hard / KDE-smoothed, checked exactly (KDE against scipy)."""

import numpy as np
import pytest
import torch
from scipy.special import logit
from scipy.stats import gaussian_kde, norm

from adpo_ray.core.targets import (
    hard_pairwise_target,
    hard_target,
    kde_logits,
    list_target,
    pair_target,
    softmax_target,
)

pytestmark = pytest.mark.usefixtures("float64")


def test_softmax_target_values():
    y = torch.tensor([0.0, 1.0, 2.0])
    e = np.exp(np.array([0.0, 2.0, 4.0]))
    np.testing.assert_allclose(softmax_target(y, 0.5).numpy(), e / e.sum(), rtol=1e-12)


def test_pairwise_target_values():
    y = torch.tensor([0.0, 1.0])
    q = pair_target(y, "softmax", 2.0)
    assert q[0, 1].item() == pytest.approx(1 / (1 + np.exp(0.5)))
    assert q[1, 0].item() == pytest.approx(1 / (1 + np.exp(-0.5)))
    assert q[0, 0].item() == pytest.approx(0.5)


def test_hard_targets_with_ties():
    y = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    np.testing.assert_allclose(hard_target(y).numpy(), [[0, 0.5, 0.5, 0]])
    hp = hard_pairwise_target(y)[0]
    assert hp[1, 0] == 1 and hp[0, 1] == 0 and hp[1, 2] == 0.5


def test_kde_logits_match_scipy():
    rng = np.random.default_rng(0)
    for n in (3, 8, 20):
        y = rng.standard_normal(n) * 3
        kde = gaussian_kde(y, bw_method="silverman")
        h = np.sqrt(kde.covariance[0, 0])
        cdf = norm.cdf((y[:, None] - y[None, :]) / h).mean(axis=1)
        for i in range(n):  # the closed form equals scipy's own integral
            assert cdf[i] == pytest.approx(kde.integrate_box_1d(-np.inf, y[i]), abs=1e-9)
        got = kde_logits(torch.tensor(y)).numpy()
        np.testing.assert_allclose(got, logit(np.clip(cdf, 1e-6, 1 - 1e-6)), rtol=1e-7, atol=1e-9)


def test_kde_bounds_outliers_and_keeps_order():
    y = torch.tensor([0.0, 0.1, 0.2, 0.3, 1e6])
    z = kde_logits(y)
    assert torch.all(z[1:] > z[:-1])
    assert z.abs().max().item() <= float(logit(1 - 1e-6)) + 1e-9
    q = list_target(y, "kde", 1.0)
    assert q.max().item() < 0.99  # softmax of raw y would put all mass on the outlier
    assert softmax_target(y, 1.0).max().item() == pytest.approx(1.0)


def test_kde_constant_list_is_uniform():
    q = list_target(torch.full((4,), 2.0), "kde", 0.1)
    np.testing.assert_allclose(q.numpy(), np.full(4, 0.25))


def test_unknown_target_names_allowed():
    with pytest.raises(ValueError, match="allowed: softmax, kde, hard"):
        list_target(torch.zeros(3), "bogus", 1.0)
