"""The fused learner update is RLlib's update, numerically: with the same seed and the same
shuffles, two updates of ADPO (listwise and pairwise, action and batch lists, DPO) and of the PPO
baseline give the same parameters (policy, value and anchor) to within 1e-5, and the same KL to
the anchor. Real RLlib learners on real sampled episodes."""

import copy

import numpy as np
import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

from adpo_ray.core.kl_penalty import adapt_kl_beta
from adpo_ray.metrics import ANCHOR_KL, PPO_KL_BETA, curate
from adpo_ray.rllib._ray_private import local_learner
from adpo_ray.rllib.factory import build_algo_config
from adpo_ray.spec import TrialSpec, parse_spec

pytestmark = pytest.mark.slow

BATCH, EPOCHS, MINIBATCH = 512, 3, 64


def build(env, algorithm, mode, path, shuffle="rllib", compile=False, minibatch_size=MINIBATCH, hidden=32,
          ppo_kl=None, train=None, **adpo):
    spec = parse_spec({
        "name": "fused", "environments": [env], "algorithms": [algorithm], "budget": {"iterations": 1},
        "train": {"train_batch_size": BATCH, "num_epochs": EPOCHS, "minibatch_size": minibatch_size, **(train or {})},
        "adpo": adpo, "ppo_kl": ppo_kl or {},
        "anchors": {"modes": [mode] if algorithm == "adpo" else ["dynamic"],
                    "params": {"kl_triggered": {"threshold": 1e-4, "window": 1}}},
        "resources": {"num_envs_per_env_runner": 2, "learner_update": path, "learner_compile": compile},
    })
    config = build_algo_config(spec.knobs(TrialSpec(env, "clean", algorithm, mode, hidden, 0)))
    config.evaluation(evaluation_interval=None)
    config.training(fused_shuffle=shuffle)
    return config.build_algo()


def update(algo, episodes, seed):
    np.random.seed(seed)
    torch.manual_seed(seed)
    results = algo.learner_group.update(
        episodes=copy.deepcopy(episodes), timesteps={NUM_ENV_STEPS_SAMPLED_LIFETIME: BATCH},
        num_epochs=EPOCHS, minibatch_size=algo.config.minibatch_size, shuffle_batch_per_epoch=True,
    )
    return results[0][DEFAULT_MODULE_ID]


def state(algo):
    return {k: v.detach().clone() for k, v in local_learner(algo.learner_group).module[DEFAULT_MODULE_ID].state_dict().items()}


CASES = [
    ("HalfCheetah-v5", "adpo", "dynamic", {"loss": "listwise"}),
    ("Hopper-v5", "adpo", "kl_triggered", {"loss": "pairwise", "list_size": 4}),
    ("Hopper-v5", "adpo", "fixed", {"loss": "listwise", "target": "kde", "minibatch_size": 60, "list_size": 8}),
    ("PreferenceBandit", "adpo", "ema", {"loss": "listwise"}),
    ("PreferenceBandit", "adpo", "dynamic", {"loss": "pairwise"}),
    ("PreferenceBandit", "dpo", "fixed", {}),
    ("Hopper-v5", "ppo", "none", {}),
    ("PreferenceBandit", "ppo", "none", {}),
    ("Hopper-v5", "ppo_kl", "none", {}),
    ("PreferenceBandit", "ppo_kl", "none", {}),
]


@pytest.mark.parametrize("env,algorithm,mode,adpo", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[3].get('loss', '')}" for c in CASES])
def test_fused_update_equals_rllibs(ray_local, env, algorithm, mode, adpo):
    stock, fused = build(env, algorithm, mode, "rllib", **adpo), build(env, algorithm, mode, "fused", **adpo)
    try:
        learner = local_learner(fused.learner_group)
        assert learner.fused_applies() and not local_learner(stock.learner_group).fused_applies()
        assert learner.get_optimizers_for_module(DEFAULT_MODULE_ID)[0][1].param_groups[0]["fused"]
        start = state(stock)
        assert all(torch.equal(start[k], v) for k, v in state(fused).items())  # same seed, same init
        episodes = stock.env_runner.sample(num_timesteps=BATCH, explore=True)
        for seed in (1, 2):  # two updates: the anchor refresh and the optimizer state carry over
            r_stock, r_fused = update(stock, episodes, seed), update(fused, episodes, seed)
        a, b = state(stock), state(fused)
        moved = max(float((a[k] - start[k]).abs().max()) for k in a)
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert moved > 1e-3, "the updates must change the parameters for the comparison to mean anything"
        assert diff < 1e-5, f"fused and RLlib's update differ by {diff} (parameters moved {moved})"
        if algorithm in ("adpo", "dpo"):
            kl_stock, kl_fused = r_stock[ANCHOR_KL].peek(), r_fused[ANCHOR_KL].peek()
            assert kl_fused == pytest.approx(kl_stock, rel=1e-4, abs=1e-9)
        if algorithm == "ppo_kl":  # beta followed the same update means on both paths
            beta_stock, beta_fused = local_learner(stock.learner_group).kl_beta(DEFAULT_MODULE_ID), \
                local_learner(fused.learner_group).kl_beta(DEFAULT_MODULE_ID)
            assert beta_fused == beta_stock and beta_fused != 1.0
    finally:
        stock.stop()
        fused.stop()


