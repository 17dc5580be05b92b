"""The one checking routine behind every exercise."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..verify import max_abs_diff


def check_function(
    answer: Callable[..., Any],
    reference: Callable[..., Any],
    cases: Sequence[tuple[Any, ...]],
    *,
    name: str,
    atol: float = 1e-6,
    hint: str = "",
) -> bool | None:
    """Call ``answer(*case)`` and ``reference(*case)`` for every case and compare.

    Prints a verdict and returns True (all cases agree within ``atol``),
    False (a case differs or raises), or None (``answer`` still raises
    ``NotImplementedError``). ``hint`` is printed with a wrong answer.
    """
    if not callable(answer):
        print(f"Not quite: {name} must be a function, got {type(answer).__name__}.")
        return False
    for i, case in enumerate(cases):
        try:
            got = answer(*case)
        except NotImplementedError:
            print(f"Not attempted yet: {name} still raises NotImplementedError.")
            return None
        except Exception as exc:  # the reader's code may fail in any way: report it, do not crash the notebook
            print(
                f"Not quite: {name} raised {type(exc).__name__}: {exc} (test case {i + 1})."
            )
            return False
        expected = reference(*case)
        problem = _difference(got, expected, atol)
        if problem:
            print(
                f"Not quite: test case {i + 1} of {len(cases)}: {problem}."
                + (f" Hint: {hint}" if hint else "")
            )
            return False
    print(f"Correct: {name} agrees with the reference on all {len(cases)} test cases.")
    return True


def _difference(got: Any, expected: Any, atol: float) -> str:
    """Empty string when ``got`` matches ``expected``, else what differs."""
    if isinstance(expected, tuple):
        if not isinstance(got, tuple) or len(got) != len(expected):
            return (
                f"expected a tuple of {len(expected)} arrays, got {type(got).__name__}"
            )
        for j, (g, e) in enumerate(zip(got, expected)):
            problem = _difference(g, e, atol)
            if problem:
                return f"item {j}: {problem}"
        return ""
    if got is None:
        return "the function returned None (is a `return` missing?)"
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        return f"shape {got.shape}, expected {expected.shape}"
    if expected.dtype == np.bool_:
        if got.dtype != np.bool_:
            return f"dtype {got.dtype}, expected a bool array"
        wrong = int(np.sum(got != expected))
        return f"{wrong} entries differ" if wrong else ""
    if got.dtype.kind not in "iuf":
        return f"dtype {got.dtype}, expected real numbers"
    worst = max_abs_diff(got, expected)  # NaN where only one of them has NaN
    if np.isnan(worst):
        return "NaN where the reference has a number (or the reverse)"
    return (
        f"max |difference| = {worst:.2e} (allowed {atol:.0e})" if worst > atol else ""
    )
