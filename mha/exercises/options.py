"""Checks for the exercises of chapter 5, "Every option of ``nn.MultiheadAttention``".

- :func:`check_weights_shapes` (predict): ``predict_weights_shapes()`` returns the shape of
  the attention weights for each call of :data:`SHAPE_CASES` (the check makes the calls);
- :func:`check_mask_bug` (diagnose): ``name_the_bug()`` names, from :data:`MASK_BUGS`, the
  bug behind :func:`mystery_weights`, whose per-head maps the chapter draws;
- :func:`check_padding_mask` (build): sentence lengths -> ``key_padding_mask`` (N, S), bool, **True = padding**
  (``nn.MultiheadAttention``'s polarity: True means "do not attend");
- :func:`check_expand_mask` (build): an ``attn_mask`` shared by the batch (L, S), or one per sequence
  (N, L, S) -> torch's per-head layout (N * num_heads, L, S), batch-major: row ``n * num_heads + h``
  belongs to sequence ``n``, head ``h``;
- :func:`check_call_sequence_first` (build): call a ``batch_first=True`` module on sequence-first data
  (L, N, E) and hand back the output in the same layout (a transpose each way, not a reshape).

Every test case is drawn from a seeded generator, so a verdict is the same on every run.
``COMMON_MISTAKES`` holds one typical wrong answer per check: (L, N, S) for the weights of a
``batch_first=False`` module, the polarity bug for the mystery, the padding mask with SDPA's
polarity (True = attend), the per-sequence masks repeated head-major (``np.tile``), and a
reshape where a transpose is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np
from numpy.typing import ArrayLike

from ..attention import MultiHeadAttention
from ._core import check_function as _check_function
from ._naming import call_reader, check_name, wrap

__all__ = [
    "check_weights_shapes",
    "SHAPE_CASES",
    "check_mask_bug",
    "mystery_weights",
    "MASK_BUGS",
    "check_padding_mask",
    "check_expand_mask",
    "check_call_sequence_first",
    "COMMON_MISTAKES",
]

_SEED = 5


def _rng(offset: int) -> np.random.Generator:
    return np.random.default_rng(_SEED + offset)


# ----------------------------------------------------------------- predict: the weights' shapes

E_SHAPES, H_SHAPES = 16, 4  # embed_dim and num_heads of every module below

# (what the reader is told, constructor options, forward options, (query shape, key shape))
_ShapeCase = tuple[
    str, dict[str, Any], dict[str, Any], tuple[tuple[int, ...], tuple[int, ...] | None]
]
SHAPE_CASES: tuple[_ShapeCase, ...] = (
    (
        "batch_first=False, input (5, 2, 16) = (L, N, E), need_weights=True",
        {"batch_first": False},
        {"need_weights": True},
        ((5, 2, 16), None),
    ),
    (
        "cross-attention, queries (2, 4, 16), keys and values (2, 7, 16), need_weights=True, "
        "average_attn_weights=False",
        {},
        {"need_weights": True, "average_attn_weights": False},
        ((2, 4, 16), (2, 7, 16)),
    ),
    (
        "add_bias_kv=True and add_zero_attn=True, input (2, 5, 16), need_weights=True",
        {"add_bias_kv": True, "add_zero_attn": True},
        {"need_weights": True},
        ((2, 5, 16), None),
    ),
    (
        "unbatched input (5, 16), need_weights=True, average_attn_weights=False",
        {},
        {"need_weights": True, "average_attn_weights": False},
        ((5, 16), None),
    ),
    (
        "batch_first=True, but the input (5, 2, 16) is sequence-first data (L = 5, N = 2), "
        "need_weights=True",
        {},
        {"need_weights": True},
        ((5, 2, 16), None),
    ),
)

_SHAPES_WHY = (
    "The weights are (N, L, S) whatever the layout of the input: batch_first only changes "
    "where the batch axis of the input and output sits.",
    "With average_attn_weights=False every head keeps its map, (N, num_heads, L, S), and S "
    "is the keys' length (7), not the queries' (4).",
    "Each option appends one key (a learned bias_k, then a zero key): S + 2 = 7 columns, "
    "the rows stay L = 5.",
    "Unbatched inputs lose the batch axis in the weights too: (num_heads, L, S).",
    "Nothing complains: a batch_first=True module reads (5, 2, 16) as N = 5 sequences of "
    "L = 2 tokens, so the weights are (5, 2, 2), attention across the wrong axis.",
)


def _weights_shapes() -> tuple[tuple[int, ...], ...]:
    rng = _rng(3)
    shapes = []
    for _, options, forward, (q_shape, k_shape) in SHAPE_CASES:
        module = MultiHeadAttention(
            E_SHAPES, H_SHAPES, seed=int(rng.integers(1000)), **options
        )
        query = rng.standard_normal(q_shape).astype(np.float32)
        key = (
            None if k_shape is None else rng.standard_normal(k_shape).astype(np.float32)
        )
        _, weights = module(query, key, **forward)
        shapes.append(tuple(int(n) for n in weights.shape))
    return tuple(shapes)


def check_weights_shapes(predict_weights_shapes: Callable[..., Any]) -> bool | None:
    """``predict_weights_shapes()`` -> one shape (a tuple of ints) per case of SHAPE_CASES."""
    name = "predict_weights_shapes"
    ok, got = call_reader(predict_weights_shapes, name)
    if not ok:
        return ok
    truth = _weights_shapes()
    try:
        got = tuple(tuple(int(n) for n in shape) for shape in got)
    except (TypeError, ValueError):
        got = None
    if got is None or len(got) != len(truth):
        print(
            wrap(
                f"Not quite: {name} must return {len(truth)} shapes, tuples of ints such "
                "as (2, 5, 5), one per case."
            )
        )
        return False
    wrong = [i for i in range(len(truth)) if got[i] != truth[i]]
    if wrong:
        i = wrong[0]
        print(
            wrap(
                f"Not quite: {len(wrong)} of {len(truth)} shapes are off. Case {i + 1} "
                f"({SHAPE_CASES[i][0]}): you said {got[i]}, the weights are {truth[i]}. "
                f"{_SHAPES_WHY[i]}"
            )
        )
        return False
    print(f"Correct: all {len(truth)} shapes agree with the calls:")
    print("  " + "   ".join(str(t) for t in truth))
    return True


def _weights_shapes_sequence_first() -> tuple[tuple[int, ...], ...]:
    # a typical slip: the weights of a batch_first=False module taken as (L, N, S)
    return ((5, 2, 5), (2, 4, 4, 7), (2, 5, 7), (4, 5, 5), (5, 2, 2))


# ----------------------------------------------------------------- diagnose: the padded batch

SENTENCES = ("the cat sat", "a dog ran to the park", "birds sing")

MASK_BUGS = (
    "mask polarity",
    "np.tile instead of np.repeat",
    "queries masked instead of keys",
    "attention_mask added as a 0/1 float mask",
    "batch_first misread",
)


def _mystery_call() -> tuple[MultiHeadAttention, np.ndarray, np.ndarray, np.ndarray]:
    """(module, x, padding, mask): the mystery's module, its (N, S, E) input, the (N, S)
    padding and the buggy 3-D mask."""
    rng = _rng(4)
    lengths = np.array([len(s.split()) for s in SENTENCES])
    N, S, H = len(SENTENCES), int(lengths.max()), H_SHAPES
    x = rng.standard_normal((N, S, E_SHAPES)).astype(np.float32)
    module = MultiHeadAttention(E_SHAPES, H, seed=int(rng.integers(1000)))
    module.b_Q, module.b_K, module.b_V, module.b_O = (
        0.5 * rng.standard_normal(E_SHAPES).astype(np.float32) for _ in range(4)
    )
    padding = np.arange(S)[None, :] >= lengths[:, None]  # (N, S), True = padding
    per_sequence = np.broadcast_to(padding[:, None, :], (N, S, S))  # (N, L, S)
    mask = np.tile(per_sequence, (H, 1, 1))  # the bug: head-major rows
    return module, x, padding, mask


def mystery_weights() -> np.ndarray:
    """(N, num_heads, L, S) = (3, 4, 6, 6) per-head weights of :data:`SENTENCES`, padded to
    six words: self-attention with a 3-D ``attn_mask`` built from the padding, with one bug
    from :data:`MASK_BUGS` (which one is the exercise)."""
    module, x, _, mask = _mystery_call()
    _, weights = module(
        x, attn_mask=mask, need_weights=True, average_attn_weights=False
    )
    return weights


_MASK_LOOKS = {
    "mask polarity": "the weights would sit on the <pad> columns only, the same in all four "
    "heads of a sentence, and sentence 1 (no padding) would have every key "
    "blocked: rows of zeros.",
    "queries masked instead of keys": "the <pad> rows would be empty and every column "
    "filled, the same in all four heads of a sentence.",
    "attention_mask added as a 0/1 float mask": "no weight would be exactly zero: the "
    "<pad> columns would only be a little "
    "dimmer, the same in every head.",
    "batch_first misread": "the maps would not be 6 x 6 per sentence: the module would read "
    "the six positions as the batch and attend across the three "
    "sentences.",
}


def check_mask_bug(name_the_bug: Callable[..., Any]) -> bool | None:
    """``name_the_bug()`` -> one of MASK_BUGS, the bug behind ``mystery_weights``."""
    return check_name(
        name_the_bug,
        name="name_the_bug",
        choices=MASK_BUGS,
        answer="np.tile instead of np.repeat",
        explanations=_MASK_LOOKS,
        correct="np.tile instead of np.repeat. The rows of the 3-D mask are head-major, "
        "h * N + n, but torch reads row n * num_heads + h: head h of sentence n "
        "gets the mask of sentence (n * 4 + h) mod 3, so the heads of one "
        "sentence disagree about where its padding is.",
    )


# ----------------------------------------------------------------- reference solutions


def _padding_mask(lengths: ArrayLike, S: int) -> np.ndarray:
    lengths = np.asarray(lengths)
    # (1, S) vs (N, 1) -> (N, S): True past the end
    return np.arange(S)[None, :] >= lengths[:, None]


def _expand_mask(mask: ArrayLike, N: int, num_heads: int) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 2:  # one (L, S) mask for every sequence
        mask = np.broadcast_to(mask, (N, *mask.shape))  # -> (N, L, S)
    return np.repeat(mask, num_heads, axis=0)  # row n * num_heads + h = mask[n]


def _call_sequence_first(module: MultiHeadAttention, x: np.ndarray) -> np.ndarray:
    out = cast(np.ndarray, module(x.transpose(1, 0, 2)))  # (L, N, E) -> (N, L, E)
    return out.transpose(1, 0, 2)  # (N, L, E) -> (L, N, E)


# ----------------------------------------------------------------- checks


def check_padding_mask(padding_mask: Callable[..., Any]) -> bool | None:
    """``padding_mask(lengths, S)``: a list of N lengths -> (N, S) bool, True where position >= length."""
    rng = _rng(0)
    cases = [([3, 5, 1], 5), ([2, 2], 4), ([4], 4), ([0, 3, 6, 1], 7)]
    for _ in range(3):
        N = int(rng.integers(1, 6))
        S = int(rng.integers(1, 10))
        cases.append(([int(n) for n in rng.integers(0, S + 1, size=N)], S))
    return _check_function(
        padding_mask,
        _padding_mask,
        cases,
        name="padding_mask",
        atol=0.0,
        hint="nn.MultiheadAttention reads True as *blocked*: the padding positions "
        "(position >= length) must be True, the real words False.",
    )


def check_expand_mask(expand_mask: Callable[..., Any]) -> bool | None:
    """``expand_mask(mask, N, num_heads)``: (L, S) or (N, L, S) -> (N * num_heads, L, S), batch-major."""
    rng = _rng(1)
    cases = []
    # (N, H, L, S, per_sequence, bool): the first cases have N, H >= 2 and one mask per sequence,
    # where the order of the rows matters
    for N, H, L, S, per_sequence, boolean in [
        (2, 3, 4, 5, True, True),
        (3, 2, 3, 3, True, False),
        (2, 4, 5, 4, False, True),
        (1, 2, 3, 6, True, True),
        (4, 1, 2, 3, True, False),
        (3, 2, 4, 4, False, False),
    ]:
        shape = (N, L, S) if per_sequence else (L, S)
        mask = (
            rng.random(shape) < 0.4
            if boolean
            else rng.standard_normal(shape).astype(np.float32)
        )
        cases.append((mask, N, H))
    return _check_function(
        expand_mask,
        _expand_mask,
        cases,
        name="expand_mask",
        atol=0.0,
        hint="torch reads the (N * num_heads, L, S) mask as (N, num_heads, L, S): the "
        "num_heads rows of sequence 0 come first, then those of sequence 1. Each "
        "sequence's mask must be repeated num_heads times in a row, "
        "not the whole batch num_heads times over.",
    )


def check_call_sequence_first(call_sequence_first: Callable[..., Any]) -> bool | None:
    """``call_sequence_first(module, x)``: x (L, N, E) through a batch_first=True module -> (L, N, E)."""
    rng = _rng(2)
    cases = []
    for L, N, E, H in [(5, 3, 8, 2), (4, 2, 12, 3), (2, 6, 4, 1)]:
        # batch_first=True
        module = MultiHeadAttention(E, H, seed=int(rng.integers(1000)))
        module.b_Q, module.b_O = (
            rng.standard_normal(E).astype(np.float32) for _ in range(2)
        )
        cases.append((module, rng.standard_normal((L, N, E)).astype(np.float32)))
    return _check_function(
        call_sequence_first,
        _call_sequence_first,
        cases,
        name="call_sequence_first",
        atol=1e-6,
        hint="(L, N, E) -> (N, L, E) swaps two axes: use x.transpose(1, 0, 2) (or "
        "np.swapaxes(x, 0, 1)). A reshape to (N, L, E) keeps the memory order and "
        "mixes tokens of different sequences. Swap the output back the same way.",
    )


# ----------------------------------------------------------------- typical wrong answers


def _padding_mask_attend_polarity(lengths: ArrayLike, S: int) -> np.ndarray:
    # SDPA's polarity: True = attend
    return np.arange(S)[None, :] < np.asarray(lengths)[:, None]


def _expand_mask_head_major(mask: ArrayLike, N: int, num_heads: int) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = np.broadcast_to(mask, (N, *mask.shape))
    return np.tile(mask, (num_heads, 1, 1))  # row h * N + n: head-major


def _call_sequence_first_reshape(
    module: MultiHeadAttention, x: np.ndarray
) -> np.ndarray:
    L, N, E = x.shape
    return cast(np.ndarray, module(x.reshape(N, L, E))).reshape(L, N, E)


COMMON_MISTAKES = {
    "check_weights_shapes": _weights_shapes_sequence_first,
    "check_mask_bug": lambda: "mask polarity",
    "check_padding_mask": _padding_mask_attend_polarity,
    "check_expand_mask": _expand_mask_head_major,
    "check_call_sequence_first": _call_sequence_first_reshape,
}
