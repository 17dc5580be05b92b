"""Cross-entropy, forward beside backward, with ``torch.nn.functional.cross_entropy``'s semantics.

Names: ``C`` classes, ``...`` any leading axes (``(N,)`` or ``(N, L)``).
The class axis is the **last** one here, as in every array of the book
(``logits`` (..., C), ``targets`` (...)); torch puts it second for more
than two axes, so ``F.cross_entropy(logits.reshape(-1, C), targets.reshape(-1))``
is the torch call that matches ``cross_entropy(logits, targets)``.

With label smoothing ``eps`` the target of a row is not the one-hot vector
of its class but ``q = (1 - eps) * onehot + eps / C``; the loss of one row is
``-sum_c q_c log p_c`` and its gradient with respect to the logits is
``p - q`` (times the reduction's weight).
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._checks import as_float_array, axis_of

__all__ = ["cross_entropy", "cross_entropy_backward", "log_softmax"]

REDUCTIONS = ("mean", "sum", "none")


def log_softmax(x: ArrayLike, axis: int = -1) -> np.ndarray:
    """``log(softmax(x))`` computed without forming the softmax: ``x - max - log(sum(exp(x - max)))``."""
    a = as_float_array(x, "x")
    axis = axis_of(a, axis)
    shifted = a - a.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def cross_entropy(
    logits: ArrayLike,
    targets: ArrayLike,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Cross-entropy of ``logits`` (..., C) against class indices ``targets`` (...).

    Rows whose target equals ``ignore_index`` take no part: their loss is 0
    and ``'mean'`` divides by the number of the other rows (all rows ignored
    gives NaN, as in torch). ``reduction``: ``'mean'``, ``'sum'`` (a 0-d
    array of the logits' dtype) or ``'none'`` (one loss per row, shape of
    ``targets``). Returns ``(loss, cache)`` for :func:`cross_entropy_backward`.
    """
    z, y, smoothing = _check_inputs(
        logits, targets, ignore_index, label_smoothing, reduction
    )
    C = z.shape[-1]
    keep = y != ignore_index  # (...) rows that count
    safe_y = np.where(keep, y, 0)  # an ignored row reads class 0, then is zeroed
    logp = log_softmax(z)  # (..., C)
    # (..., C) -> (...)
    nll = -np.take_along_axis(logp, safe_y[..., None], axis=-1)[..., 0]
    if smoothing:
        row_loss = (1 - smoothing) * nll - (smoothing / C) * logp.sum(axis=-1)
    else:
        row_loss = nll
    row_loss = np.where(keep, row_loss, 0).astype(z.dtype, copy=False)  # (...)
    count = int(keep.sum())
    if reduction == "none":
        loss = row_loss
    elif reduction == "sum":
        loss = row_loss.sum()
    else:
        with np.errstate(invalid="ignore", divide="ignore"):  # count 0: NaN, as torch
            loss = row_loss.sum() / z.dtype.type(count)
    cache = dict(
        logp=logp,
        targets=safe_y,
        keep=keep,
        count=count,
        smoothing=smoothing,
        reduction=reduction,
        shape=y.shape,
    )
    return loss, cache


def cross_entropy_backward(dloss: ArrayLike, cache: dict[str, Any]) -> np.ndarray:
    """Gradient of :func:`cross_entropy` with respect to the logits: ``(p - q) * weight``.

    ``dloss`` is the upstream gradient: a scalar for ``'mean'``/``'sum'``
    (1.0 when the loss is the final objective), an array of the targets'
    shape for ``'none'``. Returns ``dlogits`` (..., C).
    """
    logp, y, keep = cache["logp"], cache["targets"], cache["keep"]
    dtype, C, reduction = logp.dtype, logp.shape[-1], cache["reduction"]
    d = as_float_array(dloss, "dloss", dtype)
    expected = cache["shape"] if reduction == "none" else ()
    if d.shape != expected:
        what = "the targets' shape" if reduction == "none" else "a scalar"
        raise ValueError(
            f"dloss must be {what} {expected} for reduction={reduction!r}, got shape {d.shape}"
        )
    if reduction == "mean":
        d = d / dtype.type(cache["count"])  # each counted row weighs 1 / count
    q = np.zeros_like(logp)  # (..., C) the smoothed one-hot targets
    np.put_along_axis(q, y[..., None], 1.0 - cache["smoothing"], axis=-1)
    q += dtype.type(cache["smoothing"] / C)
    dlogits = np.exp(logp) - q  # p - q, (..., C)
    # (...) or () broadcast to the rows
    weight = np.where(keep, d, 0).astype(dtype, copy=False)
    return dlogits * weight[..., None]


def _check_inputs(
    logits: ArrayLike,
    targets: ArrayLike | None,
    ignore_index: object,
    label_smoothing: object,
    reduction: str,
) -> tuple[np.ndarray, np.ndarray, float]:
    """The arguments checked and converted: ``(logits, targets, label_smoothing)``."""
    z = as_float_array(logits, "logits")
    if z.ndim < 1 or z.shape[-1] == 0:
        raise ValueError(
            f"logits must have a class axis (..., C) with C >= 1 last, got shape {z.shape}"
        )
    if targets is None:
        raise TypeError("targets must be an array of integer class indices, got None")
    y = np.asarray(targets)
    if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise TypeError(
            f"targets must hold integer class indices, got dtype {y.dtype} "
            "(class probabilities are not supported)"
        )
    if y.shape != z.shape[:-1]:
        raise ValueError(
            f"targets must have the logits' shape without the class axis, {z.shape[:-1]} "
            f"for logits {z.shape}, got {y.shape}"
        )
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(
            f"ignore_index must be an int, got {ignore_index!r} ({type(ignore_index).__name__})"
        )
    C = z.shape[-1]
    bad = (y != ignore_index) & ((y < 0) | (y >= C))
    if bad.any():
        raise ValueError(
            f"targets must be class indices in [0, {C}) or ignore_index ({ignore_index}), "
            f"got {y[bad].flat[0]}"
        )
    if isinstance(label_smoothing, bool) or not isinstance(
        label_smoothing, numbers.Real
    ):
        raise TypeError(
            f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}"
        )
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return z, y.astype(np.int64, copy=False), float(label_smoothing)
