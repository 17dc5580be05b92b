"""Checks for the exercises of chapter 2, scaled dot-product attention.

One exercise or more of each kind, each ``check_<name>(your_function)``:

- :func:`check_fill_prediction` (predict): ``predict_mean_of_values()`` returns three
  bools, one per case, True where a query whose every key is filled with -1e9 returns
  the plain mean of the values;
- :func:`check_sdpa_bug` (diagnose): ``name_the_bug()`` names, from :data:`SDPA_BUGS`,
  the bug behind :func:`mystery_weights`, whose attention map the chapter draws;
- :func:`check_stable_softmax` (build): ``stable_softmax(x)`` along the last axis,
  finite for huge logits and zeros for a row that is entirely ``-inf``;
- :func:`check_blocked_to_additive` (build): ``blocked_to_additive(mask)`` turns an
  ``nn.MultiheadAttention``-style bool mask (True = blocked) into an additive float
  mask (``-inf`` where blocked, 0 elsewhere).

``COMMON_MISTAKES`` maps each check's name to a typical wrong answer; the test suite
uses it to make sure every check can tell right from wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..functional import causal_mask, scaled_dot_product_attention, softmax
from ._core import check_function as _check_function
from ._naming import check_name, check_prediction

__all__ = [
    "check_fill_prediction",
    "check_sdpa_bug",
    "mystery_weights",
    "SDPA_BUGS",
    "check_stable_softmax",
    "check_blocked_to_additive",
    "COMMON_MISTAKES",
]

_SEED = 2002


def _rng(offset: int) -> np.random.Generator:
    return np.random.default_rng(_SEED + offset)


# --- predict: when does a -1e9 fill average the values? ------------------------------------------

FILL_CASES = (
    "float32, scores of size about 1",
    "float64, the same numbers",
    "float32, queries 100 times larger (scores up to about 90)",
)


def _fill_is_mean() -> tuple[bool, ...]:
    rng = _rng(5)
    Q, K, V = (rng.standard_normal((6, 8)) for _ in range(3))
    fill = np.zeros((6, 6))
    fill[-1] = -1e9  # the last query: every key "blocked"
    verdicts = []
    for dtype, scale in ((np.float32, 1.0), (np.float64, 1.0), (np.float32, 100.0)):
        q, k, v = (scale * Q).astype(dtype), K.astype(dtype), V.astype(dtype)
        out = scaled_dot_product_attention(q, k, v, attn_mask=fill.astype(dtype))
        verdicts.append(bool(np.allclose(out[-1], v.mean(axis=0), rtol=0, atol=1e-6)))
    return tuple(verdicts)


_FILL_WHY = {
    0: "Near 1e9, neighbouring float32 numbers are 64 apart, so score - 1e9 rounds to "
    "exactly -1e9 whenever |score| < 32: every key gets the same score, and the "
    "softmax is uniform.",
    1: "In float64 the spacing near 1e9 is about 1e-7: score - 1e9 keeps the score's "
    "differences, and the softmax subtracts the row maximum, so the row is the "
    "softmax of the original scores, not uniform.",
    2: "Scores above 32 in size survive the rounding (they move -1e9 by a multiple of 64), "
    "so the keys are not all equal any more.",
}


def check_fill_prediction(predict_mean_of_values: Callable[..., Any]) -> bool | None:
    """``predict_mean_of_values()`` -> three bools, one per case of :data:`FILL_CASES`."""
    return check_prediction(
        predict_mean_of_values,
        name="predict_mean_of_values",
        labels=FILL_CASES,
        truth=_fill_is_mean(),
        why=_FILL_WHY,
    )


# --- diagnose: name the bug behind an attention map -----------------------------------------------

SDPA_BUGS = (
    "mask polarity",
    "softmax over the wrong axis",
    "no 1/sqrt(d_k)",
    "diagonal blocked",
)


def mystery_weights() -> np.ndarray:
    """(6, 6) causal attention weights of a six-token sentence, computed with one bug from
    :data:`SDPA_BUGS` (which one is the exercise)."""
    rng = _rng(6)
    Q, K = (rng.standard_normal((6, 8)).astype(np.float32) for _ in range(2))
    scores = Q @ K.T / np.sqrt(8) + np.where(causal_mask(6), 0.0, -np.inf)
    return softmax(scores, axis=0)  # the bug: normalised over the queries


_SDPA_LOOKS = {
    "mask polarity": "the weights would sit above the diagonal (the future) and the last row "
    "would be empty; here they sit on and below it.",
    "no 1/sqrt(d_k)": "the map would still be causal with every row summing to 1, only "
    "more peaked. Add up a row of the mystery map.",
    "diagonal blocked": "the diagonal would be empty and the first row all zeros.",
}


def check_sdpa_bug(name_the_bug: Callable[..., Any]) -> bool | None:
    """``name_the_bug()`` -> one of SDPA_BUGS, the bug behind ``mystery_weights``."""
    return check_name(
        name_the_bug,
        name="name_the_bug",
        choices=SDPA_BUGS,
        answer="softmax over the wrong axis",
        explanations=_SDPA_LOOKS,
        correct="softmax over the wrong axis (axis=0, the queries). Each column sums to 1 "
        "instead of each row: the first row, whose only key is the first word, "
        "holds a small weight, and the last key's column holds a single 1.",
    )


# --- stable_softmax ------------------------------------------------------------------------------


def _softmax_last(x: np.ndarray) -> np.ndarray:
    return softmax(x, axis=-1)


def check_stable_softmax(stable_softmax: Callable[..., Any]) -> bool | None:
    """``stable_softmax(x)`` along the last axis; zeros for a row that is entirely -inf."""
    rng = _rng(2)
    inf = np.inf
    cases = [
        (2.0 * rng.standard_normal((4, 6)),),
        (rng.standard_normal((2, 3, 5)),),
        # overflow, underflow
        (
            np.array(
                [[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]],
                dtype=np.float32,
            ),
        ),
        # masked keys; row 1 all masked
        (
            np.array(
                [
                    [0.5, -inf, 1.5, -inf],
                    [-inf, -inf, -inf, -inf],
                    [2.0, 2.0, -inf, 0.0],
                ]
            ),
        ),
    ]
    return _check_function(
        stable_softmax,
        _softmax_last,
        cases,
        name="stable_softmax",
        atol=1e-6,
        hint="subtract each row's maximum (keepdims=True) before np.exp; for a row that is all "
        "-inf, the maximum is -inf and -inf - (-inf) is NaN: use 0 as that row's maximum, "
        "and make its sum 1, so the row comes out as zeros.",
    )


def _softmax_without_masked_rows(x: np.ndarray) -> np.ndarray:
    # -inf - (-inf): NumPy warns, and the row becomes NaN
    with np.errstate(invalid="ignore"):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


# --- blocked_to_additive -------------------------------------------------------------------------


def _blocked_to_additive(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, np.float32(-np.inf), np.float32(0))


def _random_blocked(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A random bool mask (True = blocked) that leaves every row at least one key."""
    mask = rng.random(shape) < 0.4
    mask[..., 0] = False
    return rng.permuted(mask, axis=-1)


