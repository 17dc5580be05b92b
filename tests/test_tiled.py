"""mha.tiled against torch: the online softmax, the tiled forward and its backward by recomputation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TOL, bad_input_tests

import mha
from mha import tiled
from mha.tiled import (
    causal_blocks,
    online_softmax,
    sliding_window_mask,
    tiled_attention,
    tiled_attention_backward,
    tiled_attention_forward,
)


@pytest.mark.parametrize("block", [1, 2, 3, 7, 16, 100])
def test_online_softmax_equals_softmax(block):
    rng = np.random.default_rng(block)
    x = rng.standard_normal((5, 16)) * 30  # large logits: the max moves a lot
    x[1, 3:9] = -np.inf  # some keys masked
    x[2] = -np.inf  # a fully masked row: zeros
    x[3] = np.sort(x[3])  # the maximum grows at every block
    got = online_softmax(x, block)
    np.testing.assert_allclose(got, mha.softmax(x), rtol=0, atol=1e-15)
    assert np.all(got[2] == 0)
    assert np.all(np.isfinite(got))


def test_online_softmax_does_not_overflow_in_float32():
    x = np.array([[1000.0, 999.0, -1000.0, 1001.0]], dtype=np.float32)
    got = online_softmax(x, 1)
    assert got.dtype == np.float32
    np.testing.assert_allclose(
        got, torch.softmax(torch.from_numpy(x), -1).numpy(), atol=1e-7
    )


def _case(dtype, q_shape, kv_shape, Ev, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(q_shape).astype(dtype)
    k = rng.standard_normal(kv_shape).astype(dtype)
    v = rng.standard_normal(kv_shape[:-1] + (Ev,)).astype(dtype)
    return rng, q, k, v


def _torch_reference(q, k, v, dout, **kw):
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    if kw.get("attn_mask") is not None:
        kw["attn_mask"] = torch.from_numpy(kw["attn_mask"])
    out = F.scaled_dot_product_attention(tq, tk, tv, **kw)
    out.backward(torch.from_numpy(dout))
    return [t.detach().numpy() for t in (out, tq.grad, tk.grad, tv.grad)]


def _assert_parity(q, k, v, rng, block_q, block_k, **kw):
    out, cache = tiled_attention_forward(
        q, k, v, block_q=block_q, block_k=block_k, **kw
    )
    dout = rng.standard_normal(out.shape).astype(q.dtype)
    grads = tiled_attention_backward(dout, cache)
    expected = _torch_reference(q, k, v, dout, **kw)
    tol = TOL[q.dtype.type]
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), expected):
        assert got.shape == want.shape and got.dtype == q.dtype, name
        np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg=name)
    return cache


# 3 and 5 divide neither L = 12 nor S = 17
BLOCKS = [
    (1, 1),
    (3, 5),
    (4, 4),
    (8, 16),
    (64, 64),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("block_q, block_k", BLOCKS)
@pytest.mark.parametrize("L, S", [(12, 17), (17, 12), (12, 12), (1, 9)])
def test_tiled_matches_torch_without_mask(dtype, block_q, block_k, L, S):
    rng, q, k, v = _case(dtype, (2, 3, L, 8), (2, 3, S, 8), 6, L * S)
    _assert_parity(q, k, v, rng, block_q, block_k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("block_q, block_k", BLOCKS)
@pytest.mark.parametrize("L, S", [(12, 17), (17, 12), (13, 13)])
def test_tiled_causal_matches_torch_and_skips_blocks(dtype, block_q, block_k, L, S):
    rng, q, k, v = _case(dtype, (2, 3, L, 8), (2, 3, S, 8), 6, 7)
    cache = _assert_parity(q, k, v, rng, block_q, block_k, is_causal=True)
    assert cache["skipped"] == causal_blocks(L, S, block_q, block_k)[1]


def test_causal_skips_the_upper_triangle_of_blocks():
    assert causal_blocks(16, 16, 4, 4) == (10, 6)  # 4 x 4 tiles, 6 above the diagonal
    rng, q, k, v = _case(np.float64, (1, 16, 4), (1, 16, 4), 4, 0)
    assert (
        tiled_attention_forward(q, k, v, is_causal=True, block_q=4, block_k=4)[1][
            "skipped"
        ]
        == 6
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "kind", ["bool", "float", "bool_fully_masked", "float_fully_masked", "broadcast"]
)
@pytest.mark.parametrize("block_q, block_k", [(3, 5), (16, 16)])
def test_tiled_masks_match_torch(dtype, kind, block_q, block_k):
    rng, q, k, v = _case(dtype, (2, 3, 11, 8), (2, 3, 13, 8), 5, 3)
    keep = rng.random((2, 3, 11, 13)) > 0.4
    if "fully" in kind:
        keep[0, 1, 4] = False  # one query sees no key
        keep[1, :, 10] = False
    mask = keep
    if kind.startswith("float"):
        mask = np.where(keep, rng.standard_normal(keep.shape), -np.inf).astype(dtype)
    if kind == "broadcast":
        mask = keep[0, 0]  # (L, S) for every batch and head
    _assert_parity(q, k, v, rng, block_q, block_k, attn_mask=mask)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("Hq, Hkv", [(4, 1), (4, 2), (6, 3), (6, 6)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_tiled_gqa_matches_torch(dtype, Hq, Hkv, is_causal):
    rng, q, k, v = _case(dtype, (2, Hq, 10, 8), (2, Hkv, 14, 8), 6, Hq * Hkv)
    _assert_parity(q, k, v, rng, 4, 3, is_causal=is_causal, enable_gqa=True)


def test_tiled_gqa_with_mask_and_scale():
    rng, q, k, v = _case(np.float64, (2, 4, 9, 8), (2, 2, 12, 8), 8, 5)
    mask = rng.random((4, 9, 12)) > 0.3
    _assert_parity(q, k, v, rng, 4, 5, attn_mask=mask, enable_gqa=True, scale=0.2)


@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0])
def test_tiled_scale_and_unbatched_inputs(scale):
    rng, q, k, v = _case(np.float64, (9, 4), (13, 4), 3, 11)
    _assert_parity(q, k, v, rng, 2, 4, scale=scale)


def test_tiled_broadcast_batch_axes_sum_their_gradients():
    rng = np.random.default_rng(4)
    q = rng.standard_normal((2, 3, 7, 4))
    k = rng.standard_normal((1, 3, 9, 4))  # shared by the batch
    v = rng.standard_normal((9, 5))  # shared by batch and heads
    _assert_parity(q, k, v, rng, 3, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_logits_do_not_overflow(dtype):
    # Scores near 800, above exp's overflow point in float32 (88.7) and float64 (709.8), yet spread
    # over a few units only, so that the weights are well conditioned. Small integers and a power-of-two
    # scale make every score exact on both sides: what is compared is the softmax's own rounding,
    # not the rounding of a score of 800 (its float32 spacing, 6e-5, would move the weights by more
    # than the tolerance on some CPUs and not on others).
    rng = np.random.default_rng(8)
    q, k = (80 + rng.integers(-1, 2, size=(1, 2, 9, 8)) for _ in range(2))
    q, k = q.astype(dtype), k.astype(dtype)
    v = rng.standard_normal((1, 2, 9, 8)).astype(dtype)
    scores = (q @ np.swapaxes(k, -1, -2)) / 64
    with np.errstate(over="ignore"):
        assert np.all(np.isinf(np.exp(scores)))  # exp alone would overflow everywhere
    assert mha.softmax(scores).max() < 0.9  # ... and no query's weights are one-hot
    cache = _assert_parity(q, k, v, rng, 2, 4, scale=1 / 64)
    assert np.all(cache["lse"] > np.log(np.finfo(dtype).max))


def test_tiled_output_alone_and_lse_match_torch():
    rng, q, k, v = _case(np.float64, (2, 2, 6, 4), (2, 2, 10, 4), 4, 9)
    keep = rng.random((6, 10)) > 0.3
    keep[2] = False
    out, cache = tiled_attention_forward(q, k, v, keep, block_q=4, block_k=3)
    np.testing.assert_array_equal(
        tiled_attention(q, k, v, keep, block_q=4, block_k=3), out
    )
    scores = torch.from_numpy(q) @ torch.from_numpy(k).transpose(-1, -2) / 2.0
    scores = scores.masked_fill(~torch.from_numpy(keep), -torch.inf)
    np.testing.assert_allclose(
        cache["lse"], torch.logsumexp(scores, -1).numpy(), atol=1e-12
    )
    assert np.all(np.isneginf(cache["lse"][..., 2]))


def test_tiled_does_not_modify_its_inputs():
    rng, q, k, v = _case(np.float32, (2, 5, 4), (2, 7, 4), 4, 1)
    mask = np.where(rng.random((5, 7)) > 0.5, 0.0, -np.inf).astype(np.float32)
    copies = [a.copy() for a in (q, k, v, mask)]
    out, cache = tiled_attention_forward(q, k, v, mask, block_q=2, block_k=3)
    dout = np.ones_like(out)
    tiled_attention_backward(dout, cache)
    for a, c in zip((q, k, v, mask), copies):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(dout, 1)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"block_q": 0}, ValueError, "block_q"),
        ({"block_k": 2.5}, TypeError, "block_k"),
        ({"block_q": True}, TypeError, "block_q"),
        ({"is_causal": "yes"}, TypeError, "is_causal"),
        (
            {"is_causal": True, "attn_mask": np.ones((4, 6), bool)},
            ValueError,
            "attn_mask",
        ),
        ({"attn_mask": np.ones((4, 6), int)}, TypeError, "attn_mask"),
        ({"attn_mask": np.ones((5, 6), bool)}, ValueError, "attn_mask"),
        ({"scale": "0.5"}, TypeError, "scale"),
        ({"enable_gqa": True}, ValueError, "enable_gqa"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, words):
    rng = np.random.default_rng(0)
    q, k, v = (
        rng.standard_normal((4, 8)),
        rng.standard_normal((6, 8)),
        rng.standard_normal((6, 8)),
    )
    with pytest.raises(error, match=words):
        tiled_attention_forward(q, k, v, **kwargs)


_RNG = np.random.default_rng(0)
_Q, _K, _V = (
    _RNG.standard_normal((2, 4, 8)),
    _RNG.standard_normal((2, 6, 8)),
    _RNG.standard_normal((2, 6, 8)),
)
_CACHE = tiled_attention_forward(_Q, _K, _V)[1]

# Misuse of every public function: (call, error, regex naming the argument and what came).
BAD = [
    (
        lambda: tiled_attention_forward(_Q, _K[..., :4], _V),
        ValueError,
        r"same last dimension.*query \(2, 4, 8\) and key \(2, 6, 4\)",
    ),
    (
        lambda: tiled_attention_forward(_Q, _K, _V[:, :5]),
        ValueError,
        r"sequence length.*key \(2, 6, 8\) and value \(2, 5, 8\)",
    ),
    (
        lambda: tiled_attention_forward(_Q.astype(int), _K, _V),
        TypeError,
        r"query must be a floating-point array, got integer dtype int64",
    ),
    (
        # once an AttributeError from deep inside: the SDPA checks skip a missing value
        lambda: tiled_attention_forward(_Q, _K, None),
        TypeError,
        r"value must be an array, got None",
    ),
    (
        lambda: tiled_attention_forward(
            _RNG.standard_normal((1, 3, 4, 8)),
            _RNG.standard_normal((1, 2, 6, 8)),
            _RNG.standard_normal((1, 2, 6, 8)),
            enable_gqa=True,
        ),
        ValueError,
        r"query heads \(3\) to be a multiple of key heads \(2\)",
    ),
    (
        lambda: tiled_attention(_Q, _K, _V, block_k=0),
        ValueError,
        r"block_k must be a positive int, got 0",
    ),
    (
        lambda: tiled_attention(_Q, _K, None),
        TypeError,
        r"value must be an array, got None",
    ),
    (
        lambda: tiled_attention_backward(np.ones((2, 4, 7)), _CACHE),
        ValueError,
        r"dout must have the output's shape \(2, 4, 8\), got \(2, 4, 7\)",
    ),
    (
        lambda: tiled_attention_backward(np.ones((2, 4, 8), int), _CACHE),
        TypeError,
        r"dout must be a floating-point array, got integer dtype int64",
    ),
    (
        lambda: tiled_attention_backward(np.ones((2, 2)), {}),
        TypeError,
        r"cache must be the dict that tiled_attention_forward returned, got a dict",
    ),
    (
        lambda: tiled_attention_backward(np.ones((2, 2)), [1]),
        TypeError,
        r"cache must be the dict .*, got list",
    ),
    (
        lambda: online_softmax(_Q, block=None),
        TypeError,
        r"block must be a positive int, got None",
    ),
    (
        lambda: online_softmax(np.arange(4)),
        TypeError,
        r"x must be a floating-point array, got integer dtype int64",
    ),
    (
        lambda: causal_blocks(4, 4, 0, 1),
        ValueError,
        r"block_q must be a positive int, got 0",
    ),
    (
        lambda: causal_blocks(4.0, 4, 1, 1),
        TypeError,
        r"L must be a positive int, got 4.0",
    ),
    (
        lambda: causal_blocks(4, 4, 1, 1, window=0),
        ValueError,
        r"window must be a positive int, got 0",
    ),
    (
        lambda: sliding_window_mask(4, 4, 0),
        ValueError,
        r"window must be a positive int, got 0",
    ),
    (
        lambda: sliding_window_mask(4, 4.5, 2),
        TypeError,
        r"S must be a positive int, got 4.5",
    ),
]


test_bad_input_is_named, test_every_function_of_the_module_has_a_bad_input_case = (
    bad_input_tests(tiled, BAD)
)


@pytest.mark.parametrize("is_causal", [False, True])
def test_threaded_query_blocks_match_serial_and_torch(is_causal):
    # Large enough for mha.parallel's pool (work above MIN_PARALLEL_SIZE): the query blocks run in
    # threads with the BLAS on one thread; every block is computed as in the serial run.
    from mha import parallel

    rng, q, k, v = _case(np.float32, (1, 4, 300, 32), (1, 4, 300, 32), 32, 12)
    assert parallel.MIN_PARALLEL_SIZE < 4 * 300 * (32 + 300)
    dout = rng.standard_normal((1, 4, 300, 32)).astype(np.float32)
    before = parallel.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            parallel.set_num_threads(n)
            out, cache = tiled_attention_forward(
                q, k, v, is_causal=is_causal, block_q=64, block_k=96
            )
            results.append(
                (out, cache["skipped"], *tiled_attention_backward(dout, cache))
            )
    finally:
        parallel.set_num_threads(before)
    for serial, threaded in zip(*results):
        np.testing.assert_array_equal(serial, threaded)
    expected = _torch_reference(q, k, v, dout, is_causal=is_causal)
    for got, want in zip((results[1][0], *results[1][2:]), expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert results[1][1] == (causal_blocks(300, 300, 64, 96)[1] if is_causal else 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("window", [1, 3, 8, 40])
@pytest.mark.parametrize("block_q, block_k", [(1, 1), (3, 5), (8, 4), (64, 64)])
def test_sliding_window_matches_the_explicit_mask_in_torch(
    dtype, window, block_q, block_k
):

    rng, q, k, v = _case(dtype, (2, 3, 21, 8), (2, 3, 21, 8), 6, window)
    out, cache = tiled_attention_forward(
        q, k, v, is_causal=True, window=window, block_q=block_q, block_k=block_k
    )
    dout = rng.standard_normal(out.shape).astype(dtype)
    grads = tiled_attention_backward(dout, cache)
    expected = _torch_reference(
        q, k, v, dout, attn_mask=sliding_window_mask(21, 21, window)
    )
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL[dtype], err_msg=name)
    assert cache["skipped"] == causal_blocks(21, 21, block_q, block_k, window)[1]


def test_sliding_window_skips_the_tiles_left_of_every_window():

    mask = sliding_window_mask(5, 5, 2)
    np.testing.assert_array_equal(
        mask, np.tril(np.ones((5, 5), bool)) & ~np.tril(np.ones((5, 5), bool), -2)
    )
    # 16 x 16 in 4 x 4 tiles, window 4: the diagonal and the tile just left of it, 7 of 16 computed
    assert causal_blocks(16, 16, 4, 4) == (10, 6)
    assert causal_blocks(16, 16, 4, 4, window=4) == (7, 9)
    # a window longer than the sequence: causal
    assert causal_blocks(16, 16, 4, 4, window=100) == (
        10,
        6,
    )
    rng, q, k, v = _case(np.float64, (1, 16, 4), (1, 16, 4), 4, 0)
    out, cache = tiled_attention_forward(
        q, k, v, is_causal=True, window=4, block_q=4, block_k=4
    )
    assert cache["skipped"] == 9
    np.testing.assert_allclose(
        out,
        mha.scaled_dot_product_attention(
            q, k, v, attn_mask=sliding_window_mask(16, 16, 4)
        ),
        rtol=0,
        atol=1e-12,
    )


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"window": 4}, ValueError, "needs is_causal=True"),
        ({"window": 0, "is_causal": True}, ValueError, "window"),
        ({"window": 2.0, "is_causal": True}, TypeError, "window"),
    ],
)
def test_bad_window_is_named(kwargs, error, words):
    rng, q, k, v = _case(np.float64, (4, 8), (6, 8), 8, 0)
    with pytest.raises(error, match=words):
        tiled_attention_forward(q, k, v, **kwargs)
