"""Argument checks shared by the package.

Every check raises ``TypeError`` (wrong kind of thing) or ``ValueError``
(right kind, wrong value) with a message that names the argument, says what
was expected and shows what came, so a learner can fix the call without
reading a NumPy traceback.
"""

from __future__ import annotations

import numbers

import numpy as np
from numpy.typing import ArrayLike, DTypeLike


def positive_int(value: object, name: str) -> int:
    """Return ``value`` as an int after checking it is a positive integer."""
    # bool is an int subclass; True heads is a bug, not a size.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be a positive int, got {value!r} ({type(value).__name__})"
        )
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def flag(value: object, name: str) -> bool:
    """Return ``value`` as a bool after checking it is one (``"False"`` is truthy: refuse it)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"{name} must be True or False, got {value!r} ({type(value).__name__})"
        )
    return bool(value)


def rng_from_seed(seed: object, name: str = "seed") -> np.random.Generator:
    """``np.random.default_rng(seed)`` for None, a non-negative int or a Generator."""
    if seed is None or isinstance(seed, np.random.Generator):
        return np.random.default_rng(seed)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            f"{name} must be None, a non-negative int or a np.random.Generator, got {seed!r} ({type(seed).__name__})"
        )
    if seed < 0:
        raise ValueError(f"{name} must be a non-negative int, got {seed}")
    return np.random.default_rng(int(seed))


def float_dtype(dtype: DTypeLike, name: str = "dtype") -> np.dtype:
    """Return ``dtype`` as a NumPy float32/float64 dtype."""
    try:
        result = np.dtype(dtype)
    except TypeError:
        raise TypeError(
            f"{name} must be np.float32 or np.float64, got {dtype!r}"
        ) from None
    if result not in (np.float32, np.float64):
        raise TypeError(f"{name} must be np.float32 or np.float64, got {result}")
    return result


def as_float_array(
    x: ArrayLike, name: str, dtype: np.dtype | None = None
) -> np.ndarray:
    """Return ``x`` as a floating-point array without modifying it.

    ``dtype=None`` keeps a float32/float64 input as it is (other floats
    become float64); otherwise the array is cast to ``dtype``.
    """
    if x is None:
        raise TypeError(f"{name} must be an array, got None")
    try:
        arr = np.asarray(x)
    except Exception as exc:  # e.g. a CUDA tensor or a ragged list
        raise TypeError(
            f"{name} must be convertible to a NumPy array, got {type(x).__name__}: {exc}"
        ) from None
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(
            f"{name} must hold real floating-point numbers, got dtype {arr.dtype}"
        )
    if np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"{name} must be a floating-point array, got integer dtype {arr.dtype}; cast it with .astype(np.float32)"
        )
    if dtype is None:
        dtype = (
            arr.dtype if arr.dtype in (np.float32, np.float64) else np.dtype(np.float64)
        )
    return arr.astype(dtype, copy=False)


def axis_of(x: np.ndarray, axis: object, name: str = "axis") -> int:
    """``axis`` checked as an axis of ``x`` (negative counts from the end)."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {axis!r} ({type(axis).__name__})")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(
            f"{name} must be in [-{x.ndim}, {x.ndim}) for x of shape {x.shape}, got {axis}"
        )
    return int(axis)


def mask_array(mask: ArrayLike | None, name: str) -> np.ndarray | None:
    """Return a bool or float mask as an array; integer masks are refused, as torch does."""
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.floating):
        return arr
    raise TypeError(
        f"{name} must be a bool or floating-point array, got dtype {arr.dtype} "
        "(integer masks are ambiguous: use mask.astype(bool))"
    )


def shape_is(arr: np.ndarray, expected: tuple, name: str, what: str = "") -> None:
    """Raise ValueError unless ``arr.shape == expected``."""
    if arr.shape != tuple(expected):
        extra = f" {what}" if what else ""
        raise ValueError(
            f"{name} must have shape {tuple(expected)}{extra}, got {arr.shape}"
        )


