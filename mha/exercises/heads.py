"""Checks for chapter 3, "Multi-head attention: splitting and merging heads".

- :func:`check_reshape_prediction` (predict): ``predict_reshape_is_enough()`` returns one
  bool per (T, H) case of :data:`RESHAPE_CASES`, True where a reshape alone (no transpose)
  splits the heads correctly;
- :func:`check_heads_bug` (diagnose): ``name_the_bug()`` names, from :data:`HEAD_BUGS`,
  the bug behind :func:`mystery_weights`;
- :func:`check_head_weights` (build): head ``h``'s query, key and value rows of torch's
  ``in_proj_weight`` (3E, E);
- :func:`check_head_contributions` (build): the output as a sum over heads,
  ``head_h @ W_O[rows of head h]``, one term per head.

Every test case is drawn from a seeded RNG, so a check gives the same verdict on every run.
``COMMON_MISTAKES`` holds one realistic wrong answer per check (``tests/test_exercises.py``
makes sure each of them is caught).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..attention import MultiHeadAttention
from ..functional import softmax, split_heads
from ._core import check_function as _check_function
from ._naming import check_name, check_prediction

__all__ = [
    "check_reshape_prediction",
    "check_heads_bug",
    "mystery_weights",
    "HEAD_BUGS",
    "check_head_weights",
    "check_head_contributions",
    "COMMON_MISTAKES",
]

_SEED = 303


def _rng(offset: int = 0) -> np.random.Generator:
    return np.random.default_rng(_SEED + offset)


# ---------------------------------------------------------------- predict

RESHAPE_CASES = ((1, 4), (5, 1), (4, 4), (3, 2))  # (T, H), with head_dim 2


def _reshape_is_enough() -> tuple[bool, ...]:
    verdicts = []
    for T, H in RESHAPE_CASES:
        x = _rng(1).standard_normal((1, T, 2 * H))
        right = x.reshape(1, T, H, 2).transpose(0, 2, 1, 3)  # (B, H, T, hd)
        verdicts.append(bool(np.array_equal(x.reshape(1, H, T, 2), right)))
    return tuple(verdicts)


_RESHAPE_WHY = {
    0: "With one token, (1, T, H, hd) and (1, H, T, hd) hold the numbers in the same "
    "order: the transpose moves an axis of length 1, which changes nothing.",
    1: "With one head the heads axis has length 1, so the transpose changes nothing.",
    2: "T = H gives the right shape either way, but the reshape still gives head h "
    "the whole of token h (all its features), not feature group h of every token.",
    3: "Tokens and heads are mixed whenever T > 1 and H > 1.",
}


def check_reshape_prediction(
    predict_reshape_is_enough: Callable[..., Any],
) -> bool | None:
    """``predict_reshape_is_enough()`` -> one bool per (T, H) in RESHAPE_CASES."""
    labels = tuple(f"T = {T}, H = {H}" for T, H in RESHAPE_CASES)
    return check_prediction(
        predict_reshape_is_enough,
        name="predict_reshape_is_enough",
        labels=labels,
        truth=_reshape_is_enough(),
        why=_RESHAPE_WHY,
    )


# ---------------------------------------------------------------- diagnose

HEAD_BUGS = (
    "reshape without transpose",
    "no 1/sqrt(d_k)",
    "divided by sqrt(d_model)",
    "softmax over the wrong axis",
)


def mystery_weights() -> tuple[np.ndarray, np.ndarray]:
    """``(mystery, correct)``: per-head weights (H, L, S) of one sequence of 8 tokens through
    a layer of d_model 48 and 4 heads, with a bug from HEAD_BUGS, and the layer's own."""
    layer = MultiHeadAttention(48, 4, bias=False, seed=_SEED)
    x = 2 * _rng(2).standard_normal((8, 48)).astype(np.float32)
    _, correct = layer(x, need_weights=True, average_attn_weights=False)  # (H, L, S)
    q, k = split_heads(x @ layer.W_Q, 4), split_heads(x @ layer.W_K, 4)  # (H, L, hd)
    # the bug: sqrt(d_model), not sqrt(12)
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(48)
    return softmax(scores), correct


_HEADS_LOOK = {
    "reshape without transpose": "the heads would see pieces of the wrong tokens: some "
    "maps sharper, some flatter, not every head the same way.",
    "no 1/sqrt(d_k)": "the scores would be sqrt(12), about 3.5, times too large and every "
    "head sharper (lower entropy) than the correct one.",
    "softmax over the wrong axis": "the rows would not sum to 1 (and mha.analysis.entropy "
    "would refuse them).",
}


