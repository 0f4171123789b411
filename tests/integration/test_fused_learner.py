"""The fused learner update is RLlib's update, numerically: with the same seed and the same
shuffles, two updates of ADPO (listwise and pairwise, action and batch lists, DPO) and of the PPO
baseline give the same parameters (policy, value and anchor) to within 1e-5, and the same KL to
the anchor. Real RLlib learners on real sampled episodes."""

import copy

import numpy as np
import pytest
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

from adpo_ray.metrics import ANCHOR_KL
from adpo_ray.rllib.factory import build_algo_config
from adpo_ray.spec import TrialSpec, parse_spec

pytestmark = pytest.mark.slow

BATCH, EPOCHS, MINIBATCH = 512, 3, 64


def build(env, algorithm, mode, path, shuffle="rllib", compile=False, minibatch_size=MINIBATCH, **adpo):
    spec = parse_spec({
        "name": "fused", "environments": [env], "algorithms": [algorithm], "budget": {"iterations": 1},
        "train": {"train_batch_size": BATCH, "num_epochs": EPOCHS, "minibatch_size": minibatch_size}, "adpo": adpo,
        "anchors": {"modes": [mode] if algorithm == "adpo" else ["dynamic"],
                    "params": {"kl_triggered": {"threshold": 1e-4, "window": 1}}},
        "resources": {"num_envs_per_env_runner": 2, "learner_update": path, "learner_compile": compile},
    })
    config = build_algo_config(spec.knobs(TrialSpec(env, "clean", algorithm, mode, 32, 0)))
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
    return {k: v.detach().clone() for k, v in algo.learner_group._learner.module[DEFAULT_MODULE_ID].state_dict().items()}


CASES = [
    ("HalfCheetah-v5", "adpo", "dynamic", {"loss": "listwise"}),
    ("Hopper-v5", "adpo", "kl_triggered", {"loss": "pairwise", "list_size": 4}),
    ("Hopper-v5", "adpo", "fixed", {"loss": "listwise", "target": "kde", "minibatch_size": 60, "list_size": 8}),
    ("PreferenceBandit", "adpo", "ema", {"loss": "listwise"}),
    ("PreferenceBandit", "adpo", "dynamic", {"loss": "pairwise"}),
    ("PreferenceBandit", "dpo", "fixed", {}),
    ("Hopper-v5", "ppo", "none", {}),
    ("PreferenceBandit", "ppo", "none", {}),
]


@pytest.mark.parametrize("env,algorithm,mode,adpo", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[3].get('loss', '')}" for c in CASES])
def test_fused_update_equals_rllibs(ray_local, env, algorithm, mode, adpo):
    stock, fused = build(env, algorithm, mode, "rllib", **adpo), build(env, algorithm, mode, "fused", **adpo)
    try:
        learner = fused.learner_group._learner
        assert learner.fused_applies() and not stock.learner_group._learner.fused_applies()
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
        if algorithm != "ppo":
            kl_stock, kl_fused = r_stock[ANCHOR_KL].peek(), r_fused[ANCHOR_KL].peek()
            assert kl_fused == pytest.approx(kl_stock, rel=1e-4, abs=1e-9)
    finally:
        stock.stop()
        fused.stop()


def test_compiled_fused_update_equals_rllibs(ray_local):
    """``resources.learner_compile``: the same update with the minibatch loss compiled."""
    stock = build("HalfCheetah-v5", "adpo", "dynamic", "rllib")
    fused = build("HalfCheetah-v5", "adpo", "dynamic", "fused", compile=True)
    try:
        assert fused.learner_group._learner._fused_loss_fn is not fused.learner_group._learner.fused_loss
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
