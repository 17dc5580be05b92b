"""mha.kv_cache: decoding token by token equals the full causal forward, in NumPy and in torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import bad_input_tests

import mha
from mha import kv_cache
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


# The misuse cases share these; a failed call must not append to either cache.
_M = _module(np.float32)
_CACHE = KVCache(2, 4, 6)
_X = np.zeros((2, 1, 24), np.float32)
_GQA = GroupedQueryAttention(24, 4, 2, seed=0)
_GQA_CACHE = _GQA.new_cache(1)
_W = _GQA.weights
_X1 = np.zeros((1, 1, 24), np.float32)
_K = np.zeros((2, 4, 1, 6), np.float32)

# Misuse of every public function: (call, error, regex naming the argument and what came).
BAD = [
    (
        lambda: mha_decode_step(_M, np.zeros((3, 1, 24), np.float32), _CACHE),
        ValueError,
        r"x's batch size 3 differs from the cache's batch_size 2",
    ),
    (
        lambda: mha_decode_step(_M, _X.astype(np.float64), _CACHE),
        TypeError,
        r"x must be float32 like the weights, got float64",
    ),
    (
        lambda: mha_decode_step(_M, np.zeros((2, 1, 12), np.float32), _CACHE),
        ValueError,
        r"x must have shape \(N, T, E\) with E = 24 .*got \(2, 1, 12\)",
    ),
    (
        lambda: mha_decode_step(_M, _X, KVCache(2, 2, 6)),
        ValueError,
        r"the cache holds \(Hkv=2, hd=6, float32\), the weights need \(Hkv=4",
    ),
    (
        lambda: mha_decode_step(_M, _X, None),
        TypeError,
        r"cache must be a KVCache, got NoneType",
    ),
    (
        lambda: mha_decode_step(_M, _X, _CACHE, layer=1),
        ValueError,
        r"layer must be an int in \[0, 1\), got 1",
    ),
    (
        lambda: mha_decode_step(_M, _X, _CACHE, layer="0"),
        TypeError,
        r"layer must be an int in \[0, 1\), got '0' \(str\)",
    ),
    (
        lambda: mha_decode_step(
            mha.MultiHeadAttention(24, 4, add_bias_kv=True, seed=0), _X, _CACHE
        ),
        ValueError,
        r"plain self-attention weights \(no add_bias_kv",
    ),
    (
        # once an AttributeError ('dict' object has no attribute 'bias_k')
        lambda: mha_decode_step(_M.parameters(), _X, _CACHE),
        TypeError,
        r"module must be a mha.MultiHeadAttention, got dict",
    ),
    (
        lambda: KVCache(1, 1, 1, capacity=0),
        ValueError,
        r"capacity must be a positive int, got 0",
    ),
    (
        lambda: KVCache(1, 1.5, 1),
        TypeError,
        r"num_kv_heads must be a positive int, got 1.5",
    ),
    (
        lambda: KVCache(1, 1, 1, dtype=np.int32),
        TypeError,
        r"dtype must be np.float32 or np.float64, got int32",
    ),
    (
        lambda: _CACHE.update(0, _K.astype(np.float64), _K),
        TypeError,
        r"k must be a float32 array \(the cache's dtype\), got float64",
    ),
    (
        lambda: _CACHE.update(0, _K[..., :5], _K[..., :5]),
        ValueError,
        r"k must have shape \(N, Hkv, T, hd\) = \(2, 4, 'T', 6\), got \(2, 4, 1, 5\)",
    ),
    (
        lambda: _CACHE.update(0, _K, np.zeros((2, 4, 2, 6), np.float32)),
        ValueError,
        r"k and v must have the same shape, got \(2, 4, 1, 6\) and \(2, 4, 2, 6\)",
    ),
    (
        lambda: KVCache(1, 1, 1, capacity=2).update(0, *(np.zeros((1, 1, 3, 1)),) * 2),
        TypeError,
        r"k must be a float32 array",
    ),
    (
        lambda: _CACHE.read(2),
        ValueError,
        r"layer must be an int in \[0, 1\), got 2",
    ),
    (
        lambda: GroupedQueryAttention(24, 4, 3),
        ValueError,
        r"divisible by num_heads \(4\) and num_heads by num_kv_heads \(3\)",
    ),
    (
        lambda: GroupedQueryAttention(24, 4, 2, dtype=int),
        TypeError,
        r"dtype must be np.float32 or np.float64, got int64",
    ),
    (
        lambda: _GQA.forward(np.zeros((1, 3, 12), np.float32)),
        ValueError,
        r"x must have shape \(N, L, E\) with E = d_model = 24, got \(1, 3, 12\)",
    ),
    (
        lambda: _GQA(np.zeros((1, 3, 24), int)),
        TypeError,
        r"x must be a floating-point array, got integer dtype int64",
    ),
    (
        lambda: _GQA.step(_X1, KVCache(1, 4, 6)),
        ValueError,
        r"the cache holds \(Hkv=4, hd=6, float32\), the weights need \(Hkv=2",
    ),
    (
        lambda: decode_step(_X1, _W, 5, _GQA_CACHE),
        ValueError,
        r"num_heads \(5\) must divide W_Q's 24 output features",
    ),
    (
        lambda: decode_step(_X1, _W, 0, _GQA_CACHE),
        ValueError,
        r"num_heads must be a positive int, got 0",
    ),
    (
        lambda: decode_step(_X1, _W, "4", _GQA_CACHE),
        TypeError,
        r"num_heads must be a positive int, got '4' \(str\)",
    ),
    (
        lambda: decode_step(_X1, {"W_Q": _W["W_Q"]}, 4, _GQA_CACHE),
        ValueError,
        r"weights must hold W_Q, W_K, W_V and W_O, missing W_K, W_V, W_O",
    ),
    (
        lambda: decode_step(_X1, [_W], 4, _GQA_CACHE),
        TypeError,
        r"weights must be a dict of arrays .*, got list",
    ),
    (
        lambda: decode_step(_X1, dict(_W, W_K=_W["W_K"][:, :6]), 4, _GQA_CACHE),
        ValueError,
        r"W_V must be \(24, 6\) like W_K .*got \(24, 12\)",
    ),
    (
        lambda: decode_step(_X1, dict(_W, W_O=_W["W_O"][:, :18]), 4, _GQA_CACHE),
        ValueError,
        r"W_O \(24, 24\), got \(24, 12\) and \(24, 18\)",
    ),
    (
        lambda: decode_step(_X1, dict(_W, W_K=_W["W_K"][:3]), 4, _GQA_CACHE),
        ValueError,
        r"W_K must be \(E, Hkv \* head_dim\) = \(24, Hkv \* 6\).*got \(3, 12\)",
    ),
    (
        lambda: decode_step(_X1, dict(_W, W_V=[1]), 4, _GQA_CACHE),
        ValueError,
        r"weights\['W_V'\] must be a 2-D array \(in, out\), got list",
    ),
    (
        lambda: kv_cache_bytes(1, 1, 1, 1, -1),
        ValueError,
        r"length must be a non-negative int, got -1",
    ),
    (
        lambda: kv_cache_bytes(1, 1, 1, 1, 2.0),
        TypeError,
        r"length must be a non-negative int, got 2.0 \(float\)",
    ),
    (
        lambda: kv_cache_bytes(1, 1, 0, 1, 1),
        ValueError,
        r"num_kv_heads must be a positive int, got 0",
    ),
    (
        lambda: kv_cache_bytes(1, 1, 1, 1, 1, dtype=int),
        TypeError,
        r"dtype must be a NumPy float dtype .*got <class 'int'>",
    ),
    (
        lambda: bottom_right_causal_mask(4, 2),
        ValueError,
        r"L \(the new queries\) must be at most S .*got L=4, S=2",
    ),
    (
        lambda: bottom_right_causal_mask(0, 2),
        ValueError,
        r"L must be a positive int, got 0",
    ),
]


def _unchanged():
    # nothing was appended by a failed call
    assert len(_CACHE) == 0 and len(_GQA_CACHE) == 0


test_bad_input_is_named, test_every_function_of_the_module_has_a_bad_input_case = (
    bad_input_tests(kv_cache, BAD, unchanged=_unchanged)
)


def test_kv_cache_bytes_of_half_precision():
    assert kv_cache_bytes(2, 1, 4, 8, 10, dtype=np.float16) == 2 * 2 * 4 * 8 * 10 * 2
