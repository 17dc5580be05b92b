"""Checks for the exercises of chapter 7, numerical precision.

Each ``check_<name>(your_function)`` calls the reader's function on a few
inputs drawn from a seeded generator (the same on every run and machine)
and compares the result with a reference:

- :func:`check_nan_prediction` (predict): ``predict_nan_rows()`` returns one
  bool per case of :data:`NAN_CASES`, True where the softmax row comes out
  NaN (the check runs the five cases);
- :func:`check_fill_bug` (diagnose): ``name_the_bug()`` names, from
  :data:`FILL_BUGS`, the bug behind :func:`mystery_softmax`, whose float16
  scores and weights the chapter prints;
- :func:`check_machine_epsilon` (build): ``machine_epsilon(dtype)``, the gap between
  1 and the next larger number of a NumPy float type, found by halving
  (``np.finfo(dtype).eps``); checked for float16, float32 and float64;
- :func:`check_allclose` (build): ``allclose(a, b, rtol, atol)``, one bool, True
  when ``|a - b| <= atol + rtol * |b|`` holds for every element (finite
  inputs; ``b`` may broadcast against ``a``), as ``np.allclose`` decides;
- :func:`check_tolerance_ratio` (build): ``tolerance_ratio(a, b, rtol, atol)``, the
  largest element-wise ``|a - b| / (atol + rtol * |b|)``: how many tolerances
  away the worst element is (at most 1 exactly when ``allclose`` is True).

The last two take the tolerances in ``np.allclose``'s order: ``rtol`` before ``atol``.

``COMMON_MISTAKES`` maps each check's name to a typical wrong answer; the
test suite uses it to make sure every check can tell right from wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ._core import check_function as _check_function
from ._naming import check_name, check_prediction

__all__ = [
    "check_nan_prediction",
    "NAN_CASES",
    "check_fill_bug",
    "mystery_softmax",
    "FILL_BUGS",
    "check_machine_epsilon",
    "check_allclose",
    "check_tolerance_ratio",
    "COMMON_MISTAKES",
]

_SEED = 2007


def _rng(offset: int) -> np.random.Generator:
    return np.random.default_rng(_SEED + offset)


def _softmax(x: np.ndarray) -> np.ndarray:
    """The usual softmax, the row maximum subtracted, in x's dtype: NaN for a row of -inf."""
    with np.errstate(invalid="ignore"):  # -inf - (-inf) in an all -inf row
        e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _naive_softmax(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # exp overflows, inf / inf
        e = np.exp(x)
        return e / e.sum(axis=-1, keepdims=True)


# --- predict: NaN or not? ------------------------------------------------------------------------

NAN_CASES = (
    "float16, every key blocked by a fill of -1e9 (np.where(blocked, -1e9, scores))",
    "float32, the same -1e9 fill",
    "float16, every key blocked by adding finfo(float16).min to scores (2, -20, 1)",
    "float16, no mask, a naive softmax (no max subtracted) of the logits (12, 11, 10)",
    "float16, no mask, the stable softmax of the same logits",
)

_NAN_WHY = {
    0: "-1e9 does not exist in float16 (largest finite 65504): the fill is -inf, the row's "
    "maximum is -inf, and -inf - (-inf) is NaN. (torch's masked_fill refuses -1e9 in "
    "float16 with a RuntimeError; a cast, torch.tensor(-1e9).half(), gives -inf.)",
    1: "In float32 -1e9 is finite: every key gets the same score and the softmax is "
    "uniform, 1/3 each. Meaningless, but no NaN.",
    2: "Only the scores below -16 overflow: 2 + min and 1 + min round back to -65504, "
    "-20 + min is -inf. The row has finite entries, so it is [0.5, 0, 0.5]: wrong "
    "weights (every key was blocked) but no NaN.",
    3: "exp(12) = 162755 is above float16's 65504: inf, and inf / inf is NaN (from about "
    "11.1 on, exp overflows float16).",
    4: "After subtracting the row maximum the largest exponent is exp(0) = 1: nothing "
    "overflows and the sum is at least 1.",
}


def _nan_rows() -> tuple[bool, ...]:
    f16 = np.float16
    scores16 = np.array([2.0, -20.0, 1.0], dtype=f16)
    blocked = np.ones(3, dtype=bool)
    with np.errstate(over="ignore"):  # the casts overflow on purpose
        fill16 = np.where(blocked, -1e9, scores16)  # float16: -1e9 -> -inf
        added16 = scores16 + np.where(blocked, np.finfo(f16).min, f16(0))
    fill32 = np.where(blocked, -1e9, scores16.astype(np.float32))
    logits = np.array([12.0, 11.0, 10.0], dtype=f16)
    rows = (
        _softmax(fill16),
        _softmax(fill32),
        _softmax(added16),
        _naive_softmax(logits),
        _softmax(logits),
    )
    return tuple(bool(np.isnan(row).any()) for row in rows)


def check_nan_prediction(predict_nan_rows: Callable[..., Any]) -> bool | None:
    """``predict_nan_rows()`` -> five bools, one per case of NAN_CASES: True = NaN."""
    return check_prediction(
        predict_nan_rows,
        name="predict_nan_rows",
        labels=NAN_CASES,
        truth=_nan_rows(),
        why=_NAN_WHY,
    )


def _every_float16_row_nan() -> tuple[bool, ...]:
    return (True, False, True, True, False)


# --- diagnose: which fill? -----------------------------------------------------------------------

FILL_BUGS = (
    "-1e9 fill in float16",
    "finfo.min added to the scores",
    "naive softmax in float16",
    "sums accumulated in float16",
)

# query 3: every key blocked
_MYSTERY_SCORES = (
    (2.0, -1.0, 0.5, 3.0, -2.0),  # query 0: keys 1, 3, 4 blocked
    (1.5, 0.0, -0.5, 2.5, 1.0),  # query 1: key 2 blocked
    (-3.0, -20.0, 5.0, -30.0, -25.0),  # query 2: every key blocked
    (-18.0, -22.0, -40.0, -17.0, -30.0),
)
_MYSTERY_BLOCKED = (
    (False, True, False, True, True),
    (False, False, True, False, False),
    (True,) * 5,
    (True,) * 5,
)


def mystery_softmax() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, blocked, weights): float16 scores (4, 5), the mask (True = blocked) and the
    float16 weights of a masked softmax with one bug from :data:`FILL_BUGS`."""
    scores = np.array(_MYSTERY_SCORES, dtype=np.float16)
    blocked = np.array(_MYSTERY_BLOCKED)
    with np.errstate(over="ignore"):  # min + (score < -16) overflows
        masked = scores + np.where(blocked, np.finfo(np.float16).min, np.float16(0))
    return scores, blocked, _softmax(masked)


_FILL_LOOKS = {
    "-1e9 fill in float16": "every fully blocked row would be NaN, query 2's too: -1e9 is "
    "-inf in float16, whatever the scores are.",
    "naive softmax in float16": "the fully blocked rows would both be NaN (exp of about "
    "-65504 is 0 for every key, and 0 / 0 is NaN), query 2's "
    "too.",
    "sums accumulated in float16": "there would be no NaN at all: float16 sums of at most "
    "five weights lose a few digits, not whole rows.",
}


def check_fill_bug(name_the_bug: Callable[..., Any]) -> bool | None:
    """``name_the_bug()`` -> one of FILL_BUGS, the bug behind ``mystery_softmax``."""
    return check_name(
        name_the_bug,
        name="name_the_bug",
        choices=FILL_BUGS,
        answer="finfo.min added to the scores",
        explanations=_FILL_LOOKS,
        correct="finfo.min added to the scores. Query 3's scores are all below -16, so "
        "every one overflows to -inf and the row is NaN; query 2 has two scores "
        "above -16 (-3 and 5), which round back to -65504, so it puts half its "
        "weight on each of two blocked keys, wrong and without a NaN to warn you.",
    )


# --- machine_epsilon -----------------------------------------------------------------------------


def _machine_epsilon(dtype: DTypeLike) -> np.floating:
    return np.finfo(dtype).eps


def check_machine_epsilon(machine_epsilon: Callable[..., Any]) -> bool | None:
    """``machine_epsilon(dtype)`` for dtype = np.float16, np.float32, np.float64: exactly np.finfo(dtype).eps."""
    cases = [(np.float32,), (np.float64,), (np.float16,)]
    return _check_function(
        machine_epsilon,
        _machine_epsilon,
        cases,
        name="machine_epsilon",
        atol=0.0,
        hint="do every step in the requested type: start from one = dtype(1) and eps = dtype(1), "
        "halve eps while one + eps / 2 != one, and return eps. With a Python float (1.0) "
        "the arithmetic is float64 whatever dtype is. The answer is the last eps for which "
        "1 + eps != 1, not the first one that vanishes (that is half of it).",
    )


def _machine_epsilon_in_python_floats(dtype: DTypeLike) -> float:
    eps = 1.0  # a Python float: every step below is float64
    while 1.0 + eps / 2 != 1.0:
        eps /= 2
    return eps


# --- allclose ------------------------------------------------------------------------------------


def _allclose(a: ArrayLike, b: ArrayLike, rtol: float, atol: float) -> bool:
    return bool(
        np.all(
            np.abs(np.asarray(a) - np.asarray(b)) <= atol + rtol * np.abs(np.asarray(b))
        )
    )


def check_allclose(allclose: Callable[..., Any]) -> bool | None:
    """``allclose(a, b, rtol, atol)`` -> one bool, |a - b| <= atol + rtol * |b| for every element."""
    rng = _rng(3)
    b = rng.standard_normal((4, 5))
    big = rng.uniform(100, 200, 6).astype(np.float32)
    cases = [  # (a, b, rtol, atol)
        (b + 1e-7 * rng.standard_normal(b.shape), b, 0.0, 1e-6),  # atol alone: close
        (b + 1e-3, b, 1e-5, 1e-5),  # far off
        # one float32 step near 150 > 1e-5
        (
            np.nextafter(big, np.float32(np.inf)),
            big,
            0.0,
            1e-5,
        ),
        # ... a relative term allows it
        (
            np.nextafter(big, np.float32(np.inf)),
            big,
            1e-6,
            1e-5,
        ),
        # rtol alone fails at b = 0
        (
            np.array([1e-9, 0.5]),
            np.array([0.0, 0.5]),
            1e-3,
            0.0,
        ),
        # uses |b| (1.1): True
        (
            np.array([1.0, 2.0]),
            np.array([1.1, 2.0]),
            0.095,
            0.0,
        ),
        # uses |b| (1.0): False
        (
            np.array([1.1, 2.0]),
            np.array([1.0, 2.0]),
            0.095,
            0.0,
        ),
        (b + 2e-6, b, 1e-6, 1e-6),  # depends on |b| element by element
        # b broadcasts against a
        (
            np.full((2, 3), 3.0 + 4e-6),
            np.float64(3.0),
            1e-6,
            1e-6,
        ),
        # rtol 1e-6 at 100 allows 1e-4: True
        (
            np.array([100.0]),
            np.array([100.0 + 5e-5]),
            1e-6,
            0.0,
        ),
        # atol 1e-6 alone: False (order matters)
        (
            np.array([100.0]),
            np.array([100.0 + 5e-5]),
            0.0,
            1e-6,
        ),
    ]
    return _check_function(
        allclose,
        _allclose,
        cases,
        name="allclose",
        hint="take the arguments in np.allclose's order, (a, b, rtol, atol); compare element by "
        "element, |a - b| <= atol + rtol * |b|, with the magnitude of b (the reference) only, "
        "not of a, then reduce with np.all(...) and return one bool.",
    )


def _allclose_scaled_by_a(
    a: np.ndarray, b: np.ndarray, rtol: float, atol: float
) -> bool:
    return bool(np.all(np.abs(a - b) <= atol + rtol * np.abs(a)))  # |a| instead of |b|


# --- tolerance_ratio -----------------------------------------------------------------------------


def _tolerance_ratio(a: ArrayLike, b: ArrayLike, rtol: float, atol: float) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / (atol + rtol * np.abs(b))))


def check_tolerance_ratio(tolerance_ratio: Callable[..., Any]) -> bool | None:
    """``tolerance_ratio(a, b, rtol, atol)`` -> max over elements of |a - b| / (atol + rtol * |b|)."""
    rng = _rng(4)
    b1 = rng.standard_normal((8, 6))
    b2 = 100.0 * rng.standard_normal(50)
    b2[:5] = 1e-3 * rng.standard_normal(5)  # a few small entries ...
    a2 = b2 + 1e-4 * rng.standard_normal(50)  # ... with the same absolute error
    b3 = rng.uniform(-1, 1, (3, 4, 5)).astype(np.float32)
    a3 = b3 + np.float32(1e-6) * rng.standard_normal((3, 4, 5)).astype(np.float32)
    cases = [  # (a, b, rtol, atol)
        # atol alone: |a - b|max / atol
        (
            b1 + 2e-6 * rng.standard_normal(b1.shape),
            b1,
            0.0,
            1e-5,
        ),
        (a2, b2, 1e-5, 1e-6),  # the worst element is a small one
        (a3, b3, 1e-6, 1e-6),  # float32 input
        (np.array([2.0, -3.0]), np.array([2.0, -3.0]), 1e-8, 1e-8),  # equal: 0
        # rtol alone: atol comes second
        (
            b1 + 2e-6 * rng.standard_normal(b1.shape),
            b1,
            1e-5,
            0.0,
        ),
    ]
    return _check_function(
        tolerance_ratio,
        _tolerance_ratio,
        cases,
        name="tolerance_ratio",
        atol=1e-5,
        hint="take the arguments in np.allclose's order, (a, b, rtol, atol); divide element by "
        "element, |a - b| / (atol + rtol * |b|), then take the maximum; "
        "max|a - b| / (atol + rtol * max|b|) gives the large entries' allowance to the "
        "small ones.",
    )


def _tolerance_ratio_of_maxima(
    a: ArrayLike, b: ArrayLike, rtol: float, atol: float
) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / (atol + rtol * np.max(np.abs(b))))


COMMON_MISTAKES = {
    "check_nan_prediction": _every_float16_row_nan,
    "check_fill_bug": lambda: "-1e9 fill in float16",
    "check_machine_epsilon": _machine_epsilon_in_python_floats,
    "check_allclose": _allclose_scaled_by_a,
    "check_tolerance_ratio": _tolerance_ratio_of_maxima,
}
