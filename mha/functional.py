"""The book's building blocks, each forward beside its backward.

A projection (:func:`linear`), the head split (:func:`split_heads`,
:func:`merge_heads`), softmax and scaled dot-product attention.

Shapes use torch's names: ``N`` batch, ``L`` query positions, ``S`` key
positions, ``E`` the query/key feature size, ``Ev`` the value feature size,
``H`` heads of ``hd = E // H`` features, and ``...`` any leading batch/head
axes (they broadcast as in ``np.matmul``). Weights are in the book's
``(in, out)`` layout, so a projection reads ``x @ W + b``; torch stores the
transpose.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._checks import (
    as_float_array,
    axis_of,
    linear_arguments,
    positive_int,
    sdpa_arguments,
)

__all__ = [
    "linear",
    "linear_backward",
    "split_heads",
    "merge_heads",
    "softmax",
    "softmax_backward",
    "causal_mask",
    "attention_forward",
    "attention_backward",
    "scaled_dot_product_attention",
    "attention_weights",
]


def linear(x: ArrayLike, W: ArrayLike, b: ArrayLike | None = None) -> np.ndarray:
    """``x @ W + b``: x (..., in), W (in, out), b (out,) or None -> (..., out).

    ``W`` is the transpose of torch's ``nn.Linear.weight`` (out, in).
    """
    x, W, b = linear_arguments(x, W, b)
    x2 = x.reshape(-1, x.shape[-1])  # (..., in) -> (rows, in): one matrix product
    out = x2 @ W  # (rows, in) @ (in, out) -> (rows, out)
    if b is not None:
        out += b
    return out.reshape(*x.shape[:-1], W.shape[1])  # (rows, out) -> (..., out)


def linear_backward(
    dout: np.ndarray, x: np.ndarray, W: np.ndarray, has_bias: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`linear`: returns ``(dx, dW, db)`` (``db`` is None without a bias).

    dout (..., out), x (..., in), W (in, out) -> dx (..., in), dW (in, out), db (out,).
    """
    x2 = x.reshape(-1, x.shape[-1])  # (..., in) -> (rows, in)
    dout2 = dout.reshape(-1, dout.shape[-1])  # (..., out) -> (rows, out)
    dx = dout2 @ W.T  # (rows, out) @ (out, in) -> (rows, in)
    dW = x2.T @ dout2  # (in, rows) @ (rows, out) -> (in, out)
    db = sum_rows(dout2) if has_bias else None  # (out,)
    return dx.reshape(x.shape), dW, db  # (rows, in) -> (..., in)