def test_compiled_fused_update_equals_rllibs(ray_local):
    """``resources.learner_compile``: the same update with the minibatch loss compiled."""
    stock = build("HalfCheetah-v5", "adpo", "dynamic", "rllib")
    fused = build("HalfCheetah-v5", "adpo", "dynamic", "fused", compile=True)
    try:
        assert local_learner(fused.learner_group)._fused_loss_fn is not local_learner(fused.learner_group).fused_loss
        episodes = stock.env_runner.sample(num_timesteps=BATCH, explore=True)
        for seed in (1, 2):
            r_stock, r_fused = update(stock, episodes, seed), update(fused, episodes, seed)
        a, b = state(stock), state(fused)
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
        assert r_fused[ANCHOR_KL].peek() == pytest.approx(r_stock[ANCHOR_KL].peek(), rel=1e-4)
    finally:
        stock.stop()
        fused.stop()


def test_device_shuffles_are_different_minibatches(ray_local):
    """The control: the comparison above can fail. With permutations drawn on the device (the
    default), the minibatches, and so the parameters, differ from RLlib's."""
    stock = build("Hopper-v5", "ppo", "none", "rllib")
    fused = build("Hopper-v5", "ppo", "none", "fused", shuffle="device")
    try:
        episodes = stock.env_runner.sample(num_timesteps=BATCH, explore=True)
        update(stock, episodes, 1)
        update(fused, episodes, 1)
        a, b = state(stock), state(fused)
        assert max(float((a[k] - b[k]).abs().max()) for k in a) > 1e-4
    finally:
        stock.stop()
        fused.stop()


def test_fused_path_trains_and_logs_what_rllib_logs(ray_local):
    """A whole training iteration on the fused path reports the same learner metrics (names) as
    RLlib's path, with the step counters counting the same rows."""
    stock, fused = build("Hopper-v5", "adpo", "dynamic", "rllib"), build("Hopper-v5", "adpo", "dynamic", "fused")
    try:
        r_stock, r_fused = stock.train()["learners"], fused.train()["learners"]
        for part in (DEFAULT_MODULE_ID, "__all_modules__"):
            missing = set(r_stock[part]) - set(r_fused[part])
            assert not missing, f"{part}: the fused path does not log {sorted(missing)}"
        for key in ("num_module_steps_trained", "num_module_steps_trained_lifetime"):
            assert r_fused[DEFAULT_MODULE_ID][key] == r_stock[DEFAULT_MODULE_ID][key]
    finally:
        stock.stop()
        fused.stop()


