"""mha.kv_cache: decoding token by token equals the full causal forward, in NumPy and in torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mha
from mha.kv_cache import (
    GroupedQueryAttention,
    KVCache,
    bottom_right_causal_mask,
    decode_step,
    kv_cache_bytes,
    mha_decode_step,
)


def _module(dtype, seed=0, E=24, H=4):
    m = mha.MultiHeadAttention(E, H, batch_first=True, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for name in ("b_Q", "b_K", "b_V", "b_O"):  # non-zero biases, so they are tested too
        setattr(m, name, (0.1 * rng.standard_normal(E)).astype(dtype))
    return m


def _generate(step, x, prompt, cache):
    """Prefill ``prompt`` positions, then one token at a time: the outputs, concatenated."""
    outs = [step(x[:, :prompt], cache)]
    for t in range(prompt, x.shape[1]):
        outs.append(step(x[:, t : t + 1], cache))
    return np.concatenate(outs, axis=1)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
@pytest.mark.parametrize("prompt", [1, 5])
@pytest.mark.parametrize("capacity", [None, 12])
def test_mha_decoding_matches_full_causal_forward_and_torch(
    dtype, tol, prompt, capacity
):
    m = _module(dtype)
    x = np.random.default_rng(1).standard_normal((2, 12, 24)).astype(dtype)
    cache = KVCache(2, 4, 6, capacity=capacity, dtype=dtype)
    got = _generate(lambda t, c: mha_decode_step(m, t, c), x, prompt, cache)
    full = m(x, is_causal=True)
    np.testing.assert_allclose(got, full, rtol=0, atol=tol)
    twin = mha.to_pytorch(m)
    # True = blocked, torch's convention
    causal = torch.triu(torch.ones(12, 12, dtype=torch.bool), 1)
    with torch.no_grad():
        want, _ = twin(
            *(torch.from_numpy(x),) * 3, attn_mask=causal, need_weights=False
        )
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=tol)
    assert len(cache) == 12 and cache.length(0) == 12


def _torch_gqa(layer, x):
    w = {n: torch.from_numpy(a) for n, a in layer.weights.items()}
    xt = torch.from_numpy(x)
    N, L, E = x.shape
    H, Hkv, hd = layer.num_heads, layer.num_kv_heads, layer.head_dim
    q = (xt @ w["W_Q"]).view(N, L, H, hd).transpose(1, 2)
    k = (xt @ w["W_K"]).view(N, L, Hkv, hd).transpose(1, 2)
    v = (xt @ w["W_V"]).view(N, L, Hkv, hd).transpose(1, 2)
    heads = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return (heads.transpose(1, 2).reshape(N, L, E) @ w["W_O"]).numpy()


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
@pytest.mark.parametrize("Hkv", [1, 2, 3, 6])
def test_gqa_and_mqa_decoding_match_torch(dtype, tol, Hkv):
    layer = GroupedQueryAttention(36, 6, Hkv, seed=Hkv, dtype=dtype)
    x = np.random.default_rng(2).standard_normal((3, 10, 36)).astype(dtype)
    cache = layer.new_cache(3)
    got = _generate(layer.step, x, 4, cache)
    np.testing.assert_allclose(layer(x), _torch_gqa(layer, x), rtol=0, atol=tol)
    np.testing.assert_allclose(got, _torch_gqa(layer, x), rtol=0, atol=tol)
    keys, values = cache.read()
    assert keys.shape == values.shape == (3, Hkv, 10, 6)


def test_cache_shrinks_by_the_group_factor():
    sizes = {
        h: GroupedQueryAttention(48, 8, h).new_cache(1, capacity=100).nbytes
        for h in (8, 2, 1)
    }
    assert sizes[8] == kv_cache_bytes(1, 1, 8, 6, 100) == 2 * 8 * 100 * 6 * 4
    assert sizes[8] == 4 * sizes[2] == 8 * sizes[1]


def test_bottom_right_mask():
    np.testing.assert_array_equal(
        bottom_right_causal_mask(3, 3), np.tril(np.ones((3, 3), bool))
    )
    np.testing.assert_array_equal(bottom_right_causal_mask(1, 4), np.ones((1, 4), bool))
    np.testing.assert_array_equal(
        bottom_right_causal_mask(2, 4), [[1, 1, 1, 0], [1, 1, 1, 1]]
    )
    # torch's is_causal is top-left: a one-query step sees only key 0, not every key
    q, k = torch.ones(1, 1, 8), torch.ones(1, 4, 8)
    v = torch.arange(4.0).view(1, 4, 1)
    assert F.scaled_dot_product_attention(q, k, v, is_causal=True).item() == 0.0
    assert F.scaled_dot_product_attention(
        q, k, v, attn_mask=torch.from_numpy(bottom_right_causal_mask(1, 4))
    ).item() == pytest.approx(1.5)


def test_chunked_prefill_matches_full_forward():
    m = _module(np.float64, seed=3)
    x = np.random.default_rng(3).standard_normal((1, 11, 24))
    cache = KVCache(1, 4, 6, dtype=np.float64)
    got = np.concatenate(
        [mha_decode_step(m, x[:, a:b], cache) for a, b in ((0, 4), (4, 9), (9, 11))],
        axis=1,
    )
    np.testing.assert_allclose(got, m(x, is_causal=True), rtol=0, atol=1e-12)


def test_growing_cache_doubles_and_keeps_its_contents():
    cache = KVCache(1, 2, 3, dtype=np.float64)
    start = cache.nbytes
    rng = np.random.default_rng(0)
    ks = [rng.standard_normal((1, 2, 1, 3)) for _ in range(40)]
    for k in ks:
        cache.update(0, k, -k)
    keys, values = cache.read()
    np.testing.assert_array_equal(keys, np.concatenate(ks, axis=2))
    np.testing.assert_array_equal(values, -keys)
    assert cache.nbytes == 4 * start  # 16 -> 32 -> 64 positions
    cache.reset()
    assert len(cache) == 0 and cache.read()[0].shape == (1, 2, 0, 3)


def test_preallocated_cache_keeps_its_buffers_and_refuses_to_overflow():
    cache = KVCache(2, 1, 4, capacity=3, num_layers=2)
    assert cache.nbytes == kv_cache_bytes(2, 2, 1, 4, 3) == 2 * 2 * 2 * 1 * 3 * 4 * 4
    k = np.ones((2, 1, 2, 4), np.float32)
    cache.update(1, k, k)
    assert (cache.length(0), cache.length(1)) == (0, 2)
    with pytest.raises(ValueError, match="capacity of 3"):
        cache.update(1, k, k)
    cache.reset()
    cache.update(1, k, k)  # room again after a reset
    assert cache.nbytes == kv_cache_bytes(2, 2, 1, 4, 3)


def test_multi_layer_generation_keeps_layers_apart():
    layers = [
        GroupedQueryAttention(16, 4, 2, seed=s, dtype=np.float64) for s in range(2)
    ]
    x = np.random.default_rng(5).standard_normal((1, 7, 16))
    full = layers[1](layers[0](x))
    cache = KVCache(1, 2, 4, num_layers=2, dtype=np.float64)
    outs = []
    for t in range(7):
        h = decode_step(x[:, t : t + 1], layers[0].weights, 4, cache, layer=0)
        outs.append(decode_step(h, layers[1].weights, 4, cache, layer=1))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), full, rtol=0, atol=1e-12)


def test_bad_arguments_are_named():
    m = _module(np.float32)
    cache = KVCache(2, 4, 6)
    x = np.zeros((2, 1, 24), np.float32)
    with pytest.raises(ValueError, match="batch size 3"):
        mha_decode_step(m, np.zeros((3, 1, 24), np.float32), cache)
    with pytest.raises(TypeError, match="float32"):
        mha_decode_step(m, x.astype(np.float64), cache)
    with pytest.raises(ValueError, match="E = 24"):
        mha_decode_step(m, np.zeros((2, 1, 12), np.float32), cache)
    with pytest.raises(ValueError, match="Hkv=2"):
        mha_decode_step(m, x, KVCache(2, 2, 6))
    with pytest.raises(TypeError, match="cache"):
        mha_decode_step(m, x, None)
    with pytest.raises(ValueError, match="layer"):
        mha_decode_step(m, x, cache, layer=1)
    with pytest.raises(ValueError, match="add_bias_kv"):
        mha_decode_step(
            mha.MultiHeadAttention(24, 4, add_bias_kv=True, seed=0), x, cache
        )
    with pytest.raises(ValueError, match="capacity"):
        KVCache(1, 1, 1, capacity=0)
    with pytest.raises(TypeError, match="num_kv_heads"):
        KVCache(1, 1.5, 1)
    with pytest.raises(TypeError, match="dtype"):
        cache.update(0, np.zeros((2, 4, 1, 6)), np.zeros((2, 4, 1, 6)))
    with pytest.raises(ValueError, match="shape"):
        cache.update(
            0, np.zeros((2, 4, 1, 5), np.float32), np.zeros((2, 4, 1, 5), np.float32)
        )
    with pytest.raises(ValueError, match="num_kv_heads"):
        GroupedQueryAttention(24, 4, 3)
    assert len(cache) == 0  # nothing was appended by a failed call


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda w, c, x: decode_step(x, w, 5, c), ValueError, "num_heads"),
        (lambda w, c, x: decode_step(x, w, 0, c), ValueError, "num_heads"),
        (lambda w, c, x: decode_step(x, w, "4", c), TypeError, "num_heads"),
        (
            lambda w, c, x: decode_step(x, {"W_Q": w["W_Q"]}, 4, c),
            ValueError,
            "missing W_K, W_V, W_O",
        ),
        (lambda w, c, x: decode_step(x, [w], 4, c), TypeError, "weights"),
        (
            lambda w, c, x: decode_step(x, dict(w, W_K=w["W_K"][:, :6]), 4, c),
            ValueError,
            "W_V",
        ),
        (
            lambda w, c, x: decode_step(x, dict(w, W_O=w["W_O"][:, :18]), 4, c),
            ValueError,
            "W_O",
        ),
        (
            lambda w, c, x: decode_step(x, dict(w, W_K=w["W_K"][:3]), 4, c),
            ValueError,
            "W_K",
        ),
        (lambda w, c, x: kv_cache_bytes(1, 1, 1, 1, -1), ValueError, "length"),
        (lambda w, c, x: kv_cache_bytes(1, 1, 0, 1, 1), ValueError, "num_kv_heads"),
        (lambda w, c, x: kv_cache_bytes(1, 1, 1, 1, 1, dtype=int), TypeError, "dtype"),
        (lambda w, c, x: bottom_right_causal_mask(4, 2), ValueError, "L=4, S=2"),
        (lambda w, c, x: bottom_right_causal_mask(0, 2), ValueError, "L must be"),
    ],
)
def test_bad_decode_arguments_are_named(call, error, words):
    layer = GroupedQueryAttention(24, 4, 2, seed=0)
    cache = layer.new_cache(1)
    with pytest.raises(error, match=words):
        call(layer.weights, cache, np.zeros((1, 1, 24), np.float32))
    assert len(cache) == 0


def test_kv_cache_bytes_of_half_precision():
    assert kv_cache_bytes(2, 1, 4, 8, 10, dtype=np.float16) == 2 * 2 * 4 * 8 * 10 * 2
