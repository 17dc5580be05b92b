"""Decoding one token at a time with a key/value cache, for multi-head and grouped-query attention.

A causal model's key and value at position ``j`` never change once computed: a later
token only adds a row. :class:`KVCache` keeps them, per layer, in arrays
(N, Hkv, capacity, hd); :func:`decode_step` projects only the new tokens, appends their
keys and values, and lets the new queries attend to everything cached. Its new queries
are the *last* T of P + T positions, so the causal mask is aligned bottom-right
(:func:`bottom_right_causal_mask`), not top-left as ``is_causal=True`` builds it.

Grouped-query attention (:class:`GroupedQueryAttention`) has ``Hkv`` key/value heads
for ``H`` query heads (multi-query attention: ``Hkv = 1``), so the cache is ``H / Hkv``
times smaller.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ._checks import as_float_array, float_dtype, positive_int, rng_from_seed
from .attention import MultiHeadAttention
from .functional import linear, merge_heads, scaled_dot_product_attention, split_heads

__all__ = [
    "KVCache",
    "kv_cache_bytes",
    "bottom_right_causal_mask",
    "decode_step",
    "mha_decode_step",
    "GroupedQueryAttention",
]


def kv_cache_bytes(
    num_layers: int,
    batch_size: int,
    num_kv_heads: int,
    head_dim: int,
    length: int,
    dtype: DTypeLike = np.float32,
) -> int:
    """Bytes of keys and values for ``length`` positions: 2 * layers * N * Hkv * length * hd * itemsize."""
    num_layers, batch_size = (
        positive_int(num_layers, "num_layers"),
        positive_int(batch_size, "batch_size"),
    )
    num_kv_heads, head_dim = (
        positive_int(num_kv_heads, "num_kv_heads"),
        positive_int(head_dim, "head_dim"),
    )
    length = _non_negative_int(length, "length")
    try:
        itemsize = (
            np.dtype(dtype).itemsize if np.issubdtype(dtype, np.floating) else None
        )
    except TypeError:
        itemsize = None
    if itemsize is None:
        raise TypeError(
            f"dtype must be a NumPy float dtype (e.g. np.float16, np.float32), got {dtype!r}"
        )
    return 2 * num_layers * batch_size * num_kv_heads * length * head_dim * itemsize


def bottom_right_causal_mask(L: int, S: int) -> np.ndarray:
    """Bool (L, S), True where query ``i`` (absolute position ``S - L + i``) may see key ``j``.

    For L = S it is the ordinary causal mask; for L < S (a decode step, a chunk of a prefill)
    the last query sees every key. ``np.tril(ones((L, S)))`` is top-left: wrong there.
    """
    L, S = positive_int(L, "L"), positive_int(S, "S")
    if L > S:
        raise ValueError(
            f"L (the new queries) must be at most S (every key, cached and new), got L={L}, S={S}"
        )
    return np.tril(np.ones((L, S), dtype=bool), k=S - L)


def _non_negative_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"{name} must be a non-negative int, got {value!r} ({type(value).__name__})"
        )
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value}")
    return int(value)


class KVCache:
    """Keys and values of the positions seen so far: per layer, (N, Hkv, length, hd) each.

    ``capacity=None`` grows (doubling, so appending T tokens one by one copies O(T) rows in
    all); an int preallocates that many positions and refuses to overflow. ``nbytes`` is
    the memory the buffers hold now.
    """

    def __init__(
        self,
        batch_size: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        num_layers: int = 1,
        capacity: int | None = None,
        dtype: DTypeLike = np.float32,
    ) -> None:
        self.batch_size = positive_int(batch_size, "batch_size")
        self.num_kv_heads = positive_int(num_kv_heads, "num_kv_heads")
        self.head_dim = positive_int(head_dim, "head_dim")
        self.num_layers = positive_int(num_layers, "num_layers")
        self.capacity = None if capacity is None else positive_int(capacity, "capacity")
        self.dtype = float_dtype(dtype)
        self.reset()

    def reset(self) -> None:
        """Forget every position (a new sequence); a preallocated cache keeps its buffers."""
        size = self.capacity or 16
        shape = (self.batch_size, self.num_kv_heads, size, self.head_dim)
        if self.capacity is None or not hasattr(self, "_keys"):
            self._keys = [np.zeros(shape, self.dtype) for _ in range(self.num_layers)]
            self._values = [np.zeros(shape, self.dtype) for _ in range(self.num_layers)]
        self._length = [0] * self.num_layers

    def length(self, layer: int = 0) -> int:
        """Positions cached in ``layer``."""
        return self._length[self._layer(layer)]

    def __len__(self) -> int:
        return self._length[0]

    @property
    def nbytes(self) -> int:
        """Bytes held by the key and value buffers (allocated, not only filled)."""
        return sum(a.nbytes for a in self._keys + self._values)

    def read(self, layer: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Views ``(keys, values)`` of ``layer``'s cached positions, (N, Hkv, length, hd) each."""
        layer = self._layer(layer)
        n = self._length[layer]
        return self._keys[layer][:, :, :n], self._values[layer][:, :, :n]

    def update(
        self, layer: int, k: np.ndarray, v: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Append ``k``, ``v`` (N, Hkv, T, hd) to ``layer``; returns :meth:`read` of it afterwards."""
        layer = self._layer(layer)
        expected = (self.batch_size, self.num_kv_heads, "T", self.head_dim)
        for name, arr in (("k", k), ("v", v)):
            if not isinstance(arr, np.ndarray) or arr.dtype != self.dtype:
                got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
                raise TypeError(
                    f"{name} must be a {self.dtype} array (the cache's dtype), got {got}"
                )
            if arr.ndim != 4 or arr.shape[:2] + arr.shape[3:] != (
                self.batch_size,
                self.num_kv_heads,
                self.head_dim,
            ):
                raise ValueError(
                    f"{name} must have shape (N, Hkv, T, hd) = {expected}, got {arr.shape}"
                )
        if k.shape != v.shape:
            raise ValueError(
                f"k and v must have the same shape, got {k.shape} and {v.shape}"
            )
        n, T = self._length[layer], k.shape[2]
        if n + T > self._keys[layer].shape[2]:
            if self.capacity is not None:
                raise ValueError(
                    f"the cache's capacity of {self.capacity} positions would overflow: "
                    f"{n} cached + {T} new"
                )
            self._grow(layer, n + T)
        self._keys[layer][:, :, n : n + T] = k
        self._values[layer][:, :, n : n + T] = v
        self._length[layer] = n + T
        return self.read(layer)

    def _grow(self, layer: int, needed: int) -> None:
        size = max(needed, 2 * self._keys[layer].shape[2])
        for buffers in (self._keys, self._values):
            old = buffers[layer]
            buffers[layer] = np.zeros(old.shape[:2] + (size, old.shape[3]), self.dtype)
            buffers[layer][:, :, : old.shape[2]] = old

    def _layer(self, layer: object) -> int:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(
                f"layer must be an int in [0, {self.num_layers}), got {layer!r} "
                f"({type(layer).__name__})"
            )
        if not 0 <= layer < self.num_layers:
            raise ValueError(
                f"layer must be an int in [0, {self.num_layers}), got {layer!r}"
            )
        return int(layer)


def _step_arguments(
    x: ArrayLike,
    cache: object,
    layer: int,
    E: int,
    Hkv: int,
    hd: int,
    dtype: np.dtype,
) -> np.ndarray:
    """Checks of a decode step: x (N, T, E) of the weights' dtype, a cache of matching shape."""
    if not isinstance(cache, KVCache):
        raise TypeError(f"cache must be a KVCache, got {type(cache).__name__}")
    x = as_float_array(x, "x")
    if x.dtype != dtype:
        raise TypeError(f"x must be {dtype} like the weights, got {x.dtype}")
    if x.ndim != 3 or x.shape[2] != E or x.shape[1] == 0:
        raise ValueError(
            f"x must have shape (N, T, E) with E = {E} and T >= 1, got {x.shape}"
        )
    if x.shape[0] != cache.batch_size:
        raise ValueError(
            f"x's batch size {x.shape[0]} differs from the cache's batch_size {cache.batch_size}"
        )
    if (cache.num_kv_heads, cache.head_dim, cache.dtype) != (Hkv, hd, dtype):
        raise ValueError(
            f"the cache holds (Hkv={cache.num_kv_heads}, hd={cache.head_dim}, {cache.dtype}), "
            f"the weights need (Hkv={Hkv}, hd={hd}, {dtype})"
        )
    return x


def _weight_arguments(
    weights: object, num_heads: object
) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """Checks of a decode step's weights: (W_Q, W_K, E, head_dim, Hkv)."""
    if not isinstance(weights, dict):
        raise TypeError(
            f"weights must be a dict of arrays (W_Q, W_K, W_V, W_O), got {type(weights).__name__}"
        )
    missing = [n for n in ("W_Q", "W_K", "W_V", "W_O") if n not in weights]
    if missing:
        raise ValueError(
            f"weights must hold W_Q, W_K, W_V and W_O, missing {', '.join(missing)}"
        )
    num_heads = positive_int(num_heads, "num_heads")
    W_Q, W_K, W_V, W_O = (weights[n] for n in ("W_Q", "W_K", "W_V", "W_O"))
    for name, w in (("W_Q", W_Q), ("W_K", W_K), ("W_V", W_V), ("W_O", W_O)):
        if not isinstance(w, np.ndarray) or w.ndim != 2:
            raise ValueError(
                f"weights[{name!r}] must be a 2-D array (in, out), got "
                f"{getattr(w, 'shape', type(w).__name__)}"
            )
    E = W_Q.shape[0]
    if W_Q.shape[1] % num_heads:
        raise ValueError(
            f"num_heads ({num_heads}) must divide W_Q's {W_Q.shape[1]} output features"
        )
    hd = W_Q.shape[1] // num_heads
    if (
        W_K.shape[0] != E
        or W_K.shape[1] % hd
        or num_heads % max(W_K.shape[1] // hd, 1)
        or W_K.shape[1] == 0
    ):
        raise ValueError(
            f"W_K must be (E, Hkv * head_dim) = ({E}, Hkv * {hd}) with Hkv dividing num_heads "
            f"({num_heads}), got {W_K.shape}"
        )
    if W_V.shape != W_K.shape or W_O.shape != (W_Q.shape[1], E):
        raise ValueError(
            f"W_V must be {W_K.shape} like W_K and W_O ({W_Q.shape[1]}, {E}), "
            f"got {W_V.shape} and {W_O.shape}"
        )
    return W_Q, W_K, E, hd, W_K.shape[1] // hd


def decode_step(
    x: ArrayLike,
    weights: dict[str, np.ndarray],
    num_heads: int,
    cache: KVCache,
    layer: int = 0,
) -> np.ndarray:
    """Self-attention of T new tokens over the cache and themselves: x (N, T, E) -> (N, T, E).

    ``weights``: W_Q (E, E), W_K and W_V (E, Hkv * hd), W_O (E, E) in the book's (in, out)
    layout, and optional b_Q, b_K, b_V, b_O. T > 1 is a prefill (or a chunk of one); T = 1
    a decode step. Decoding into an empty cache is allowed: it is a prefill of one token.
    """
    W_Q, W_K, E, hd, Hkv = _weight_arguments(weights, num_heads)
    x = _step_arguments(x, cache, layer, E, Hkv, hd, W_Q.dtype)
    # (N, T, E) -> (N, H, T, hd)
    q = split_heads(linear(x, W_Q, weights.get("b_Q")), num_heads)
    # (N, T, Hkv*hd) -> (N, Hkv, T, hd)
    k = split_heads(linear(x, W_K, weights.get("b_K")), Hkv)
    v = split_heads(linear(x, weights["W_V"], weights.get("b_V")), Hkv)
    keys, values = cache.update(layer, k, v)  # (N, Hkv, P + T, hd) each
    mask = bottom_right_causal_mask(x.shape[1], keys.shape[2])  # (T, P + T)
    heads = scaled_dot_product_attention(
        q, keys, values, attn_mask=mask, enable_gqa=Hkv != num_heads
    )
    # (N, H, T, hd) -> (N, T, E)
    return linear(merge_heads(heads), weights["W_O"], weights.get("b_O"))


def mha_decode_step(
    module: MultiHeadAttention, x: ArrayLike, cache: KVCache, layer: int = 0
) -> np.ndarray:
    """:func:`decode_step` with the weights of a :class:`mha.MultiHeadAttention`; x (N, T, E)."""
    if not isinstance(module, MultiHeadAttention):
        raise TypeError(
            f"module must be a mha.MultiHeadAttention, got {type(module).__name__}"
        )
    if (
        module.bias_k is not None
        or module.add_zero_attn
        or module.kdim != module.d_model
        or module.vdim != module.d_model
    ):
        raise ValueError(
            "mha_decode_step needs plain self-attention weights (no add_bias_kv, add_zero_attn, "
            "kdim or vdim)"
        )
    return decode_step(x, module.parameters(), module.num_heads, cache, layer)


class GroupedQueryAttention:
    """Causal self-attention with ``num_heads`` query heads sharing ``num_kv_heads`` key/value heads.

    W_Q (E, E), W_K and W_V (E, Hkv * hd), W_O (E, E), no biases; ``num_kv_heads=1`` is
    multi-query attention, ``num_kv_heads=num_heads`` ordinary multi-head attention.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_kv_heads: int,
        *,
        seed: int | np.random.Generator | None = None,
        dtype: DTypeLike = np.float32,
    ) -> None:
        self.d_model = positive_int(d_model, "d_model")
        self.num_heads = positive_int(num_heads, "num_heads")
        self.num_kv_heads = positive_int(num_kv_heads, "num_kv_heads")
        if d_model % num_heads or num_heads % num_kv_heads:
            raise ValueError(
                f"d_model ({d_model}) must be divisible by num_heads ({num_heads}) and num_heads "
                f"by num_kv_heads ({num_kv_heads})"
            )
        self.head_dim = d_model // num_heads
        dtype, rng = float_dtype(dtype), rng_from_seed(seed)
        kv = num_kv_heads * self.head_dim
        bound = 1 / math.sqrt(d_model)
        self.weights = {
            name: rng.uniform(-bound, bound, (d_model, n)).astype(dtype)
            for name, n in (
                ("W_Q", d_model),
                ("W_K", kv),
                ("W_V", kv),
                ("W_O", d_model),
            )
        }

    def new_cache(self, batch_size: int, capacity: int | None = None) -> KVCache:
        """An empty cache shaped for these weights."""
        return KVCache(
            batch_size,
            self.num_kv_heads,
            self.head_dim,
            capacity=capacity,
            dtype=self.weights["W_Q"].dtype,
        )

    def forward(self, x: ArrayLike) -> np.ndarray:
        """Full causal attention over x (N, L, E) -> (N, L, E), every score computed."""
        w = self.weights
        x = as_float_array(x, "x", w["W_Q"].dtype)
        if x.ndim < 2 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must have shape (N, L, E) with E = d_model = {self.d_model}, "
                f"got {x.shape}"
            )
        # (N, L, E) -> (N, H, L, hd)
        q = split_heads(linear(x, w["W_Q"]), self.num_heads)
        # (N, L, Hkv*hd) -> (N, Hkv, L, hd)
        k = split_heads(linear(x, w["W_K"]), self.num_kv_heads)
        v = split_heads(linear(x, w["W_V"]), self.num_kv_heads)
        heads = scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return linear(merge_heads(heads), w["W_O"])  # (N, H, L, hd) -> (N, L, E)

    __call__ = forward

    def step(self, x: ArrayLike, cache: KVCache) -> np.ndarray:
        """:func:`decode_step` with these weights: x (N, T, E) new tokens -> (N, T, E)."""
        return decode_step(x, self.weights, self.num_heads, cache)
