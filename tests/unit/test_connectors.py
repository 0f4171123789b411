"""The batched observation filter keeps RLlib's running-statistics state exactly."""

import numpy as np
import pytest
from ray.rllib.utils.filter import RunningStat

from adpo_ray.rllib.connectors import push_batch

FIELDS = ["num_pushes", "num_pushes_delta", "mean_array", "mean_delta_array", "sum_sq_diff_array",
          "sum_sq_diff_delta_array"]


@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_push_batch_equals_pushing_rows_one_by_one(prefix):
    rng = np.random.default_rng(prefix)
    one_by_one, batched = RunningStat((4,)), RunningStat((4,))
    for row in rng.normal(size=(prefix, 4)):
        one_by_one.push(row)
        batched.push(row)
    for size in (1, 7, 32):
        x = rng.normal(size=(size, 4)) * 3 + 1
        for row in x:
            one_by_one.push(row)
        push_batch(batched, x)
        for field in FIELDS:
            np.testing.assert_allclose(getattr(batched, field), getattr(one_by_one, field), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(batched.std, one_by_one.std, rtol=1e-10)


def test_push_batch_merges_like_rllib_sync():
    """RLlib merges env runners' buffers with RunningStat.update: batched buffers merge the same."""
    rng = np.random.default_rng(3)
    x1, x2 = rng.normal(size=(20, 3)), rng.normal(size=(13, 3))
    ref, a, b = RunningStat((3,)), RunningStat((3,)), RunningStat((3,))
    for row in np.concatenate([x1, x2]):
        ref.push(row)
    push_batch(a, x1)
    push_batch(b, x2)
    a.update(b)
    np.testing.assert_allclose(a.mean, ref.mean)
    np.testing.assert_allclose(a.std, ref.std)
    assert a.num_pushes == 33
