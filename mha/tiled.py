"""Attention in tiles: the online softmax, a tiled forward and its backward by recomputation.

The full attention of :mod:`mha.functional` writes the (L, S) score matrix. Here the
keys are visited in blocks of ``block_k`` with a running maximum ``m`` and a running sum
``l`` per query, rescaling what has been summed whenever ``m`` grows (the online softmax,
as FlashAttention does it); queries go in blocks of ``block_q``. At most one
(block_q, block_k) block of scores per head exists at a time. The forward saves, per
query, the log-sum-exp ``lse = m + log(l)``; the backward recomputes each block's weights
as ``exp(s - lse)`` instead of storing them (FlashAttention-2).

Shapes as in :mod:`mha.functional`: query (..., L, E), key (..., S, E), value (..., S, Ev);
with ``enable_gqa=True`` query has ``Hq`` heads on axis -3 and key/value ``Hkv``, query head
``h`` reading key/value head ``h // (Hq // Hkv)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import parallel
from ._checks import as_float_array, positive_int, sdpa_arguments
from .functional import _unbroadcast

__all__ = [
    "online_softmax",
    "tiled_attention_forward",
    "tiled_attention_backward",
    "tiled_attention",
    "causal_blocks",
    "sliding_window_mask",
]


def online_softmax(x: ArrayLike, block: int = 4) -> np.ndarray:
    """Softmax along the last axis of ``x`` in one pass over blocks of ``block`` entries.

    Keeps, per row, the maximum ``m`` seen so far and ``l = sum exp(x_j - m)``; when a block
    raises the maximum to ``m'``, the sum so far is multiplied by ``exp(m - m')``. A row that
    is entirely ``-inf`` gives zeros, as :func:`mha.softmax` does.
    """
    x = as_float_array(x, "x")
    block = positive_int(block, "block")
    m = np.full(x.shape[:-1], -np.inf, dtype=x.dtype)  # (...,) running maximum
    l = np.zeros(x.shape[:-1], dtype=x.dtype)  # (...,) running sum of exp(x - m)
    for j in range(0, x.shape[-1], block):  # pass 1: statistics, one block at a time
        m_new = np.maximum(m, x[..., j : j + block].max(axis=-1))
        shift = _finite(m_new)
        l = l * np.exp(m - shift) + np.exp(
            x[..., j : j + block] - shift[..., None]
        ).sum(axis=-1)
        m = m_new
    safe_l = np.where(l > 0, l, 1)  # an all -inf row: 0 / 1
    return np.exp(x - _finite(m)[..., None]) / safe_l[..., None]


def _finite(m: np.ndarray) -> np.ndarray:
    """The running maximum with -inf (nothing seen yet, or all masked) replaced by 0."""
    return np.where(np.isneginf(m), m.dtype.type(0), m)


def _arguments(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    attn_mask: ArrayLike | None,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
    block_q: int,
    block_k: int,
    window: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, int, int, int | None]:
    """All checks in one place: SDPA's rules, then the block sizes and the window."""
    if value is None:  # sdpa_arguments skips the value checks for None
        raise TypeError("value must be an array, got None")
    query, key, checked, attn_mask = sdpa_arguments(
        query, key, value, attn_mask, is_causal, scale, enable_gqa
    )
    assert checked is not None  # an array came in, an array comes out
    return (
        query,
        key,
        checked,
        attn_mask,
        positive_int(block_q, "block_q"),
        positive_int(block_k, "block_k"),
        _window(window, is_causal),
    )


def _window(window: object, is_causal: bool) -> int | None:
    if window is None:
        return None
    window = positive_int(window, "window")
    if not is_causal:
        raise ValueError(
            f"window (a causal sliding window of {window} keys) needs is_causal=True, "
            f"got is_causal={is_causal!r}"
        )
    return window


def sliding_window_mask(L: int, S: int, window: int) -> np.ndarray:
    """Bool (L, S), True where query ``i`` may see key ``j``: ``i - window < j <= i`` (top-left, as
    ``is_causal``). The explicit mask that ``tiled_attention_forward(..., is_causal=True, window=window)``
    applies without forming it."""
    L, S, window = (
        positive_int(L, "L"),
        positive_int(S, "S"),
        positive_int(window, "window"),
    )
    rows, cols = np.arange(L)[:, None], np.arange(S)[None, :]
    return (cols <= rows) & (cols > rows - window)


def _skip(
    i: int, bq: int, j: int, bk: int, is_causal: bool, window: int | None
) -> bool:
    """True when tile (queries i..i+bq-1, keys j..j+bk-1) is masked entirely by is_causal / window."""
    if is_causal and j > i + bq - 1:  # every key after every query
        return True
    # every key before every query's window
    return window is not None and j + bk - 1 <= i - window


