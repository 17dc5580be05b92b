"""Printed, machine-independent verdicts for the book's comparisons with torch.

The last digits of a float32 difference depend on the CPU and the BLAS build,
so a notebook that printed ``max diff = 1.19e-07`` would fail nbval on
another machine. These helpers print the verdict against a tolerance instead,
and return it, so that every comparison can also be an ``assert``.
"""

from __future__ import annotations

import numpy as np


def _as_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor, possibly on a GPU
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def max_abs_diff(actual, expected) -> float:
    """max |actual - expected| as a Python float (NaN if either has NaN where the other does not)."""
    a, b = _as_numpy(actual), _as_numpy(expected)
    if a.shape != b.shape:
        raise ValueError(f"actual and expected must have the same shape, got {a.shape} and {b.shape}")
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("nan")
    diff = np.abs(np.where(np.isnan(a), 0.0, a) - np.where(np.isnan(b), 0.0, b))
    return float(diff.max()) if diff.size else 0.0


def report_match(label: str, actual, expected, atol: float = 1e-5, *, rtol: float = 0.0,
                 reference: str = "torch") -> bool:
    """Print ``label: matches torch within 1e-05: True`` and return the verdict.

    The test is ``np.allclose``'s, element by element:
    ``|actual - expected| <= atol + rtol * |expected|`` (NaN never matches
    a number). ``reference`` names what ``expected`` is, when it is not
    torch's result.
    """
    a, b = _as_numpy(actual), _as_numpy(expected)
    if np.isnan(max_abs_diff(a, b)):
        verdict = False
    else:
        verdict = bool(np.all(np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)))
    tolerance = f"{atol:.0e}" if not rtol else f"atol {atol:.0e}, rtol {rtol:.0e}"
    print(f"{label}: matches {reference} within {tolerance}: {verdict}")
    return verdict
