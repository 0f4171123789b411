"""The anchored Plackett-Luce (ListMLE) loss against lists computed by hand: values and gradients,
ties, padding, top-k past the list, label smoothing, the poly term and the clamps."""

from __future__ import annotations

import math

import pytest
import torch

from adpo_ray.core.losses import adpo_loss, plackett_luce_loss


def lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def softmax(*xs: float) -> list[float]:
    z = sum(math.exp(x) for x in xs)
    return [math.exp(x) / z for x in xs]


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


# one list: u = s - r = [0.5, -0.2, 1.0]; the signal ranks item 1, then 2, then 0
U = [0.5, -0.2, 1.0]
Y = [1.0, 3.0, 2.0]
L0 = lse(-0.2, 1.0, 0.5) + 0.2      # item 1 drawn first from {1, 2, 0}
L1 = lse(1.0, 0.5) - 1.0            # item 2 drawn first from {2, 0}


def test_value_is_the_mean_negative_log_probability_of_each_rank():
    loss = plackett_luce_loss(t(U), torch.zeros(1, 3, dtype=torch.float64), t(Y), 1.0)
    assert loss.item() == pytest.approx((L0 + L1) / 2, abs=1e-12)


def test_gradient_is_suffix_softmax_minus_the_chosen_candidate():
    s = t(U).requires_grad_()
    plackett_luce_loss(s, torch.zeros(1, 3, dtype=torch.float64), t(Y), 1.0).sum().backward()
    p0 = softmax(0.5, -0.2, 1.0)          # rank 0 over every item, item 1 chosen
    p1 = softmax(0.5, 1.0)                # rank 1 over items 0 and 2, item 2 chosen
    expected = [(p0[0] + p1[0]) / 2, (p0[1] - 1) / 2, (p0[2] + p1[1] - 1) / 2]
    assert s.grad[0].tolist() == pytest.approx(expected, abs=1e-12)


def test_anchor_and_temperature_enter_as_u_equals_s_minus_r_over_tau():
    s, r = t([1.0, 0.0, 2.0]), t([0.5, 0.2, 1.0])
    got = plackett_luce_loss(s, r, t(Y), 2.0).item()
    u = [(1.0 - 0.5) / 2, (0.0 - 0.2) / 2, (2.0 - 1.0) / 2]
    want = ((lse(u[1], u[2], u[0]) - u[1]) + (lse(u[2], u[0]) - u[2])) / 2
    assert got == pytest.approx(want, abs=1e-12)
    # control: another temperature gives another value
    assert plackett_luce_loss(s, r, t(Y), 1.0).item() != pytest.approx(want, abs=1e-6)


def test_ties_keep_the_list_order():
    # items 0 and 2 tie on the signal: item 0 (earlier) is ranked before item 2
    y = t([2.0, 3.0, 2.0])
    got = plackett_luce_loss(t(U), torch.zeros(1, 3, dtype=torch.float64), y, 1.0).item()
    want = ((lse(-0.2, 0.5, 1.0) + 0.2) + (lse(0.5, 1.0) - 0.5)) / 2
    assert got == pytest.approx(want, abs=1e-12)


def test_padding_is_ignored_and_a_short_list_counts_its_own_ranks():
    # the padded list equals the unpadded one, whatever sits in the padded slot
    s = t(U + [7.0], [0.3, 9.0, 9.0, 9.0]).requires_grad_()
    y = t(Y + [100.0], [1.0, 50.0, 50.0, 50.0])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    loss = plackett_luce_loss(s, torch.zeros_like(s), y, 1.0, mask)
    assert loss[0].item() == pytest.approx((L0 + L1) / 2, abs=1e-12)
    assert loss[1].item() == 0.0  # one candidate: nothing to rank
    loss.sum().backward()
    assert s.grad[0, 3].item() == 0.0 and s.grad[1].abs().sum().item() == 0.0