def _grouped(
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    attn_mask: np.ndarray | None,
    enable_gqa: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, tuple[int, ...]]:
    """Views with a group axis so that one matmul serves every query head of a key/value head.

    Returns q (B..., G, g, L, E), k (B..., G, 1, S, E), v (B..., G, 1, S, Ev), mask
    (B..., G, g, L, S) or None, and the output shape; without GQA G and g are the
    broadcast batch's last axes folded as (..., 1) (g = 1).
    """
    L, S = query.shape[-2], key.shape[-2]
    if enable_gqa:
        hq, hkv = query.shape[-3], key.shape[-3]
        lead = np.broadcast_shapes(query.shape[:-3], key.shape[:-3], value.shape[:-3])
        batch = lead + (hq,)
        q = np.broadcast_to(query, batch + query.shape[-2:])
        # (..., Hq, L, E) -> (..., G, g, L, E)
        q = q.reshape(lead + (hkv, hq // hkv, L, query.shape[-1]))
        # (..., G, 1, S, E)
        k = np.broadcast_to(key, lead + key.shape[-3:])[..., None, :, :]
        # (..., G, 1, S, Ev)
        v = np.broadcast_to(value, lead + value.shape[-3:])[..., None, :, :]
    else:
        batch = np.broadcast_shapes(query.shape[:-2], key.shape[:-2], value.shape[:-2])
        # (..., 1, L, E)
        q = np.broadcast_to(query, batch + query.shape[-2:])[..., None, :, :]
        # (..., 1, S, E)
        k = np.broadcast_to(key, batch + key.shape[-2:])[..., None, :, :]
        # (..., 1, S, Ev)
        v = np.broadcast_to(value, batch + value.shape[-2:])[..., None, :, :]
    mask = None
    if attn_mask is not None:
        if attn_mask.dtype != np.bool_:
            attn_mask = attn_mask.astype(query.dtype, copy=False)
        # (..., G, g, L, S)
        mask = np.broadcast_to(attn_mask, batch + (L, S)).reshape(q.shape[:-1] + (S,))
    return q, k, v, mask, batch + (L, value.shape[-1])


def _work(q: np.ndarray, k: np.ndarray) -> int:
    """Elements of work of one pass, for mha.parallel's threshold: queries times (features + keys)."""
    return int(np.prod(q.shape[:-1])) * (q.shape[-1] + k.shape[-2])


def causal_blocks(
    L: int, S: int, block_q: int, block_k: int, window: int | None = None
) -> tuple[int, int]:
    """(blocks computed, blocks skipped) of a top-left causal (L, S) mask cut into tiles.

    With ``window``, query ``i`` sees keys ``i - window < j <= i`` only (a causal sliding window),
    and the tiles left of every window are skipped too.
    """
    L, S = positive_int(L, "L"), positive_int(S, "S")
    block_q, block_k = (
        positive_int(block_q, "block_q"),
        positive_int(block_k, "block_k"),
    )
    window = _window(window, True)
    computed = skipped = 0
    for i in range(0, L, block_q):
        for j in range(0, S, block_k):
            if _skip(i, min(block_q, L - i), j, min(block_k, S - j), True, window):
                skipped += 1
            else:
                computed += 1
    return computed, skipped


def _scores(
    qi: np.ndarray,
    kj: np.ndarray,
    mask: np.ndarray | None,
    is_causal: bool,
    i: int,
    j: int,
    window: int | None = None,
) -> np.ndarray:
    """One block of scores (..., bq, bk) with the mask applied: -inf where a key is blocked."""
    s = qi @ np.swapaxes(kj, -1, -2)  # (..., bq, E) @ (..., E, bk) -> (..., bq, bk)
    bq, bk = s.shape[-2:]
    if mask is not None:
        m = mask[..., i : i + bq, j : j + bk]
        s = np.where(m, s, -np.inf) if m.dtype == np.bool_ else s + m
    if is_causal and j + bk - 1 > i:  # the block crosses the diagonal
        rows, cols = np.arange(i, i + bq)[:, None], np.arange(j, j + bk)[None, :]
        s = np.where(cols <= rows, s, -np.inf)
    # the block reaches left of some query's window
    if window is not None and j <= i + bq - 1 - window:
        rows, cols = np.arange(i, i + bq)[:, None], np.arange(j, j + bk)[None, :]
        s = np.where(cols > rows - window, s, -np.inf)
    return s


def tiled_attention_forward(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    attn_mask: ArrayLike | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    block_q: int = 128,
    block_k: int = 512,
    window: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``F.scaled_dot_product_attention`` computed in tiles: returns ``(out, cache)``.

    out (..., L, Ev); ``cache["lse"]`` (..., L) is each query's log-sum-exp of its scaled,
    masked scores (-inf for a query whose keys are all masked: its output is zeros).
    ``cache["skipped"]`` counts the (query block, key block) tiles that ``is_causal`` left out
    without computing them. Arguments as :func:`mha.functional.scaled_dot_product_attention`;
    ``window`` (with ``is_causal=True``) is a causal sliding window: query ``i`` sees the keys
    ``i - window < j <= i`` only, and the tiles left of every window are skipped as well.
    """
    query, key, value, attn_mask, block_q, block_k, window = _arguments(
        query,
        key,
        value,
        attn_mask,
        is_causal,
        scale,
        enable_gqa,
        block_q,
        block_k,
        window,
    )
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    q, k, v, mask, out_shape = _grouped(query, key, value, attn_mask, enable_gqa)
    L, S, dt = q.shape[-2], k.shape[-2], q.dtype.type
    out = np.empty(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype)  # (..., G, g, L, Ev)
    lse = np.empty(q.shape[:-1], dtype=q.dtype)  # (..., G, g, L)

    def query_block(i: int) -> int:
        """Rows i .. i + block_q of out and lse; returns the number of key blocks skipped."""
        # (..., bq, E), scaled as mha.functional does
        qi = q[..., i : i + block_q, :] * dt(scale)
        bq = qi.shape[-2]
        m = np.full(qi.shape[:-1], -np.inf, dtype=q.dtype)  # (..., bq) running maximum
        l = np.zeros(qi.shape[:-1], dtype=q.dtype)  # (..., bq) running sum
        # (..., bq, Ev) unnormalised output
        acc = np.zeros(qi.shape[:-1] + (v.shape[-1],), dtype=q.dtype)
        skipped = 0
        for j in range(0, S, block_k):
            # every key of the block is after every query
            if is_causal and j > i + bq - 1:
                skipped += len(range(j, S, block_k))
                break
            # left of every query's window
            if _skip(i, bq, j, min(block_k, S - j), is_causal, window):
                skipped += 1
                continue
            # (..., bq, bk)
            s = _scores(qi, k[..., j : j + block_k, :], mask, is_causal, i, j, window)
            m_new = np.maximum(m, s.max(axis=-1))
            shift = _finite(m_new)
            s -= shift[..., None]
            p = np.exp(s, out=s)  # (..., bq, bk), in place of the scores
            alpha = np.exp(m - shift)  # rescales what was summed with the old max
            l = alpha * l + p.sum(axis=-1)
            acc *= alpha[..., None]
            acc += p @ v[..., j : j + block_k, :]  # (..., bq, bk) @ (..., bk, Ev)
            m = m_new
        empty = l == 0  # every key masked
        out[..., i : i + bq, :] = acc / np.where(empty, 1, l)[..., None]
        with np.errstate(divide="ignore"):
            lse[..., i : i + bq] = np.where(empty, -np.inf, _finite(m) + np.log(l))
        return skipped

    # The query blocks are independent: on large inputs they share mha.parallel's threads (the BLAS held to
    # one thread, which small tile matmuls need); every block is computed the same way either way.
    starts = range(0, L, block_q)
    with parallel.threads(_work(q, k)) as pmap:
        skipped = sum(pmap(query_block, starts) if pmap else map(query_block, starts))
    cache = {
        "query": query,
        "key": key,
        "value": value,
        "attn_mask": attn_mask,
        "is_causal": is_causal,
        "scale": scale,
        "enable_gqa": enable_gqa,
        "block_q": block_q,
        "block_k": block_k,
        "window": window,
        "out": out,
        "lse": lse,
        "skipped": skipped,
    }
    lse_shape = out_shape[:-1]
    cache["lse"] = lse.reshape(lse_shape)  # (..., G, g, L) -> (..., H, L)
    return out.reshape(out_shape), cache  # (..., G, g, L, Ev) -> (..., L, Ev)


def tiled_attention_backward(
    dout: ArrayLike, cache: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`tiled_attention_forward`: returns ``(dq, dk, dv)``.

    dout (..., L, Ev). Each block's weights are recomputed as ``exp(s - lse)``; with
    ``D = rowsum(dout * out)``, ``ds = p * (dout @ v^T - D)`` (the softmax backward, whose
    row sum ``sum_j p_j dp_j`` equals ``D``). No (L, S) array is formed.
    """
    if not isinstance(cache, dict) or "lse" not in cache or "block_q" not in cache:
        got = (
            f"a dict with keys {list(cache)}"
            if isinstance(cache, dict)
            else type(cache).__name__
        )
        raise TypeError(
            f"cache must be the dict that tiled_attention_forward returned, got {got}"
        )
    query, key, value = cache["query"], cache["key"], cache["value"]
    is_causal, scale, bq_size, bk_size = (
        cache["is_causal"],
        cache["scale"],
        cache["block_q"],
        cache["block_k"],
    )
    q, k, v, mask, out_shape = _grouped(
        query, key, value, cache["attn_mask"], cache["enable_gqa"]
    )
    dout = as_float_array(dout, "dout", q.dtype)
    if dout.shape != out_shape:
        raise ValueError(
            f"dout must have the output's shape {out_shape}, got {dout.shape}"
        )
    do = dout.reshape(cache["out"].shape)  # (..., L, Ev) -> (..., G, g, L, Ev)
    lse = cache["lse"].reshape(q.shape[:-1])  # (..., H, L) -> (..., G, g, L)
    lse = np.where(np.isneginf(lse), np.inf, lse)  # all masked: exp(s - inf) = 0
    D = np.sum(do * cache["out"], axis=-1)  # (..., G, g, L)
    dt = q.dtype.type(scale)
    L = q.shape[-2]
    dq = np.zeros(q.shape, dtype=q.dtype)  # (..., G, g, L, E)
    dk = np.zeros(k.shape, dtype=q.dtype)  # (..., G, 1, S, E)
    dv = np.zeros(v.shape, dtype=q.dtype)  # (..., G, 1, S, Ev)
    with parallel.threads(_work(q, k)):  # the BLAS on one thread for the small tiles
        for i in range(0, L, bq_size):
            _backward_rows(
                i,
                q,
                k,
                v,
                mask,
                do,
                D,
                lse,
                dq,
                dk,
                dv,
                dt,
                is_causal,
                bq_size,
                bk_size,
                cache.get("window"),
            )
    # (..., G, g, L, E) -> (..., H, L, E)
    dq = dq.reshape(out_shape[:-1] + (q.shape[-1],))
    dk, dv = dk[..., 0, :, :], dv[..., 0, :, :]  # (..., G, 1, S, E) -> (..., G, S, E)
    return (
        _unbroadcast(dq, query.shape),
        _unbroadcast(dk, key.shape),
        _unbroadcast(dv, value.shape),
    )


def _backward_rows(
    i: int,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None,
    do: np.ndarray,
    D: np.ndarray,
    lse: np.ndarray,
    dq: np.ndarray,
    dk: np.ndarray,
    dv: np.ndarray,
    dt: np.floating,
    is_causal: bool,
    bq_size: int,
    bk_size: int,
    window: int | None,
) -> None:
    """One block of queries of the backward: adds to dq[i:i + bq], and to every dk, dv block it sees."""
    S = k.shape[-2]
    qi = q[..., i : i + bq_size, :] * dt  # (..., bq, E)
    doi, Di, lsei = (
        do[..., i : i + bq_size, :],
        D[..., i : i + bq_size],
        lse[..., i : i + bq_size],
    )
    for j in range(0, S, bk_size):
        if is_causal and j > i + qi.shape[-2] - 1:
            break
        kj, vj = k[..., j : j + bk_size, :], v[..., j : j + bk_size, :]
        if _skip(i, qi.shape[-2], j, kj.shape[-2], is_causal, window):
            continue
        # (..., bq, bk) weights
        p = np.exp(_scores(qi, kj, mask, is_causal, i, j, window) - lsei[..., None])
        pT = np.swapaxes(p, -1, -2)  # (..., bk, bq)
        # sum over the group
        dv[..., j : j + bk_size, :] += (pT @ doi).sum(axis=-3, keepdims=True)
        ds = p * (doi @ np.swapaxes(vj, -1, -2) - Di[..., None])  # (..., bq, bk)
        dq[..., i : i + bq_size, :] += (ds @ kj) * dt
        dk[..., j : j + bk_size, :] += (np.swapaxes(ds, -1, -2) @ qi).sum(
            axis=-3, keepdims=True
        )


def tiled_attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    attn_mask: ArrayLike | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    block_q: int = 128,
    block_k: int = 512,
    window: int | None = None,
) -> np.ndarray:
    """The output of :func:`tiled_attention_forward` alone (..., L, Ev)."""
    out, _ = tiled_attention_forward(
        query,
        key,
        value,
        attn_mask,
        is_causal,
        scale,
        enable_gqa,
        block_q,
        block_k,
        window,
    )
    return out
