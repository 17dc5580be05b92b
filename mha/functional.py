"""Softmax and scaled dot-product attention, each forward beside its backward.

Shapes use torch's names: ``L`` query positions, ``S`` key positions, ``E``
the query/key feature size, ``Ev`` the value feature size, and ``...`` any
leading batch/head axes (they broadcast as in ``np.matmul``).
"""

from __future__ import annotations

import math

import numpy as np

from ._checks import as_float_array, mask_array

__all__ = [
    "softmax",
    "softmax_backward",
    "causal_mask",
    "attention_forward",
    "attention_backward",
    "scaled_dot_product_attention",
]


def softmax(x, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax of ``x`` along ``axis``; returns a new array.

    The row maximum is subtracted before ``exp`` so large logits cannot
    overflow. A row that is entirely ``-inf`` (every key masked) gives zeros
    rather than NaN: torch's ``softmax`` returns NaN there.
    """
    x = as_float_array(x, "x")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an int, got {axis!r} ({type(axis).__name__})")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be in [-{x.ndim}, {x.ndim}) for x of shape {x.shape}, got {axis}")
    out = np.array(x, copy=True)
    return _softmax_inplace(out, axis)


def _softmax_inplace(s: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax of ``s`` along ``axis``, overwriting ``s`` (saves a copy of the scores)."""
    row_max = s.max(axis=axis, keepdims=True)
    fully_masked = np.isneginf(row_max)
    if fully_masked.any():
        row_max[fully_masked] = 0  # exp(-inf - 0) = 0 instead of exp(nan)
    s -= row_max
    np.exp(s, out=s)
    total = s.sum(axis=axis, keepdims=True)
    if fully_masked.any():
        total[fully_masked] = 1  # 0 / 1 = 0: no attention at all
    s /= total
    return s


def softmax_backward(dout: np.ndarray, probs: np.ndarray, axis: int = -1) -> np.ndarray:
    """Gradient through ``probs = softmax(x)``: the Jacobian-vector product.

    d x_i = p_i (d p_i - sum_j p_j d p_j). The element-wise ``p (1 - p)`` is
    only the diagonal of the Jacobian and is wrong.
    """
    weighted = np.sum(dout * probs, axis=axis, keepdims=True)
    return probs * (dout - weighted)


def sum_rows(d: np.ndarray) -> np.ndarray:
    """Sum over axis 0 with a float64 accumulator.

    NumPy adds the rows of a float32 array one after another (pairwise summation
    only applies along the contiguous axis); over thousands of rows that loses
    digits a bias gradient needs.
    """
    return d.sum(axis=0, dtype=np.float64).astype(d.dtype, copy=False)


def causal_mask(L: int, S: int | None = None) -> np.ndarray:
    """Bool mask ``(L, S)``, True where query ``i`` may attend key ``j`` (``j <= i``).

    Top-left aligned, as ``torch.nn.functional.scaled_dot_product_attention``
    builds it for ``is_causal=True``.
    """
    S = L if S is None else S
    return np.tril(np.ones((L, S), dtype=bool))


def attention_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray | None = None,
                      scale: float | None = None):
    """softmax(q k^T * scale + bias) v, with a cache for :func:`attention_backward`.

    q: (..., L, E), k: (..., S, E), v: (..., S, Ev); ``bias``: additive float
    mask broadcastable to (..., L, S) (``-inf`` = blocked) or None.
    Returns ``out`` (..., L, Ev) and ``cache``. ``cache["weights"]`` holds
    the attention weights (..., L, S).
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    q_scaled = q * q.dtype.type(scale)               # scale the smaller operand, not the scores
    scores = q_scaled @ np.swapaxes(k, -1, -2)       # (..., L, E) @ (..., E, S) -> (..., L, S)
    if bias is not None:
        scores += bias
    weights = _softmax_inplace(scores)               # (..., L, S), reuses the scores' memory
    out = weights @ v                                # (..., L, S) @ (..., S, Ev) -> (..., L, Ev)
    cache = {"q_scaled": q_scaled, "k": k, "v": v, "weights": weights, "scale": scale}
    return out, cache


def attention_backward(dout: np.ndarray, cache: dict):
    """Gradients of :func:`attention_forward`: returns ``(dq, dk, dv)``.

    dout: (..., L, Ev). dq, dk, dv have the shapes of q, k, v (summed over
    any axes that were broadcast).
    """
    q_scaled, k, v, weights = cache["q_scaled"], cache["k"], cache["v"], cache["weights"]
    dv = np.swapaxes(weights, -1, -2) @ dout         # (..., S, L) @ (..., L, Ev) -> (..., S, Ev)
    dweights = dout @ np.swapaxes(v, -1, -2)         # (..., L, Ev) @ (..., Ev, S) -> (..., L, S)
    dscores = softmax_backward(dweights, weights)    # (..., L, S)
    dq = (dscores @ k) * q_scaled.dtype.type(cache["scale"])   # (..., L, E)
    dk = np.swapaxes(dscores, -1, -2) @ q_scaled     # (..., S, L) @ (..., L, E) -> (..., S, E)
    return _unbroadcast(dq, q_scaled.shape), _unbroadcast(dk, k.shape), _unbroadcast(dv, v.shape)


def _unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``grad`` over the axes along which an input of ``shape`` was broadcast."""
    if grad.shape == shape:
        return grad
    grad = grad.sum(axis=tuple(range(grad.ndim - len(shape))))
    keep = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=keep, keepdims=True) if keep else grad


