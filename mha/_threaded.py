"""The threaded drop-in for :mod:`mha.functional`'s blocks (private: speed, not maths).

:func:`blocks` yields an object with the same four functions as
:mod:`mha.functional` -- ``linear``, ``linear_backward``, ``attention_forward``,
``attention_backward``, same signatures -- that share their work out to the
thread pool of :mod:`mha.parallel`; or :mod:`mha.functional` itself when the
work is small or one thread is asked for. Each element is computed by the same
operations in the same order either way, so the results are bitwise equal to
the serial code's with the BLAS on one thread. (The BLAS's own threads may change
a last bit on some versions: OpenBLAS 0.3.27, in numpy 2.0.2's wheel, does for a
(1000, 40) @ (40, 53) float64 product; tests/test_parallel.py keeps the two apart.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import functional, parallel
from ._checks import linear_arguments


class _ChunkCaches(dict[str, Any]):
    """The cache of a chunked attention forward; ``cache["weights"]`` gathers the chunks' weights.

    It reads only the key :func:`mha.functional.attention_forward` documents (``"weights"``).
    """

    def __missing__(self, key: str) -> np.ndarray:
        if key != "weights":
            raise KeyError(key)
        first = self["chunks"][0][1]["weights"]
        # (N, H, L, S)
        weights = np.empty(self["batch_heads"] + first.shape[2:], dtype=first.dtype)
        for idx, cache in self["chunks"]:
            weights[idx] = cache["weights"]
        self["weights"] = weights
        return weights


class ThreadedBlocks:
    """:mod:`mha.functional`'s projection and attention blocks, their work shared out by ``pmap``."""

    def __init__(self, pmap: parallel.PMap) -> None:
        self.pmap = pmap

    def linear(
        self, x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None
    ) -> np.ndarray:
        """:func:`mha.functional.linear`, the rows of ``x`` shared out."""
        x, W, b = linear_arguments(x, W, b)
        x2 = x.reshape(-1, x.shape[-1])  # (..., in) -> (rows, in)
        out = parallel.matmul_rows(self.pmap, x2, W, b)  # (rows, out)
        return out.reshape(*x.shape[:-1], W.shape[1])  # (rows, out) -> (..., out)

    def linear_backward(
        self, dout: np.ndarray, x: np.ndarray, W: np.ndarray, has_bias: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:func:`mha.functional.linear_backward`: rows of ``dx``, columns of ``dW`` and ``db`` shared out."""
        x2 = x.reshape(-1, x.shape[-1])  # (..., in) -> (rows, in)
        dout2 = dout.reshape(-1, dout.shape[-1])  # (..., out) -> (rows, out)
        dx = parallel.matmul_rows(self.pmap, dout2, W.T)  # (rows, in)
        dW = parallel.matmul_cols(self.pmap, x2.T, dout2)  # (in, out)
        db = parallel.sum_rows(self.pmap, dout2) if has_bias else None
        return dx.reshape(x.shape), dW, db

    def attention_forward(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        bias: np.ndarray | None = None,
        scale: float | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """:func:`mha.functional.attention_forward` on (N, H, ...) inputs, in (sequence, head) chunks."""
        N, H = q.shape[:2]
        # (N, H, L, Ev)
        out = np.empty(q.shape[:3] + v.shape[3:], dtype=np.result_type(q, v))
        chunks = parallel.batch_head_chunks(N, H, 4 * parallel.get_num_threads())

        def one_chunk(idx: tuple[slice, slice]) -> tuple[tuple[slice, slice], Any]:
            out[idx], cache = functional.attention_forward(
                q[idx], k[idx], v[idx], _chunk_of(bias, idx), scale
            )
            return idx, cache

        chunk_caches = parallel.run(self.pmap, one_chunk, chunks)
        return out, _ChunkCaches(
            chunks=chunk_caches, batch_heads=(N, H), shapes=(q.shape, k.shape, v.shape)
        )

    def attention_backward(
        self, dout: np.ndarray, cache: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`mha.functional.attention_backward` of a chunked forward; dout (N, H, L, Ev)."""
        # like q, k, v
        dq, dk, dv = (np.empty(shape, dtype=dout.dtype) for shape in cache["shapes"])

        def one_chunk(item: tuple[tuple[slice, slice], dict[str, Any]]) -> None:
            idx, chunk_cache = item
            dq[idx], dk[idx], dv[idx] = functional.attention_backward(
                dout[idx], chunk_cache
            )

        parallel.run(self.pmap, one_chunk, cache["chunks"])
        return dq, dk, dv


def _chunk_of(mask: np.ndarray | None, idx: tuple[slice, slice]) -> np.ndarray | None:
    """The part of an additive mask, broadcastable to (N, H, L, S), that chunk ``idx`` = (sequences, heads) sees."""
    if mask is None:
        return None
    return mask[
        tuple(part if size > 1 else slice(None) for part, size in zip(idx, mask.shape))
    ]


@contextlib.contextmanager
def blocks(size: int) -> Iterator[Any]:
    """:mod:`mha.functional`, or its threaded drop-in when ``size`` elements of work make threads pay."""
    with parallel.threads(size) as pmap:  # None: serial
        yield functional if pmap is None else ThreadedBlocks(pmap)