def linear_arguments(
    x: ArrayLike, W: ArrayLike, b: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Checks of :func:`mha.functional.linear`: x (..., in), W (in, out), b (out,) or None."""
    x = as_float_array(x, "x")
    W = as_float_array(W, "W", x.dtype)
    if W.ndim != 2 or x.ndim < 1 or x.shape[-1] != W.shape[0]:
        raise ValueError(
            f"W must have shape (in, out) with in = x's last axis, got x {x.shape} and W {W.shape}"
            " (torch's weight is (out, in): pass its transpose)"
        )
    if b is not None:
        b = as_float_array(b, "b", x.dtype)
        if b.shape != (W.shape[1],):
            raise ValueError(
                f"b must have shape ({W.shape[1]},) (W's out axis), got {b.shape}"
            )
    return x, W, b


def sdpa_arguments(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike | None,
    attn_mask: ArrayLike | None,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Checks of scaled_dot_product_attention's arguments; returns ``query, key, value, attn_mask`` as arrays.

    ``value=None`` (for ``attention_weights``) skips the value checks.
    """
    query = as_float_array(query, "query")
    key = as_float_array(key, "key", query.dtype)
    arrays = {"query": query, "key": key}
    if value is not None:
        arrays["value"] = value = as_float_array(value, "value", query.dtype)
    for name, arr in arrays.items():
        if arr.ndim < 2:
            raise ValueError(
                f"{name} must have at least 2 dimensions (..., seq_len, features), got shape {arr.shape}"
            )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"query and key must have the same last dimension E, got query {query.shape} and key {key.shape}"
        )
    if value is not None and key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"key and value must have the same sequence length S, got key {key.shape} and value {value.shape}"
        )
    if 0 in (query.shape[-2], key.shape[-2]):
        raise ValueError(
            f"query and key must have at least one position, got query {query.shape} and key {key.shape}"
        )
    flag(is_causal, "is_causal")
    batch = {name: arr.shape[:-2] for name, arr in arrays.items()}
    if flag(enable_gqa, "enable_gqa"):
        if any(arr.ndim < 3 for arr in arrays.values()):
            raise ValueError(
                "enable_gqa=True needs a heads axis (..., H, L, E), got "
                + ", ".join(f"{n} {a.shape}" for n, a in arrays.items())
            )
        hq, hkv = query.shape[-3], key.shape[-3]
        hv = value.shape[-3] if value is not None else hkv
        if hv != hkv or hq % hkv != 0:
            raise ValueError(
                f"enable_gqa=True needs query heads ({hq}) to be a multiple of key heads ({hkv}) "
                f"and value heads ({hv}) equal to key heads"
            )
        # after the heads are repeated
        batch = {name: shape[:-1] + (hq,) for name, shape in batch.items()}
    try:
        batch_shape = np.broadcast_shapes(*batch.values())
    except ValueError:
        shapes = ", ".join(f"{n} {a.shape}" for n, a in arrays.items())
        raise ValueError(
            f"the batch axes (all but the last two) of {shapes} must broadcast together"
        ) from None
    attn_mask = mask_array(attn_mask, "attn_mask")
    if is_causal and attn_mask is not None:
        raise ValueError(
            "attn_mask must be None when is_causal=True (is_causal builds the mask itself)"
        )
    if scale is not None and not (
        isinstance(scale, (int, float, np.floating)) and not isinstance(scale, bool)
    ):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if attn_mask is not None:
        scores_shape = batch_shape + (query.shape[-2], key.shape[-2])
        try:
            fits = np.broadcast_shapes(attn_mask.shape, scores_shape) == scores_shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(
                f"attn_mask of shape {attn_mask.shape} does not broadcast to the scores' shape "
                f"{scores_shape} (..., L, S)"
            )
    return query, key, value, attn_mask
