"""Threads for the big array work of :class:`~mha.MultiHeadAttention`, with the BLAS on one thread.

Why: NumPy's element-wise operations (the softmax and its backward) run on one
core. Giving the matmuls to a multi-threaded BLAS does not help them either:
after every call OpenBLAS's worker threads keep spinning on the other cores for
about 0.1 s, so the softmax that follows a matmul competes with them. Instead,
the layer's blocks (swapped in by :mod:`mha._threaded`) split their work into independent pieces (rows of a matmul, columns of
a weight gradient, sequences or heads of the attention) and runs the pieces in a
small pool of Python threads (NumPy releases the GIL in both) while the BLAS is
held to one thread. Every element is computed by the same operations in the same
order as without threads, so the results do not depend on the thread count.

``set_num_threads(1)`` turns all of this off: the layer then runs the plain
serial code. Without threadpoolctl (which can hold the BLAS to one thread) the
layer also runs serially, rather than oversubscribing the cores.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from . import functional

# What threads() yields: map(fn, items) -> list run in the pool, or None for serial.
PMap = Callable[[Callable[[Any], Any], Iterable[Any]], list[Any]] | None

__all__ = [
    "get_num_threads",
    "set_num_threads",
    "threads",
    "split",
    "batch_head_chunks",
    "matmul_rows",
    "matmul_cols",
    "sum_rows",
    "run",
]

_num_threads = max(
    1,
    min(
        len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else (os.cpu_count() or 1),
        8,
    ),
)
_pool: ThreadPoolExecutor | None = None
_blas: Any = None  # threadpoolctl's controller, made on first use; False when it is not available
_busy = threading.Lock()


def _forget_pool_in_child() -> None:
    # A forked child has none of the parent's pool threads: a pool inherited as it is would never run a task.
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def get_num_threads() -> int:
    """How many threads the layer uses (default: the cores this process may run on, at most 8)."""
    return _num_threads


def set_num_threads(n: int) -> None:
    """Use ``n`` threads from now on; 1 runs the plain serial code (like ``torch.set_num_threads``)."""
    global _num_threads, _pool
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be a positive int, got {type(n).__name__} {n!r}")
    if n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if int(n) != _num_threads and _pool is not None:
        _pool.shutdown()
        _pool = None
    _num_threads = int(n)


# Below this many elements of work, handing pieces to threads costs more than it saves.
MIN_PARALLEL_SIZE = 1 << 16


@contextlib.contextmanager
def threads(size: int) -> Iterator[PMap]:
    """Context of one forward or backward: yields a ``map(fn, items)`` that runs in the pool, or None.

    ``size`` is the number of elements the work touches (for attention, ``N * L * (E + H * S)``).
    None means: run serially (one thread asked for, work too small, or the BLAS cannot be held to one thread).
    """
    global _pool, _blas
    if _num_threads == 1 or size < MIN_PARALLEL_SIZE:
        yield None
        return
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas = False
        else:  # NumPy is loaded by now, so its BLAS is among the libraries found
            _blas = ThreadpoolController().select(user_api="blas") or False
    # One layer at a time holds the pool and the (process-wide) BLAS limit; a layer called meanwhile
    # from another thread of the caller's runs serially, so the limits never interleave.
    if not _blas or not _busy.acquire(blocking=False):
        yield None
        return
    try:
        if _pool is None:
            _pool = ThreadPoolExecutor(_num_threads, thread_name_prefix="mha")
        with _blas.limit(limits=1, user_api="blas"):
            yield lambda fn, items: list(_pool.map(fn, items))
    finally:
        _busy.release()


def split(n: int, parts: int) -> list[slice]:
    """``range(n)`` cut into at most ``parts`` contiguous slices of nearly equal length."""
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def batch_head_chunks(N: int, H: int, parts: int) -> list[tuple[slice, slice]]:
    """(sequences, heads) index pairs covering an (N, H, ...) array: split the batch, or the heads if N is small."""
    if N >= parts or H == 1:
        return [(s, slice(None)) for s in split(N, parts)]
    return [(slice(n, n + 1), h) for n in range(N) for h in split(H, -(-parts // N))]


# OpenBLAS (with its SkylakeX kernels, for one) computes a product of at most 100**3
# multiply-adds (M * N * K) with a "small matrix" kernel that sums in another order than its
# regular GEMM. A piece of a split product must stay above that size, or its last bits differ
# from the one product that the serial code computes (when that one is above it).
MIN_PIECE_PRODUCT = 1 << 20


def _in_pieces(
    pmap: PMap, fn: Callable[[slice], Any], n: int, product_per_index: int = 0
) -> None:
    """``fn(s)`` for slices ``s`` covering ``range(n)``: one slice serially, else one per thread.

    ``product_per_index``: the multiply-adds of a matmul per index of ``range(n)``; the slices
    are then made no smaller than ``MIN_PIECE_PRODUCT`` (fewer of them, or one).
    """
    parts = 1 if pmap is None else _num_threads
    while (
        product_per_index
        and parts > 1
        and (n // parts) * product_per_index < MIN_PIECE_PRODUCT
    ):
        parts -= 1
    if parts == 1 or pmap is None:
        fn(slice(None))
    else:
        pmap(fn, split(n, parts))


def matmul_rows(
    pmap: PMap, a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None
) -> np.ndarray:
    """``a @ b + bias`` for a (R, K), b (K, C), bias (C,) or None, the rows of ``a`` shared out."""
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))

    def rows(s: slice) -> None:
        np.matmul(a[s], b, out=out[s])
        if bias is not None:
            out[s] += bias

    _in_pieces(pmap, rows, a.shape[0], a.shape[1] * b.shape[1])  # (rows, K) @ (K, C)
    return out


def matmul_cols(pmap: PMap, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for a (R, K), b (K, C), the columns of ``b`` shared out (for weight gradients ``x.T @ d``)."""
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    # (R, K) @ (K, cols): R * K multiply-adds per column
    _in_pieces(
        pmap,
        lambda s: np.matmul(a, b[:, s], out=out[:, s]),
        b.shape[1],
        a.shape[0] * a.shape[1],
    )
    return out


def run(pmap: PMap, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """``[fn(item) for item in items]``, in the thread pool when there is one."""
    return [fn(item) for item in items] if pmap is None else pmap(fn, list(items))


def sum_rows(pmap: PMap, d: np.ndarray) -> np.ndarray:
    """:func:`mha.functional.sum_rows` of d (R, C), the columns shared out (each column's sum is the same either way)."""
    out = np.empty(d.shape[1], dtype=d.dtype)
    _in_pieces(
        pmap, lambda s: out.__setitem__(s, functional.sum_rows(d[:, s])), d.shape[1]
    )
    return out
