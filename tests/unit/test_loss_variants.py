"""The author's variants of the listwise loss (target z-normalisation per list, adaptive anchor
temperature, q-centring) against values computed by hand, with their gradients."""

import math

import pytest
import torch

from adpo_ray.core.losses import adaptive_tau, adpo_loss, listwise_loss, normalize_signal

pytestmark = pytest.mark.usefixtures("float64")

Y = [1.0, 2.0, 4.0]
S = [0.3, -0.1, 0.2]
R = [0.1, 0.1, -0.2]


def _hand(y, s, r, beta, tau, alpha=0.0, tau_min=0.05, norm=True):
    """The variant's loss and gradient with respect to ``s``, one list, in plain floats."""
    k = len(y)
    if norm:
        mean = sum(y) / k
        std = math.sqrt(sum((v - mean) ** 2 for v in y) / (k - 1))
        y = [(v - mean) / (std + 1e-8) for v in y]
    ez = [math.exp(v / beta) for v in y]
    q = [e / sum(ez) for e in ez]
    if alpha:
        h = -sum(p * math.log(p) for p in q)
        tau = max(tau_min, tau * (1 - alpha * h / math.log(k)))
    eu = [math.exp((a - b) / tau) for a, b in zip(s, r, strict=True)]
    p = [e / sum(eu) for e in eu]
    loss = -sum(qi * math.log(pi) for qi, pi in zip(q, p, strict=True))
    grad = [(pi - qi) / tau for qi, pi in zip(q, p, strict=True)]
    return loss, grad, y, tau


def _torch(y, s, r, **kw):
    st = torch.tensor([s], requires_grad=True)
    loss = adpo_loss(st, torch.tensor([r]), torch.tensor([y]), **kw)
    loss.sum().backward()
    return loss.item(), st.grad[0].tolist()


def test_normalize_signal_hand_computed():
    # mean 7/3, sample std sqrt(7/3): z = (y - 7/3) / sqrt(7/3)
    z = normalize_signal(torch.tensor([Y]))[0].tolist()
    std = math.sqrt(7 / 3)
    assert z == pytest.approx([(v - 7 / 3) / (std + 1e-8) for v in Y], abs=1e-12)
    # scale- and shift-free: 10 y + 3 gives the same z
    z2 = normalize_signal(torch.tensor([[10 * v + 3 for v in Y]]))[0].tolist()
    assert z2 == pytest.approx(z, abs=1e-8)


def test_normalize_signal_masks_and_degenerate_lists():
    y = torch.tensor([[1.0, 2.0, 4.0, 99.0], [5.0, 0.0, 0.0, 0.0], [3.0, 3.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [True, True, False, False]])
    z = normalize_signal(y, mask)
    assert z[0, :3].tolist() == pytest.approx(normalize_signal(y[:1, :3])[0].tolist(), abs=1e-12)
    assert z[0, 3] == 0 and z[1].tolist() == [0.0] * 4  # padding; one candidate: 0, not NaN
    assert z[2].tolist() == [0.0] * 4  # equal values: std 0, z 0
    assert torch.isfinite(z).all()


@pytest.mark.parametrize("beta,tau", [(0.5, 0.8), (2.0, 0.3)])
def test_target_norm_list_hand_computed(beta, tau):
    loss, grad, _, _ = _hand(Y, S, R, beta, tau)
    got, got_grad = _torch(Y, S, R, beta_q=beta, tau_anc=tau, target_norm="list")
    assert got == pytest.approx(loss, abs=1e-12)
    assert got_grad == pytest.approx(grad, abs=1e-12)
    # the raw signal gives another loss: the option does something
    raw, _ = _torch(Y, S, R, beta_q=beta, tau_anc=tau)
    assert abs(raw - got) > 1e-3


@pytest.mark.parametrize("alpha,tau_min", [(0.5, 0.05), (1.0, 0.3)])
def test_adaptive_tau_hand_computed(alpha, tau_min):
    loss, grad, _, tau = _hand(Y, S, R, beta=0.5, tau=0.8, alpha=alpha, tau_min=tau_min)
    got, got_grad = _torch(Y, S, R, beta_q=0.5, tau_anc=0.8, target_norm="list", tau_alpha=alpha, tau_min=tau_min)
    assert got == pytest.approx(loss, abs=1e-12)
    # no gradient through the temperature: dL/ds = (p - q) / tau at the list's own tau
    assert got_grad == pytest.approx(grad, abs=1e-12)
    assert tau < 0.8


def test_adaptive_tau_values_and_floor():
    q = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    mask = torch.tensor([[True] * 3, [True] * 3, [True, True, False]])
    tau = adaptive_tau(q, 0.8, 0.5, 0.05, mask)[:, 0].tolist()
    # uniform: H / log K = 1 -> 0.8 * 0.5; one-hot: H = 0 -> 0.8; two real of three, uniform: 1 -> 0.4
    assert tau == pytest.approx([0.4, 0.8, 0.4], abs=1e-12)
    floor = adaptive_tau(q[:1], 0.1, 1.0, 0.05)  # 0.1 * (1 - 1) = 0 -> the floor
    assert floor.item() == pytest.approx(0.05, abs=1e-12)
    one = adaptive_tau(torch.tensor([[1.0, 0.0]]), 0.8, 0.5, 0.05, torch.tensor([[True, False]]))
    assert one.item() == pytest.approx(0.8, abs=1e-12)  # one candidate: log K = 0, no change


def test_q_center_changes_nothing():
    """The author's q-centring subtracts a per-list constant from the logits, and log-softmax is
    shift-invariant: the same loss and gradient (to rounding), padded lists included."""
    torch.manual_seed(3)
    s, r, q = torch.randn(6, 5), torch.randn(6, 5), torch.softmax(torch.randn(6, 5), -1)
    mask = torch.rand(6, 5) > 0.3
    mask[:, 0] = True
    for m in (None, mask):
        a = s.clone().requires_grad_(True)
        b = s.clone().requires_grad_(True)
        la = listwise_loss(a, r, q, 0.7, m)
        lb = listwise_loss(b, r, q, 0.7, m, q_center=True)
        la.sum().backward()
        lb.sum().backward()
        torch.testing.assert_close(la, lb)
        torch.testing.assert_close(a.grad, b.grad)


def test_variants_with_padding_equal_unpadded_lists():
    y = torch.tensor([[1.0, 2.0, 4.0, 0.0]])
    s, r = torch.tensor([S + [5.0]]), torch.tensor([R + [0.0]])
    mask = torch.tensor([[True, True, True, False]])
    kw = dict(beta_q=0.5, tau_anc=0.8, target_norm="list", tau_alpha=0.5, tau_min=0.05, q_center=True)
    padded = adpo_loss(s, r, y, mask=mask, **kw).item()
    assert padded == pytest.approx(_hand(Y, S, R, 0.5, 0.8, alpha=0.5)[0], abs=1e-12)


def test_variants_rejected_where_they_do_not_apply():
    s = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="listwise"):
        adpo_loss(s, s, s, loss="pairwise", tau_alpha=0.5)
    with pytest.raises(ValueError, match="target_norm"):
        adpo_loss(s, s, s, target_norm="batch")
