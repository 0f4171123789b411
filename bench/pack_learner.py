"""A trial pack's learner (:mod:`adpo_ray.core.packed`) against K solo learners and stock RLlib PPO:
ms per member-minibatch of PPO's update, side by side, on one thread.

    python bench/pack_learner.py [--ks 1 4 16 64] [--hidden 64 256] [--minibatch 64]
                                 [--minibatches 20] [--rounds 5] [--no-stock]

HalfCheetah shapes (obs 17, actions 6, Gaussian policy), RLlib's default actor-critic (two tanh
layers of ``hidden``, separate policy and value nets). Every round times, one after another so
that all see the same machine load, per (K, hidden):

* ``stacked``: ``--minibatches`` minibatches of :func:`~adpo_ray.core.packed.stacked_update` for K
  members (gather, batched forward/backward, per-member clip, one Adam);
* ``solo``: the same for K plain-torch learners one after another (``nn.Sequential`` nets, PPO
  loss, ``clip_grad_norm_``, ``torch.optim.Adam``), the loop a pack replaces;

and per hidden size ``stock``: one learner update of stock RLlib PPO (``bench/learner.py``'s
build and timing: batch 2,048 sampled once, 10 epochs). Medians over the rounds. Then the
forward + backward of K=16 members by ``baddbmm`` against ``torch.func.vmap`` of
``functional_call`` (the choice :class:`StackedActorCritic` documents). Prints one JSON line,
then ``ratio=<stacked K=16 hidden 64 / stock hidden 64>`` (the goal is <= 0.1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adpo_ray.core.minibatches import minibatch_plan  # noqa: E402
from adpo_ray.core.packed import Knobs, StackedActorCritic, StackedAdam, ppo_terms, stacked_update  # noqa: E402

OBS, ACT = 17, 6
CLIP, VF_CLIP, VF_COEFF, ENT_COEFF, GRAD_CLIP, LR = 0.2, 10.0, 1.0, 0.0, 40.0, 3e-4


def solo_nets(hidden: int) -> tuple[nn.Module, nn.Module]:
    def mlp(out):
        return nn.Sequential(nn.Linear(OBS, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                             nn.Linear(hidden, out))

    return mlp(2 * ACT), mlp(1)


def rllib_state_dict(pi: nn.Module, vf: nn.Module) -> dict[str, torch.Tensor]:
    """The two nets under DefaultPPOTorchRLModule's names."""
    sd = {}
    for (enc, head), net in zip((("encoder.actor_encoder", "pi"), ("encoder.critic_encoder", "vf")), (pi, vf), strict=True):
        for i in (0, 2):
            sd[f"{enc}.net.mlp.{i}.weight"], sd[f"{enc}.net.mlp.{i}.bias"] = net[i].weight, net[i].bias
        sd[f"{head}.log_std_clip_param_const"] = torch.tensor([20.0])
        sd[f"{head}.net.mlp.0.weight"], sd[f"{head}.net.mlp.0.bias"] = net[4].weight, net[4].bias
    return sd


def make_rows(k: int, n: int) -> dict[str, torch.Tensor]:
    return {"obs": torch.randn(k, n, OBS), "actions": torch.randn(k, n, ACT), "action_logp": torch.randn(k, n) - 8,
            "advantages": torch.randn(k, n), "value_targets": torch.randn(k, n)}


def stacked_round(k: int, hidden: int, args):
    """A function timing one round of the stacked update: ms per member-minibatch."""
    nets = [solo_nets(hidden) for _ in range(k)]
    net = StackedActorCritic.from_state_dicts([rllib_state_dict(*n) for n in nets], "gaussian")
    opt = StackedAdam(net.theta, LR)
    knobs = Knobs.of(k, vf_clip_param=VF_CLIP, vf_loss_coeff=VF_COEFF, entropy_coeff=ENT_COEFF, clip_param=CLIP)
    n = args.minibatch * args.minibatches
    rows = make_rows(k, n)
    plans = torch.stack([minibatch_plan(n, args.minibatch, 1) for _ in range(k)])
    clip = torch.full((k,), GRAD_CLIP)
    stacked_update(net, opt, ppo_terms, knobs, rows, plans[:, :2], clip)  # warm-up

    def run() -> float:
        start = time.perf_counter()
        stacked_update(net, opt, ppo_terms, knobs, rows, plans, clip)
        return 1000 * (time.perf_counter() - start) / (args.minibatches * k)

    return run


def solo_loss(pi, vf, log_std_clip, b):
    mean, log_std = pi(b["obs"]).chunk(2, dim=-1)
    dist = torch.distributions.Normal(mean, torch.clamp(log_std, -log_std_clip, log_std_clip).exp())
    ratio = torch.exp(dist.log_prob(b["actions"]).sum(-1) - b["action_logp"])
    adv = b["advantages"]
    policy = -torch.min(adv * ratio, adv * torch.clamp(ratio, 1 - CLIP, 1 + CLIP)).mean()
    vf_loss = torch.clamp((vf(b["obs"]).squeeze(-1) - b["value_targets"]) ** 2, 0, VF_CLIP).mean()
    return policy + VF_COEFF * vf_loss - ENT_COEFF * dist.entropy().sum(-1).mean()


