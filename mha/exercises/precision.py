"""Checks for the exercises of chapter 7, numerical precision.

Each ``check_<name>(your_function)`` calls the reader's function on a few
inputs drawn from a seeded generator (the same on every run and machine)
and compares the result with a reference:

- :func:`check_machine_epsilon`: ``machine_epsilon(dtype)``, the gap between
  1 and the next larger number of a NumPy float type, found by halving
  (``np.finfo(dtype).eps``); checked for float16, float32 and float64;
- :func:`check_allclose`: ``allclose(a, b, rtol, atol)``, one bool, True
  when ``|a - b| <= atol + rtol * |b|`` holds for every element (finite
  inputs; ``b`` may broadcast against ``a``), as ``np.allclose`` decides;
- :func:`check_tolerance_ratio`: ``tolerance_ratio(a, b, rtol, atol)``, the
  largest element-wise ``|a - b| / (atol + rtol * |b|)``: how many tolerances
  away the worst element is (at most 1 exactly when ``allclose`` is True).

Both take the tolerances in ``np.allclose``'s order: ``rtol`` before ``atol``.

``COMMON_MISTAKES`` maps each check's name to a typical wrong answer; the
test suite uses it to make sure every check can tell right from wrong.
"""

from __future__ import annotations

import numpy as np

from ._core import check_function as _check_function

__all__ = ["check_machine_epsilon", "check_allclose", "check_tolerance_ratio", "COMMON_MISTAKES"]

_SEED = 2007


def _rng(offset: int) -> np.random.Generator:
    return np.random.default_rng(_SEED + offset)


# --- machine_epsilon -----------------------------------------------------------------------------

def _machine_epsilon(dtype):
    return np.finfo(dtype).eps


def check_machine_epsilon(machine_epsilon):
    """``machine_epsilon(dtype)`` for dtype = np.float16, np.float32, np.float64: exactly np.finfo(dtype).eps."""
    cases = [(np.float32,), (np.float64,), (np.float16,)]
    return _check_function(machine_epsilon, _machine_epsilon, cases, name="machine_epsilon", atol=0.0,
                           hint="do every step in the requested type: start from one = dtype(1) and eps = dtype(1), "
                                "halve eps while one + eps / 2 != one, and return eps. With a Python float (1.0) "
                                "the arithmetic is float64 whatever dtype is. The answer is the last eps for which "
                                "1 + eps != 1, not the first one that vanishes (that is half of it).")


def _machine_epsilon_in_python_floats(dtype):
    eps = 1.0                                        # a Python float: every step below is float64
    while 1.0 + eps / 2 != 1.0:
        eps /= 2
    return eps


# --- allclose ------------------------------------------------------------------------------------

def _allclose(a, b, rtol, atol):
    return bool(np.all(np.abs(np.asarray(a) - np.asarray(b)) <= atol + rtol * np.abs(np.asarray(b))))


def check_allclose(allclose):
    """``allclose(a, b, rtol, atol)`` -> one bool, |a - b| <= atol + rtol * |b| for every element."""
    rng = _rng(3)
    b = rng.standard_normal((4, 5))
    big = rng.uniform(100, 200, 6).astype(np.float32)
    cases = [                                                                 # (a, b, rtol, atol)
        (b + 1e-7 * rng.standard_normal(b.shape), b, 0.0, 1e-6),             # atol alone: close
        (b + 1e-3, b, 1e-5, 1e-5),                                            # far off
        (np.nextafter(big, np.float32(np.inf)), big, 0.0, 1e-5),              # one float32 step near 150 > 1e-5
        (np.nextafter(big, np.float32(np.inf)), big, 1e-6, 1e-5),             # ... a relative term allows it
        (np.array([1e-9, 0.5]), np.array([0.0, 0.5]), 1e-3, 0.0),            # rtol alone fails at b = 0
        (np.array([1.0, 2.0]), np.array([1.1, 2.0]), 0.095, 0.0),             # uses |b| (1.1): True
        (np.array([1.1, 2.0]), np.array([1.0, 2.0]), 0.095, 0.0),             # uses |b| (1.0): False
        (b + 2e-6, b, 1e-6, 1e-6),                                            # depends on |b| element by element
        (np.full((2, 3), 3.0 + 4e-6), np.float64(3.0), 1e-6, 1e-6),           # b broadcasts against a
        (np.array([100.0]), np.array([100.0 + 5e-5]), 1e-6, 0.0),             # rtol 1e-6 at 100 allows 1e-4: True
        (np.array([100.0]), np.array([100.0 + 5e-5]), 0.0, 1e-6),             # atol 1e-6 alone: False (order matters)
    ]
    return _check_function(allclose, _allclose, cases, name="allclose",
                           hint="take the arguments in np.allclose's order, (a, b, rtol, atol); compare element by "
                                "element, |a - b| <= atol + rtol * |b|, with the magnitude of b (the reference) only, "
                                "not of a, then reduce with np.all(...) and return one bool.")


def _allclose_scaled_by_a(a, b, rtol, atol):
    return bool(np.all(np.abs(a - b) <= atol + rtol * np.abs(a)))   # |a| instead of |b|


# --- tolerance_ratio -----------------------------------------------------------------------------

def _tolerance_ratio(a, b, rtol, atol):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / (atol + rtol * np.abs(b))))


def check_tolerance_ratio(tolerance_ratio):
    """``tolerance_ratio(a, b, rtol, atol)`` -> max over elements of |a - b| / (atol + rtol * |b|)."""
    rng = _rng(4)
    b1 = rng.standard_normal((8, 6))
    b2 = 100.0 * rng.standard_normal(50)
    b2[:5] = 1e-3 * rng.standard_normal(5)                                 # a few small entries ...
    a2 = b2 + 1e-4 * rng.standard_normal(50)                               # ... with the same absolute error
    b3 = rng.uniform(-1, 1, (3, 4, 5)).astype(np.float32)
    a3 = b3 + np.float32(1e-6) * rng.standard_normal((3, 4, 5)).astype(np.float32)
    cases = [                                                               # (a, b, rtol, atol)
        (b1 + 2e-6 * rng.standard_normal(b1.shape), b1, 0.0, 1e-5),        # atol alone: |a - b|max / atol
        (a2, b2, 1e-5, 1e-6),                                               # the worst element is a small one
        (a3, b3, 1e-6, 1e-6),                                               # float32 input
        (np.array([2.0, -3.0]), np.array([2.0, -3.0]), 1e-8, 1e-8),         # equal: 0
        (b1 + 2e-6 * rng.standard_normal(b1.shape), b1, 1e-5, 0.0),        # rtol alone: atol comes second
    ]
    return _check_function(tolerance_ratio, _tolerance_ratio, cases, name="tolerance_ratio", atol=1e-5,
                           hint="take the arguments in np.allclose's order, (a, b, rtol, atol); divide element by "
                                "element, |a - b| / (atol + rtol * |b|), then take the maximum; "
                                "max|a - b| / (atol + rtol * max|b|) gives the large entries' allowance to the "
                                "small ones.")


def _tolerance_ratio_of_maxima(a, b, rtol, atol):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / (atol + rtol * np.max(np.abs(b))))


COMMON_MISTAKES = {
    "check_machine_epsilon": _machine_epsilon_in_python_floats,
    "check_allclose": _allclose_scaled_by_a,
    "check_tolerance_ratio": _tolerance_ratio_of_maxima,
}