def check_heads_bug(name_the_bug: Callable[..., Any]) -> bool | None:
    """``name_the_bug()`` -> one of HEAD_BUGS, the bug behind ``mystery_weights``."""
    return check_name(
        name_the_bug,
        name="name_the_bug",
        choices=HEAD_BUGS,
        answer="divided by sqrt(d_model)",
        explanations=_HEADS_LOOK,
        correct="divided by sqrt(d_model). Every head is flatter (higher entropy) than the "
        "correct one: the scores were divided by sqrt(48) instead of "
        "sqrt(head_dim) = sqrt(12), two times too much.",
    )


# ---------------------------------------------------------------- build: head_weights


def _head_weights(
    in_proj_weight: np.ndarray, num_heads: int, h: int
) -> tuple[np.ndarray, ...]:
    E = in_proj_weight.shape[1]
    head_dim = E // num_heads
    rows = slice(h * head_dim, (h + 1) * head_dim)
    # block j of E rows is W_Q^T, W_K^T, W_V^T; inside it, head h owns head_dim consecutive rows
    return tuple(in_proj_weight[j * E : (j + 1) * E][rows] for j in range(3))


def check_head_weights(head_weights: Callable[..., Any]) -> bool | None:
    """``head_weights(in_proj_weight, num_heads, h)`` -> ``(w_q, w_k, w_v)``, each (head_dim, E)."""
    rng = _rng()
    cases = []
    for E, H, h in [(12, 3, 1), (12, 3, 0), (8, 2, 1), (6, 6, 4), (4, 1, 0)]:
        cases.append((rng.standard_normal((3 * E, E)).astype(np.float32), H, h))
    answer = head_weights
    if callable(head_weights):

        def as_tuple(*args: Any) -> Any:  # a list of three arrays is as good as a tuple
            got = head_weights(*args)
            return tuple(got) if isinstance(got, list) else got

        answer = as_tuple

    return _check_function(
        answer,
        _head_weights,
        cases,
        name="head_weights",
        atol=0.0,
        hint="torch stacks every head's query rows first (E rows), then every head's key "
        "rows, then every head's value rows; it does not keep one head's q, k, v together.",
    )


def _head_weights_interleaved(
    in_proj_weight: np.ndarray, num_heads: int, h: int
) -> tuple[np.ndarray, ...]:
    E = in_proj_weight.shape[1]
    head_dim = E // num_heads
    # assumes [q_h; k_h; v_h] per head
    block = in_proj_weight[3 * h * head_dim : 3 * (h + 1) * head_dim]
    return block[:head_dim], block[head_dim : 2 * head_dim], block[2 * head_dim :]


# ---------------------------------------------------------------- build: head_contributions


def _head_contributions(
    x: np.ndarray,
    W_Q: np.ndarray,
    W_K: np.ndarray,
    W_V: np.ndarray,
    W_O: np.ndarray,
    num_heads: int,
) -> np.ndarray:
    q, k, v = (split_heads(x @ W, num_heads) for W in (W_Q, W_K, W_V))  # (B, H, T, hd)
    hd = q.shape[-1]
    heads = softmax(q @ np.swapaxes(k, -1, -2) / np.sqrt(hd)) @ v  # (B, H, T, hd)
    # head h meets only rows h*hd:(h+1)*hd of W_O: Concat(heads) @ W_O = sum_h head_h @ W_O_h
    return np.stack(
        [heads[:, h] @ W_O[h * hd : (h + 1) * hd] for h in range(num_heads)]
    )


def check_head_contributions(head_contributions: Callable[..., Any]) -> bool | None:
    """``head_contributions(x, W_Q, W_K, W_V, W_O, num_heads)``: x (B, T, E), weights (E, E)
    in (in, out) layout -> (H, B, T, E), whose sum over the first axis is the output."""
    rng = _rng(3)
    cases = []
    for B, T, E, H in [(2, 5, 12, 3), (1, 4, 8, 2), (1, 3, 6, 1)]:
        cases.append(
            (rng.standard_normal((B, T, E)),)
            + tuple(rng.standard_normal((E, E)) / np.sqrt(E) for _ in range(4))
            + (H,)
        )
    return _check_function(
        head_contributions,
        _head_contributions,
        cases,
        name="head_contributions",
        atol=1e-10,
        hint="head h's output (B, T, head_dim) meets only the rows "
        "h*head_dim:(h+1)*head_dim of W_O (mha's (in, out) layout), "
        "not its columns.",
    )


def _contributions_from_columns(
    x: np.ndarray,
    W_Q: np.ndarray,
    W_K: np.ndarray,
    W_V: np.ndarray,
    W_O: np.ndarray,
    num_heads: int,
) -> np.ndarray:
    # torch's layout for W_O
    return _head_contributions(x, W_Q, W_K, W_V, W_O.T, num_heads)


COMMON_MISTAKES = {
    "check_reshape_prediction": lambda: (True, True, True, False),
    "check_heads_bug": lambda: "no 1/sqrt(d_k)",
    "check_head_weights": _head_weights_interleaved,
    "check_head_contributions": _contributions_from_columns,
}
