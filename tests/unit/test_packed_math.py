"""A trial pack's learner math (adpo_ray/core/packed.py) against K solo updates done with plain
torch modules, torch.optim.Adam and clip_grad_norm_; each equality has a control beside it that
shows the comparison can fail."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from adpo_ray.core.anchors import polyak_
from adpo_ray.core.losses import adpo_loss
from adpo_ray.core.minibatches import minibatch_plan
from adpo_ray.core.packed import (
    Knobs,
    StackedActorCritic,
    StackedAdam,
    adpo_terms,
    clip_grad_norm_stacked_,
    member_values,
    polyak_stacked_,
    ppo_kl_terms,
    ppo_terms,
    stacked_update,
    tanh,
)

K, OBS, HIDDEN, ACT, N_ACTIONS = 3, 5, 8, 2, 4
#: the kinds whose policy is categorical (the rest: diagonal Gaussian)
DISCRETE = ("adpo_actions", "ppo_kl_discrete")


# -- the solo reference: plain torch, RLlib's module names ---------------------------------
def _mlp_module(*layers: nn.Module) -> nn.Module:
    m = nn.Module()
    m.net = nn.Module()
    m.net.mlp = nn.Sequential(*layers)
    return m


def _head(h: int, out: int) -> nn.Module:
    m = nn.Module()
    m.register_buffer("log_std_clip_param_const", torch.tensor([20.0]))
    m.net = nn.Module()
    m.net.mlp = nn.Sequential(nn.Linear(h, out))
    return m


class Solo(nn.Module):
    """One member as RLlib's DefaultPPOTorchRLModule lays it out (vf_share_layers=False)."""

    def __init__(self, gaussian: bool, seed: int, log_std_clip: float = 20.0):
        super().__init__()
        torch.manual_seed(seed)
        self.gaussian = gaussian
        self.encoder = nn.Module()
        self.encoder.actor_encoder = _mlp_module(nn.Linear(OBS, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh())
        self.encoder.critic_encoder = _mlp_module(nn.Linear(OBS, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh())
        self.pi = _head(HIDDEN, 2 * ACT if gaussian else N_ACTIONS)
        self.pi.log_std_clip_param_const.fill_(log_std_clip)
        self.vf = _head(HIDDEN, 1)

    def dist(self, obs):
        out = self.pi.net.mlp(self.encoder.actor_encoder.net.mlp(obs))
        if not self.gaussian:
            return out, torch.distributions.Categorical(logits=out)
        c = self.pi.log_std_clip_param_const
        mean, log_std = out.chunk(2, dim=-1)
        log_std = torch.clamp(log_std, -c, c)
        return torch.cat([mean, log_std], -1), torch.distributions.Normal(mean, log_std.exp())

    def value(self, obs):
        return self.vf.net.mlp(self.encoder.critic_encoder.net.mlp(obs)).squeeze(-1)


def solo_loss(model: Solo, kind: str, kn: dict, b: dict, list_size: int, adpo_kw: dict, kls=None):
    inputs, dist = model.dist(b["obs"])
    if model.gaussian:
        logp, entropy = dist.log_prob(b["actions"]).sum(-1), dist.entropy().sum(-1)
    else:
        logp, entropy = dist.log_prob(b["actions"]), dist.entropy()
    mask = b.get("loss_mask")
    mmean = (lambda x: x.mean()) if mask is None else (lambda x: x[mask].mean())
    if kind == "ppo":
        ratio = torch.exp(logp - b["action_logp"])
        adv, c = b["advantages"], kn["clip_param"]
        policy = mmean(-torch.min(adv * ratio, adv * torch.clamp(ratio, 1 - c, 1 + c)))
    elif kind.startswith("ppo_kl"):  # the unclipped surrogate plus beta * KL(behaviour || current)
        old = b["old_inputs"]
        if model.gaussian:
            mean, log_std = old.chunk(2, dim=-1)
            kl = torch.distributions.kl_divergence(torch.distributions.Normal(mean, log_std.exp()), dist).sum(-1)
        else:
            kl = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=old), dist)
        kl = mmean(kl)
        if kls is not None:
            kls.append(float(kl.detach()))
        policy = mmean(-b["advantages"] * torch.exp(logp - b["action_logp"])) + kn["kl_beta"] * kl
    elif kind == "adpo_actions":
        y = b["list_signal"] if mask is None else b["list_signal"] * mask[:, None]
        policy = mmean(adpo_loss(torch.log_softmax(inputs, -1), b["anchor_logp"], y, tau_anc=kn["tau_anc"],
                                 beta_q=kn["beta_q"], **adpo_kw))
    else:  # adpo, list_source: batch: the valid rows in order, in lists of list_size
        cols = torch.stack([logp, b["anchor_logp"], b["advantages"]], -1)
        if mask is not None:
            cols = cols[mask]
        n_lists = -(-len(cols) // list_size)
        lmask = torch.arange(n_lists * list_size) < len(cols)
        cols = torch.cat([cols, cols.new_zeros(n_lists * list_size - len(cols), 3)])
        s, r, y = cols.view(n_lists, list_size, 3).unbind(-1)
        policy = adpo_loss(s, r, y, tau_anc=kn["tau_anc"], beta_q=kn["beta_q"],
                           mask=lmask.view(n_lists, list_size), **adpo_kw).mean()
    if kn.get("anchor_kl_coeff"):  # coeff * KL(policy || anchor), torch's own KL of the two distributions
        anchor = b["anchor_inputs"]
        if model.gaussian:
            mean, log_std = anchor.chunk(2, dim=-1)
            kl = torch.distributions.kl_divergence(dist, torch.distributions.Normal(mean, log_std.exp())).sum(-1)
        else:
            kl = torch.distributions.kl_divergence(dist, torch.distributions.Categorical(logits=anchor))
        policy = policy + kn["anchor_kl_coeff"] * mmean(kl)
    vf = mmean(torch.clamp((model.value(b["obs"]) - b["value_targets"]) ** 2, 0, kn["vf_clip_param"]))
    return policy + kn["vf_loss_coeff"] * vf - kn["entropy_coeff"] * mmean(entropy)


def solo_update(model: Solo, opt, kind, kn, rows, plan, grad_clip, list_size, adpo_kw, kls=None):
    for idx in plan:
        b = {name: v[idx] for name, v in rows.items()}
        opt.zero_grad()
        solo_loss(model, kind, kn, b, list_size, adpo_kw, kls).backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()


# -- data -----------------------------------------------------------------------------------
KNOBS = dict(lr=[3e-3, 1e-2, 5e-3], beta_q=[0.5, 1.0, 2.0], tau_anc=[0.5, 1.0, 0.25], clip_param=[0.1, 0.2, 0.3],
             vf_clip_param=[10.0, 0.5, 3.0], vf_loss_coeff=[0.5, 1.0, 0.25], entropy_coeff=[0.0, 0.01, 0.003],
             grad_clip=[0.5, None, 2.0], kl_beta=[0.3, 1.0, 2.5], anchor_kl_coeff=[0.2, 0.0, 0.5])


def member_rows(seed: int, kind: str, gaussian: bool, n: int, with_mask: bool, dtype) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = {"obs": torch.randn(n, OBS, generator=g, dtype=dtype),
         "advantages": torch.randn(n, generator=g, dtype=dtype) * 2,
         "value_targets": torch.randn(n, generator=g, dtype=dtype) * 3,
         "action_logp": torch.randn(n, generator=g, dtype=dtype) - 2}
    r["actions"] = torch.randn(n, ACT, generator=g, dtype=dtype) if gaussian else torch.randint(0, N_ACTIONS, (n,), generator=g)
    if kind.startswith("ppo_kl"):  # the behaviour policy's distribution inputs
        r["old_inputs"] = 0.3 * torch.randn(n, 2 * ACT if gaussian else N_ACTIONS, generator=g, dtype=dtype)
    if kind == "adpo_actions":
        r["anchor_logp"] = torch.log_softmax(torch.randn(n, N_ACTIONS, generator=g, dtype=dtype), -1)
        r["list_signal"] = torch.randn(n, N_ACTIONS, generator=g, dtype=dtype)
    else:
        r["anchor_logp"] = r["action_logp"] + 0.1 * torch.randn(n, generator=g, dtype=dtype)
    if kind.startswith("adpo"):  # the anchor's distribution inputs (its KL penalty)
        r["anchor_inputs"] = 0.3 * torch.randn(n, 2 * ACT if gaussian else N_ACTIONS, generator=g, dtype=dtype)
    if with_mask:
        r["loss_mask"] = torch.rand(n, generator=g) > 0.2
    return r


def seeded_permute(seed: int):
    """Each member's own shuffles (its own seed)."""
    g = torch.Generator().manual_seed(seed)
    return lambda n: torch.randperm(n, generator=g)


def build(kind: str, dtype, lr=None, with_mask=False, n=48, minibatch=12, epochs=3):
    """K solo members (models, Adams, rows, plans) and their stacked twin."""
    gaussian = kind not in DISCRETE
    lr = KNOBS["lr"] if lr is None else lr
    solos = [Solo(gaussian, seed=10 + k, log_std_clip=[20.0, 0.5, 20.0][k]).to(dtype) for k in range(K)]
    rows = [member_rows(100 + k, kind, gaussian, n, with_mask, dtype) for k in range(K)]
    plans = [minibatch_plan(n, minibatch, epochs, permute=seeded_permute(7 + k)) for k in range(K)]
    net = StackedActorCritic.from_state_dicts([s.state_dict() for s in solos], "gaussian" if gaussian else "categorical")
    opt = StackedAdam(net.theta, lr)
    return solos, rows, plans, net, opt


def run_both(kind: str, dtype, stacked_lr=None, with_mask=False, adpo_kw=None, out=None, stacked_kl_beta=None,
             anchor_kl=False, stacked_anchor_kl=None):
    """K solo updates and the stacked one; ``out`` (a dict) gets the stacked update's ``terms``
    and, for ppo_kl, each solo's per-minibatch KLs (``solo_kls``); ``anchor_kl``: ADPO with
    each member's ``KNOBS["anchor_kl_coeff"]`` (``stacked_anchor_kl``: other values for the stacked
    update only)."""
    list_size = 4
    adpo_kw = adpo_kw or {}
    solos, rows, plans, net, opt = build(kind, dtype, lr=stacked_lr, with_mask=with_mask)
    adams = [torch.optim.Adam(s.parameters(), lr=KNOBS["lr"][k]) for k, s in enumerate(solos)]
    solo_kls = [[] for _ in range(K)]
    for k in range(K):
        kn = {name: v[k] for name, v in KNOBS.items() if anchor_kl or name != "anchor_kl_coeff"}
        solo_update(solos[k], adams[k], kind, kn, rows[k], plans[k], KNOBS["grad_clip"][k], list_size, adpo_kw,
                    solo_kls[k])
    knobs = Knobs.of(K, **{n: KNOBS[n] for n in ("vf_clip_param", "vf_loss_coeff", "entropy_coeff", "clip_param",
                                                  "tau_anc", "beta_q")},
                     kl_beta=KNOBS["kl_beta"] if stacked_kl_beta is None else stacked_kl_beta,
                     anchor_kl_coeff=(stacked_anchor_kl or KNOBS["anchor_kl_coeff"]) if anchor_kl else None,
                     list_size=list_size, adpo=adpo_kw, dtype=dtype)
    stacked = {name: torch.stack([r[name] for r in rows]) for name in rows[0]}
    clip = member_values("grad_clip", KNOBS["grad_clip"], K, off_is=math.inf, dtype=dtype)
    loss_fn = ppo_terms if kind == "ppo" else ppo_kl_terms if kind.startswith("ppo_kl") else adpo_terms
    terms, skipped = stacked_update(net, opt, loss_fn, knobs, stacked, torch.stack(plans), clip)
    assert skipped.tolist() == [0] * K
    if out is not None:
        out.update(terms=terms, solo_kls=solo_kls)
    return solos, adams, net, opt


def max_diff(solos, adams, net, opt) -> float:
    """The largest difference over every parameter, Adam moment and step count."""
    worst = 0.0
    for k, (solo, adam, sd) in enumerate(zip(solos, adams, net.state_dicts(), strict=True)):
        m, v = net.state_dicts(opt.exp_avg)[k], net.state_dicts(opt.exp_avg_sq)[k]
        assert list(sd) == list(solo.state_dict())
        for name, p in solo.named_parameters():
            st = adam.state[p]
            assert float(st["step"]) == float(opt.steps[k])
            for a, b in ((p, sd[name]), (st["exp_avg"], m[name]), (st["exp_avg_sq"], v[name])):
                worst = max(worst, float((a.detach() - b).abs().max()))
    return worst


CASES = [("ppo", {}), ("ppo_kl", {}), ("ppo_kl_discrete", {}), ("adpo_batch", {}), ("adpo_batch", {"loss": "pairwise", "target": "kde"}),
         ("adpo_actions", {}), ("adpo_actions", {"loss": "dpo"})]


@pytest.mark.parametrize("kind,adpo_kw", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_one_update_equals_k_solo_updates(kind, adpo_kw, dtype, tol):
    solos, adams, net, opt = run_both(kind, dtype, adpo_kw=adpo_kw)
    moved = max(float((s.pi.net.mlp[0].weight - Solo(kind not in DISCRETE, 10 + k).to(dtype).pi.net.mlp[0].weight).detach().abs().max())
                for k, s in enumerate(solos))
    assert moved > 1e-3  # the update did something to compare
    assert max_diff(solos, adams, net, opt) < tol


@pytest.mark.parametrize("kind", ["ppo", "ppo_kl", "adpo_batch", "adpo_actions"])
def test_one_update_with_a_loss_mask_equals_k_solo_updates(kind):
    assert max_diff(*run_both(kind, torch.float64, with_mask=True)) < 1e-10


def test_masked_rows_are_cut_from_the_work_not_from_the_means():
    """Rows that stand alone (no lists): each minibatch's valid rows go first and every minibatch
    is cut to the most valid rows any has, so masked rows (PPO's artificial last steps, half of a
    bandit batch) cost nothing; the update still equals K solo updates (the test above)."""
    _, rows, plans, net, opt = build("ppo", torch.float64, with_mask=True)
    stacked = {name: torch.stack([r[name] for r in rows]) for name in rows[0]}
    stacked["loss_mask"] = torch.rand(stacked["loss_mask"].shape, generator=torch.Generator().manual_seed(3)) > 0.5
    plans = torch.stack(plans)
    valid = stacked["loss_mask"].gather(1, plans.flatten(1)).view(plans.shape)
    most = int(valid.sum(2).max())
    assert most < plans.shape[2]  # some minibatch rows are masked: something to cut
    seen = []
    knobs = Knobs.of(K, **{n: KNOBS[n] for n in ("vf_clip_param", "vf_loss_coeff", "entropy_coeff", "clip_param")},
                     dtype=torch.float64)
    clip = member_values("grad_clip", KNOBS["grad_clip"], K, off_is=math.inf, dtype=torch.float64)
    stacked_update(net, opt, ppo_terms, knobs, stacked, plans, clip,
                   on_minibatch=lambda i, batch: seen.append((batch["loss_mask"], valid[:, i].sum(1))))
    assert len(seen) == plans.shape[1]
    for mask, count in seen:
        assert mask.shape == (K, most)
        for k in range(K):  # its valid rows first, all of them kept
            assert mask[k, :count[k]].all() and not mask[k, count[k]:].any()


@pytest.mark.parametrize("kind", ["ppo_kl", "ppo_kl_discrete"])
def test_ppo_kl_reports_each_members_mean_kl_over_its_minibatches(kind):
    """The fourth loss term of ppo_kl_terms is the masked mean KL(behaviour || current) per
    minibatch; the update's mean of it (what the learner adapts beta on) is each solo's."""
    out = {}
    run_both(kind, torch.float64, with_mask=True, out=out)
    got = out["terms"][:, 5].tolist()  # [total, grad norm, policy, vf, entropy, kl]
    want = [sum(kls) / len(kls) for kls in out["solo_kls"]]
    assert got == pytest.approx(want, rel=1e-10)
    assert min(want) > 1e-3 and len({round(w, 6) for w in want}) == K  # real, per-member KLs


@pytest.mark.parametrize("kind", ["adpo_actions", "adpo_batch"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_anchor_kl_penalty_with_each_members_coefficient_equals_k_solo_updates(kind, with_mask):
    """ADPO plus coeff * KL(policy || anchor) (categorical and diagonal Gaussian), member 1's
    coefficient 0: each member moves as its solo trial with its own coefficient."""
    assert max_diff(*run_both(kind, torch.float64, with_mask=with_mask, anchor_kl=True)) < 1e-10


def test_control_a_perturbed_anchor_kl_coeff_breaks_equality():
    coeff = list(KNOBS["anchor_kl_coeff"])
    coeff[1] = 0.01  # member 1's solo has none
    assert max_diff(*run_both("adpo_batch", torch.float64, anchor_kl=True, stacked_anchor_kl=coeff)) > 1e-6


def test_anchor_kl_coeff_knob_is_left_out_at_zero_and_checked():
    base = dict(vf_clip_param=1.0, vf_loss_coeff=1.0, entropy_coeff=0.0, tau_anc=1.0, beta_q=1.0)
    assert Knobs.of(K, **base, anchor_kl_coeff=[0.0, 0.0, 0.0]).anchor_kl_coeff is None  # no KL computed
    assert Knobs.of(K, **base, anchor_kl_coeff=[0.0, 0.3, 0.0]).anchor_kl_coeff.tolist() == pytest.approx([0, 0.3, 0])
    with pytest.raises(ValueError, match=r"anchor_kl_coeff: every member's value must be >= 0"):
        Knobs.of(K, **base, anchor_kl_coeff=[0.1, -0.1, 0.0])
    with pytest.raises(ValueError, match=r"anchor_kl_coeff: an ADPO knob"):
        Knobs.of(K, vf_clip_param=1.0, vf_loss_coeff=1.0, entropy_coeff=0.0, anchor_kl_coeff=0.1)


def test_control_a_perturbed_kl_beta_breaks_equality():
    beta = list(KNOBS["kl_beta"])
    beta[1] *= 1.01
    assert max_diff(*run_both("ppo_kl", torch.float64, stacked_kl_beta=beta)) > 1e-5


def test_control_a_perturbed_lr_breaks_equality():
    lr = list(KNOBS["lr"])
    lr[1] *= 1.01
    assert max_diff(*run_both("ppo", torch.float64, stacked_lr=lr)) > 1e-5


# -- the pieces -----------------------------------------------------------------------------
def test_state_dicts_round_trip_exactly_and_forward_is_the_solo_forward():
    solos = [Solo(True, seed=k, log_std_clip=[20.0, 0.1][k]) for k in range(2)]
    net = StackedActorCritic.from_state_dicts([s.state_dict() for s in solos], "gaussian")
    for solo, sd in zip(solos, net.state_dicts(), strict=True):
        assert list(sd) == list(solo.state_dict())
        assert all(torch.equal(sd[n], t) for n, t in solo.state_dict().items())
    obs = torch.randn(2, 7, OBS)
    inputs, values = net.policy(obs), net.value(obs)
    for k, solo in enumerate(solos):
        torch.testing.assert_close(inputs[k], solo.dist(obs[k])[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(values[k], solo.value(obs[k]), rtol=0, atol=1e-6)
    # control: member 1's clamp of its log std (0.1) is its own
    assert (inputs[1, :, ACT:].abs() <= 0.1).all() and (inputs[0, :, ACT:].abs() > 0.1).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tanh_is_torch_tanh_in_value_and_gradient(dtype):
    special = [0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, math.inf, -math.inf, math.nan]
    flat = torch.cat([torch.randn(4752, dtype=dtype) * 3, torch.tensor(special, dtype=dtype)])
    x = flat.reshape(9, 529).t()  # not contiguous
    got = tanh(x)
    assert got.dtype == dtype and got.shape == x.shape and got.grad_fn is None
    exact, ulp = torch.tanh(x.double()), torch.finfo(dtype).eps
    finite = exact.isfinite()
    assert ((got.double() - exact).abs()[finite] <= 2 * ulp * exact.abs()[finite].clamp_min(torch.finfo(dtype).tiny)).all()
    tail = got.t().reshape(-1)[-len(special):].tolist()
    assert tail[:2] == [0.0, 0.0] and math.copysign(1, tail[1]) == -1  # -0.0 stays -0.0
    assert tail[4:8] == [1.0, -1.0, 1.0, -1.0] and math.isnan(tail[8])
    # backward: torch's tanh backward, g * (1 - y^2), at the values it returned
    leaf = x.detach().clone().requires_grad_(True)
    weights = torch.randn_like(x)
    (grad,) = torch.autograd.grad((tanh(leaf) * weights).nan_to_num().sum(), leaf)
    assert torch.equal(grad.nan_to_num(), torch.ops.aten.tanh_backward(weights, got).nan_to_num())
    # control: the gradient through torch.tanh agrees to rounding, and is not the incoming gradient
    (torch_grad,) = torch.autograd.grad((torch.tanh(leaf) * weights).nan_to_num().sum(), leaf)
    torch.testing.assert_close(grad.nan_to_num(), torch_grad.nan_to_num(), rtol=4 * ulp, atol=4 * ulp)
    assert not torch.equal(grad.nan_to_num(), weights.nan_to_num())


def test_tanh_off_the_numpy_path_is_torch_tanh():
    half = torch.randn(4, 5, dtype=torch.bfloat16)
    assert torch.equal(tanh(half), torch.tanh(half))
    ints = torch.arange(-3, 4)
    assert torch.equal(tanh(ints), torch.tanh(ints))


def test_state_dicts_with_other_shapes_are_refused_by_name():
    a, b = Solo(True, 0).state_dict(), Solo(True, 1).state_dict()
    b["pi.net.mlp.0.weight"] = torch.zeros(3, HIDDEN)
    with pytest.raises(ValueError, match=r"state_dicts\[1\]\['pi.net.mlp.0.weight'\]"):
        StackedActorCritic.from_state_dicts([a, b], "gaussian")
    with pytest.raises(ValueError, match="action_dist='beta'; allowed: gaussian, categorical"):
        StackedActorCritic.from_state_dicts([a], "beta")


def test_layout_is_rllibs_default_ppo_module():
    """The real DefaultPPOTorchRLModule (ADPO's, anchor entries included) converts exactly and its
    forward pass, values and action distribution are the stacked ones."""
    import gymnasium as gym
    import numpy as np
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from adpo_ray.rllib._ray_private import forward_train
    from adpo_ray.rllib.factory import model_config
    from adpo_ray.rllib.module import ADPOTorchRLModule

    for space, dist in ((gym.spaces.Box(-1, 1, (ACT,), np.float32), "gaussian"), (gym.spaces.Discrete(N_ACTIONS), "categorical")):
        modules = []
        for seed in range(2):
            torch.manual_seed(seed)
            m = RLModuleSpec(module_class=ADPOTorchRLModule, observation_space=gym.spaces.Box(-1, 1, (OBS,), np.float32),
                             action_space=space, model_config=model_config(HIDDEN)).build()
            m.make_target_networks()
            modules.append(m)
        sds = [m.state_dict() for m in modules]
        net = StackedActorCritic.from_state_dicts(sds, dist)
        for sd, back in zip(sds, net.state_dicts(), strict=True):
            assert list(back) == [n for n in sd if not n.startswith("_anchor")]
            assert all(torch.equal(back[n], sd[n]) for n in back)
        obs = torch.randn(2, 9, OBS)
        inputs, values = net.policy(obs), net.value(obs)
        for k, m in enumerate(modules):
            fwd = forward_train(m, {Columns.OBS: obs[k]})
            torch.testing.assert_close(inputs[k], fwd[Columns.ACTION_DIST_INPUTS], rtol=0, atol=1e-6)
            torch.testing.assert_close(values[k], m.compute_values({Columns.OBS: obs[k]}), rtol=0, atol=1e-6)
            rl_dist = m.get_train_action_dist_cls().from_logits(inputs[k])
            actions = rl_dist.sample()
            logp, entropy = net.logp_entropy(inputs[k:k + 1], actions[None])
            torch.testing.assert_close(logp[0], rl_dist.logp(actions), rtol=0, atol=1e-5)
            torch.testing.assert_close(entropy[0], rl_dist.entropy(), rtol=0, atol=1e-5)
        assert not torch.allclose(inputs[0], inputs[1])  # control: the members differ


def test_per_member_clip_is_clip_grad_norm_on_each_member():
    g = torch.Generator().manual_seed(0)
    models = [nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)) for _ in range(K)]
    for m in models:
        for p in m.parameters():
            p.grad = torch.randn(p.shape, generator=g)
    flat = torch.stack([torch.cat([p.grad.reshape(-1) for p in m.parameters()]) for m in models])
    clips = [0.5, 0, 100.0]  # member 1: off
    norms = clip_grad_norm_stacked_(flat, member_values("grad_clip", clips, K, off_is=math.inf))
    for k, m in enumerate(models):
        before = torch.nn.utils.clip_grad_norm_(m.parameters(), clips[k] or math.inf)
        assert abs(float(before) - float(norms[k])) < 1e-5
        torch.testing.assert_close(flat[k], torch.cat([p.grad.reshape(-1) for p in m.parameters()]), rtol=0, atol=1e-7)
    # control: one clip for all would differ from member 2's own (it was not clipped)
    assert float(torch.linalg.vector_norm(flat[2])) > 0.5
    with pytest.raises(ValueError, match=r"grad_clip: every member's value must be > 0 \(0 or None: off\)"):
        member_values("grad_clip", [0.5, -1.0, 1.0], K, off_is=math.inf)


@pytest.mark.parametrize("variant", [dict(), dict(weight_decay=[0.0, 0.1, 0.01]),
                                     dict(weight_decay=[0.0, 0.1, 0.01], decoupled=True)])
def test_stacked_adam_is_k_torch_adams_from_different_steps(variant):
    torch.manual_seed(0)
    lrs, starts = [1e-3, 3e-2, 1e-2], [0, 3, 7]
    params = [torch.randn(20, requires_grad=True) for _ in range(K)]
    cls = torch.optim.AdamW if variant.get("decoupled") else torch.optim.Adam
    wd = variant.get("weight_decay", [0.0] * K)
    adams = [cls([p], lr=lrs[k], weight_decay=wd[k]) for k, p in enumerate(params)]
    for k, (p, adam) in enumerate(zip(params, adams, strict=True)):
        for _ in range(starts[k]):
            p.grad = torch.randn(20)
            adam.step()
    theta = torch.stack([p.detach().clone() for p in params])
    opt = StackedAdam(theta, lrs, weight_decay=wd, decoupled=variant.get("decoupled", False))
    unloaded = StackedAdam(theta.clone(), lrs, weight_decay=wd, decoupled=variant.get("decoupled", False))
    for k, p in enumerate(params):
        if starts[k]:
            st = adams[k].state[p]
            opt.load_member(k, st["exp_avg"], st["exp_avg_sq"], int(st["step"]))
    for _ in range(5):
        grads = torch.randn(K, 20)
        for k, (p, adam) in enumerate(zip(params, adams, strict=True)):
            p.grad = grads[k].clone()
            adam.step()
        opt.step(grads.clone())  # step works in its gradient's storage
        unloaded.step(grads.clone())
    for k, p in enumerate(params):
        torch.testing.assert_close(theta[k], p.detach(), rtol=0, atol=1e-6)
        torch.testing.assert_close(opt.exp_avg_sq[k], adams[k].state[p]["exp_avg_sq"], rtol=0, atol=1e-6)
        assert float(opt.steps[k]) == float(adams[k].state[p]["step"]) == starts[k] + 5
    # control: without member 2's seven earlier steps its update differs
    assert float((unloaded.theta[2] - params[2].detach()).abs().max()) > 1e-4


def test_polyak_stacked_is_polyak_on_each_member():
    g = torch.Generator().manual_seed(0)
    anchor = [torch.randn(K, 4, 3, generator=g), torch.randn(K, 1, 3, generator=g)]
    policy = [torch.randn(K, 4, 3, generator=g), torch.randn(K, 1, 3, generator=g)]
    rates = [0.0, 0.3, 1.0]
    solo = [[a[k].clone() for a in anchor] for k in range(K)]
    for k in range(K):
        polyak_(solo[k], [p[k] for p in policy], rates[k])
    polyak_stacked_(anchor, policy, torch.tensor(rates))
    for k in range(K):
        assert all(torch.equal(anchor[i][k], solo[k][i]) for i in range(2))
    assert not torch.equal(anchor[0][1], policy[0][1]) and torch.equal(anchor[0][2], policy[0][2])  # control


def test_anchor_of_the_stacked_net_refreshes_per_member():
    net = StackedActorCritic.from_state_dicts([Solo(True, seed=k).state_dict() for k in range(K)], "gaussian")
    anchor = net.anchor()
    obs = torch.randn(K, 6, OBS)
    with torch.no_grad():
        net.theta.add_(0.1)  # the policy moves on
        polyak_stacked_([anchor], [net.theta[:, :net.policy_size]], torch.tensor([0.0, 0.5, 1.0]))
        now, before = net.policy(obs), net.policy(obs, theta=anchor)
    assert torch.equal(before[2], now[2])  # hard copy
    assert not torch.allclose(before[0], now[0], atol=1e-3)  # kept: still the old policy
    torch.testing.assert_close(anchor[1], net.theta[1, :net.policy_size] - 0.05, rtol=0, atol=1e-6)  # half way


@pytest.mark.parametrize("loss,target", [("listwise", "softmax"), ("listwise", "kde"), ("listwise", "hard"),
                                         ("pairwise", "softmax"), ("pairwise", "kde"), ("dpo", "softmax")])
def test_adpo_loss_takes_per_member_knobs_unchanged(loss, target):
    """``tau_anc`` / ``beta_q`` as (K, 1, 1) tensors give each member's loss with its own numbers."""
    g = torch.Generator().manual_seed(0)
    s, r, y = (torch.randn(K, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(K, 5, 4, generator=g) > 0.2
    tau, beta = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64), torch.tensor([0.3, 1.0, 3.0], dtype=torch.float64)
    got = adpo_loss(s, r, y, loss=loss, target=target, tau_anc=tau.view(K, 1, 1), beta_q=beta.view(K, 1, 1), mask=mask)
    for k in range(K):
        want = adpo_loss(s[k], r[k], y[k], loss=loss, target=target, tau_anc=float(tau[k]), beta_q=float(beta[k]),
                         mask=mask[k])
        torch.testing.assert_close(got[k], want, rtol=0, atol=1e-12)
    if target != "hard" or loss != "listwise":  # control: member 0 with member 1's numbers differs
        other = adpo_loss(s[0], r[0], y[0], loss=loss, target=target, tau_anc=1.0, beta_q=1.0, mask=mask[0])
        assert float((got[0] - other).abs().max()) > 1e-3


# -- member independence ----------------------------------------------------------------------
def _pack_update(rows, plans, net, opt):
    knobs = Knobs.of(K, **{n: KNOBS[n] for n in ("vf_clip_param", "vf_loss_coeff", "entropy_coeff", "clip_param")})
    clip = member_values("grad_clip", KNOBS["grad_clip"], K, off_is=math.inf)
    return stacked_update(net, opt, ppo_terms, knobs, rows, plans, clip)


def test_a_nan_in_one_member_leaves_the_others_exact_and_skips_its_steps():
    _, rows, plans, net, opt = build("ppo", torch.float32)
    stacked = {name: torch.stack([r[name] for r in rows]) for name in rows[0]}
    plans = torch.stack(plans)
    clean_net = StackedActorCritic.from_state_dicts(net.state_dicts(), "gaussian")
    clean_opt = StackedAdam(clean_net.theta, KNOBS["lr"])
    start = net.theta.clone()
    bad = {n: v.clone() for n, v in stacked.items()}
    bad["advantages"][1, 5] = math.nan  # one row of member 1
    _, skipped = _pack_update(bad, plans, net, opt)
    _pack_update(stacked, plans, clean_net, clean_opt)
    hits = int((plans[1] == 5).any(dim=1).sum())
    assert 0 < hits < plans.shape[1]
    assert skipped.tolist() == [0, hits, 0]  # flagged: the minibatches holding the NaN row
    for k in (0, 2):  # the others: bit for bit as without the NaN
        assert torch.equal(net.theta[k], clean_net.theta[k])
        assert torch.equal(opt.exp_avg_sq[k], clean_opt.exp_avg_sq[k])
    assert torch.isfinite(net.theta[1]).all() and float(opt.steps[1]) == plans.shape[1] - hits
    assert not torch.equal(net.theta[1], start[1])  # its clean minibatches still trained it


def test_a_member_with_nan_everywhere_does_not_move():
    _, rows, plans, net, opt = build("ppo", torch.float32)
    stacked = {name: torch.stack([r[name] for r in rows]) for name in rows[0]}
    stacked["obs"][2] = math.nan
    start = net.theta.clone()
    _, skipped = _pack_update(stacked, torch.stack(plans), net, opt)
    assert skipped.tolist() == [0, 0, len(plans[0])]
    assert torch.equal(net.theta[2], start[2]) and not opt.exp_avg[2].any() and float(opt.steps[2]) == 0
    assert not torch.equal(net.theta[0], start[0])  # control: the others trained


@pytest.mark.parametrize("with_mask", [False, True])
def test_a_member_with_no_minibatches_is_frozen_and_the_others_are_exact(with_mask):
    """A count of 0 minibatches (a pack member past its budget): no step, its parameters and Adam
    state bit for bit as before, zeros in its means; the others as in an update without it frozen."""
    _, rows, plans, net, opt = build("ppo", torch.float32, with_mask=with_mask)
    stacked = {name: torch.stack([r[name] for r in rows]) for name in rows[0]}
    plans = torch.stack(plans)
    live_net = StackedActorCritic.from_state_dicts(net.state_dicts(), "gaussian")
    live_opt = StackedAdam(live_net.theta, KNOBS["lr"])
    start = net.theta.clone()
    knobs = Knobs.of(K, **{n: KNOBS[n] for n in ("vf_clip_param", "vf_loss_coeff", "entropy_coeff", "clip_param")})
    clip = member_values("grad_clip", KNOBS["grad_clip"], K, off_is=math.inf)
    m = plans.shape[1]
    means, skipped = stacked_update(net, opt, ppo_terms, knobs, stacked, plans, clip,
                                    num_minibatches=torch.tensor([m, 0, m]))
    want, _ = stacked_update(live_net, live_opt, ppo_terms, knobs, stacked, plans, clip)
    assert torch.equal(net.theta[1], start[1]) and float(opt.steps[1]) == 0 and not opt.exp_avg[1].any()
    assert skipped.tolist() == [0, 0, 0] and not means[1].any()
    for k in (0, 2):
        assert torch.equal(net.theta[k], live_net.theta[k]) and torch.equal(opt.exp_avg_sq[k], live_opt.exp_avg_sq[k])
        assert torch.equal(means[k], want[k])
    with pytest.raises(ValueError, match=r"num_minibatches: need K=3 counts in 0\.\.\d+, got \[-1, 1, 1\]"):
        stacked_update(net, opt, ppo_terms, knobs, stacked, plans, clip, num_minibatches=torch.tensor([-1, 1, 1]))


def test_bad_knobs_are_refused_by_name_before_any_step():
    with pytest.raises(ValueError, match=r"tau_anc: every member's value must be > 0"):
        Knobs.of(K, vf_clip_param=1.0, vf_loss_coeff=1.0, entropy_coeff=0.0, tau_anc=[1.0, 0.0, 1.0], beta_q=1.0)
    with pytest.raises(ValueError, match=r"lr: need one value per member \(3\), got 2"):
        StackedAdam(torch.zeros(K, 4), [1e-3, 1e-3])
    with pytest.raises(ValueError, match=r"kl_beta: every member's value must be > 0"):
        Knobs.of(K, vf_clip_param=1.0, vf_loss_coeff=1.0, entropy_coeff=0.0, kl_beta=[0.5, -1.0, 1.0])
    _, rows, plans, net, opt = build("adpo_batch", torch.float32)
    stacked = {name: torch.stack([r[name] for r in rows]) for name in rows[0]}
    knobs = Knobs.of(K, vf_clip_param=1.0, vf_loss_coeff=1.0, entropy_coeff=0.0, tau_anc=1.0, beta_q=1.0, list_size=5)
    start = net.theta.clone()
    with pytest.raises(ValueError, match=r"knobs.list_size=5: list_source: batch needs lists that tile the minibatch \(12 rows\)"):
        stacked_update(net, opt, adpo_terms, knobs, stacked, torch.stack(plans), torch.full((K,), math.inf))
    assert torch.equal(net.theta, start)
