"""NDCG of a student's candidate ranking (adpo_ray.core.distill.ndcg) against lists worked by hand."""

from __future__ import annotations

from itertools import permutations
from math import log2

import pytest
import torch

from adpo_ray.core.distill import ndcg, random_order_ndcg, rank_grades


def d(p: int) -> float:
    """The discount of rank position p (1-based)."""
    return 1 / log2(p + 1)


def test_grades_are_rank_positions_with_shared_ties():
    # 3 beats the other three; 2 and 2 beat only 1; 1 beats none
    assert rank_grades(torch.tensor([3.0, 1.0, 2.0, 2.0])).tolist() == [3, 0, 1, 1]
    # an increasing transform of the signal leaves the grades alone
    assert rank_grades(torch.tensor([30.0, -5.0, 7.0, 7.0])).tolist() == [3, 0, 1, 1]


def test_ndcg_by_hand():
    signal = torch.tensor([3.0, 1.0, 2.0, 2.0])  # gains 3, 0, 1, 1
    ideal = 3 * d(1) + 1 * d(2) + 1 * d(3) + 0 * d(4)
    # the signal's own order is ideal; scores in the same order (any scale) too
    assert ndcg(signal, signal).item() == pytest.approx(1.0)
    assert ndcg(torch.tensor([9.0, -1.0, 0.5, 0.4]), signal).item() == pytest.approx(1.0)
    # reversed: gains 0, then 1 and 1 tied at positions 2-3, then 3
    rev = ndcg(torch.tensor([0.0, 5.0, 1.0, 1.0]), signal).item()
    assert rev == pytest.approx((0 * d(1) + 1 * d(2) + 1 * d(3) + 3 * d(4)) / ideal)  # 2.42296 / 4.13093
    assert rev == pytest.approx(0.586541, abs=1e-6)


def test_ndcg_ties_in_the_scores_share_positions():
    signal = torch.tensor([3.0, 1.0, 2.0, 2.0])  # gains 3, 0, 1, 1
    ideal = 3 * d(1) + 1 * d(2) + 1 * d(3)
    # gains 3 and 0 tied at positions 1-2, gains 1 and 1 tied at 3-4: each group's mean gain
    # over its positions' discounts
    expected = ((3 + 0) / 2 * (d(1) + d(2)) + (1 + 1) / 2 * (d(3) + d(4))) / ideal
    got = ndcg(torch.tensor([1.0, 1.0, 0.0, 0.0]), signal).item()
    assert got == pytest.approx(expected) and got == pytest.approx(0.817509, abs=1e-6)
    # the value does not depend on which tied candidate comes first in the list
    assert ndcg(torch.tensor([1.0, 1.0, 0.0, 0.0]), signal[[1, 0, 3, 2]]).item() == pytest.approx(expected)
    # all scores tied: every candidate gets the mean discount
    flat = ndcg(torch.zeros(4), signal).item()
    assert flat == pytest.approx((3 + 0 + 1 + 1) / 4 * sum(d(p) for p in range(1, 5)) / ideal)


def test_ndcg_batched_and_undefined_lists():
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    signal = torch.tensor([[5.0, 4.0, 3.0], [5.0, 4.0, 3.0], [1.0, 1.0, 1.0]])
    out = ndcg(scores, signal)
    assert out.shape == (3,)
    assert out[0].item() == pytest.approx(1.0)
    # gains 2, 1, 0 ranked 0, 1, 2
    assert out[1].item() == pytest.approx((0 * d(1) + 1 * d(2) + 2 * d(3)) / (2 * d(1) + 1 * d(2)))
    assert torch.isnan(out[2])  # a constant signal ranks nothing
    with pytest.raises(ValueError, match="same shape"):
        ndcg(torch.zeros(2, 3), torch.zeros(2, 4))


def test_random_order_ndcg_is_the_mean_over_every_order():
    # ties in the signal included: the mean of ndcg over all 24 orders of the 4 candidates
    signal = torch.tensor([3.0, 1.0, 2.0, 2.0])
    orders = [ndcg(torch.tensor(p, dtype=torch.float64), signal).item() for p in permutations([3.0, 2.0, 1.0, 0.0])]
    assert random_order_ndcg(signal).item() == pytest.approx(sum(orders) / len(orders), abs=1e-12)
    # K distinct signals: ((K - 1) / 2 * sum of discounts) / ideal DCG
    k = 8
    expected = (k - 1) / 2 * sum(d(p) for p in range(1, k + 1)) / sum((k - p) * d(p) for p in range(1, k + 1))
    got = random_order_ndcg(torch.randn(5, k, generator=torch.Generator().manual_seed(0)))
    assert got.shape == (5,) and torch.allclose(got, torch.full((5,), expected, dtype=torch.float64))
    assert expected == pytest.approx(0.803802, abs=1e-6)
    assert torch.isnan(random_order_ndcg(torch.ones(3)))  # a constant signal ranks nothing
