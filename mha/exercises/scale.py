"""Checks for the exercises of chapter 10, attention at scale.

One exercise of each kind, each ``check_<name>(your_function)``:

- :func:`check_decode_masks` (predict): ``predict_decode_masks()`` returns four
  bools, one per way of masking ONE new query over every cached key and itself,
  True where the step's output equals the full causal forward's last row; the
  check runs the experiment;
- :func:`check_decoding_bug` (diagnose): ``name_the_decoding_bug()`` returns
  the name, from :data:`DECODING_BUGS`, of the bug behind :func:`mystery_errors`,
  whose table of errors the chapter prints;
- :func:`check_merge_partials` (build): ``merge_partials(out_a, lse_a, out_b,
  lse_b)`` combines two attentions over disjoint halves of the keys, each with
  its log-sum-exp, into the attention over all of them (how split-key decoding
  and the tiled kernel's blocks are put together).

``COMMON_MISTAKES`` maps each check's name to a typical wrong answer; the test
suite uses it to make sure every check can tell right from wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import functional, kv_cache, tiled
from ._core import check_function as _check_function
from ._naming import check_name as _check_name
from ._naming import check_prediction as _check_prediction

__all__ = [
    "check_decode_masks",
    "check_decoding_bug",
    "check_merge_partials",
    "mystery_errors",
    "DECODING_BUGS",
    "DECODE_MASKS",
    "COMMON_MISTAKES",
]

_SEED = 2010


def _rng(offset: int) -> np.random.Generator:
    return np.random.default_rng(_SEED + offset)


# --- predict: which masks give a correct decode step? ---------------------------------------------

# One new query (the last of S positions) over the S keys: cached ones and its own.
DECODE_MASKS = (
    "is_causal=True",
    "no mask at all",
    "np.tril(np.ones((1, S)))",
    "bottom_right_causal_mask(1, S)",
)


def _decode_mask_verdicts() -> tuple[bool, ...]:
    rng = _rng(1)
    S, hd = 7, 8
    # (H, S, hd): two heads
    q, k, v = (rng.standard_normal((2, S, hd)) for _ in range(3))
    # (H, 1, hd)
    full_last = functional.scaled_dot_product_attention(q, k, v, is_causal=True)[:, -1:]
    new_q = q[:, -1:]  # (H, 1, hd): the decode step's query
    sdpa = functional.scaled_dot_product_attention
    outs = (
        sdpa(new_q, k, v, is_causal=True),
        sdpa(new_q, k, v),
        sdpa(new_q, k, v, attn_mask=np.tril(np.ones((1, S), dtype=bool))),
        sdpa(new_q, k, v, attn_mask=kv_cache.bottom_right_causal_mask(1, S)),
    )
    return tuple(bool(np.allclose(o, full_last, rtol=0, atol=1e-12)) for o in outs)


_MASK_WHY = {
    0: "With is_causal=True the triangle is aligned top-left: query 0 of a (1, S) score block may see key 0 only, "
    "so the new token attends to the first token of the sequence and nothing else.",
    1: "The newest token is the last position: every key, cached or its own, is at or before it, so a "
    "one-query step needs no mask at all.",
    2: "np.tril of a (1, S) block keeps the top-left entry only, exactly as is_causal=True: key 0 alone.",
    3: "The bottom-right mask lets query i see the keys up to S - L + i; with L = 1 that is every key.",
}


def check_decode_masks(predict_decode_masks: Callable[..., Any]) -> bool | None:
    """``predict_decode_masks()`` -> 4 bools, in the order of :data:`DECODE_MASKS`."""
    return _check_prediction(
        predict_decode_masks,
        name="predict_decode_masks",
        labels=DECODE_MASKS,
        truth=_decode_mask_verdicts(),
        why=_MASK_WHY,
    )


# --- diagnose: name the bug behind a table of errors ----------------------------------------------

# The chapter's vocabulary of shipped decoding bugs, in the order the chapter shows them.
DECODING_BUGS = (
    "top-left causal mask",
    "np.tile head pairing",
    "cache sized by query heads",
    "key rotated twice",
)

_H, _HKV, _PROMPT, _STEPS = 4, 2, 3, 4


def mystery_errors() -> np.ndarray:
    """(1 + steps, H) largest |error| of a buggy GQA decoder against the full causal forward.

    Row 0 is the prefill of the prompt, rows 1.. are the decode steps that follow, one column
    per query head. The decoder has one of the bugs of :data:`DECODING_BUGS` (which one is
    the exercise); a correct decoder would give zeros (up to 1e-12) everywhere.
    """
    rng = _rng(2)
    layer = kv_cache.GroupedQueryAttention(16, _H, _HKV, seed=_SEED, dtype=np.float64)
    x = rng.standard_normal((1, _PROMPT + _STEPS, 16))
    w, hd, F = layer.weights, layer.head_dim, functional
    heads_full = F.scaled_dot_product_attention(  # (1, H, T, hd), the reference
        F.split_heads(F.linear(x, w["W_Q"]), _H),
        F.split_heads(F.linear(x, w["W_K"]), _HKV),
        F.split_heads(F.linear(x, w["W_V"]), _HKV),
        is_causal=True,
        enable_gqa=True,
    )
    cache = kv_cache.KVCache(1, _HKV, hd, dtype=np.float64)
    rows, start = [], 0
    for stop in [_PROMPT] + list(range(_PROMPT + 1, _PROMPT + _STEPS + 1)):
        xs = x[:, start:stop]
        q = F.split_heads(F.linear(xs, w["W_Q"]), _H)  # (1, H, T, hd)
        keys, values = cache.update(
            0,
            F.split_heads(F.linear(xs, w["W_K"]), _HKV),
            F.split_heads(F.linear(xs, w["W_V"]), _HKV),
        )
        mask = np.tril(np.ones((stop - start, stop), dtype=bool))  # the bug: top-left
        heads = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, enable_gqa=True
        )
        # (H,)
        rows.append(np.abs(heads - heads_full[:, :, start:stop]).max(axis=(0, 2, 3)))
        start = stop
    return np.array(rows)


_DECODING_LOOKS = {
    "np.tile head pairing": "some query heads would be right at every step, the prefill included (those "
    "whose key/value head np.tile and np.repeat agree on), and the others wrong "
    "at every step",
    "cache sized by query heads": "every error would be zero: a cache that holds each key/value head "
    "H / Hkv times gives the right outputs and wastes memory (or, with "
    "mha's KVCache, raises a ValueError naming Hkv)",
    "key rotated twice": "there is no RoPE in this decoder (and a key rotated twice in the cache is "
    "wrong from the prefill on)",
}


def check_decoding_bug(name_the_decoding_bug: Callable[..., Any]) -> bool | None:
    """``name_the_decoding_bug()`` -> one of DECODING_BUGS, the bug behind :func:`mystery_errors`."""
    return _check_name(
        name_the_decoding_bug,
        name="name_the_decoding_bug",
        choices=DECODING_BUGS,
        answer="top-left causal mask",
        explanations={
            k: v + ". Which rows are wrong, and which heads?"
            for k, v in _DECODING_LOOKS.items()
        },
        correct="top-left causal mask. The prefill is a square block, where the top-left "
        "and the bottom-right triangles coincide; at every decode step the one "
        "new query sees key 0 only, in every head.",
    )


# --- build: merge two partial attentions with their log-sum-exps ----------------------------------


def _merge_partials(
    out_a: np.ndarray, lse_a: np.ndarray, out_b: np.ndarray, lse_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    m = np.maximum(lse_a, lse_b)
    shift = np.where(np.isneginf(m), 0.0, m)  # both parts empty: no shift
    wa, wb = np.exp(lse_a - shift), np.exp(lse_b - shift)  # (..., L)
    total = wa + wb
    out = (wa[..., None] * out_a + wb[..., None] * out_b) / np.where(
        total > 0, total, 1
    )[..., None]
    with np.errstate(divide="ignore"):
        return out, shift + np.log(total)


def _halves(
    shape_q: tuple[int, ...],
    S: int,
    Ev: int,
    split: int,
    *,
    scale: float = 1.0,
    masked_row: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, ...]:
    """(out_a, lse_a, out_b, lse_b) of tiled attention over keys [:split] and [split:]."""
    rng = _rng(10 + seed)
    q = rng.standard_normal(shape_q) * scale
    k = rng.standard_normal(shape_q[:-2] + (S, shape_q[-1])) * scale
    v = rng.standard_normal(shape_q[:-2] + (S, Ev))
    mask = np.ones(shape_q[:-1] + (S,), dtype=bool)
    if masked_row is not None:
        mask[..., masked_row, :split] = False  # this query sees no key of part a
    parts = []
    for sl in (slice(0, split), slice(split, S)):
        out, cache = tiled.tiled_attention_forward(
            q, k[..., sl, :], v[..., sl, :], mask[..., sl], block_q=4, block_k=4
        )
        parts += [out, cache["lse"]]
    return tuple(parts)


def check_merge_partials(merge_partials: Callable[..., Any]) -> bool | None:
    """``merge_partials(out_a, lse_a, out_b, lse_b)`` -> ``(out, lse)``; out (..., L, Ev), lse (..., L)."""
    cases = [
        _halves((5, 8), 12, 6, 5, seed=0),
        _halves((2, 3, 4, 8), 9, 4, 3, seed=1),
        _halves((6, 8), 10, 5, 4, scale=40.0, seed=2),  # scores in the thousands
        # one query sees nothing in part a
        _halves((4, 8), 8, 3, 6, masked_row=1, seed=3),
    ]
    return _check_function(
        merge_partials,
        _merge_partials,
        cases,
        name="merge_partials",
        atol=1e-10,
        hint="each part's output is normalised by its own sum exp(lse); the merged output "
        "weighs the two by exp(lse_a) and exp(lse_b), divided by their sum, and the "
        "merged lse is log(exp(lse_a) + exp(lse_b)). Subtract the larger lse before "
        "exponentiating (the scores here reach the thousands), and let a part with "
        "lse = -inf count zero.",
    )


def _plain_mean(
    out_a: np.ndarray, lse_a: np.ndarray, out_b: np.ndarray, lse_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    return (out_a + out_b) / 2, np.logaddexp(lse_a, lse_b)


COMMON_MISTAKES = {
    "check_decode_masks": lambda: [False, False, False, True],
    "check_decoding_bug": lambda: "np.tile head pairing",
    "check_merge_partials": _plain_mean,
}
