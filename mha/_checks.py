"""Argument checks shared by the package.

Every check raises ``TypeError`` (wrong kind of thing) or ``ValueError``
(right kind, wrong value) with a message that names the argument, says what
was expected and shows what came, so a learner can fix the call without
reading a NumPy traceback.
"""

from __future__ import annotations

import numbers

import numpy as np


def positive_int(value, name: str) -> int:
    """Return ``value`` as an int after checking it is a positive integer."""
    # bool is an int subclass; True heads is a bug, not a size.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def flag(value, name: str) -> bool:
    """Return ``value`` as a bool after checking it is one (``"False"`` is truthy: refuse it)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def rng_from_seed(seed, name: str = "seed") -> np.random.Generator:
    """``np.random.default_rng(seed)`` for None, a non-negative int or a Generator."""
    if seed is None or isinstance(seed, np.random.Generator):
        return np.random.default_rng(seed)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be None, a non-negative int or a np.random.Generator, got {seed!r} ({type(seed).__name__})")
    if seed < 0:
        raise ValueError(f"{name} must be a non-negative int, got {seed}")
    return np.random.default_rng(int(seed))


def float_dtype(dtype, name: str = "dtype") -> np.dtype:
    """Return ``dtype`` as a NumPy float32/float64 dtype."""
    try:
        result = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be np.float32 or np.float64, got {dtype!r}") from None
    if result not in (np.float32, np.float64):
        raise TypeError(f"{name} must be np.float32 or np.float64, got {result}")
    return result


def as_float_array(x, name: str, dtype: np.dtype | None = None) -> np.ndarray:
    """Return ``x`` as a floating-point array without modifying it.

    ``dtype=None`` keeps a float32/float64 input as it is (other floats
    become float64); otherwise the array is cast to ``dtype``.
    """
    if x is None:
        raise TypeError(f"{name} must be an array, got None")
    try:
        arr = np.asarray(x)
    except Exception as exc:  # e.g. a CUDA tensor or a ragged list
        raise TypeError(f"{name} must be convertible to a NumPy array, got {type(x).__name__}: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must hold real floating-point numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be a floating-point array, got integer dtype {arr.dtype}; cast it with .astype(np.float32)")
    if dtype is None:
        dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    return arr.astype(dtype, copy=False)


def mask_array(mask, name: str) -> np.ndarray | None:
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
        raise ValueError(f"{name} must have shape {tuple(expected)}{extra}, got {arr.shape}")
