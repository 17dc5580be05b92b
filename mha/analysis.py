"""Measuring an attention map: how peaked each query is, which keys it reads, how two maps differ.

Every function takes attention weights as the layer or SDPA returns them:
(L, S) for one head, (H, L, S) for a layer's heads, or (N, H, L, S) for a
batch. Each row (one query) must be a distribution over the S keys: values
in [0, 1] that sum to 1. Torch tensors are accepted as they are.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._checks import positive_int
from .verify import as_float64

__all__ = ["entropy", "top_k_keys", "sparsity", "compare_patterns"]


def entropy(weights: ArrayLike, *, normalize: bool = False) -> np.ndarray:
    """Entropy of each query's distribution, in nats: (..., L, S) -> (..., L).

    0 when a query puts all its weight on one key, ln S when it spreads it
    evenly over all S keys. ``normalize=True`` divides by ln S, so 1 means
    uniform whatever the length (a single key, S = 1, gives 0).
    """
    w = _weights(weights, "weights")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(w > 0, -w * np.log(w), 0.0)  # 0 log 0 = 0, the limit
    h = terms.sum(axis=-1)  # (..., L)
    if normalize:
        S = w.shape[-1]
        h = h / math.log(S) if S > 1 else np.zeros_like(h)
    return h


def top_k_keys(weights: ArrayLike, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` keys each query weights most: returns ``(indices, values)``, both (..., L, k).

    Sorted by weight, largest first; equal weights keep the lower key first.
    """
    w = _weights(weights, "weights")
    k = positive_int(k, "k")
    if k > w.shape[-1]:
        raise ValueError(
            f"k must be at most the number of keys S={w.shape[-1]}, got {k}"
        )
    order = np.argsort(-w, axis=-1, kind="stable")[..., :k]  # (..., L, k)
    return order, np.take_along_axis(w, order, axis=-1)


def sparsity(weights: ArrayLike, threshold: float = 0.01) -> np.ndarray | float:
    """Fraction of weights below ``threshold`` in each map: (..., L, S) -> (...) (a float for (L, S)).

    Uniform attention over S keys has sparsity 0 for ``threshold <= 1/S``;
    a query that reads one key has (S - 1) / S.
    """
    w = _weights(weights, "weights")
    if isinstance(threshold, bool) or not isinstance(
        threshold, (int, float, np.floating)
    ):
        raise TypeError(
            f"threshold must be a float, got {threshold!r} ({type(threshold).__name__})"
        )
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    frac = (w < threshold).mean(axis=(-2, -1))
    return float(frac) if w.ndim == 2 else frac


def compare_patterns(a: ArrayLike, b: ArrayLike) -> dict[str, Any]:
    """How two attention maps of the same shape differ, per head and overall.

    Returns ``{"max_abs_diff", "mse", "cosine"}``, each an array (H,) for
    (H, L, S) or (N, H, L, S) inputs (the batch is pooled), a 1-element array
    for (L, S), and ``"overall"``: the same three over everything, as floats.
    ``cosine`` is that of the flattened maps: 1 when one is a positive
    multiple of the other.
    """
    wa, wb = _weights(a, "a"), _weights(b, "b")
    if wa.shape != wb.shape:
        raise ValueError(
            f"a and b must have the same shape, got {wa.shape} and {wb.shape}"
        )

    def stats(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        dot = (x * y).sum(-1)
        norms = np.sqrt((x * x).sum(-1)) * np.sqrt((y * y).sum(-1))
        return {
            "max_abs_diff": np.abs(x - y).max(-1),
            "mse": ((x - y) ** 2).mean(-1),
            "cosine": dot / norms,
        }

    result = stats(_per_head(wa), _per_head(wb))
    result["overall"] = {
        name: float(v[0])
        for name, v in stats(wa.reshape(1, -1), wb.reshape(1, -1)).items()
    }
    return result


def _per_head(x: np.ndarray) -> np.ndarray:
    """One row per head, the batch pooled."""
    if x.ndim == 2:
        return x.reshape(1, -1)  # (L, S) -> (1, L*S)
    # (N, H, L, S) -> (H, N, L, S) -> (H, N*L*S)
    return np.moveaxis(x, -3, 0).reshape(x.shape[-3], -1)


def _weights(weights: ArrayLike | None, name: str) -> np.ndarray:
    """Check ``weights`` is (L, S), (H, L, S) or (N, H, L, S) of distributions; return it as float64."""
    if weights is None:
        raise TypeError(f"{name} must be an array of attention weights, got None")
    w = as_float64(weights, name)
    if not 2 <= w.ndim <= 4 or 0 in w.shape:
        raise ValueError(
            f"{name} must have shape (L, S), (H, L, S) or (N, H, L, S) with no empty axis, got {w.shape}"
        )
    if not np.all(np.isfinite(w)) or w.min() < 0 or w.max() > 1:
        raise ValueError(
            f"{name} must hold probabilities in [0, 1] (no NaN/inf), got values from {np.nanmin(w):.3g} "
            f"to {np.nanmax(w):.3g}: pass the weights after softmax, not the scores"
        )
    # a float32 row sums to 1 within a few roundings per key; float64 within far less
    single = str(getattr(weights, "dtype", "")).endswith("float32")
    tol = (1e-6 if single else 1e-12) * max(w.shape[-1], 10)
    row_sums = w.sum(axis=-1)
    if np.abs(row_sums - 1).max() > tol:
        raise ValueError(
            f"each row of {name} must sum to 1 (a distribution over the keys), but a row sums to "
            f"{row_sums.flat[np.abs(row_sums - 1).argmax()]:.6g}; a fully masked query has no "
            "distribution: drop it first"
        )
    return w
