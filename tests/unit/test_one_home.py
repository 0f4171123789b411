"""Facts the package once wrote in several places have one home each: the source says so (read
with ``ast``), and the callers compute what the home computes."""

from __future__ import annotations

import ast
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

from adpo_ray.core.distill import diag_gaussian_kl
from adpo_ray.envs.mujoco import ObsNorm

PKG = Path(__file__).resolve().parents[2] / "adpo_ray"
TREES = {str(p.relative_to(PKG.parent)): ast.parse(p.read_text()) for p in sorted(PKG.rglob("*.py"))}


def modules_where(predicate) -> set[str]:
    return {path for path, tree in TREES.items() if any(predicate(node) for node in ast.walk(tree))}


def test_the_checkpoint_layout_is_written_once():
    # learner_group/learner/rl_module/<module id>: adpo_ray.rllib.init.module_dir
    assert modules_where(lambda n: isinstance(n, ast.Constant) and n.value == "rl_module") == {"adpo_ray/rllib/init.py"}


def test_the_not_provided_loop_is_written_once():
    def compares_to_not_provided(node):
        return isinstance(node, ast.Compare) and any(
            isinstance(x, ast.Name) and x.id == "NotProvided" for x in (node.left, *node.comparators))

    assert modules_where(compares_to_not_provided) == {"adpo_ray/rllib/settings.py"}


def test_the_adpo_method_name_is_made_once():
    def adpo_fstring(node):
        return (isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant)
                and str(node.values[0].value).endswith("adpo-") and len(node.values) > 1)

    assert modules_where(adpo_fstring) == {"adpo_ray/spec/trials.py"}


def test_spec_errors_are_printed_by_one_function():
    cli = TREES["adpo_ray/cli.py"]
    # a SpecError's problems are its ``errors`` lines, printed one by one
    readers = [f.name for f in ast.walk(cli) if isinstance(f, ast.FunctionDef)
               and any(isinstance(n, ast.For) and isinstance(n.iter, ast.Attribute) and n.iter.attr == "errors"
                       for n in ast.walk(f))]
    assert readers == ["print_spec_error"]


def test_the_learners_gaussian_kl_is_cores():
    from adpo_ray.rllib.learner import kl_from_logits

    torch.manual_seed(0)
    p = torch.randn(4096, 12)
    q = p + 0.05 * torch.randn(4096, 12)
    assert torch.equal(kl_from_logits(TorchDiagGaussian, p, q), diag_gaussian_kl(*p.chunk(2, dim=-1), *q.chunk(2, dim=-1)))
    expected = TorchDiagGaussian.from_logits(p).kl(TorchDiagGaussian.from_logits(q))
    assert torch.allclose(kl_from_logits(TorchDiagGaussian, p, q), expected, atol=1e-5)


@pytest.fixture(scope="module")
def hopper_policy():
    from adpo_ray.rllib.module import ADPOTorchRLModule

    torch.manual_seed(0)
    env = gym.make("Hopper-v5")
    obs_space = gym.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32)
    module = ADPOTorchRLModule(observation_space=obs_space, action_space=env.action_space, inference_only=False,
                               model_config=DefaultModelConfig(fcnet_hiddens=[16, 16], vf_share_layers=False))
    env.close()
    rng = np.random.default_rng(1)
    obs_norm = {"mean": rng.normal(size=11).tolist(), "std": (1 + rng.random(11)).tolist(), "clip": 10.0}
    return module, obs_norm


def test_the_rollout_is_the_clean_return_of_the_mean_action_on_seeds_from_eval_seed(hopper_policy):
    from adpo_ray.rllib.rollout import EVAL_SEED, episode_returns, evaluate_policy

    module, obs_norm = hopper_policy
    norm = ObsNorm.from_dict(obs_norm)
    by_hand = []
    for i in range(2):  # the bare env, normalised and clipped here, summing its (clean) rewards
        env = gym.make("Hopper-v5")
        obs, _ = env.reset(seed=EVAL_SEED + i)
        total, done = 0.0, False
        while not done:
            with torch.no_grad():
                out = module.forward_inference({Columns.OBS: torch.as_tensor(norm(obs)[None])})
            action = out[Columns.ACTION_DIST_INPUTS][0, :3].numpy()
            obs, reward, terminated, truncated, _ = env.step(np.clip(action, -1, 1))
            total += reward
            done = terminated or truncated
        by_hand.append(float(total))
        env.close()
    # a noisy scenario: the yardstick is still the clean return
    assert episode_returns(module, "Hopper-v5", obs_norm, 2, scenario="gaussian-high") == by_hand
    assert evaluate_policy(module, "Hopper-v5", obs_norm, 2) == float(np.mean(by_hand))


def test_explored_rollouts_repeat_with_their_seed(hopper_policy):
    from adpo_ray.rllib.rollout import episode_returns

    module, obs_norm = hopper_policy
    once = episode_returns(module, "Hopper-v5", obs_norm, 2, 7, explore=True)
    assert once == episode_returns(module, "Hopper-v5", obs_norm, 2, 7, explore=True)
    assert once != episode_returns(module, "Hopper-v5", obs_norm, 2, 7)


def test_defaults_the_spec_and_the_configs_share_are_written_once():
    # the stored policies' experiment, the adaptive temperature's floor and the learner's update
    # path and optimiser: one constant each, imported by the spec and the RLlib configs
    experiment = [path for path, tree in TREES.items() for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and n.value == "adpo-ray-teachers"]
    assert experiment == ["adpo_ray/spec/sections.py"]
    sources = {path: (PKG.parent / path).read_text() for path in TREES}
    lines = [(path, line) for path, text in sources.items() for line in text.splitlines()]
    assert [p for p, line in lines if "tau_min" in line and "0.05" in line] == []
    assert [p for p, line in lines if "TAU_MIN = " in line] == ["adpo_ray/core/choices.py"]
    assert not [p for p, line in lines if "learner_update" in line and '"fused"' in line and "==" not in line]
    assert not [p for p, line in lines if "optimizer" in line and '"adam"' in line and "{" not in line]