# -- ppo_kl: the KL-penalty policy gradient ----------------------------------------------------
def _hand_minibatch(module, env, n=6, seed=0):
    """A minibatch of ``n`` rows (the last one masked out) with an old policy far from the
    current one (ratios well outside PPO's [0.8, 1.2]), and the current policy's outputs."""
    g = torch.Generator().manual_seed(seed)
    obs_dim = 8 if env == "PreferenceBandit" else 11
    obs = torch.randn(n, obs_dim, generator=g)
    with torch.no_grad():
        z = module.forward_train({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
        v = module.compute_values({Columns.OBS: obs})
    old = z + torch.randn(z.shape, generator=g)
    if env == "PreferenceBandit":
        actions = torch.randint(0, z.shape[1], (n,), generator=g)
        old_logp = torch.log_softmax(old, -1).gather(1, actions[:, None])[:, 0]
    else:
        mu, ls = old.chunk(2, -1)
        actions = mu + ls.exp() * torch.randn(mu.shape, generator=g)
        old_logp = _gauss_logp(actions, mu, ls)
    mask = torch.ones(n, dtype=torch.bool)
    mask[-1] = False
    batch = {Columns.OBS: obs, Columns.ACTIONS: actions, Columns.ACTION_LOGP: old_logp,
             Columns.ACTION_DIST_INPUTS: old, Columns.ADVANTAGES: torch.randn(n, generator=g),
             Columns.VALUE_TARGETS: v + torch.randn(n, generator=g), Columns.LOSS_MASK: mask}
    return batch, z, v


def _gauss_logp(a, mu, ls):
    return (-0.5 * ((a - mu) / ls.exp()) ** 2 - ls - 0.5 * np.log(2 * np.pi)).sum(-1)


def _by_hand(env, batch, z, v, beta, c_vf, c_ent, vf_clip, clip=None):
    """The per-row loss and its gradient on the policy's outputs ``z``, in closed form: ratio
    r = pi/pi_old on the taken action, KL(pi_old || pi) exact; the loss is the masked mean of
    ``-r A + beta KL + c_vf min((V - V_t)^2, vf_clip) - c_ent H`` (``clip``: PPO's surrogate)."""
    a, adv, old = batch[Columns.ACTIONS], batch[Columns.ADVANTAGES], batch[Columns.ACTION_DIST_INPUTS]
    if env == "PreferenceBandit":
        p, p_old = torch.softmax(z, -1), torch.softmax(old, -1)
        logp = torch.log_softmax(z, -1)
        r = p.gather(1, a[:, None])[:, 0] / p_old.gather(1, a[:, None])[:, 0]
        kl = (p_old * (torch.log_softmax(old, -1) - logp)).sum(-1)
        ent = -(p * logp).sum(-1)
        onehot = torch.nn.functional.one_hot(a, z.shape[1]).float()
        d_logp = onehot - p                                  # d log pi(a) / dz
        d_kl = p - p_old                                     # d KL(old || new) / dz
        d_ent = -p * (logp + ent[:, None])                   # d H / dz
    else:
        mu, ls = z.chunk(2, -1)
        mu_o, ls_o = old.chunk(2, -1)
        s2, s2_o = (2 * ls).exp(), (2 * ls_o).exp()
        r = torch.exp(_gauss_logp(a, mu, ls) - batch[Columns.ACTION_LOGP])
        kl = (ls - ls_o + (s2_o + (mu_o - mu) ** 2) / (2 * s2) - 0.5).sum(-1)
        ent = (0.5 + 0.5 * np.log(2 * np.pi) + ls).sum(-1)
        d_logp = torch.cat([(a - mu) / s2, (a - mu) ** 2 / s2 - 1], -1)
        d_kl = torch.cat([(mu - mu_o) / s2, 1 - (s2_o + (mu_o - mu) ** 2) / s2], -1)
        d_ent = torch.cat([torch.zeros_like(mu), torch.ones_like(ls)], -1)
    m = batch[Columns.LOSS_MASK].float()
    surrogate = r * adv if clip is None else torch.min(r * adv, torch.clamp(r, 1 - clip, 1 + clip) * adv)
    vf = torch.clamp((v - batch[Columns.VALUE_TARGETS]) ** 2, 0, vf_clip)
    per_row = -surrogate + beta * kl + c_vf * vf - c_ent * ent
    loss = (per_row * m).sum() / m.sum()
    grad = ((-(adv * r)[:, None] * d_logp + beta * d_kl - c_ent * d_ent) * m[:, None]).sum(0) / m.sum()
    return float(loss), grad


def _head_bias(module):
    """The bias of the policy head's output layer: its gradient is the sum over rows of the
    loss's gradient on the policy's outputs."""
    return [m for m in module.pi.modules() if isinstance(m, torch.nn.Linear)][-1].bias


@pytest.mark.parametrize("env", ["PreferenceBandit", "Hopper-v5"])
def test_ppo_kl_minibatch_loss_and_gradient_by_hand(ray_local, env):
    """The per-minibatch loss of ``ppo_kl`` and its gradient on the policy's outputs, on a tiny
    categorical (the bandit) and Gaussian (Hopper) case, equal the closed forms; clipped PPO on
    the same minibatch is another value (the control: the hand values tell clipping apart)."""
    algo = build(env, "ppo_kl", "none", "fused", hidden=8, ppo_kl={"kl_beta": 0.7},
                 train={"entropy_coeff": 0.03, "vf_coeff": 0.4})
    ppo = build(env, "ppo", "none", "fused", hidden=8, train={"entropy_coeff": 0.03, "vf_coeff": 0.4})
    try:
        learner = local_learner(algo.learner_group)
        module = learner.module[DEFAULT_MODULE_ID].unwrapped()
        config = learner.config.get_config_for_module(DEFAULT_MODULE_ID)
        assert learner.kl_beta(DEFAULT_MODULE_ID) == pytest.approx(0.7)  # a float32 tensor
        batch, z, v = _hand_minibatch(module, env)
        args = (0.7, 0.4, 0.03, config.vf_clip_param)
        loss_hand, grad_hand = _by_hand(env, batch, z, v, *args)
        module.zero_grad()
        total, stats, _ = learner.fused_loss(DEFAULT_MODULE_ID, config, batch)
        total.backward()
        assert total.item() == pytest.approx(loss_hand, rel=1e-5, abs=1e-6)
        torch.testing.assert_close(_head_bias(module).grad, grad_hand, rtol=1e-4, atol=1e-6)
        kl = dict(zip(learner.fused_terms, stats.tolist(), strict=True))["kl"]
        assert kl > 0.05  # the old policy is far: the penalty term matters
        # the control: PPO's clipped loss on its own outputs is the clipped hand value, not the unclipped one
        p_learner = local_learner(ppo.learner_group)
        p_module = p_learner.module[DEFAULT_MODULE_ID].unwrapped()
        p_batch, p_z, p_v = _hand_minibatch(p_module, env)
        p_total = p_learner.fused_loss(DEFAULT_MODULE_ID, p_learner.config.get_config_for_module(DEFAULT_MODULE_ID),
                                       p_batch)[0].item()
        clipped, _ = _by_hand(env, p_batch, p_z, p_v, 0.0, *args[1:], clip=0.2)
        unclipped, _ = _by_hand(env, p_batch, p_z, p_v, 0.0, *args[1:])
        assert p_total == pytest.approx(clipped, rel=1e-5, abs=1e-6) and abs(p_total - unclipped) > 1e-3
    finally:
        algo.stop()
        ppo.stop()


@pytest.mark.parametrize("target,adaptive", [(100.0, True), (1e-9, True), (1e-9, False)],
                         ids=["halves", "doubles", "fixed"])
def test_ppo_kl_beta_follows_the_papers_rule_and_survives_a_checkpoint(ray_local, tmp_path, target, adaptive):
    """After each real update beta is ``adapt_kl_beta`` of the update's mean KL (the mean over
    its minibatches that the learner reports), logged as ``ppo_kl/beta``; with ``kl_adaptive:
    false`` it stays; a restored checkpoint continues with the saved beta."""
    kw = dict(ppo_kl={"kl_beta": 0.3, "kl_target": target, "kl_adaptive": adaptive})
    algo = build("PreferenceBandit", "ppo_kl", "none", "fused", **kw)
    try:
        episodes = algo.env_runner.sample(num_timesteps=BATCH, explore=True)
        beta = 0.3
        for seed in (1, 2):
            result = update(algo, episodes, seed)
            kl = result["mean_kl_loss"].peek()
            beta = adapt_kl_beta(beta, kl, target) if adaptive else beta
            assert local_learner(algo.learner_group).kl_beta(DEFAULT_MODULE_ID) == pytest.approx(beta, rel=1e-6)
        assert beta == {"halves": 0.075, "doubles": 1.2, "fixed": 0.3}[
            "fixed" if not adaptive else ("halves" if target > 1 else "doubles")]
        assert curate(algo.train())[PPO_KL_BETA] == pytest.approx(beta * (2 if target < 1 and adaptive else
                                                                           0.5 if adaptive else 1))
        beta = local_learner(algo.learner_group).kl_beta(DEFAULT_MODULE_ID)
        algo.save_to_path(str(tmp_path / "ckpt"))
    finally:
        algo.stop()
    restored = build("PreferenceBandit", "ppo_kl", "none", "fused", **kw)
    try:
        assert local_learner(restored.learner_group).kl_beta(DEFAULT_MODULE_ID) == pytest.approx(0.3)
        restored.restore_from_path(str(tmp_path / "ckpt"))
        assert local_learner(restored.learner_group).kl_beta(DEFAULT_MODULE_ID) == pytest.approx(beta, rel=1e-6)
    finally:
        restored.stop()
