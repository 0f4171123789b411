"""The fused update's minibatch plan is RLlib's cyclic iterator, row for row and draw for draw."""

import numpy as np
import pytest
import torch
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.minibatch_utils import MiniBatchCyclicIterator

from adpo_ray.core.minibatches import minibatch_plan, num_minibatches


def rllib_rows(n, size, epochs, shuffle):
    batch = MultiAgentBatch({"m": SampleBatch({"i": np.arange(n)})}, n)
    it = MiniBatchCyclicIterator(batch, num_epochs=epochs, minibatch_size=size, shuffle_batch_per_epoch=shuffle)
    return [mb.policy_batches["m"]["i"].tolist() for mb in it]


@pytest.mark.parametrize("n,size,epochs", [(10, 3, 2), (10, 5, 2), (7, 10, 3), (2100, 64, 10), (5, 5, 1), (64, 64, 4), (65, 64, 3)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_plan_is_rllibs_iterator(n, size, epochs, shuffle):
    np.random.seed(7)
    expected = rllib_rows(n, size, epochs, shuffle)
    after_rllib = np.random.rand()  # how far RLlib moved numpy's global RNG
    np.random.seed(7)
    plan = minibatch_plan(n, size, epochs, shuffle=shuffle, permute=np.random.permutation)
    assert plan.tolist() == expected
    assert np.random.rand() == after_rllib  # the same number of permutations drawn
    assert plan.shape == (num_minibatches(n, size, epochs), size)


def test_device_permutations_cover_every_row_each_epoch():
    torch.manual_seed(0)
    plan = minibatch_plan(100, 10, 3)  # 30 minibatches, epochs end on minibatch boundaries
    epochs = plan.reshape(3, 100)
    for rows in epochs:
        assert sorted(rows.tolist()) == list(range(100))
    assert epochs[0].tolist() == list(range(100))  # the first epoch in batch order, as RLlib
    assert epochs[1].tolist() != epochs[2].tolist()


@pytest.mark.parametrize("args", [(0, 4, 1), (4, 0, 1), (4, 4, 0)])
def test_bad_sizes_are_rejected(args):
    with pytest.raises(ValueError, match="need n, minibatch_size, num_epochs >= 1"):
        minibatch_plan(*args)