def check_blocked_to_additive(blocked_to_additive: Callable[..., Any]) -> bool | None:
    """``blocked_to_additive(mask)``: True (blocked) -> -inf, False -> 0.0, same shape."""
    rng = _rng(4)
    cases = [
        # nn.MultiheadAttention's causal mask
        (np.triu(np.ones((4, 4), dtype=bool), k=1),),
        (_random_blocked(rng, (3, 5)),),
        (_random_blocked(rng, (2, 4, 6)),),  # (N * num_heads, L, S)
        (np.array([False, False, True]),),  # a key_padding_mask for one sequence
    ]
    return _check_function(
        blocked_to_additive,
        _blocked_to_additive,
        cases,
        name="blocked_to_additive",
        hint="in nn.MultiheadAttention's convention True means blocked, so True must become "
        "-inf and False 0.0 (np.where(mask, -np.inf, 0.0)); mask * -np.inf gives NaN "
        "where the mask is False (0 * inf).",
    )


def _blocked_to_additive_inverted(mask: np.ndarray) -> np.ndarray:
    # reads True as "attend", like SDPA
    return np.where(mask, np.float32(0), np.float32(-np.inf))


COMMON_MISTAKES = {
    "check_fill_prediction": lambda: (True, True, False),
    "check_sdpa_bug": lambda: "no 1/sqrt(d_k)",
    "check_stable_softmax": _softmax_without_masked_rows,
    "check_blocked_to_additive": _blocked_to_additive_inverted,
}