def test_top_k_counts_the_first_ranks_and_past_the_list_counts_all():
    zeros = torch.zeros(1, 3, dtype=torch.float64)
    assert plackett_luce_loss(t(U), zeros, t(Y), 1.0, top_k=1).item() == pytest.approx(L0, abs=1e-12)
    every = (L0 + L1) / 2
    for k in (2, 3, 10, None):
        assert plackett_luce_loss(t(U), zeros, t(Y), 1.0, top_k=k).item() == pytest.approx(every, abs=1e-12)
    assert plackett_luce_loss(t(U), zeros, t(Y), 1.0, top_k=0).item() == 0.0


def test_label_smoothing_mixes_each_rank_with_the_uniform_draw():
    eps = 0.1
    zeros = torch.zeros(1, 3, dtype=torch.float64)
    got = plackett_luce_loss(t(U), zeros, t(Y), 1.0, label_smoothing=eps).item()
    uni0 = lse(-0.2, 1.0, 0.5) - (-0.2 + 1.0 + 0.5) / 3
    uni1 = lse(1.0, 0.5) - (1.0 + 0.5) / 2
    want = ((1 - eps) * L0 + eps * uni0 + (1 - eps) * L1 + eps * uni1) / 2
    assert got == pytest.approx(want, abs=1e-12)


def test_poly_term_adds_epsilon_times_one_minus_the_rank_probability():
    zeros = torch.zeros(1, 3, dtype=torch.float64)
    s = t(U).requires_grad_()
    got = plackett_luce_loss(s, zeros, t(Y), 1.0, poly_epsilon=1.0)
    want = (L0 + 1 - math.exp(-L0) + L1 + 1 - math.exp(-L1)) / 2
    assert got.item() == pytest.approx(want, abs=1e-12)
    got.sum().backward()
    # d/du of l + (1 - e^-l) is (1 + e^-l) dl/du
    p0, p1 = softmax(0.5, -0.2, 1.0), softmax(0.5, 1.0)
    g0 = [p0[0], p0[1] - 1, p0[2]]
    g1 = [p1[0], 0.0, p1[1] - 1]
    a0, a1 = 1 + math.exp(-L0), 1 + math.exp(-L1)
    assert s.grad[0].tolist() == pytest.approx([(a0 * x + a1 * z) / 2 for x, z in zip(g0, g1, strict=True)], abs=1e-12)


def test_clamps_bound_the_log_ratio_and_the_score_and_stop_their_gradient():
    s = t([9.0, -0.2, 1.0]).requires_grad_()
    r = torch.zeros(1, 3, dtype=torch.float64)
    got = plackett_luce_loss(s, r, t(Y), 0.5, clip_log_ratio=5.0, clip_score=3.0)
    u = [min(5.0, 9.0) / 0.5, -0.2 / 0.5, 1.0 / 0.5]
    u = [max(-3.0, min(3.0, x)) for x in u]
    want = ((lse(u[1], u[2], u[0]) - u[1]) + (lse(u[2], u[0]) - u[2])) / 2
    assert got.item() == pytest.approx(want, abs=1e-12)
    got.sum().backward()
    assert s.grad[0, 0].item() == 0.0 and s.grad[0, 1].item() != 0.0


def test_adpo_loss_dispatches_and_refuses_knobs_of_other_losses():
    s, r, y = t(U), torch.zeros(1, 3, dtype=torch.float64), t(Y)
    got = adpo_loss(s, r, y, loss="plackett_luce", tau_anc=1.0, pl_top_k=1)
    assert got.item() == pytest.approx(L0, abs=1e-12)
    with pytest.raises(ValueError, match="plackett_luce"):
        adpo_loss(s, r, y, loss="listwise", label_smoothing=0.1)
    with pytest.raises(ValueError, match="top_k"):
        plackett_luce_loss(s, r, y, 1.0, top_k=-1)
    # the clamps also apply to the softmax listwise loss
    clamped = adpo_loss(t([9.0, 0.0, 0.0]), r, y, loss="listwise", tau_anc=1.0, clip_score=2.0)
    assert clamped.item() == pytest.approx(adpo_loss(t([2.0, 0.0, 0.0]), r, y, loss="listwise").item(), abs=1e-12)