def scaled_dot_product_attention(query, key, value, attn_mask=None, is_causal: bool = False,
                                 scale: float | None = None, enable_gqa: bool = False) -> np.ndarray:
    """NumPy version of ``torch.nn.functional.scaled_dot_product_attention`` (no dropout).

    query: (..., L, E), key: (..., S, E), value: (..., S, Ev) -> (..., L, Ev).
    ``attn_mask`` broadcastable to (..., L, S): **bool True = takes part**
    (the opposite of ``nn.MultiheadAttention``'s masks), float = added to
    the scores. ``is_causal=True`` builds the top-left causal mask and cannot
    be combined with ``attn_mask``. ``scale`` defaults to 1/sqrt(E).
    ``enable_gqa=True`` lets query have ``Hq`` heads on axis -3 and key/value
    ``Hkv`` heads, ``Hq`` a multiple of ``Hkv`` (grouped-query attention).
    A query whose keys are all masked gets zeros, as torch's SDPA kernels give
    (its math route uses a "safe" softmax); plain ``torch.softmax`` gives NaN.
    """
    query = as_float_array(query, "query")
    key = as_float_array(key, "key", query.dtype)
    value = as_float_array(value, "value", query.dtype)
    for name, arr in (("query", query), ("key", key), ("value", value)):
        if arr.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions (..., seq_len, features), got shape {arr.shape}")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"query and key must have the same last dimension E, got query {query.shape} and key {key.shape}")
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(f"key and value must have the same sequence length S, got key {key.shape} and value {value.shape}")
    if 0 in (query.shape[-2], key.shape[-2]):
        raise ValueError(f"query and key must have at least one position, got query {query.shape} and key {key.shape}")
    if enable_gqa:
        key, value = _repeat_kv_heads(query, key, value)
    try:
        np.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    except ValueError:
        raise ValueError(f"the batch axes (all but the last two) of query {query.shape}, key {key.shape} and "
                         f"value {value.shape} must broadcast together") from None
    L, S = query.shape[-2], key.shape[-2]
    attn_mask = mask_array(attn_mask, "attn_mask")
    if is_causal and attn_mask is not None:
        raise ValueError("attn_mask must be None when is_causal=True (is_causal builds the mask itself)")
    if scale is not None and not (isinstance(scale, (int, float, np.floating)) and not isinstance(scale, bool)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    bias = None
    if is_causal:
        attn_mask = causal_mask(L, S)
    if attn_mask is not None:
        scores_shape = np.broadcast_shapes(query.shape[:-2], key.shape[:-2]) + (L, S)
        try:
            fits = np.broadcast_shapes(attn_mask.shape, scores_shape) == scores_shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"attn_mask of shape {attn_mask.shape} does not broadcast to the scores' shape "
                             f"{scores_shape} (..., L, S)")
        if attn_mask.dtype == np.bool_:
            bias = np.where(attn_mask, query.dtype.type(0), query.dtype.type(-np.inf))
        else:
            bias = attn_mask.astype(query.dtype, copy=False)
    out, _ = attention_forward(query, key, value, bias, scale)
    return out


def _repeat_kv_heads(query, key, value):
    """Repeat each key/value head ``Hq // Hkv`` times along axis -3 (like torch's repeat_interleave)."""
    if query.ndim < 3 or key.ndim < 3 or value.ndim < 3:
        raise ValueError(f"enable_gqa=True needs a heads axis (..., H, L, E), got query {query.shape} and key {key.shape}")
    hq, hkv = query.shape[-3], key.shape[-3]
    if value.shape[-3] != hkv or hq % hkv != 0:
        raise ValueError(f"enable_gqa=True needs query heads ({hq}) to be a multiple of key heads ({hkv}) "
                         f"and value heads ({value.shape[-3]}) equal to key heads")
    group = hq // hkv
    return np.repeat(key, group, axis=-3), np.repeat(value, group, axis=-3)
