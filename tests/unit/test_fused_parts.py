"""The fused update's pieces that are pure tensors: packing rows, masked means, lists of valid
rows, the closed-form KLs, the global-norm clip (exact against RLlib's own)."""

import pytest
import torch
from ray.rllib.core.distribution.torch.torch_distribution import TorchCategorical, TorchDiagGaussian
from ray.rllib.utils.torch_utils import clip_gradients

from adpo_ray.rllib.fused import PackedRows, _bucket_grads, _clip_global_norm_, masked_mean
from adpo_ray.rllib.learner import (
    compact_into_lists,
    group_into_lists,
    kl_from_logits,
    list_weights,
)


def test_packed_rows_take_the_same_rows_as_indexing():
    g = torch.Generator().manual_seed(0)
    rows = {"obs": torch.randn(20, 3, 2, generator=g), "a": torch.randn(20, generator=g),
            "mask": torch.rand(20, generator=g) > 0.3, "act": torch.randint(0, 5, (20,), generator=g)}
    idx = torch.tensor([3, 3, 19, 0, 7])
    got = PackedRows(rows).take(idx)
    assert set(got) == set(rows)
    for k, v in rows.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v[idx])


def test_masked_mean_matches_boolean_indexing():
    x = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [float("inf"), 40.0]])
    mask = torch.tensor([True, False, True, False])
    assert torch.equal(masked_mean(x, mask), x[mask].mean(dim=0))
    assert torch.equal(masked_mean(x[:, 0], mask), torch.tensor(2.0))  # the masked inf does not leak
    assert torch.equal(masked_mean(x[:3], None), x[:3].mean(dim=0))


def test_compact_lists_are_the_lists_of_the_valid_rows():
    x = torch.arange(10.0)
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)
    lists, valid = compact_into_lists(x, mask, 3)
    ref, ref_valid = group_into_lists(x[mask], 3)  # 7 valid rows: lists [0,2,3] [5,6,7] [9,_,_]
    assert torch.equal(lists[:3][valid[:3]], ref[ref_valid])
    assert valid.tolist() == [[True] * 3, [True] * 3, [True, False, False], [False] * 3]
    w = list_weights(valid)
    assert torch.allclose(w, torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]))


@pytest.mark.parametrize("cls,width", [(TorchDiagGaussian, 12), (TorchCategorical, 7)])
def test_closed_form_kl_equals_the_distributions(cls, width):
    g = torch.Generator().manual_seed(1)
    p, q = torch.randn(64, width, generator=g), torch.randn(64, width, generator=g)
    expected = cls.from_logits(p).kl(cls.from_logits(q))
    assert torch.allclose(kl_from_logits(cls, p, q), expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(kl_from_logits(cls, p, p), torch.zeros(64), atol=1e-6)


@pytest.mark.parametrize("scale", [0.01, 100.0])
def test_flat_clip_equals_rllibs_clip(scale):
    g = torch.Generator().manual_seed(2)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(4, 3), (3,), (2, 4)]]
    grads = [torch.randn(p.shape, generator=g) * scale for p in params]
    ref = {i: gr.clone() for i, gr in enumerate(grads)}
    ref_norm = clip_gradients(ref, grad_clip=0.5, grad_clip_by="global_norm")
    for p, gr in zip(params, grads, strict=True):
        p.grad = gr.clone()
    flat = _bucket_grads(params)
    norm = _clip_global_norm_(flat, 0.5)
    assert torch.allclose(norm, ref_norm, rtol=1e-6)
    for i, p in enumerate(params):
        assert torch.allclose(p.grad, ref[i], rtol=1e-6, atol=1e-9)
        assert p.grad.data_ptr() == flat[sum(q.numel() for q in params[:i]):].data_ptr()  # views
