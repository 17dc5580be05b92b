"""mha.MultiHeadAttention against torch.nn.MultiheadAttention, option by option.

Each case compares, in this order and under its own label: the output, the
returned attention weights, the input gradients and every parameter
gradient (``torch_state_dict(grads=True)`` against ``.grad``), with
non-zero biases, float32 within 1e-5 and float64 within 1e-10. The cases and
:func:`helpers.check_case` live in ``tests/helpers.py`` (test_parallel.py runs them threaded).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    CONSTRUCTOR,
    LAYOUTS,
    MASKS,
    E,
    H,
    L,
    N,
    S,
    assert_close,
    check_case,
    matching_pair,
    option_ids,
    to_torch,
    torch_run,
)

import mha


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("options", CONSTRUCTOR, ids=option_ids)
def test_options_and_masks_cross_attention(options, mask_kind, dtype):
    """Cross-attention, L != S, every constructor option with every mask (layout cycles)."""
    i = CONSTRUCTOR.index(options) + MASKS.index(mask_kind)
    check_case(
        options,
        mask_kind,
        LAYOUTS[i % 3],
        dtype,
        self_attention=False,
        average=bool(i % 2),
        seed=i,
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize(
    "options", [o for o in CONSTRUCTOR if "kdim" not in o], ids=option_ids
)
def test_options_and_masks_self_attention(options, mask_kind, layout, dtype):
    """Self-attention m(x): one input, one gradient; every option, mask and layout."""
    i = CONSTRUCTOR.index(options) + MASKS.index(mask_kind) + LAYOUTS.index(layout)
    check_case(
        options,
        mask_kind,
        layout,
        dtype,
        self_attention=True,
        average=bool(i % 2),
        seed=100 + i,
    )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("average", [True, False])
def test_cross_attention_every_layout(layout, average):
    check_case(
        {"kdim": 6, "vdim": 10},
        "kpm_and_attn",
        layout,
        np.float64,
        False,
        average,
        seed=7,
    )


def test_same_array_three_times_gives_three_gradients():
    """m(x, x, x) is cross-attention in form: three gradients that sum to torch's x.grad."""
    numpy_mha, torch_mha = matching_pair(E, H, dtype=np.float64, seed=3)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, L, E))
    out = numpy_mha(x, x, x)
    g = rng.standard_normal(out.shape)
    gq, gk, gv = numpy_mha.backward(g)
    t_out, _, (t_dx,), _ = torch_run(
        torch_mha, x, None, None, g, self_attention=True, need_weights=False
    )
    assert_close("output", out, t_out, 1e-10)
    assert_close("grad query + key + value", gq + gk + gv, t_dx, 1e-10)
    _, _, (t_gq, t_gk, t_gv), _ = torch_run(torch_mha, x, x, x, g, need_weights=False)
    for label, ours, theirs in (
        ("grad query", gq, t_gq),
        ("grad key", gk, t_gk),
        ("grad value", gv, t_gv),
    ):
        assert_close(label, ours, theirs, 1e-10)


@pytest.mark.parametrize(
    "options", [{}, {"add_bias_kv": True}, {"add_zero_attn": True}], ids=option_ids
)
def test_fully_masked_query_gives_zero_attention(options):
    """A query with every key masked: zero attention, output b_O, no NaN, gradients finite.

    torch disagrees with itself here: NaN from its need_weights=True route,
    zeros from its SDPA route. With add_bias_kv/add_zero_attn the extra key
    is never masked, so nothing is fully masked and all routes agree.
    """
    numpy_mha, torch_mha = matching_pair(E, H, dtype=np.float64, seed=5, **options)
    rng = np.random.default_rng(5)
    q, k, v = (
        rng.standard_normal((N, L, E)),
        rng.standard_normal((N, S, E)),
        rng.standard_normal((N, S, E)),
    )
    attn_mask = np.zeros((L, S), dtype=bool)
    attn_mask[1] = True  # query 1 may attend no key
    out, weights = numpy_mha(q, k, v, attn_mask=attn_mask, need_weights=True)
    g = rng.standard_normal(out.shape)
    grads = numpy_mha.backward(g)
    assert not np.isnan(out).any() and not np.isnan(weights).any()
    assert all(np.isfinite(a).all() for a in grads)
    t_out, _, t_grads_in, t_grads = torch_run(
        torch_mha, q, k, v, g, need_weights=False, attn_mask=attn_mask
    )
    assert_close("output (torch SDPA route)", out, t_out, 1e-10)
    for label, ours, theirs in zip(
        ("grad query", "grad key", "grad value"), grads, t_grads_in
    ):
        assert_close(label, ours, theirs, 1e-10)
    for name, theirs in t_grads.items():
        assert_close(
            f"grad {name}",
            mha.torch_state_dict(numpy_mha, grads=True)[name],
            theirs,
            1e-10,
        )
    t_out_w, t_weights, _, _ = torch_run(
        torch_mha, q, k, v, need_weights=True, attn_mask=attn_mask
    )
    if options:
        assert_close("output (need_weights route)", out, t_out_w, 1e-10)
        assert_close("weights", weights, t_weights, 1e-10)
    else:
        np.testing.assert_array_equal(weights[:, 1], 0.0)
        np.testing.assert_allclose(
            out[:, 1], np.broadcast_to(numpy_mha.b_O, (N, E)), rtol=0, atol=1e-12
        )
        assert torch.isnan(t_weights[:, 1]).all() and torch.isnan(t_out_w[:, 1]).all()
        assert_close(
            "other rows (need_weights route)",
            np.delete(out, 1, axis=1),
            np.delete(t_out_w.numpy(), 1, axis=1),
            1e-10,
        )


