"""Checks for the exercises of chapter 5, "Every option of ``nn.MultiheadAttention``".

- :func:`check_padding_mask`: sentence lengths -> ``key_padding_mask`` (N, S), bool, **True = padding**
  (``nn.MultiheadAttention``'s polarity: True means "do not attend");
- :func:`check_expand_mask`: an ``attn_mask`` shared by the batch (L, S), or one per sequence
  (N, L, S) -> torch's per-head layout (N * num_heads, L, S), batch-major: row ``n * num_heads + h``
  belongs to sequence ``n``, head ``h``;
- :func:`check_call_sequence_first`: call a ``batch_first=True`` module on sequence-first data
  (L, N, E) and hand back the output in the same layout (a transpose each way, not a reshape).

Every test case is drawn from a seeded generator, so a verdict is the same on every run.
``COMMON_MISTAKES`` holds one typical wrong answer per check: the padding mask with SDPA's
polarity (True = attend), the per-sequence masks repeated head-major (``np.tile``), and a
reshape where a transpose is needed.
"""

from __future__ import annotations

import numpy as np

from ..attention import MultiHeadAttention
from ._core import check_function as _check_function

__all__ = ["check_padding_mask", "check_expand_mask", "check_call_sequence_first", "COMMON_MISTAKES"]

_SEED = 5


def _rng(offset: int) -> np.random.Generator:
    return np.random.default_rng(_SEED + offset)


# ----------------------------------------------------------------- reference solutions


def _padding_mask(lengths, S):
    lengths = np.asarray(lengths)
    return np.arange(S)[None, :] >= lengths[:, None]          # (1, S) vs (N, 1) -> (N, S): True past the end


def _expand_mask(mask, N, num_heads):
    mask = np.asarray(mask)
    if mask.ndim == 2:                                          # one (L, S) mask for every sequence
        mask = np.broadcast_to(mask, (N, *mask.shape))          # -> (N, L, S)
    return np.repeat(mask, num_heads, axis=0)                   # row n * num_heads + h = mask[n]


def _call_sequence_first(module, x):
    out = module(x.transpose(1, 0, 2))                          # (L, N, E) -> (N, L, E)
    return out.transpose(1, 0, 2)                               # (N, L, E) -> (L, N, E)


# ----------------------------------------------------------------- checks


def check_padding_mask(padding_mask) -> bool | None:
    """``padding_mask(lengths, S)``: a list of N lengths -> (N, S) bool, True where position >= length."""
    rng = _rng(0)
    cases = [([3, 5, 1], 5), ([2, 2], 4), ([4], 4), ([0, 3, 6, 1], 7)]
    for _ in range(3):
        N = int(rng.integers(1, 6))
        S = int(rng.integers(1, 10))
        cases.append(([int(n) for n in rng.integers(0, S + 1, size=N)], S))
    return _check_function(padding_mask, _padding_mask, cases, name="padding_mask", atol=0.0,
                           hint="nn.MultiheadAttention reads True as *blocked*: the padding positions "
                                "(position >= length) must be True, the real words False.")


def check_expand_mask(expand_mask) -> bool | None:
    """``expand_mask(mask, N, num_heads)``: (L, S) or (N, L, S) -> (N * num_heads, L, S), batch-major."""
    rng = _rng(1)
    cases = []
    # (N, H, L, S, per_sequence, bool): the first cases have N, H >= 2 and one mask per sequence,
    # where the order of the rows matters
    for N, H, L, S, per_sequence, boolean in [(2, 3, 4, 5, True, True), (3, 2, 3, 3, True, False),
                                              (2, 4, 5, 4, False, True), (1, 2, 3, 6, True, True),
                                              (4, 1, 2, 3, True, False), (3, 2, 4, 4, False, False)]:
        shape = (N, L, S) if per_sequence else (L, S)
        mask = rng.random(shape) < 0.4 if boolean else rng.standard_normal(shape).astype(np.float32)
        cases.append((mask, N, H))
    return _check_function(expand_mask, _expand_mask, cases, name="expand_mask", atol=0.0,
                           hint="torch reads the (N * num_heads, L, S) mask as (N, num_heads, L, S): the "
                                "num_heads rows of sequence 0 come first, then those of sequence 1. Each "
                                "sequence's mask must be repeated num_heads times in a row, "
                                "not the whole batch num_heads times over.")


def check_call_sequence_first(call_sequence_first) -> bool | None:
    """``call_sequence_first(module, x)``: x (L, N, E) through a batch_first=True module -> (L, N, E)."""
    rng = _rng(2)
    cases = []
    for L, N, E, H in [(5, 3, 8, 2), (4, 2, 12, 3), (2, 6, 4, 1)]:
        module = MultiHeadAttention(E, H, seed=int(rng.integers(1000)))   # batch_first=True
        module.b_Q, module.b_O = (rng.standard_normal(E).astype(np.float32) for _ in range(2))
        cases.append((module, rng.standard_normal((L, N, E)).astype(np.float32)))
    return _check_function(call_sequence_first, _call_sequence_first, cases, name="call_sequence_first",
                           atol=1e-6,
                           hint="(L, N, E) -> (N, L, E) swaps two axes: use x.transpose(1, 0, 2) (or "
                                "np.swapaxes(x, 0, 1)). A reshape to (N, L, E) keeps the memory order and "
                                "mixes tokens of different sequences. Swap the output back the same way.")


# ----------------------------------------------------------------- typical wrong answers


def _padding_mask_attend_polarity(lengths, S):
    return np.arange(S)[None, :] < np.asarray(lengths)[:, None]   # SDPA's polarity: True = attend


def _expand_mask_head_major(mask, N, num_heads):
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = np.broadcast_to(mask, (N, *mask.shape))
    return np.tile(mask, (num_heads, 1, 1))                       # row h * N + n: head-major


def _call_sequence_first_reshape(module, x):
    L, N, E = x.shape
    return module(x.reshape(N, L, E)).reshape(L, N, E)


COMMON_MISTAKES = {
    "check_padding_mask": _padding_mask_attend_polarity,
    "check_expand_mask": _expand_mask_head_major,
    "check_call_sequence_first": _call_sequence_first_reshape,
}
