"""mha.softmax and mha.scaled_dot_product_attention against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, to_torch

import mha
from mha.functional import attention_backward, attention_forward, causal_mask


def test_softmax_matches_torch_and_is_stable():
    x = np.random.default_rng(0).standard_normal((3, 4, 5)) * 10
    assert_close(
        "softmax", mha.softmax(x), torch.softmax(torch.tensor(x), dim=-1), 1e-12
    )
    assert_close(
        "softmax axis 1",
        mha.softmax(x, axis=1),
        torch.softmax(torch.tensor(x), dim=1),
        1e-12,
    )
    big = np.array([[1000.0, 1001.0, 1002.0]], dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        naive = np.exp(big) / np.exp(big).sum()
    assert np.isnan(naive).all()  # the naive formula overflows ...
    # ... the stable one does not
    assert_close(
        "large logits", mha.softmax(big), torch.softmax(torch.tensor(big), -1), 1e-7
    )
    assert mha.softmax(big).dtype == np.float32


def test_softmax_all_masked_row_is_zero_not_nan():
    x = np.array([[0.0, 1.0], [-np.inf, -np.inf]])
    np.testing.assert_array_equal(mha.softmax(x)[1], [0.0, 0.0])
    # torch gives NaN there
    assert torch.isnan(torch.softmax(torch.tensor(x), -1)[1]).all()


def test_softmax_does_not_modify_input():
    x = np.random.default_rng(1).standard_normal((2, 3))
    copy = x.copy()
    mha.softmax(x)
    np.testing.assert_array_equal(x, copy)


def _qkv(rng, batch, L, S, E, Ev, dtype=np.float64):
    return (
        rng.standard_normal(batch + (L, E)).astype(dtype),
        rng.standard_normal(batch + (S, E)).astype(dtype),
        rng.standard_normal(batch + (S, Ev)).astype(dtype),
    )


MASKS = {
    "none": lambda rng, L, S: None,
    "bool_2d": lambda rng, L, S: np.concatenate(
        [np.ones((L, 1), bool), rng.random((L, S - 1)) < 0.6], axis=1
    ),
    "float_2d": lambda rng, L, S: rng.standard_normal((L, S)),
    "bool_broadcast_heads": lambda rng, L, S: np.concatenate(
        [np.ones((2, 1, L, 1), bool), rng.random((2, 1, L, S - 1)) < 0.6], -1
    ),
    "float_key_row": lambda rng, L, S: np.where(np.arange(S) < S - 2, 0.0, -np.inf)[
        None, :
    ],
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mask", list(MASKS))
def test_sdpa_matches_torch_for_each_mask_kind(mask, dtype):
    rng = np.random.default_rng(2)
    q, k, v = _qkv(rng, (2, 3), 4, 6, 5, 7, dtype)
    attn_mask = MASKS[mask](rng, 4, 6)
    if attn_mask is not None and attn_mask.dtype != bool:
        attn_mask = attn_mask.astype(dtype)
    ours = mha.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    theirs = F.scaled_dot_product_attention(
        to_torch(q), to_torch(k), to_torch(v), attn_mask=to_torch(attn_mask)
    )
    assert ours.dtype == dtype
    assert_close(
        f"sdpa with {mask} mask", ours, theirs, 1e-5 if dtype == np.float32 else 1e-12
    )


@pytest.mark.parametrize("L,S", [(5, 5), (3, 6), (6, 3)])
def test_sdpa_is_causal_and_scale(L, S):
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, (2,), L, S, 4, 3)
    ours = mha.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    theirs = F.scaled_dot_product_attention(
        to_torch(q), to_torch(k), to_torch(v), is_causal=True, scale=0.3
    )
    # torch's kernel returns zeros for a query with no visible key (L > S), as mha does
    assert_close(f"sdpa causal L={L} S={S}", ours, theirs, 1e-12)
    # the mask itself, against torch's own is_causal: explicit bool mask and is_causal give the same result
    explicit = F.scaled_dot_product_attention(
        to_torch(q),
        to_torch(k),
        to_torch(v),
        attn_mask=torch.from_numpy(causal_mask(L, S)),
        scale=0.3,
    )
    # queries with a visible key (torch: NaN otherwise)
    rows = causal_mask(L, S).any(axis=-1)
    np.testing.assert_allclose(
        explicit.numpy()[..., rows, :], theirs.numpy()[..., rows, :], rtol=0, atol=1e-12
    )


def test_sdpa_grouped_query_attention():
    rng = np.random.default_rng(4)
    q = rng.standard_normal((2, 6, 4, 5))
    k, v = rng.standard_normal((2, 2, 7, 5)), rng.standard_normal((2, 2, 7, 3))
    ours = mha.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    theirs = F.scaled_dot_product_attention(
        to_torch(q), to_torch(k), to_torch(v), enable_gqa=True
    )
    assert_close("sdpa grouped-query", ours, theirs, 1e-12)


def test_mask_polarity_is_torch_sdpa_polarity():
    """bool True = takes part: the opposite of nn.MultiheadAttention's masks."""
    rng = np.random.default_rng(5)
    q, k, v = _qkv(rng, (), 3, 4, 2, 2)
    keep_first_two = np.array([True, True, False, False])
    out = mha.scaled_dot_product_attention(q, k, v, attn_mask=keep_first_two)
    expected = mha.scaled_dot_product_attention(q, k[:2], v[:2])
    assert_close("mask keeps the True keys", out, expected, 1e-12)


def test_attention_backward_matches_autograd():
    rng = np.random.default_rng(6)
    q, k, v = _qkv(rng, (2, 3), 4, 5, 6, 7)
    bias = np.where(rng.random((4, 5)) < 0.3, -np.inf, rng.standard_normal((4, 5)))
    bias[:, 0] = 0.0
    out, cache = attention_forward(q, k, v, bias)
    g = rng.standard_normal(out.shape)
    dq, dk, dv = attention_backward(g, cache)
    tq, tk, tv = (to_torch(a, requires_grad=True) for a in (q, k, v))
    t_out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=to_torch(bias))
    t_out.backward(to_torch(g))
    assert_close("output", out, t_out, 1e-12)
    for label, ours, theirs in (
        ("dq", dq, tq.grad),
        ("dk", dk, tk.grad),
        ("dv", dv, tv.grad),
    ):
        assert_close(label, ours, theirs, 1e-12)


def test_attention_backward_sums_broadcast_axes():
    """A key/value shared by every batch element gets the sum of their gradients."""
    rng = np.random.default_rng(7)
    q = rng.standard_normal((3, 4, 5))
    k, v = rng.standard_normal((1, 6, 5)), rng.standard_normal((6, 2))
    out, cache = attention_forward(q, k, v)
    g = rng.standard_normal(out.shape)
    dq, dk, dv = attention_backward(g, cache)
    tq, tk, tv = (to_torch(a, requires_grad=True) for a in (q, k, v))
    (torch.softmax(tq @ tk.transpose(-1, -2) / np.sqrt(5), -1) @ tv).backward(
        to_torch(g)
    )
    assert dk.shape == k.shape and dv.shape == v.shape
    for label, ours, theirs in (
        ("dq", dq, tq.grad),
        ("dk", dk, tk.grad),
        ("dv", dv, tv.grad),
    ):
        assert_close(label, ours, theirs, 1e-12)