@pytest.mark.parametrize(
    "options", [{"add_bias_kv": True}, {"add_zero_attn": True}], ids=option_ids
)
def test_is_causal_means_the_explicit_mask_even_where_torch_hint_differs(options):
    """torch's is_causal hint skips padding the mask for the extra key; we follow the explicit mask."""
    numpy_mha, torch_mha = matching_pair(E, H, dtype=np.float64, seed=11, **options)
    x = np.random.default_rng(11).standard_normal((N, L, E))
    causal_blocked = np.triu(np.ones((L, L), dtype=bool), k=1)
    ours = numpy_mha(x, is_causal=True)
    explicit, _, _, _ = torch_run(
        torch_mha,
        x,
        None,
        None,
        self_attention=True,
        need_weights=False,
        attn_mask=causal_blocked,
    )
    hinted, _, _, _ = torch_run(
        torch_mha,
        x,
        None,
        None,
        self_attention=True,
        need_weights=False,
        attn_mask=causal_blocked,
        is_causal=True,
    )
    assert_close(
        "output with is_causal=True vs torch's explicit mask", ours, explicit, 1e-10
    )
    assert np.abs(hinted.numpy() - explicit.numpy()).max() > 1e-3, (
        "torch's is_causal hint now agrees: update the docs"
    )


def test_torch_fast_path_matches():
    """torch's fused fast path (eval, no grad, self-attention, even heads) agrees within 1e-5."""
    numpy_mha, torch_mha = matching_pair(64, 8, dtype=np.float32, seed=2)
    x = np.random.default_rng(2).standard_normal((4, 12, 64)).astype(np.float32)
    kpm = np.zeros((4, 12), dtype=bool)
    kpm[1, -3:] = True
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        fast, _ = torch_mha(
            xt, xt, xt, need_weights=False, key_padding_mask=torch.from_numpy(kpm)
        )
    assert_close(
        "output vs torch fast path", numpy_mha(x, key_padding_mask=kpm), fast, 1e-5
    )


def test_weights_of_returned_need_weights_are_a_copy():
    numpy_mha, _ = matching_pair(E, H, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((N, L, E))
    out, w = numpy_mha(x, need_weights=True, average_attn_weights=False)
    g = np.ones_like(out)
    before = numpy_mha.backward(g)
    w[...] = 0
    np.testing.assert_array_equal(numpy_mha.backward(g), before)


def test_to_pytorch_round_trip():
    for options in CONSTRUCTOR:
        numpy_mha = mha.MultiHeadAttention(E, H, seed=4, dtype=np.float64, **options)
        if numpy_mha.b_Q is not None:
            numpy_mha.b_K = np.full(E, 0.3)
        torch_mha = mha.to_pytorch(numpy_mha)
        assert not torch_mha.training
        rng = np.random.default_rng(4)
        q = rng.standard_normal((N, L, E))
        k = rng.standard_normal((N, S, numpy_mha.kdim))
        v = rng.standard_normal((N, S, numpy_mha.vdim))
        with torch.no_grad():
            theirs, _ = torch_mha(
                to_torch(q), to_torch(k), to_torch(v), need_weights=False
            )
        assert_close(
            f"round trip {option_ids(options)}", numpy_mha(q, k, v), theirs, 1e-10
        )
        back = mha.load_weights_from_pytorch(
            mha.MultiHeadAttention(E, H, dtype=np.float64, **options), torch_mha
        )
        for name, value in numpy_mha.parameters().items():
            np.testing.assert_array_equal(getattr(back, name), value, err_msg=name)
