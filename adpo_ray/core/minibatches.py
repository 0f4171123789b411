"""The order in which one learner update visits its batch: all epochs x minibatches at once, as a
``(num_minibatches, minibatch_size)`` tensor of row indices (torch only).

It reproduces RLlib's ``MiniBatchCyclicIterator`` exactly: the rows are read as one stream of
epochs, the first epoch in batch order and every later one a fresh shuffle *of the previous
order*; minibatches are consecutive chunks of that stream (one may span two epochs), and the
update stops after the first minibatch that reaches the end of epoch ``num_epochs``. RLlib
reshuffles whenever a minibatch reaches an epoch's end, the last one included, so this draws the
same number of permutations, in the same order: with ``permute = numpy.random.permutation`` and
the same numpy seed, both paths visit the same rows in the same minibatches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["minibatch_plan", "num_minibatches"]


def num_minibatches(n: int, minibatch_size: int, num_epochs: int) -> int:
    """How many minibatches an update of ``num_epochs`` epochs over ``n`` rows takes."""
    return -(-num_epochs * n // minibatch_size)


def minibatch_plan(
    n: int,
    minibatch_size: int,
    num_epochs: int,
    *,
    shuffle: bool = True,
    permute: Callable[[int], torch.Tensor] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Row indices of every minibatch of one update, shape ``(num_minibatches, minibatch_size)``.

    ``permute(n)`` returns a permutation of ``range(n)`` (any sequence of ints); the default is
    ``torch.randperm`` on ``device``. Without ``shuffle`` the epochs repeat the batch order.
    """
    if n < 1 or minibatch_size < 1 or num_epochs < 1:
        raise ValueError(f"need n, minibatch_size, num_epochs >= 1, got {n}, {minibatch_size}, {num_epochs}")
    m = num_minibatches(n, minibatch_size, num_epochs)
    length = m * minibatch_size
    order = torch.arange(n, device=device)
    orders = [order]
    # one reshuffle per epoch end that a minibatch reaches (RLlib's iterator does the same)
    for _ in range(length // n):
        if shuffle:
            perm = torch.randperm(n, device=device) if permute is None else permute(n)
            order = order[torch.as_tensor(perm, dtype=torch.long, device=order.device)]
        orders.append(order)
    return torch.cat(orders)[:length].view(m, minibatch_size)