def solo_round(k: int, hidden: int, args):
    """A function timing one round of K plain-torch learners: ms per member-minibatch."""
    learners = []
    for _ in range(k):
        pi, vf = solo_nets(hidden)
        params = [*pi.parameters(), *vf.parameters()]
        learners.append((pi, vf, params, torch.optim.Adam(params, lr=LR)))
    n = args.minibatch * args.minibatches
    rows = make_rows(k, n)
    plans = [minibatch_plan(n, args.minibatch, 1) for _ in range(k)]
    clip = torch.tensor([20.0])

    def minibatches(m: int) -> None:
        for i in range(m):
            for j, (pi, vf, params, adam) in enumerate(learners):
                b = {name: v[j][plans[j][i]] for name, v in rows.items()}
                adam.zero_grad(set_to_none=True)
                solo_loss(pi, vf, clip, b).backward()
                torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
                adam.step()

    minibatches(2)  # warm-up

    def run() -> float:
        start = time.perf_counter()
        minibatches(args.minibatches)
        return 1000 * (time.perf_counter() - start) / (args.minibatches * k)

    return run


def time_forward_backward(k: int, hidden: int, minibatch: int, reps: int = 50) -> dict[str, float]:
    """ms per forward + backward of K members: baddbmm over the stacked matrix vs vmap of the solo
    module over stacked parameters."""
    nets = [solo_nets(hidden) for _ in range(k)]
    net = StackedActorCritic.from_state_dicts([rllib_state_dict(*n) for n in nets], "gaussian")
    obs = torch.randn(k, minibatch, OBS)
    pi0, vf0 = nets[0]  # the template functional_call runs with each member's parameters
    stacked = {f"{w}.{name}": torch.stack([dict(n[i].named_parameters())[name].detach() for n in nets]).requires_grad_()
               for w, i in (("pi", 0), ("vf", 1)) for name, _ in nets[0][i].named_parameters()}

    def solo(params, x):
        pi = {n[3:]: v for n, v in params.items() if n.startswith("pi.")}
        vf = {n[3:]: v for n, v in params.items() if n.startswith("vf.")}
        return torch.func.functional_call(pi0, pi, (x,)).sum() + torch.func.functional_call(vf0, vf, (x,)).sum()

    batched = torch.func.vmap(solo)

    def by_vmap():
        torch.autograd.grad(batched(stacked, obs).sum(), list(stacked.values()))

    def by_baddbmm():
        torch.autograd.grad(net.policy(obs).sum() + net.value(obs).sum(), net.params)

    fns = {"baddbmm": by_baddbmm, "vmap": by_vmap}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(reps + 1):  # alternating, so both see the same machine load; rep 0 warms up
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if rep:
                times[name].append(time.perf_counter() - start)
    return {name: round(1000 * statistics.median(t), 3) for name, t in times.items()}


def stock_rounds(hiddens: list[int], args) -> dict[int, object]:
    """Per hidden size, a function timing one learner update of stock RLlib PPO (batch 2,048, 10
    epochs): ms per minibatch. Built and timed by ``bench/learner.py``; Ray must be running."""
    from bench import learner

    ns = argparse.Namespace(env="HalfCheetah-v5", batch=2048, epochs=10, minibatch=args.minibatch)
    sampler = learner.build("ppo", ns.env, ns.batch, ns.epochs, ns.minibatch, hiddens[0], "cpu")
    episodes = sampler.env_runner.sample(num_timesteps=ns.batch, explore=True)
    sampler.stop()
    minibatches = ns.epochs * -(-sum(len(e) for e in episodes) // ns.minibatch)
    rounds = {}
    for h in hiddens:
        algo = learner.build("ppo", ns.env, ns.batch, ns.epochs, ns.minibatch, h, "cpu", "stock")
        learner.time_update(algo, episodes, ns.epochs, ns.minibatch)  # warm-up
        rounds[h] = lambda algo=algo: 1000 * learner.time_update(algo, episodes, ns.epochs, ns.minibatch) / minibatches
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--minibatch", type=int, default=64)
    parser.add_argument("--minibatches", type=int, default=20, help="minibatches per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-stock", action="store_true", help="skip stock RLlib PPO (no ratio line)")
    args = parser.parse_args()
    if 16 not in args.ks or 64 not in args.hidden:
        parser.error("--ks must include 16 and --hidden 64 (the ratio's row)")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    timers = {}
    for h in args.hidden:
        for k in args.ks:
            timers[("stacked", h, k)] = stacked_round(k, h, args)
            timers[("solo", h, k)] = solo_round(k, h, args)
    if not args.no_stock:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        import ray

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        timers.update({("stock", h, 1): run for h, run in stock_rounds(args.hidden, args).items()})
    # rounds interleave every learner, so that all of them see the same machine load
    times: dict[tuple, list[float]] = {key: [] for key in timers}
    for i in range(args.rounds):
        for key, run in timers.items():
            times[key].append(run())
        print(f"round {i}: " + " ".join(f"{p}/h{h}/K{k}={t[-1]:.3f}" for (p, h, k), t in times.items()), flush=True)
    if not args.no_stock:
        ray.shutdown()
    ms = {key: statistics.median(t) for key, t in times.items()}
    rows = [dict(hidden=h, K=k, stacked_ms=round(ms[("stacked", h, k)], 4), solo_ms=round(ms[("solo", h, k)], 4))
            for h in args.hidden for k in args.ks]
    stock = {h: round(ms[("stock", h, 1)], 4) for h in args.hidden if ("stock", h, 1) in ms}
    fwd_bwd = {h: time_forward_backward(16, h, args.minibatch) for h in args.hidden}
    print(json.dumps({"unit": "ms per member-minibatch (median of rounds)", "minibatch": args.minibatch, "threads": 1,
                      "rows": rows, "stock_rllib_ppo_ms_per_minibatch": stock, "fwd_bwd_k16_ms": fwd_bwd}))
    if stock:
        print(f"ratio={ms[('stacked', 64, 16)] / stock[64]:.3f}")


if __name__ == "__main__":
    main()
