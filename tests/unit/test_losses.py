"""ADPO losses against hand-computed values, autograd against the closed-form gradient."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adpo_ray.core.losses import adpo_loss, dpo_loss, listwise_loss, pairwise_loss
from adpo_ray.core.targets import hard_pairwise_target, pairwise_target, softmax_target

pytestmark = pytest.mark.usefixtures("float64")


def test_listwise_hand_computed():
    s = torch.tensor([[0.0, math.log(2.0)]])
    r = torch.zeros(1, 2)
    q = torch.tensor([[0.25, 0.75]])
    # u = [0, log 2] -> softmax = [1/3, 2/3]; L = -(0.25 log 1/3 + 0.75 log 2/3)
    expected = -(0.25 * math.log(1 / 3) + 0.75 * math.log(2 / 3))
    assert listwise_loss(s, r, q, tau_anc=1.0).item() == pytest.approx(expected, abs=1e-12)
    # tau_anc = 0.5 doubles u: softmax([0, 2 log 2]) = [1/5, 4/5]
    expected_half = -(0.25 * math.log(1 / 5) + 0.75 * math.log(4 / 5))
    assert listwise_loss(s, r, q, tau_anc=0.5).item() == pytest.approx(expected_half, abs=1e-12)


def test_listwise_equals_kl_plus_entropy():
    torch.manual_seed(0)
    s, r = torch.randn(5, 6), torch.randn(5, 6)
    q = torch.softmax(torch.randn(5, 6), -1)
    p = torch.softmax((s - r) / 0.7, -1)
    kl = (q * (q.log() - p.log())).sum(-1)
    h = -(q * q.log()).sum(-1)
    torch.testing.assert_close(listwise_loss(s, r, q, 0.7), kl + h)


@pytest.mark.parametrize("tau", [1.0, 0.3, 2.5])
def test_listwise_gradient_is_p_minus_q_over_tau(tau):
    torch.manual_seed(1)
    s = torch.randn(4, 7, requires_grad=True)
    r = torch.randn(4, 7)
    q = torch.softmax(torch.randn(4, 7), -1)
    listwise_loss(s, r, q, tau).sum().backward()
    p = torch.softmax((s.detach() - r) / tau, -1)
    torch.testing.assert_close(s.grad, (p - q) / tau)


def test_zero_gradient_at_target():
    r = torch.randn(3, 5)
    s = (r + torch.randn(3, 5)).requires_grad_(True)
    q = torch.softmax((s.detach() - r) / 0.5, -1)
    listwise_loss(s, r, q, 0.5).sum().backward()
    assert s.grad.abs().max().item() < 1e-12


def test_anchor_gets_no_gradient():
    s = torch.randn(2, 4, requires_grad=True)
    r = torch.randn(2, 4, requires_grad=True)
    q = torch.softmax(torch.randn(2, 4), -1)
    listwise_loss(s, r, q, 1.0).sum().backward()
    assert r.grad is None


@settings(max_examples=50, deadline=None)
@given(
    c=st.floats(-1e3, 1e3),
    n=st.integers(2, 9),
    seed=st.integers(0, 10_000),
    tau=st.floats(0.05, 10.0),
)
def test_shift_invariance(c, n, seed, tau):
    g = torch.Generator().manual_seed(seed)
    s, r = torch.randn(3, n, generator=g), torch.randn(3, n, generator=g)
    q = torch.softmax(torch.randn(3, n, generator=g), -1)
    base = listwise_loss(s, r, q, tau)
    torch.testing.assert_close(listwise_loss(s + c, r, q, tau), base, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(listwise_loss(s, r + c, q, tau), base, atol=1e-8, rtol=1e-8)
    qp = pairwise_target(torch.randn(3, n, generator=g), 1.0)
    pbase = pairwise_loss(s, r, qp, 1 / tau)
    torch.testing.assert_close(pairwise_loss(s + c, r, qp, 1 / tau), pbase, atol=1e-8, rtol=1e-8)


def test_pairwise_hand_computed():
    s = torch.tensor([[1.0, 0.0]])
    r = torch.tensor([[0.5, 0.5]])
    q = torch.tensor([[[0.5, 0.8], [0.2, 0.5]]])
    beta = 2.0
    z = (1.0 - 0.0) - (0.5 - 0.5)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = -(0.8 * math.log(sig(beta * z)) + 0.2 * math.log(sig(-beta * z)))
    assert pairwise_loss(s, r, q, beta).item() == pytest.approx(expected, abs=1e-12)


def test_pairwise_hard_labels_equal_dpo_formula():
    torch.manual_seed(2)
    s, r, y = torch.randn(6, 4), torch.randn(6, 4), torch.randn(6, 4)
    beta = 0.7
    got = dpo_loss(s, r, y, beta)
    # DPO: for each pair, -log sigmoid(beta * [(s_w - r_w) - (s_l - r_l)]), averaged over pairs
    expected = torch.zeros(6)
    for b in range(6):
        terms = []
        for i in range(4):
            for j in range(i + 1, 4):
                win, lose = (i, j) if y[b, i] > y[b, j] else (j, i)
                margin = (s[b, win] - r[b, win]) - (s[b, lose] - r[b, lose])
                terms.append(-torch.nn.functional.logsigmoid(beta * margin))
        expected[b] = torch.stack(terms).mean()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(pairwise_loss(s, r, hard_pairwise_target(y), beta), expected)


def test_mask_equals_unpadded():
    torch.manual_seed(3)
    s, r, y = torch.randn(1, 5), torch.randn(1, 5), torch.randn(1, 5)
    pad = torch.randn(1, 3) * 100
    mask = torch.tensor([[True] * 5 + [False] * 3])
    sp, rp, yp = (torch.cat([t, pad], -1) for t in (s, r, y))
    for loss in ("listwise", "pairwise", "dpo"):
        for target in ("softmax", "kde", "hard"):
            a = adpo_loss(s, r, y, loss=loss, target=target, tau_anc=0.5, beta_q=0.3)
            b = adpo_loss(sp, rp, yp, loss=loss, target=target, tau_anc=0.5, beta_q=0.3, mask=mask)
            torch.testing.assert_close(a, b, msg=f"{loss}/{target}")


@pytest.mark.parametrize("loss", ["listwise", "pairwise", "dpo"])
@pytest.mark.parametrize("target", ["softmax", "kde", "hard"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stable_at_extremes(loss, target, dtype):
    y = torch.tensor([[1e6, -1e6, 0.0, 3.0], [1e-9, 0.0, -1e6, 1e6]], dtype=dtype)
    s = torch.tensor([[30.0, -30.0, 0.0, 1.0], [-50.0, 50.0, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    r = torch.zeros(2, 4, dtype=dtype)
    out = adpo_loss(s, r, y, loss=loss, target=target, tau_anc=1e-3, beta_q=1e-3)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(s.grad).all()


def test_softmax_target_invariant_to_shift():
    y = torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(softmax_target(y, 0.5), softmax_target(y + 1e5, 0.5))
