"""Printed, machine-independent verdicts for the book's comparisons with torch.

The last digits of a float32 difference depend on the CPU and the BLAS build,
so a notebook that printed ``max diff = 1.19e-07`` would fail nbval on
another machine. These helpers print the verdict against a tolerance instead,
and return it, so that every comparison can also be an ``assert``.

This module is also the one home of the two helpers every comparison needs:
:func:`as_float64` (an array, a torch tensor or a list, as a float64 NumPy array)
and :func:`max_abs_diff` (the NaN-aware largest difference). ``mha.torch_bridge``,
``mha.plot``, ``mha.analysis`` and the exercise checks use them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_float64", "abs_diff", "max_abs_diff", "report_match"]


def as_float64(a: Any, name: str = "array") -> np.ndarray:
    """``a`` as a new float64 NumPy array: an array, a list, a number, or a torch tensor
    (detached and moved to the CPU first). TypeError naming ``name`` for anything that
    does not hold real numbers (strings, objects, complex numbers)."""
    if hasattr(a, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        a = a.detach().cpu().numpy()
    try:
        arr = np.asarray(a)
    except Exception as exc:  # e.g. a ragged list
        raise TypeError(
            f"{name} must be array-like, got {type(a).__name__}: {exc}"
        ) from exc
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _pair(actual: Any, expected: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_float64(actual, "actual"), as_float64(expected, "expected")
    if a.shape != b.shape:
        raise ValueError(
            f"actual and expected must have the same shape, got actual {a.shape} and expected {b.shape}"
        )
    return a, b


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # inf - inf is NaN, but the two are equal: 0
        return np.where(a == b, 0.0, np.abs(a - b))


def abs_diff(actual: Any, expected: Any) -> np.ndarray:
    """``|actual - expected|`` element by element, in float64 (NaN where either is NaN).

    Equal values differ by 0, infinities of the same sign included. Both must have one shape.
    """
    return _abs_diff(*_pair(actual, expected))


def max_abs_diff(actual: Any, expected: Any) -> float:
    """max |actual - expected| as a Python float: NaN where one has NaN and the other a number;
    a NaN facing a NaN counts as equal. 0.0 for empty arrays."""
    a, b = _pair(actual, expected)
    a_nan = np.isnan(a)
    if not np.array_equal(a_nan, np.isnan(b)):
        return float("nan")
    diff = _abs_diff(a, b)
    diff[a_nan] = 0.0
    return float(diff.max()) if diff.size else 0.0


def _check_tolerance(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(
            f"{name} must be a non-negative number, got {value!r} ({type(value).__name__})"
        )
    if not value >= 0:
        raise ValueError(f"{name} must be a non-negative number, got {value}")


def report_match(
    label: str,
    actual: Any,
    expected: Any,
    atol: float = 1e-5,
    *,
    rtol: float = 0.0,
    reference: str = "torch",
) -> bool:
    """Print ``label: matches torch within 1e-05: True`` and return the verdict.

    The test is ``np.allclose``'s, element by element:
    ``|actual - expected| <= atol + rtol * |expected|`` (NaN never matches
    a number). ``reference`` names what ``expected`` is, when it is not
    torch's result.
    """
    for name, text in (("label", label), ("reference", reference)):
        if not isinstance(text, str):
            raise TypeError(
                f"{name} must be a str, got {text!r} ({type(text).__name__})"
            )
    _check_tolerance("atol", atol)
    _check_tolerance("rtol", rtol)
    a, b = _pair(actual, expected)
    if np.isnan(max_abs_diff(a, b)):
        verdict = False
    else:
        verdict = bool(np.all(np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)))
    tolerance = f"{atol:.0e}" if not rtol else f"atol {atol:.0e}, rtol {rtol:.0e}"
    print(f"{label}: matches {reference} within {tolerance}: {verdict}")
    return verdict
