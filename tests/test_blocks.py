"""mha.functional's building blocks against torch: linear (forward and backward), the head split, the weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, tol_for

import mha
from mha.functional import linear_backward


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lead", [(), (5,), (2, 3)], ids=["vector", "rows", "batch"])
@pytest.mark.parametrize("has_bias", [True, False])
def test_linear_and_its_backward_match_torch(dtype, lead, has_bias):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((*lead, 6)).astype(dtype)
    W = rng.standard_normal((6, 4)).astype(dtype)  # the book's (in, out)
    b = rng.standard_normal(4).astype(dtype) if has_bias else None
    dout = rng.standard_normal((*lead, 4)).astype(dtype)
    # torch's weight is (out, in)
    tx, tW = (torch.tensor(a, requires_grad=True) for a in (x, W.T.copy()))
    tb = torch.tensor(b, requires_grad=True) if has_bias else None
    t_out = F.linear(tx, tW, tb)
    t_out.backward(torch.tensor(dout))
    tol = tol_for(dtype)
    out = mha.linear(x, W, b)
    assert out.dtype == dtype
    assert_close("linear", out, t_out, tol)
    dx, dW, db = linear_backward(dout, x, W, has_bias)
    assert_close("dx", dx, tx.grad, tol)
    assert_close("dW", dW, tW.grad.T, tol)
    if has_bias:
        assert_close("db", db, tb.grad, tol)
    else:
        assert db is None


def test_linear_names_a_torch_layout_weight():
    # torch's (out, in): the transpose is needed
    x, W = (np.ones((3, 6)), np.ones((4, 6)))
    with pytest.raises(
        ValueError,
        match=r"W must have shape \(in, out\).*x \(3, 6\) and W \(4, 6\).*transpose",
    ):
        mha.linear(x, W)
    with pytest.raises(ValueError, match=r"b must have shape \(4,\)"):
        mha.linear(x, np.ones((6, 4)), np.ones(6))
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        mha.linear(np.ones((3, 6), int), np.ones((6, 4)))


@pytest.mark.parametrize(
    "shape",
    [(7, 12), (2, 7, 12), (3, 2, 7, 12)],
    ids=["(L, E)", "(N, L, E)", "(B, N, L, E)"],
)
@pytest.mark.parametrize("H", [1, 3, 4])
def test_split_heads_is_torchs_view_and_transpose_and_merge_inverts_it(shape, H):
    x = np.random.default_rng(1).standard_normal(shape)
    *lead, L, E = shape
    # what torch's MHA does per batch
    t = torch.tensor(x).view(*lead, L, H, E // H).transpose(-3, -2)
    heads = mha.split_heads(x, H)
    assert heads.shape == (*lead, H, L, E // H)
    np.testing.assert_array_equal(heads, t.numpy())
    np.testing.assert_array_equal(mha.merge_heads(heads), x)
    # head h holds features h*hd .. (h+1)*hd of every position
    np.testing.assert_array_equal(
        heads[..., 1 % H, :, :], x[..., :, (1 % H) * (E // H) : (1 % H + 1) * (E // H)]
    )


def test_split_heads_without_transpose_would_mix_positions():
    x = np.arange(2 * 6, dtype=float).reshape(2, 6)  # (L=2, E=6), H=2
    wrong = x.reshape(2, 2, 3)  # reshape only: "head" 0 = position 0
    assert not np.array_equal(mha.split_heads(x, 2), wrong)
    np.testing.assert_array_equal(mha.split_heads(x, 2)[0], [[0, 1, 2], [6, 7, 8]])


def test_split_and_merge_name_bad_arguments():
    with pytest.raises(
        ValueError, match=r"E=10 of x \(3, 10\) must be divisible by H=4"
    ):
        mha.split_heads(np.ones((3, 10)), 4)
    with pytest.raises(TypeError, match="H must be a positive int"):
        mha.split_heads(np.ones((3, 8)), 2.0)
    with pytest.raises(
        ValueError, match=r"x must have shape \(\.\.\., L, E\), got \(8,\)"
    ):
        mha.split_heads(np.ones(8), 2)
    with pytest.raises(
        ValueError, match=r"x must have shape \(\.\.\., H, L, hd\), got \(3, 8\)"
    ):
        mha.merge_heads(np.ones((3, 8)))


def _torch_weights(q, k, attn_mask=None, is_causal=False, scale=None):
    """torch's SDPA weights, built the way its math route documents them (softmax of scaled scores + mask)."""
    q, k = torch.tensor(q), torch.tensor(k)
    scale = 1 / q.shape[-1] ** 0.5 if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale
    if is_causal:
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
    elif attn_mask is not None:
        attn_mask = torch.tensor(attn_mask)
    if attn_mask is not None:
        scores = (
            scores.masked_fill(~attn_mask, float("-inf"))
            if attn_mask.dtype == torch.bool
            else scores + attn_mask
        )
    return torch.softmax(scores, -1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mask", ["none", "bool", "float", "causal", "scale"])
def test_attention_weights_times_values_is_torchs_sdpa(dtype, mask):
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((2, 3, n, 8)).astype(dtype) for n in (5, 6, 6))
    kwargs = {}
    if mask == "bool":
        kwargs["attn_mask"] = rng.random((5, 6)) > 0.3
        kwargs["attn_mask"][:, 0] = True  # every query keeps a key
    elif mask == "float":
        kwargs["attn_mask"] = rng.standard_normal((1, 3, 5, 6)).astype(dtype)
    elif mask == "causal":
        kwargs["is_causal"] = True
    else:
        kwargs["scale"] = 0.3
    w = mha.attention_weights(q, k, **kwargs)
    assert w.shape == (2, 3, 5, 6) and w.dtype == dtype
    tol = tol_for(dtype)
    assert_close("weights", w, _torch_weights(q, k, **kwargs), tol)
    t_kwargs = {
        n: torch.tensor(a) if isinstance(a, np.ndarray) else a
        for n, a in kwargs.items()
    }
    t_out = F.scaled_dot_product_attention(
        *(torch.tensor(a) for a in (q, k, v)), **t_kwargs
    )
    assert_close("weights @ v", w @ v, t_out, tol)
    np.testing.assert_allclose(
        w @ v, mha.scaled_dot_product_attention(q, k, v, **kwargs), rtol=0, atol=tol
    )


