"""A trial pack's config checks and its module's rows (no Ray started): members that differ in a
shape-fixing knob are refused, naming the knob and the members; the packed module starts each
member at its solo trial's initial weights and routes rows to their members."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from ray.rllib.core.columns import Columns

from adpo_ray.rllib.factory import model_config
from adpo_ray.rllib.pack_factory import check_pack
from adpo_ray.rllib.pack_module import PackedTorchRLModule, group_rows, pack_model_config
from adpo_ray.rllib.packed import MEMBER
from adpo_ray.spec import TrialSpec, parse_spec

SEEDS = [4, 9, 13]


def knobs(env="PreferenceBandit", algorithm="adpo", hidden=(16, 16, 16), mode="dynamic"):
    spec = parse_spec({"name": "pack", "environments": [env], "algorithms": [algorithm], "budget": {"iterations": 1}})
    return [spec.knobs(TrialSpec(env, "clean", algorithm, mode if algorithm == "adpo" else "dynamic", h, s))
            for h, s in zip(hidden, SEEDS, strict=True)]


def test_members_may_differ_in_seed_and_float_knobs():
    members = knobs()
    members[1] = dataclasses.replace(members[1], lr=1e-2, beta_q=3.0, tau_anc=0.2, grad_clip=None)
    check_pack(members)


def test_ppo_kl_members_may_differ_in_initial_beta_and_target_not_in_whether_it_adapts():
    members = knobs(algorithm="ppo_kl")
    assert {m.trial.algorithm for m in members} == {"ppo_kl"} and members[0].kl_adaptive is True
    members[1] = dataclasses.replace(members[1], kl_beta=0.3, kl_target=0.05, lr=1e-2)
    check_pack(members)
    members[2] = dataclasses.replace(members[2], kl_adaptive=False)
    with pytest.raises(ValueError, match="kl_adaptive: every member of a pack must share it; member 0 has True, "
                                         "member 2 has False"):
        check_pack(members)


def test_members_may_differ_in_anchor_kl_coeff():
    members = knobs()
    members[1] = dataclasses.replace(members[1], anchor_kl_coeff=0.2)
    check_pack(members)


@pytest.mark.parametrize(("change", "message"), [
    ({"minibatch_size": 16}, r"minibatch_size: every member of a pack must share it; member 0 has \d+, member 2 has 16"),
    ({"num_envs_per_env_runner": 3}, "num_envs_per_env_runner: .* member 2 has 3"),
    ({"loss": "pairwise"}, "loss: .*member 2 has 'pairwise'"),
    ({"learner_compile": True}, "learner_compile: every member"),
    ({"learner_update": "rllib"}, "learner_update: every member"),
])
def test_a_member_differing_in_shape_is_refused_naming_knob_and_members(change, message):
    members = knobs()
    members[2] = dataclasses.replace(members[2], **change)
    with pytest.raises(ValueError, match=message):
        check_pack(members)


def test_hidden_size_and_unsupported_paths_are_refused():
    with pytest.raises(ValueError, match="trial.hidden_size: .* member 0 has 16, member 1 has 32"):
        check_pack(knobs(hidden=(16, 32, 16)))
    with pytest.raises(ValueError, match="learner_update='rllib'; a pack runs only on the fused update"):
        check_pack([dataclasses.replace(k, learner_update="rllib") for k in knobs()])
    with pytest.raises(ValueError, match="at least one member"):
        check_pack([])


def module(obs_dim=5, action_space=None, inference_only=False):
    return PackedTorchRLModule(
        observation_space=gym.spaces.Box(-1, 1, (obs_dim,), np.float32),
        action_space=action_space or gym.spaces.Box(-1, 1, (2,), np.float32),
        inference_only=inference_only, model_config=pack_model_config(model_config(8), SEEDS))


def solo(seed, obs_dim=5):
    torch.manual_seed(seed)
    return DefaultPPOTorchRLModule(observation_space=gym.spaces.Box(-1, 1, (obs_dim,), np.float32),
                                   action_space=gym.spaces.Box(-1, 1, (2,), np.float32),
                                   model_config=dataclasses.asdict(model_config(8)))


def test_members_start_at_their_solo_weights_and_rows_route_to_members():
    pack = module()
    solos = [solo(s) for s in SEEDS]
    for sd, s in zip(pack.member_state_dicts(), solos, strict=True):
        assert all(torch.equal(sd[n], v) for n, v in s.state_dict().items())
    n = 4
    obs = torch.randn(3 * n, 5)
    want_pi = torch.cat([s.forward_inference({Columns.OBS: obs[k * n:(k + 1) * n]})[Columns.ACTION_DIST_INPUTS]
                         for k, s in enumerate(solos)])
    want_v = torch.cat([s.compute_values({Columns.OBS: obs[k * n:(k + 1) * n]}) for k, s in enumerate(solos)])
    # an env runner's batch: row i from sub-env i, member i // n
    got = pack.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
    torch.testing.assert_close(got, want_pi, rtol=0, atol=1e-6)
    # a learner's batch, shuffled: by the member column
    perm = torch.randperm(3 * n)
    member = torch.arange(3).repeat_interleave(n)
    got = pack.forward_inference({Columns.OBS: obs[perm], MEMBER: member[perm]})[Columns.ACTION_DIST_INPUTS]
    torch.testing.assert_close(got, want_pi[perm], rtol=0, atol=1e-6)
    with torch.no_grad():
        got_v = pack.compute_values({Columns.OBS: obs[perm], MEMBER: member[perm]})
    torch.testing.assert_close(got_v, want_v[perm], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="needs K=3 equal blocks of rows"):
        pack.forward_inference({Columns.OBS: obs[:4]})


def test_a_member_as_a_solo_module_is_its_solo_network():
    """``member_module(k)``: member k's network as its solo trial's module, after the pack has moved
    away from the start; the process's random generators are left as they were."""
    pack = module()
    pack.make_target_networks()
    with torch.no_grad():
        pack.theta.add_(torch.randn_like(pack.theta))  # trained: no longer any seed's fresh network
    obs = torch.randn(6, 5)
    want = pack.member_policy(obs.expand(3, -1, -1))
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    for k in range(3):
        solo_k = pack.member_module(k)
        assert isinstance(solo_k, DefaultPPOTorchRLModule) and not any(n.startswith("_anchor") for n in solo_k.state_dict())
        sd = pack.member_state_dicts()[k]
        assert all(torch.equal(v, sd[n]) for n, v in solo_k.state_dict().items())
        got = solo_k.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
        torch.testing.assert_close(got, want[k], rtol=0, atol=1e-6)
    assert torch.equal(torch.get_rng_state(), torch_state) and np.array_equal(np.random.get_state()[1], np_state)
    for bad in (3, -1, True):
        with pytest.raises(ValueError, match=r"member: must be an int in 0\.\.2 \(the pack has 3 members\)"):
            pack.member_module(bad)


def test_the_anchor_lives_on_the_learner_copy_only():
    pack = module()
    pack.make_target_networks()
    state = pack.get_state(inference_only=True)
    assert "anchor" not in state and "theta" in state
    runner = module(inference_only=True)
    runner.set_state(state)
    np.testing.assert_array_equal(runner.get_state()["theta"], pack.get_state()["theta"])
    assert pack.member_state_dicts()[0]["_anchor_pi.net.mlp.0.weight"].shape == (4, 8)


def test_group_rows_keeps_each_members_rows_in_batch_order():
    member = torch.tensor([2, 0, 2, 1, 0, 2])
    index, valid, counts = group_rows(member, 3)
    assert counts.tolist() == [2, 1, 3]
    assert [index[k][valid[k]].tolist() for k in range(3)] == [[1, 4], [3], [0, 2, 5]]
    with pytest.raises(ValueError, match="member column: values must be in 0..2"):
        group_rows(torch.tensor([0, 3]), 3)
