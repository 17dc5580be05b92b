"""Checks for the exercises of chapter 8, positional encodings and RoPE.

One exercise of each kind, each ``check_<name>(your_function)``:

- :func:`check_causal_swap` (predict): ``predict_unchanged_rows()`` returns
  six bools, one per position, True where the output of causal
  self-attention (no positional encoding) stays the same when tokens 2 and 4
  of a six-token sequence are swapped; the check runs the experiment;
- :func:`check_rope_bug` (diagnose): ``name_the_bug()`` returns the name,
  from :data:`ROPE_BUGS`, of the bug behind :func:`mystery_scores`, whose
  heatmap the chapter draws;
- :func:`check_rope_interleaved` (build): ``rope_interleaved(x, positions)``
  rotates the neighbouring pairs ``(2i, 2i+1)``, as the RoFormer paper writes
  RoPE, instead of ``mha.positional``'s rotate-half pairs ``(i, i + hd/2)``.

``COMMON_MISTAKES`` maps each check's name to a typical wrong answer; the
test suite uses it to make sure every check can tell right from wrong.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import positional
from ..attention import MultiHeadAttention
from ._core import check_function as _check_function

__all__ = [
    "check_causal_swap",
    "check_rope_bug",
    "check_rope_interleaved",
    "mystery_scores",
    "ROPE_BUGS",
    "COMMON_MISTAKES",
]

_SEED = 2008

# The chapter's bug vocabulary, in the order the chapter lists it.
ROPE_BUGS = (
    "no rotation",
    "queries only",
    "keys rotated backwards",
    "values rotated",
    "interleaved pairs",
)


def _rng(offset: int) -> np.random.Generator:
    return np.random.default_rng(_SEED + offset)


# --- predict: which rows survive a swap under a causal mask? ---------------------------------------


def _unchanged_rows() -> np.ndarray:
    layer = MultiHeadAttention(8, 2, dtype=np.float64, seed=_SEED)
    x = _rng(1).standard_normal((6, 8))
    swapped = x[[0, 1, 4, 3, 2, 5]]  # tokens 2 and 4 trade places
    out, out_swapped = layer(x, is_causal=True), layer(swapped, is_causal=True)
    # (6,) one verdict per row
    return np.all(np.isclose(out, out_swapped, rtol=0, atol=1e-12), axis=-1)


def check_causal_swap(predict_unchanged_rows: Callable[..., Any]) -> bool | None:
    """``predict_unchanged_rows()`` -> (6,) bools: rows of causal attention unchanged by swapping tokens 2, 4."""

    def as_bools() -> np.ndarray | None:
        got = predict_unchanged_rows()
        return None if got is None else np.asarray(got, dtype=bool)

    return _check_function(
        as_bools,
        _unchanged_rows,
        [()],
        name="predict_unchanged_rows",
        atol=0.0,
        hint="with a causal mask, output row i is query token i attending to the set of "
        "tokens 0..i, in any order. A row stays the same when its query token and that "
        "set stay the same: rows 0 and 1 never see the swap, rows 2 and 3 see a "
        "different set, row 4 sees the same set but with token 2 as its query, and row 5 "
        "sees all six tokens with its own query.",
    )


def _forgot_the_last_row() -> np.ndarray:
    return np.array([True, True, False, False, False, False])


# --- diagnose: name the bug behind a heatmap --------------------------------------------------------


def mystery_scores(L: int = 12, head_dim: int = 16) -> np.ndarray:
    """(L, L) scores ``q_i . k_j`` of ONE query vector and ONE key vector placed at every position,
    rotated by a RoPE with a bug from :data:`ROPE_BUGS` (which one is the exercise)."""
    rng = _rng(2)
    # (L, hd): the same vector everywhere
    q = np.tile(rng.standard_normal(head_dim), (L, 1))
    k = np.tile(rng.standard_normal(head_dim), (L, 1))
    q_rot = positional.apply_rope(q)
    k_rot = positional.apply_rope_backward(k)  # the bug: the transpose, angle -p theta
    return q_rot @ k_rot.T / np.sqrt(head_dim)  # (L, L)


_WHAT_IT_LOOKS_LIKE = {
    "no rotation": "every score would be the same (RoPE at position 0 is the identity)",
    "queries only": "every row would be constant: the score would depend on the query's position i "
    "alone (horizontal bands)",
    "keys rotated backwards": "the score would depend on i + j: constant along the anti-diagonals, "
    "because the query's angle and the key's angle add up instead of cancelling",
    "values rotated": "the scores would be those of a correct RoPE, constant along the diagonals i - j: "
    "values never enter the scores, only the outputs would be turned",
    "interleaved pairs": "the scores would still depend on i - j alone (the same diagonal stripes as the "
    "correct RoPE, with other values): a different pairing is still a valid RoPE",
}


def check_rope_bug(name_the_bug: Callable[..., Any]) -> bool | None:
    """``name_the_bug()`` -> one of ROPE_BUGS, the bug behind ``mystery_scores``."""
    name = "name_the_bug"
    try:
        got = name_the_bug()
    except NotImplementedError:
        print(f"Not attempted yet: {name} still raises NotImplementedError.")
        return None
    except Exception as exc:  # the reader's code may fail in any way: report it
        print(f"Not quite: {name} raised {type(exc).__name__}: {exc}.")
        return False
    if got not in ROPE_BUGS:
        print(_wrap(f"Not quite: {name} must return one of {ROPE_BUGS}, got {got!r}."))
        return False
    if got != "keys rotated backwards":
        print(
            _wrap(
                f"Not quite: with {got!r}, {_WHAT_IT_LOOKS_LIKE[got]}. Along which lines is the "
                "mystery heatmap constant?"
            )
        )
        return False
    print(
        _wrap(
            "Correct: keys rotated backwards (the keys went through apply_rope_backward, a "
            "turn by minus the angle). The scores are constant along the anti-diagonals: they "
            "depend on i + j, because the two angles add up instead of cancelling."
        )
    )
    return True


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=88, subsequent_indent="  ")


# --- build: RoPE with the RoFormer paper's neighbouring pairs ---------------------------------------


def _rope_interleaved(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    hd = x.shape[-1]
    # (2i) first, then (2i+1)
    order = np.concatenate([np.arange(0, hd, 2), np.arange(1, hd, 2)])
    # pairs (2i, 2i+1) now sit i, i + hd/2 apart
    turned = positional.apply_rope(x[..., order], positions)
    out = np.empty_like(turned)
    out[..., order] = turned  # back to the interleaved layout
    return out


def check_rope_interleaved(rope_interleaved: Callable[..., Any]) -> bool | None:
    """``rope_interleaved(x, positions)``: x (..., L, hd), positions (L,) ints -> (..., L, hd)."""
    rng = _rng(3)
    cases = [
        (rng.standard_normal((5, 8)), np.arange(5)),
        (rng.standard_normal((2, 3, 4, 6)), np.array([3, 9, 0, 1])),
        (rng.standard_normal((3, 2)), np.array([0, 1, 2])),
        (rng.standard_normal((4, 16)), np.arange(4) + 100),
    ]
    return _check_function(
        rope_interleaved,
        _rope_interleaved,
        cases,
        name="rope_interleaved",
        atol=1e-10,
        hint="pair feature 2i with feature 2i+1 and turn the pair by positions * theta_i, "
        "theta_i = 10000 ** (-2 i / hd): out[2i] = x[2i] cos - x[2i+1] sin, "
        "out[2i+1] = x[2i] sin + x[2i+1] cos. Slicing x[..., 0::2] and x[..., 1::2] "
        "gives the two members of every pair.",
    )


def _rotate_half_instead(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return positional.apply_rope(x, positions)


COMMON_MISTAKES = {
    "check_causal_swap": _forgot_the_last_row,
    "check_rope_bug": lambda: "queries only",
    "check_rope_interleaved": _rotate_half_instead,
}
