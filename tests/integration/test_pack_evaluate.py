"""`adpo-ray evaluate` of one member of a MuJoCo trial pack is its solo trial's evaluation: a pack
whose members start from two solo trials' checkpoints (network and observation filter) holds each
member as its solo trial (its network as a solo module, its frozen observation normalisation), and
the pack's saved checkpoint evaluates member k exactly as solo trial k's own checkpoint does.
Real RLlib algorithms, checkpoints and rollouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adpo_ray.orchestration.evaluate import evaluate
from adpo_ray.orchestration.policies import obs_norm_of
from adpo_ray.rllib.factory import build_algo_config
from adpo_ray.rllib.init import saved_obs_norm, start_pack_from_checkpoints
from adpo_ray.rllib.pack_factory import build_pack_config

from ..helpers.packs import build, learner, member_knobs, solo_state

pytestmark = pytest.mark.slow


def test_a_mujoco_pack_member_evaluates_as_its_solo_trial(ray_local, tmp_path):
    knobs = member_knobs("Hopper-v5", "adpo", ["fixed", "dynamic"])
    solos = [build(build_algo_config(kn), "device") for kn in knobs]
    pack = build(build_pack_config(knobs), "device")
    try:
        paths = []
        for k, solo in enumerate(solos):
            solo.train()  # the filters move on from their start, each trial's on its own episodes
            paths.append(str(tmp_path / f"solo{k}"))
            solo.save_to_path(paths[-1])
        start_pack_from_checkpoints(pack, paths)
        module = learner(pack).pack_module
        norms = []
        for k, solo in enumerate(solos):
            # member k as a solo module: solo trial k's network, name for name
            mine, theirs = module.member_module(k).state_dict(), solo_state(solo)
            assert mine.keys() <= theirs.keys() and all(torch.equal(mine[n], theirs[n]) for n in mine), k
            # and its observation normalisation: solo trial k's filter, frozen
            norms.append(obs_norm_of(pack, k))
            assert norms[-1] == obs_norm_of(solo), k
        assert norms[0] != norms[1]  # the members' own filters, not one shared
        pack.save_to_path(str(tmp_path / "pack"))
    finally:
        for algo in (pack, *solos):
            algo.stop()

    # the statistics evaluate reads from the saved files (no algorithm built) are the live filters'
    for k, path in enumerate(paths):
        assert saved_obs_norm(path) == norms[k] == saved_obs_norm(tmp_path / "pack", k), k

    evaluations = []
    for k, path in enumerate(paths):
        want = evaluate(Path(path), episodes=2, scenario="shift-high")
        assert evaluate(tmp_path / "pack", episodes=2, scenario="shift-high", member=k) == want, k
        evaluations.append(want)
    assert evaluations[0].mean != evaluations[1].mean  # each member's own policy

    with pytest.raises(ValueError, match=r"--member: .* a trial pack's checkpoint of 2 members; pick one with "
                                         r"--member 0\.\.1 \(got 2;"):
        evaluate(tmp_path / "pack", member=2)
    with pytest.raises(ValueError, match=r"--member 0: .* is a solo trial's checkpoint"):
        evaluate(Path(paths[0]), member=0)