def split_heads(x: ArrayLike, H: int) -> np.ndarray:
    """Cut the last axis into ``H`` heads: (..., L, E) -> (..., H, L, E // H).

    (N, L, E) gives (N, H, L, hd) and (L, E) gives (H, L, hd). Head ``h``
    holds features ``h*hd`` to ``(h+1)*hd``: a reshape alone would mix
    positions into heads, the transpose is what keeps them apart.
    """
    x = as_float_array(x, "x")
    H = positive_int(H, "H")
    if x.ndim < 2:
        raise ValueError(f"x must have shape (..., L, E), got {x.shape}")
    L, E = x.shape[-2:]
    if E % H:
        raise ValueError(
            f"the feature size E={E} of x {x.shape} must be divisible by H={H}"
        )
    x = x.reshape(*x.shape[:-1], H, E // H)  # (..., L, E) -> (..., L, H, hd)
    return np.swapaxes(x, -3, -2)  # (..., L, H, hd) -> (..., H, L, hd)


def merge_heads(x: ArrayLike) -> np.ndarray:
    """Inverse of :func:`split_heads`: (..., H, L, hd) -> (..., L, H * hd)."""
    x = as_float_array(x, "x")
    if x.ndim < 3:
        raise ValueError(f"x must have shape (..., H, L, hd), got {x.shape}")
    H, L, hd = x.shape[-3:]
    x = np.swapaxes(x, -3, -2)  # (..., H, L, hd) -> (..., L, H, hd)
    return x.reshape(*x.shape[:-2], H * hd)  # (..., L, H, hd) -> (..., L, E), copies


def softmax(x: ArrayLike, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax of ``x`` along ``axis``; returns a new array.

    The row maximum is subtracted before ``exp`` so large logits cannot
    overflow. A row that is entirely ``-inf`` (every key masked) gives zeros
    rather than NaN: torch's ``softmax`` returns NaN there.
    """
    a = as_float_array(x, "x")
    out = np.array(a, copy=True)
    return _softmax_inplace(out, axis_of(a, axis))


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


def attention_forward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    bias: np.ndarray | None = None,
    scale: float | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """softmax(q k^T * scale + bias) v, with a cache for :func:`attention_backward`.

    q: (..., L, E), k: (..., S, E), v: (..., S, Ev); ``bias``: additive float
    mask broadcastable to (..., L, S) (``-inf`` = blocked) or None.
    Returns ``out`` (..., L, Ev) and ``cache``. ``cache["weights"]`` holds
    the attention weights (..., L, S).
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    q_scaled = q * q.dtype.type(scale)  # scale the smaller operand, not the scores
    # (..., L, E) @ (..., E, S) -> (..., L, S)
    scores = q_scaled @ np.swapaxes(k, -1, -2)
    if bias is not None:
        scores += bias
    weights = _softmax_inplace(scores)  # (..., L, S), reuses the scores' memory
    out = weights @ v  # (..., L, S) @ (..., S, Ev) -> (..., L, Ev)
    cache = {"q_scaled": q_scaled, "k": k, "v": v, "weights": weights, "scale": scale}
    return out, cache


def attention_backward(
    dout: np.ndarray, cache: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`attention_forward`: returns ``(dq, dk, dv)``.

    dout: (..., L, Ev). dq, dk, dv have the shapes of q, k, v (summed over
    any axes that were broadcast).
    """
    q_scaled, k, v, weights = (
        cache["q_scaled"],
        cache["k"],
        cache["v"],
        cache["weights"],
    )
    # (..., S, L) @ (..., L, Ev) -> (..., S, Ev)
    dv = np.swapaxes(weights, -1, -2) @ dout
    # (..., L, Ev) @ (..., Ev, S) -> (..., L, S)
    dweights = dout @ np.swapaxes(v, -1, -2)
    dscores = softmax_backward(dweights, weights)  # (..., L, S)
    dq = (dscores @ k) * q_scaled.dtype.type(cache["scale"])  # (..., L, E)
    # (..., S, L) @ (..., L, E) -> (..., S, E)
    dk = np.swapaxes(dscores, -1, -2) @ q_scaled
    return (
        _unbroadcast(dq, q_scaled.shape),
        _unbroadcast(dk, k.shape),
        _unbroadcast(dv, v.shape),
    )


def _unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``grad`` over the axes along which an input of ``shape`` was broadcast."""
    if grad.shape == shape:
        return grad
    grad = grad.sum(axis=tuple(range(grad.ndim - len(shape))))
    keep = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=keep, keepdims=True) if keep else grad


def scaled_dot_product_attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    attn_mask: ArrayLike | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> np.ndarray:
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
    :func:`attention_weights` returns the weights this uses.
    """
    q, k, v, mask = sdpa_arguments(
        query, key, value, attn_mask, is_causal, scale, enable_gqa
    )
    assert v is not None  # given a value, sdpa_arguments returns it
    if enable_gqa:
        k, v = _repeat_kv_heads(k, q.shape[-3]), _repeat_kv_heads(v, q.shape[-3])
    bias = _additive_bias(
        causal_mask(q.shape[-2], k.shape[-2]) if is_causal else mask, q.dtype
    )
    out, _ = attention_forward(q, k, v, bias, scale)
    return out


def attention_weights(
    query: ArrayLike,
    key: ArrayLike,
    *,
    attn_mask: ArrayLike | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> np.ndarray:
    """The weights (..., L, S) that :func:`scaled_dot_product_attention` multiplies the values by.

    Same arguments and rules; ``attention_weights(q, k) @ v`` is the SDPA output.
    Each row is a distribution over the keys (a fully masked row is zeros).
    """
    q, k, _, mask = sdpa_arguments(
        query, key, None, attn_mask, is_causal, scale, enable_gqa
    )
    if enable_gqa:
        k = _repeat_kv_heads(k, q.shape[-3])
    bias = _additive_bias(
        causal_mask(q.shape[-2], k.shape[-2]) if is_causal else mask, q.dtype
    )
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q * q.dtype.type(scale)) @ np.swapaxes(k, -1, -2)  # (..., L, S)
    if bias is not None:
        scores += bias
    return _softmax_inplace(scores)


def _additive_bias(attn_mask: np.ndarray | None, dtype: np.dtype) -> np.ndarray | None:
    """SDPA's mask as a float to add to the scores: bool True (takes part) -> 0, False -> -inf."""
    if attn_mask is None or attn_mask.dtype != np.bool_:
        return None if attn_mask is None else attn_mask.astype(dtype, copy=False)
    return np.where(attn_mask, dtype.type(0), dtype.type(-np.inf))


def _repeat_kv_heads(x: np.ndarray, Hq: int) -> np.ndarray:
    """Repeat each of the ``Hkv`` heads on axis -3 ``Hq // Hkv`` times (torch's repeat_interleave)."""
    # (..., Hkv, S, E) -> (..., Hq, S, E)
    return np.repeat(x, Hq // x.shape[-3], axis=-3)
