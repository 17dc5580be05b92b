"""Checks for chapter 3, "Multi-head attention: splitting and merging heads".

- :func:`check_split_heads`: (B, T, E) -> (B, H, T, head_dim), a reshape *and* a transpose
- :func:`check_merge_heads`: (B, H, T, head_dim) -> (B, T, E), the way back
- :func:`check_head_weights`: head ``h``'s query, key and value rows of torch's
  ``in_proj_weight`` (3E, E)
- :func:`check_average_heads`: torch's ``average_attn_weights=True``, batched or unbatched

Every test case is drawn from a seeded RNG, so a check gives the same verdict on every run.
``COMMON_MISTAKES`` holds one realistic wrong answer per check (``tests/test_exercises.py``
makes sure each of them is caught).
"""

from __future__ import annotations

import numpy as np

from ._core import check_function as _check_function

__all__ = ["check_split_heads", "check_merge_heads", "check_head_weights", "check_average_heads",
           "COMMON_MISTAKES"]

_SEED = 303
# (B, T, E, H): T != H and H > 1 in the first case, so that a missing transpose cannot pass
_SHAPES = [(2, 5, 12, 3), (1, 4, 8, 2), (3, 2, 6, 6), (2, 3, 4, 1)]


def _rng() -> np.random.Generator:
    return np.random.default_rng(_SEED)


# ---------------------------------------------------------------- reference solutions

def _split_heads(x, num_heads):
    B, T, E = x.shape
    head_dim = E // num_heads
    return x.reshape(B, T, num_heads, head_dim).transpose(0, 2, 1, 3)   # (B, T, H, hd) -> (B, H, T, hd)


def _merge_heads(x):
    B, H, T, head_dim = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * head_dim)          # (B, T, H, hd) -> (B, T, E)


def _head_weights(in_proj_weight, num_heads, h):
    E = in_proj_weight.shape[1]
    head_dim = E // num_heads
    rows = slice(h * head_dim, (h + 1) * head_dim)
    # block j of E rows is W_Q^T, W_K^T, W_V^T; inside it, head h owns head_dim consecutive rows
    return tuple(in_proj_weight[j * E:(j + 1) * E][rows] for j in range(3))


def _average_heads(weights):
    return weights.mean(axis=-3)   # the heads axis: 1 of (N, H, L, S), 0 of (H, L, S)


# ---------------------------------------------------------------- checks

def check_split_heads(split_heads) -> bool | None:
    """``split_heads(x, num_heads)``: x (B, T, E) -> (B, num_heads, T, E // num_heads)."""
    rng = _rng()
    cases = [(rng.standard_normal((B, T, E)).astype(np.float32), H) for B, T, E, H in _SHAPES]
    return _check_function(split_heads, _split_heads, cases, name="split_heads", atol=0.0,
                          hint="reshape to (B, T, H, head_dim) first (each token's features are cut into "
                               "heads), then move the heads axis in front of the tokens with a transpose.")


def check_merge_heads(merge_heads) -> bool | None:
    """``merge_heads(x)``: x (B, H, T, head_dim) -> (B, T, H * head_dim), the inverse of split_heads."""
    rng = _rng()
    cases = [(rng.standard_normal((B, H, T, E // H)).astype(np.float32),) for B, T, E, H in _SHAPES]
    return _check_function(merge_heads, _merge_heads, cases, name="merge_heads", atol=0.0,
                          hint="bring the tokens back in front of the heads, (B, H, T, hd) -> (B, T, H, hd), "
                               "before you reshape to (B, T, E).")


def check_head_weights(head_weights) -> bool | None:
    """``head_weights(in_proj_weight, num_heads, h)`` -> ``(w_q, w_k, w_v)``, each (head_dim, E)."""
    rng = _rng()
    cases = []
    for E, H, h in [(12, 3, 1), (12, 3, 0), (8, 2, 1), (6, 6, 4), (4, 1, 0)]:
        cases.append((rng.standard_normal((3 * E, E)).astype(np.float32), H, h))
    answer = head_weights
    if callable(head_weights):
        def answer(*args):   # a list of three arrays is as good as a tuple
            got = head_weights(*args)
            return tuple(got) if isinstance(got, list) else got
    return _check_function(answer, _head_weights, cases, name="head_weights", atol=0.0,
                          hint="torch stacks every head's query rows first (E rows), then every head's key "
                               "rows, then every head's value rows; it does not keep one head's q, k, v together.")


def check_average_heads(average_heads) -> bool | None:
    """``average_heads(weights)``: (N, H, L, S) -> (N, L, S), and unbatched (H, L, S) -> (L, S)."""
    rng = _rng()
    cases = []
    for shape in [(2, 3, 4, 5), (1, 4, 3, 3), (3, 5, 2), (2, 6, 4)]:
        scores = rng.standard_normal(shape)
        weights = np.exp(scores) / np.exp(scores).sum(axis=-1, keepdims=True)   # rows sum to 1
        cases.append((weights.astype(np.float32),))
    return _check_function(average_heads, _average_heads, cases, name="average_heads", atol=1e-6,
                          hint="the heads axis is the third from the end in both layouts: "
                               "(N, H, L, S) batched and (H, L, S) unbatched.")


# ---------------------------------------------------------------- typical wrong answers

def _split_heads_without_transpose(x, num_heads):
    B, T, E = x.shape
    return x.reshape(B, num_heads, T, E // num_heads)   # right shape, tokens and heads mixed


def _merge_heads_without_transpose(x):
    B, H, T, head_dim = x.shape
    return x.reshape(B, T, H * head_dim)


def _head_weights_interleaved(in_proj_weight, num_heads, h):
    E = in_proj_weight.shape[1]
    head_dim = E // num_heads
    block = in_proj_weight[3 * h * head_dim:3 * (h + 1) * head_dim]   # assumes [q_h; k_h; v_h] per head
    return block[:head_dim], block[head_dim:2 * head_dim], block[2 * head_dim:]


def _average_heads_axis_1(weights):
    return weights.mean(axis=1)   # right for (N, H, L, S), averages the queries of (H, L, S)


COMMON_MISTAKES = {
    "check_split_heads": _split_heads_without_transpose,
    "check_merge_heads": _merge_heads_without_transpose,
    "check_head_weights": _head_weights_interleaved,
    "check_average_heads": _average_heads_axis_1,
}