def test_attention_weights_with_gqa_repeat_each_key_head_for_its_group():
    rng = np.random.default_rng(3)
    q, k, v = (
        rng.standard_normal((1, 4, 5, 8)),
        rng.standard_normal((1, 2, 6, 8)),
        rng.standard_normal((1, 2, 6, 8)),
    )
    w = mha.attention_weights(q, k, enable_gqa=True)
    t_out = F.scaled_dot_product_attention(
        *(torch.tensor(a) for a in (q, k, v)), enable_gqa=True
    )
    v_rep = np.repeat(v, 2, axis=1)  # query heads 0, 1 read key head 0
    assert_close("gqa weights @ v", w @ v_rep, t_out, 1e-12)
    assert_close("gqa weights", w, _torch_weights(q, np.repeat(k, 2, axis=1)), 1e-12)


def test_attention_weights_names_bad_arguments():
    q, k = np.ones((4, 8)), np.ones((6, 8))
    with pytest.raises(
        ValueError, match="query and key must have the same last dimension"
    ):
        mha.attention_weights(q, np.ones((6, 7)))
    with pytest.raises(ValueError, match="attn_mask must be None when is_causal=True"):
        mha.attention_weights(q, k, attn_mask=np.ones((4, 6), bool), is_causal=True)
    with pytest.raises(TypeError, match="is_causal must be True or False"):
        mha.attention_weights(q, k, is_causal="yes")
    with pytest.raises(ValueError, match="enable_gqa=True needs a heads axis"):
        mha.attention_weights(q, k, enable_gqa=True)
    with pytest.raises(
        ValueError, match=r"query heads \(3\) to be a multiple of key heads \(2\)"
    ):
        mha.attention_weights(np.ones((3, 4, 8)), np.ones((2, 6, 8)), enable_gqa=True)
    before = q.copy()
    mha.attention_weights(q, k, scale=0.5)
    np.testing.assert_array_equal(q, before)


def test_dtype_survives_every_block():
    x = np.ones((2, 4, 8), np.float32)
    assert mha.split_heads(x, 2).dtype == np.float32
    assert mha.merge_heads(mha.split_heads(x, 2)).dtype == np.float32
    assert mha.linear(x, np.ones((8, 3), np.float32)).dtype == np.float32
