"""Misuse of the public API: every bad call must fail early, clearly and without side effects.

The contract: every misuse raises ``ValueError`` (right kind of thing, wrong
value) or ``TypeError`` (wrong kind of thing), or ``RuntimeError`` for a
backward before any forward, and the message names the argument, says what
was expected and shows what came. No ``AssertionError``, no failure from deep
inside NumPy or torch. Inputs and torch modules are never modified.

Each case below is ``(call, exception type, regex)``. The regex is built by
:func:`_msg`: it requires the argument's name *and* the value that came (a
shape, a number, a repr, a dtype or a type name), in any order, so a message
may be reworded freely as long as it keeps those.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import re

import numpy as np
import pytest
from helpers import entry_points, public_entry_points

import mha
from mha import (
    MultiHeadAttention,
    SequentialMHA,
    analyze_weight_differences,
    compare_outputs,
    create_matching_mha,
    fused_to_sequential,
    load_weights_from_pytorch,
    scaled_dot_product_attention,
    sequential_to_fused,
    to_pytorch,
    torch_state_dict,
)

# ---------------------------------------------------------------- helpers


def _tok(value) -> str:
    """A regex for ``value`` as a message shows it.

    tuple -> the shape ``(2, 3, 8)``; str -> its repr ``'8'``; a NumPy dtype
    -> its name; a class -> its ``__name__``; a number or bool -> itself, not
    as a piece of a longer number or word (``3`` does not match ``13``).
    """
    if isinstance(value, tuple):
        return re.escape(str(value))
    if isinstance(value, str):
        return re.escape(repr(value))
    if isinstance(value, np.dtype):
        return rf"\b{re.escape(str(value))}\b"
    if isinstance(value, type):
        return rf"\b{re.escape(value.__name__)}\b"
    return rf"(?<![\w.]){re.escape(str(value))}(?!\w|\.\d)"


def _msg(name: str, *values, also: tuple = ()) -> str:
    """One regex for ``pytest.raises(match=...)``: the argument ``name`` and every value, in any order.

    ``name`` is a regex of alternatives (``"embed_dim|d_model"``), matched as whole words;
    ``also`` adds raw regexes that must appear as well.
    """
    parts = [rf"\b(?:{name})\b"] + [_tok(v) for v in values] + list(also)
    return "(?s)" + "".join(f"(?=.*?(?:{p}))" for p in parts)


def _x(*shape, dtype=np.float32) -> np.ndarray:
    """Random input of ``shape``; integer and complex dtypes too."""
    a = np.random.default_rng(0).standard_normal(shape) * 3
    if np.issubdtype(np.dtype(dtype), np.complexfloating):
        a = a + 1j
    return a.astype(dtype)


def _m(**kwargs) -> MultiHeadAttention:
    """d_model=8, num_heads=2 (batch_first unless told otherwise)."""
    return MultiHeadAttention(8, 2, seed=0, **kwargs)


def _torch():
    return pytest.importorskip("torch")


def _tm(embed_dim=8, num_heads=2, **kwargs):
    """A torch.nn.MultiheadAttention in eval mode, batch_first."""
    torch = _torch()
    kwargs.setdefault("batch_first", True)
    return torch.nn.MultiheadAttention(embed_dim, num_heads, **kwargs).eval()


def _masked(
    attn_mask=None, key_padding_mask=None, query=(2, 3, 8), key=None, **module_kwargs
):
    """Forward of ``_m`` on fresh inputs with the given masks (key defaults to query)."""
    q = _x(*query)
    k = q if key is None else _x(*key)
    return _m(**module_kwargs)(
        q, k, k, attn_mask=attn_mask, key_padding_mask=key_padding_mask
    )


def _backward_after_forward(grad, x_shape=(2, 3, 8), **module_kwargs):
    m = _m(**module_kwargs)
    m(_x(*x_shape))
    return m.backward(grad)


def _seq_backward_after_forward(dy, x_shape=(2, 3, 8)):
    s = SequentialMHA(8, 2, seed=0)
    s(_x(*x_shape))
    return s.backward(dy)


def _sdpa(q, k, v, **kwargs):
    return scaled_dot_product_attention(_x(*q), _x(*k), _x(*v), **kwargs)


def _ctor(cls, arg, value, base=None):
    """``cls(**base)`` with ``arg`` replaced by ``value``."""
    kwargs = dict(base or {})
    kwargs[arg] = value
    return cls(**kwargs)


def case(id_: str, exc: type, match: str, call):
    return pytest.param(call, exc, match, id=id_)


# ---------------------------------------------------------------- the cases

BAD_SIZES = [  # (label, value, exception)
    ("0", 0, ValueError),
    ("-1", -1, ValueError),
    ("2.5", 2.5, TypeError),
    ("True", True, TypeError),
    ("str8", "8", TypeError),
]

MHA_BASE = {"d_model": 8, "num_heads": 2, "seed": 0}

CONSTRUCTOR_CASES = [
    case(
        f"MultiHeadAttention-{arg}={label}",
        exc,
        _msg(arg, value),
        functools.partial(_ctor, MultiHeadAttention, arg, value, MHA_BASE),
    )
    for arg in ("d_model", "num_heads", "kdim", "vdim")
    for label, value, exc in BAD_SIZES
] + [
    case(
        "MultiHeadAttention-indivisible-10/3",
        ValueError,
        _msg("d_model", 10, 3, also=(r"\bnum_heads\b",)),
        lambda: MultiHeadAttention(10, 3),
    ),
    case(
        "MultiHeadAttention-indivisible-4/8",
        ValueError,
        _msg("d_model", 4, 8, also=(r"\bnum_heads\b",)),
        lambda: MultiHeadAttention(4, 8),
    ),
    case(
        "MultiHeadAttention-dtype=int32",
        TypeError,
        _msg("dtype", np.dtype(np.int32)),
        lambda: MultiHeadAttention(8, 2, dtype=np.int32),
    ),
    case(
        "MultiHeadAttention-dtype=float16",
        TypeError,
        _msg("dtype", np.dtype(np.float16)),
        lambda: MultiHeadAttention(8, 2, dtype=np.float16),
    ),
    case(
        "MultiHeadAttention-dtype=str-float16",
        TypeError,
        _msg("dtype", np.dtype(np.float16)),
        lambda: MultiHeadAttention(8, 2, dtype="float16"),
    ),
    case(
        "MultiHeadAttention-seed=-1",
        ValueError,
        _msg("seed", -1),
        lambda: MultiHeadAttention(8, 2, seed=-1),
    ),
    case(
        "MultiHeadAttention-seed=str",
        TypeError,
        _msg("seed", "x"),
        lambda: MultiHeadAttention(8, 2, seed="x"),
    ),
    case(
        "MultiHeadAttention-batch_first=str",
        TypeError,
        _msg("batch_first", "False"),
        lambda: MultiHeadAttention(8, 2, batch_first="False"),
    ),
    case(
        "MultiHeadAttention-bias=str",
        TypeError,
        _msg("bias", "no"),
        lambda: MultiHeadAttention(8, 2, bias="no"),
    ),
]

FORWARD_CASES = [
    # rank
    case("forward-query-rank1", ValueError, _msg("query", (8,)), lambda: _m()(_x(8))),
    case(
        "forward-query-rank4",
        ValueError,
        _msg("query", (2, 3, 4, 8)),
        lambda: _m()(_x(2, 3, 4, 8)),
    ),
    case(
        "forward-key-rank4-batched-query",
        ValueError,
        _msg("key", (2, 5, 8, 1)),
        lambda: _m()(_x(2, 3, 8), _x(2, 5, 8, 1)),
    ),
    case(
        "forward-unbatched-query-batched-key",
        ValueError,
        _msg("key", (2, 5, 8)),
        lambda: _m()(_x(3, 8), _x(2, 5, 8), _x(2, 5, 8)),
    ),
    case(
        "forward-batched-query-unbatched-value",
        ValueError,
        _msg("value", (5, 8)),
        lambda: _m()(_x(2, 3, 8), _x(2, 5, 8), _x(5, 8)),
    ),
    # feature sizes
    case(
        "forward-query-features",
        ValueError,
        _msg("query", (2, 3, 5)),
        lambda: _m()(_x(2, 3, 5)),
    ),
    case(
        "forward-unbatched-query-features",
        ValueError,
        _msg("query", (3, 5)),
        lambda: _m()(_x(3, 5)),
    ),
    case(
        "forward-key-features-default-kdim",
        ValueError,
        _msg("key", (2, 5, 6)),
        lambda: _m()(_x(2, 3, 8), _x(2, 5, 6), _x(2, 5, 8)),
    ),
    case(
        "forward-key-features-kdim",
        ValueError,
        _msg("key", (2, 5, 7), also=(r"\b6\b|kdim",)),
        lambda: _m(kdim=6, vdim=4)(_x(2, 3, 8), _x(2, 5, 7), _x(2, 5, 4)),
    ),
    case(
        "forward-value-features-vdim",
        ValueError,
        _msg("value", (2, 5, 5), also=(r"\b4\b|vdim",)),
        lambda: _m(kdim=6, vdim=4)(_x(2, 3, 8), _x(2, 5, 6), _x(2, 5, 5)),
    ),
    case(
        "forward-self-attention-with-kdim",
        ValueError,
        _msg("key", (2, 3, 8)),
        lambda: _m(kdim=6, vdim=4)(_x(2, 3, 8)),
    ),
    # batch and length mismatches
    case(
        "forward-batch-mismatch-key",
        ValueError,
        _msg("key", (2, 3, 8), (3, 5, 8), also=("batch",)),
        lambda: _m()(_x(2, 3, 8), _x(3, 5, 8), _x(3, 5, 8)),
    ),
    case(
        "forward-batch-mismatch-value",
        ValueError,
        _msg("value", (3, 5, 8), also=("batch",)),
        lambda: _m()(_x(2, 3, 8), _x(2, 5, 8), _x(3, 5, 8)),
    ),
    case(
        "forward-key-value-length-mismatch",
        ValueError,
        _msg("key", (2, 5, 8), (2, 6, 8), also=(r"\bvalue\b",)),
        lambda: _m()(_x(2, 3, 8), _x(2, 5, 8), _x(2, 6, 8)),
    ),
    case(
        "forward-unbatched-key-value-length-mismatch",
        ValueError,
        _msg("key", (5, 8), (6, 8), also=(r"\bvalue\b",)),
        lambda: _m()(_x(3, 8), _x(5, 8), _x(6, 8)),
    ),
    case(
        "forward-seq_first-batch-mismatch",
        ValueError,
        _msg("key", (3, 2, 8), (5, 3, 8), also=("batch",)),
        lambda: _m(batch_first=False)(_x(3, 2, 8), _x(5, 3, 8), _x(5, 3, 8)),
    ),
    case(
        "forward-seq_first-key-value-length-mismatch",
        ValueError,
        _msg("key", (5, 2, 8), (6, 2, 8), also=(r"\bvalue\b",)),
        lambda: _m(batch_first=False)(_x(3, 2, 8), _x(5, 2, 8), _x(6, 2, 8)),
    ),
    case(
        "forward-seq_first-module-given-batch_first-inputs",
        ValueError,
        _msg("key", (2, 3, 8), (2, 5, 8), also=("batch_first",)),
        lambda: _m(batch_first=False)(_x(2, 3, 8), _x(2, 5, 8), _x(2, 5, 8)),
    ),
    case(
        "forward-empty-key",
        ValueError,
        _msg("key", (2, 0, 8)),
        lambda: _m()(_x(2, 3, 8), _x(2, 0, 8), _x(2, 0, 8)),
    ),
    # dtypes of the inputs
    case(
        "forward-query-int64",
        TypeError,
        _msg("query", np.dtype(np.int64)),
        lambda: _m()(_x(2, 3, 8, dtype=np.int64)),
    ),
    case(
        "forward-key-int32",
        TypeError,
        _msg("key", np.dtype(np.int32)),
        lambda: _m()(_x(2, 3, 8), _x(2, 5, 8, dtype=np.int32), _x(2, 5, 8)),
    ),
    case(
        "forward-value-uint8",
        TypeError,
        _msg("value", np.dtype(np.uint8)),
        lambda: _m()(_x(2, 3, 8), _x(2, 5, 8), _x(2, 5, 8, dtype=np.uint8)),
    ),
    case(
        "forward-query-complex128",
        TypeError,
        _msg("query", np.dtype(np.complex128)),
        lambda: _m()(_x(2, 3, 8, dtype=np.complex128)),
    ),
    case(
        "forward-value-complex64",
        TypeError,
        _msg("value", np.dtype(np.complex64)),
        lambda: _m()(_x(2, 3, 8), _x(2, 5, 8), _x(2, 5, 8, dtype=np.complex64)),
    ),
    case(
        "forward-query-bool",
        TypeError,
        _msg("query", np.dtype(bool)),
        lambda: _m()(np.ones((2, 3, 8), bool)),
    ),
    case(
        "forward-query-None",
        TypeError,
        _msg("query", also=("None",)),
        lambda: _m()(None),
    ),
    # key_padding_mask shapes: (N, S) batched, (S,) unbatched
    case(
        "kpm-batched-wrong-length",
        ValueError,
        _msg("key_padding_mask", (2, 4)),
        lambda: _masked(key_padding_mask=np.zeros((2, 4), bool)),
    ),
    case(
        "kpm-batched-transposed",
        ValueError,
        _msg("key_padding_mask", (5, 2)),
        lambda: _masked(key_padding_mask=np.zeros((5, 2), bool), key=(2, 5, 8)),
    ),
    case(
        "kpm-batched-1d",
        ValueError,
        _msg("key_padding_mask", (3,)),
        lambda: _masked(key_padding_mask=np.zeros(3, bool)),
    ),
    case(
        "kpm-seq_first-wrong-shape",
        ValueError,
        _msg("key_padding_mask", (3, 2)),
        lambda: _masked(
            key_padding_mask=np.zeros((3, 2), bool), query=(3, 2, 8), batch_first=False
        ),
    ),
    case(
        "kpm-unbatched-2d",
        ValueError,
        _msg("key_padding_mask", (1, 3)),
        lambda: _masked(key_padding_mask=np.zeros((1, 3), bool), query=(3, 8)),
    ),
    case(
        "kpm-unbatched-wrong-length",
        ValueError,
        _msg("key_padding_mask", (4,)),
        lambda: _masked(key_padding_mask=np.zeros(4, bool), query=(3, 8)),
    ),
    # attn_mask shapes: (L, S), (N * H, L, S) batched, (H, L, S) unbatched
    case(
        "attn_mask-2d-transposed",
        ValueError,
        _msg("attn_mask", (5, 3)),
        lambda: _masked(attn_mask=np.zeros((5, 3), bool), key=(2, 5, 8)),
    ),
    case(
        "attn_mask-2d-float-wrong-shape",
        ValueError,
        _msg("attn_mask", (3, 4)),
        lambda: _masked(attn_mask=np.zeros((3, 4), np.float32), key=(2, 5, 8)),
    ),
    case(
        "attn_mask-3d-batch-not-times-heads",
        ValueError,
        _msg("attn_mask", (2, 3, 5)),
        lambda: _masked(attn_mask=np.zeros((2, 3, 5), bool), key=(2, 5, 8)),
    ),
    case(
        "attn_mask-3d-unbatched-wrong-heads",
        ValueError,
        _msg("attn_mask", (4, 3, 3)),
        lambda: _masked(attn_mask=np.zeros((4, 3, 3), bool), query=(3, 8)),
    ),
    case(
        "attn_mask-4d",
        ValueError,
        _msg("attn_mask", (2, 2, 3, 5)),
        lambda: _masked(attn_mask=np.zeros((2, 2, 3, 5), bool), key=(2, 5, 8)),
    ),
    case(
        "attn_mask-1d",
        ValueError,
        _msg("attn_mask", (5,)),
        lambda: _masked(attn_mask=np.zeros(5, bool), key=(2, 5, 8)),
    ),
    # integer masks are refused, as torch does
    case(
        "attn_mask-int64",
        TypeError,
        _msg("attn_mask", np.dtype(np.int64)),
        lambda: _masked(attn_mask=np.zeros((3, 3), np.int64)),
    ),
    case(
        "attn_mask-uint8",
        TypeError,
        _msg("attn_mask", np.dtype(np.uint8)),
        lambda: _masked(attn_mask=np.zeros((3, 3), np.uint8)),
    ),
    case(
        "kpm-int64",
        TypeError,
        _msg("key_padding_mask", np.dtype(np.int64)),
        lambda: _masked(key_padding_mask=np.zeros((2, 3), np.int64)),
    ),
    case(
        "kpm-uint8",
        TypeError,
        _msg("key_padding_mask", np.dtype(np.uint8)),
        lambda: _masked(key_padding_mask=np.zeros((2, 3), np.uint8)),
    ),
]

BACKWARD_CASES = [
    case(
        "backward-before-forward",
        RuntimeError,
        _msg("backward", also=(r"\bforward\b",)),
        lambda: _m().backward(_x(2, 3, 8)),
    ),
    case(
        "backward-grad-wrong-features",
        ValueError,
        _msg("grad_output", (2, 3, 4)),
        lambda: _backward_after_forward(_x(2, 3, 4)),
    ),
    case(
        "backward-grad-wrong-batch",
        ValueError,
        _msg("grad_output", (3, 3, 8)),
        lambda: _backward_after_forward(_x(3, 3, 8)),
    ),
    case(
        "backward-grad-batch_first-layout-for-seq_first",
        ValueError,
        _msg("grad_output", (2, 3, 8)),
        lambda: _backward_after_forward(
            _x(2, 3, 8), x_shape=(3, 2, 8), batch_first=False
        ),
    ),
    case(
        "backward-grad-batched-for-unbatched",
        ValueError,
        _msg("grad_output", (1, 3, 8)),
        lambda: _backward_after_forward(_x(1, 3, 8), x_shape=(3, 8)),
    ),
    case(
        "backward-grad-int64",
        TypeError,
        _msg("grad_output", np.dtype(np.int64)),
        lambda: _backward_after_forward(_x(2, 3, 8, dtype=np.int64)),
    ),
]

SDPA_CASES = [
    case(
        "sdpa-query-rank1",
        ValueError,
        _msg("query", (8,)),
        lambda: _sdpa((8,), (5, 8), (5, 8)),
    ),
    case(
        "sdpa-key-rank1",
        ValueError,
        _msg("key", (8,)),
        lambda: _sdpa((3, 8), (8,), (5, 8)),
    ),
    case(
        "sdpa-value-rank1",
        ValueError,
        _msg("value", (5,)),
        lambda: _sdpa((3, 8), (5, 8), (5,)),
    ),
    case(
        "sdpa-E-mismatch",
        ValueError,
        _msg("key", (3, 8), (5, 6), also=(r"\bquery\b",)),
        lambda: _sdpa((3, 8), (5, 6), (5, 8)),
    ),
    case(
        "sdpa-S-mismatch",
        ValueError,
        _msg("value", (5, 8), (6, 8), also=(r"\bkey\b",)),
        lambda: _sdpa((3, 8), (5, 8), (6, 8)),
    ),
    case(
        "sdpa-batch-mismatch",
        ValueError,
        _msg("key", (2, 3, 8), (3, 5, 8), also=(r"\bquery\b",)),
        lambda: _sdpa((2, 3, 8), (3, 5, 8), (3, 5, 8)),
    ),
    case(
        "sdpa-empty-key",
        ValueError,
        _msg("key", (0, 8)),
        lambda: _sdpa((3, 8), (0, 8), (0, 8)),
    ),
    case(
        "sdpa-mask-not-broadcastable",
        ValueError,
        _msg("attn_mask", (5, 3)),
        lambda: _sdpa((3, 8), (5, 8), (5, 8), attn_mask=np.ones((5, 3), bool)),
    ),
    case(
        "sdpa-mask-batch-not-broadcastable",
        ValueError,
        _msg("attn_mask", (3, 3, 5)),
        lambda: _sdpa(
            (2, 3, 8), (2, 5, 8), (2, 5, 8), attn_mask=np.ones((3, 3, 5), bool)
        ),
    ),
    case(
        "sdpa-mask-int64",
        TypeError,
        _msg("attn_mask", np.dtype(np.int64)),
        lambda: _sdpa((3, 8), (5, 8), (5, 8), attn_mask=np.ones((3, 5), np.int64)),
    ),
    case(
        "sdpa-mask-uint8",
        TypeError,
        _msg("attn_mask", np.dtype(np.uint8)),
        lambda: _sdpa((3, 8), (5, 8), (5, 8), attn_mask=np.ones((3, 5), np.uint8)),
    ),
    case(
        "sdpa-is_causal-with-attn_mask",
        ValueError,
        _msg("attn_mask", also=(r"is_causal",)),
        lambda: _sdpa(
            (3, 8), (5, 8), (5, 8), attn_mask=np.ones((3, 5), bool), is_causal=True
        ),
    ),
    case(
        "sdpa-gqa-indivisible-heads",
        ValueError,
        _msg("enable_gqa|heads", 3, 2),
        lambda: _sdpa((3, 4, 8), (2, 5, 8), (2, 5, 8), enable_gqa=True),
    ),
    case(
        "sdpa-gqa-value-heads-differ",
        ValueError,
        _msg("value", 1, 2, also=("heads",)),
        lambda: _sdpa((4, 4, 8), (2, 5, 8), (1, 5, 8), enable_gqa=True),
    ),
    case(
        "sdpa-gqa-no-heads-axis",
        ValueError,
        _msg("enable_gqa", (3, 8)),
        lambda: _sdpa((3, 8), (5, 8), (5, 8), enable_gqa=True),
    ),
    case(
        "sdpa-query-int64",
        TypeError,
        _msg("query", np.dtype(np.int64)),
        lambda: scaled_dot_product_attention(
            _x(3, 8, dtype=np.int64), _x(5, 8), _x(5, 8)
        ),
    ),
    case(
        "sdpa-key-complex",
        TypeError,
        _msg("key", np.dtype(np.complex128)),
        lambda: scaled_dot_product_attention(
            _x(3, 8), _x(5, 8, dtype=np.complex128), _x(5, 8)
        ),
    ),
    case(
        "softmax-int64",
        TypeError,
        _msg("x", np.dtype(np.int64)),
        lambda: mha.softmax(_x(3, 4, dtype=np.int64)),
    ),
    case(
        "softmax-None", TypeError, _msg("x", also=("None",)), lambda: mha.softmax(None)
    ),
    case(
        "softmax-axis-out-of-range",
        ValueError,
        _msg("axis", 2),
        lambda: mha.softmax(_x(3, 4), axis=2),
    ),
    case(
        "sdpa-scale-str",
        TypeError,
        _msg("scale", also=(r"'0\.5'|\bstr\b",)),
        lambda: _sdpa((3, 8), (5, 8), (5, 8), scale="0.5"),
    ),
]


def _bridge_call(fn_name, numpy_mha, pytorch_mha):
    fn = {
        "load_weights_from_pytorch": load_weights_from_pytorch,
        "analyze_weight_differences": analyze_weight_differences,
        "compare_outputs": functools.partial(compare_outputs, x=_x(2, 3, 8)),
    }[fn_name]
    return fn(numpy_mha, pytorch_mha)


def _bridge(fn_name, make_numpy, make_torch):
    return lambda: _bridge_call(fn_name, make_numpy(), make_torch())


BRIDGE_FUNCTIONS = (
    "load_weights_from_pytorch",
    "compare_outputs",
    "analyze_weight_differences",
)

BRIDGE_CASES = [
    c
    for fn in BRIDGE_FUNCTIONS
    for c in (
        case(
            f"{fn}-other-embed_dim",
            ValueError,
            _msg("embed_dim|d_model", 8, 16),
            _bridge(fn, _m, lambda: _tm(16, 2)),
        ),
        case(
            f"{fn}-other-num_heads",
            ValueError,
            _msg("num_heads", 2, 4),
            _bridge(fn, _m, lambda: _tm(8, 4)),
        ),
        case(
            f"{fn}-other-kdim",
            ValueError,
            _msg("kdim", 6, 5),
            _bridge(fn, lambda: _m(kdim=6), lambda: _tm(8, 2, kdim=5)),
        ),
        case(
            f"{fn}-other-vdim",
            ValueError,
            _msg("vdim", 6, 4),
            _bridge(fn, lambda: _m(vdim=6), lambda: _tm(8, 2, vdim=4)),
        ),
        case(
            f"{fn}-kdim-given-to-torch-only",
            ValueError,
            _msg("kdim", 8, 6),
            _bridge(fn, _m, lambda: _tm(8, 2, kdim=6)),
        ),
        case(
            f"{fn}-torch-Linear",
            TypeError,
            _msg("pytorch_mha", also=(r"\bLinear\b",)),
            _bridge(fn, _m, lambda: _torch().nn.Linear(8, 8)),
        ),
        case(f"{fn}-dict", TypeError, _msg("pytorch_mha", dict), _bridge(fn, _m, dict)),
        case(
            f"{fn}-None",
            TypeError,
            _msg("pytorch_mha", also=("None",)),
            _bridge(fn, _m, lambda: None),
        ),
        case(
            f"{fn}-arguments-swapped",
            TypeError,
            _msg("numpy_mha", also=(r"\bMultiheadAttention\b",)),
            lambda fn=fn: _bridge_call(fn, _tm(), _m()),
        ),
        case(
            f"{fn}-numpy_mha-SequentialMHA",
            TypeError,
            _msg("numpy_mha", SequentialMHA),
            _bridge(fn, lambda: SequentialMHA(8, 2, seed=0), _tm),
        ),
    )
] + [
    case(
        "compare_outputs-training-with-dropout",
        ValueError,
        _msg("dropout|pytorch_mha", 0.1, also=("eval|training",)),
        lambda: compare_outputs(_m(), _tm(dropout=0.1).train(), _x(2, 3, 8)),
    ),
    case(
        "compare_outputs-x-wrong-features",
        ValueError,
        _msg("x|query", (2, 3, 5)),
        lambda: compare_outputs(*create_matching_mha(8, 2, seed=0), _x(2, 3, 5)),
    ),
    case(
        "compare_outputs-key-batch-mismatch",
        ValueError,
        _msg("key", (3, 5, 8)),
        lambda: compare_outputs(
            *create_matching_mha(8, 2, seed=0), _x(2, 3, 8), key=_x(3, 5, 8)
        ),
    ),
    case(
        "compare_outputs-int-mask",
        TypeError,
        _msg("attn_mask", np.dtype(np.int64)),
        lambda: compare_outputs(
            *create_matching_mha(8, 2, seed=0),
            _x(2, 3, 8),
            attn_mask=np.zeros((3, 3), np.int64),
        ),
    ),
    case(
        "compare_outputs-need_weights",
        ValueError,
        _msg("need_weights", True),
        lambda: compare_outputs(
            *create_matching_mha(8, 2, seed=0), _x(2, 3, 8), need_weights=True
        ),
    ),
    case(
        "compare_outputs-atol-str",
        TypeError,
        _msg("atol", "1e-5"),
        lambda: compare_outputs(
            *create_matching_mha(8, 2, seed=0), _x(2, 3, 8), atol="1e-5"
        ),
    ),
    case(
        "create_matching_mha-dropout",
        ValueError,
        _msg("dropout", 0.1, also=("element for element",)),
        lambda: create_matching_mha(8, 2, dropout=0.1),
    ),
    case(
        "create_matching_mha-unknown-option",
        TypeError,
        _msg("foo", also=("create_matching_mha|option",)),
        lambda: create_matching_mha(8, 2, foo=1),
    ),
    case(
        "create_matching_mha-indivisible",
        ValueError,
        _msg("d_model", 8, 3, also=(r"\bnum_heads\b",)),
        lambda: create_matching_mha(8, 3),
    ),
    case(
        "create_matching_mha-d_model=0",
        ValueError,
        _msg("d_model", 0),
        lambda: create_matching_mha(0, 2),
    ),
    case(
        "create_matching_mha-num_heads=2.5",
        TypeError,
        _msg("num_heads", 2.5),
        lambda: create_matching_mha(8, 2.5),
    ),
    case(
        "create_matching_mha-kdim=-1",
        ValueError,
        _msg("kdim", -1),
        lambda: create_matching_mha(8, 2, kdim=-1),
    ),
    case(
        "create_matching_mha-dtype=float16",
        TypeError,
        _msg("dtype", np.dtype(np.float16)),
        lambda: create_matching_mha(8, 2, dtype=np.float16),
    ),
    case("to_pytorch-dict", TypeError, _msg("numpy_mha", dict), lambda: to_pytorch({})),
    case(
        "torch_state_dict-torch-module",
        TypeError,
        _msg("numpy_mha", also=(r"\bMultiheadAttention\b",)),
        lambda: torch_state_dict(_tm()),
    ),
    case(
        "torch_state_dict-grads-before-backward",
        RuntimeError,
        _msg("grads", also=(r"\bbackward\b",)),
        lambda: torch_state_dict(_m(), grads=True),
    ),
]

SEQ_BASE = {"in_channels": 8, "n_heads": 2, "seed": 0}

SEQUENTIAL_CASES = [
    case(
        f"SequentialMHA-{arg}={label}",
        exc,
        _msg(arg, value),
        functools.partial(_ctor, SequentialMHA, arg, value, SEQ_BASE),
    )
    for arg in ("in_channels", "n_heads")
    for label, value, exc in BAD_SIZES
] + [
    case(
        "SequentialMHA-indivisible-10/3",
        ValueError,
        _msg("in_channels", 10, 3, also=(r"\bn_heads\b",)),
        lambda: SequentialMHA(10, 3),
    ),
    case(
        "SequentialMHA-bias=str",
        TypeError,
        _msg("bias", "yes"),
        lambda: SequentialMHA(8, 2, bias="yes"),
    ),
    case(
        "SequentialMHA-seed=-1",
        ValueError,
        _msg("seed", -1),
        lambda: SequentialMHA(8, 2, seed=-1),
    ),
    case(
        "SequentialMHA-seed=str",
        TypeError,
        _msg("seed", "x"),
        lambda: SequentialMHA(8, 2, seed="x"),
    ),
    case(
        "SequentialMHA-dtype=int32",
        TypeError,
        _msg("dtype", np.dtype(np.int32)),
        lambda: SequentialMHA(8, 2, dtype=np.int32),
    ),
    case(
        "SequentialMHA-dtype=float16",
        TypeError,
        _msg("dtype", np.dtype(np.float16)),
        lambda: SequentialMHA(8, 2, dtype=np.float16),
    ),
    case(
        "SequentialMHA.forward-rank1",
        ValueError,
        _msg("x", (8,)),
        lambda: SequentialMHA(8, 2, seed=0)(_x(8)),
    ),
    case(
        "SequentialMHA.forward-rank4",
        ValueError,
        _msg("x", (2, 3, 4, 8)),
        lambda: SequentialMHA(8, 2, seed=0)(_x(2, 3, 4, 8)),
    ),
    case(
        "SequentialMHA.forward-features",
        ValueError,
        _msg("x", (2, 3, 5)),
        lambda: SequentialMHA(8, 2, seed=0)(_x(2, 3, 5)),
    ),
    case(
        "SequentialMHA.forward-no-time-steps",
        ValueError,
        _msg("x", (2, 0, 8)),
        lambda: SequentialMHA(8, 2, seed=0)(_x(2, 0, 8)),
    ),
    case(
        "SequentialMHA.forward-int64",
        TypeError,
        _msg("x", np.dtype(np.int64)),
        lambda: SequentialMHA(8, 2, seed=0)(_x(2, 3, 8, dtype=np.int64)),
    ),
    case(
        "SequentialMHA.forward-complex",
        TypeError,
        _msg("x", np.dtype(np.complex128)),
        lambda: SequentialMHA(8, 2, seed=0)(_x(2, 3, 8, dtype=np.complex128)),
    ),
    case(
        "SequentialMHA.backward-before-forward",
        RuntimeError,
        _msg("backward", also=(r"\bforward\b",)),
        lambda: SequentialMHA(8, 2, seed=0).backward(_x(2, 3, 8)),
    ),
    case(
        "SequentialMHA.backward-dy-wrong-shape",
        ValueError,
        _msg("dy", (2, 3, 4)),
        lambda: _seq_backward_after_forward(_x(2, 3, 4)),
    ),
    case(
        "SequentialMHA.backward-dy-batched-for-unbatched",
        ValueError,
        _msg("dy", (1, 3, 8)),
        lambda: _seq_backward_after_forward(_x(1, 3, 8), x_shape=(3, 8)),
    ),
    case(
        "SequentialMHA.backward-dy-int64",
        TypeError,
        _msg("dy", np.dtype(np.int64)),
        lambda: _seq_backward_after_forward(_x(2, 3, 8, dtype=np.int64)),
    ),
]

CONVERT_CASES = [
    case(
        "sequential_to_fused-MultiHeadAttention",
        TypeError,
        _msg("seq", MultiHeadAttention),
        lambda: sequential_to_fused(_m()),
    ),
    case(
        "sequential_to_fused-dict",
        TypeError,
        _msg("seq", dict),
        lambda: sequential_to_fused({}),
    ),
    case(
        "sequential_to_fused-torch-module",
        TypeError,
        _msg("seq", also=(r"\bMultiheadAttention\b",)),
        lambda: sequential_to_fused(_tm()),
    ),
    case(
        "fused_to_sequential-SequentialMHA",
        TypeError,
        _msg("m", SequentialMHA),
        lambda: fused_to_sequential(SequentialMHA(8, 2, seed=0)),
    ),
    case(
        "fused_to_sequential-torch-module",
        TypeError,
        _msg("m", also=(r"\bMultiheadAttention\b",)),
        lambda: fused_to_sequential(_tm()),
    ),
    case(
        "fused_to_sequential-None",
        TypeError,
        _msg("m", also=("None",)),
        lambda: fused_to_sequential(None),
    ),
    case(
        "fused_to_sequential-kdim",
        ValueError,
        _msg("kdim", 6),
        lambda: fused_to_sequential(_m(kdim=6)),
    ),
    case(
        "fused_to_sequential-vdim",
        ValueError,
        _msg("vdim", 4),
        lambda: fused_to_sequential(_m(vdim=4)),
    ),
    case(
        "fused_to_sequential-add_bias_kv",
        ValueError,
        _msg("add_bias_kv"),
        lambda: fused_to_sequential(_m(add_bias_kv=True)),
    ),
    case(
        "fused_to_sequential-add_zero_attn",
        ValueError,
        _msg("add_zero_attn"),
        lambda: fused_to_sequential(_m(add_zero_attn=True)),
    ),
]

BLOCK_CASES = [
    case(
        "linear-torch-layout-W",
        ValueError,
        _msg("W", (4, 6), also=("transpose",)),
        lambda: mha.linear(_x(3, 6), _x(4, 6)),
    ),
    case(
        "linear-b-wrong-length",
        ValueError,
        _msg("b", (6,)),
        lambda: mha.linear(_x(3, 6), _x(6, 4), _x(6)),
    ),
    case(
        "linear-x-int64",
        TypeError,
        _msg("x", np.dtype(np.int64)),
        lambda: mha.linear(_x(3, 6, dtype=np.int64), _x(6, 4)),
    ),
    case(
        "split_heads-indivisible",
        ValueError,
        _msg("H", (3, 10), also=(r"E=10",)),
        lambda: mha.split_heads(_x(3, 10), 4),
    ),
    case(
        "split_heads-H-float",
        TypeError,
        _msg("H", 2.0),
        lambda: mha.split_heads(_x(3, 8), 2.0),
    ),
    case(
        "split_heads-rank1",
        ValueError,
        _msg("x", (8,)),
        lambda: mha.split_heads(_x(8), 2),
    ),
    case(
        "merge_heads-rank2",
        ValueError,
        _msg("x", (3, 8)),
        lambda: mha.merge_heads(_x(3, 8)),
    ),
    case(
        "merge_heads-int64",
        TypeError,
        _msg("x", np.dtype(np.int64)),
        lambda: mha.merge_heads(_x(2, 3, 4, dtype=np.int64)),
    ),
    case(
        "attention_weights-E-mismatch",
        ValueError,
        _msg("key", (4, 8), (6, 7), also=(r"\bquery\b",)),
        lambda: mha.attention_weights(_x(4, 8), _x(6, 7)),
    ),
    case(
        "attention_weights-is_causal-with-mask",
        ValueError,
        _msg("attn_mask", also=("is_causal",)),
        lambda: mha.attention_weights(
            _x(4, 8), _x(6, 8), attn_mask=np.ones((4, 6), bool), is_causal=True
        ),
    ),
    case(
        "attention_weights-is_causal-str",
        TypeError,
        _msg("is_causal", "yes"),
        lambda: mha.attention_weights(_x(4, 8), _x(6, 8), is_causal="yes"),
    ),
    case(
        "attention_weights-gqa-indivisible",
        ValueError,
        _msg("enable_gqa|heads", 3, 2),
        lambda: mha.attention_weights(_x(3, 4, 8), _x(2, 6, 8), enable_gqa=True),
    ),
    case(
        "attention_weights-query-int64",
        TypeError,
        _msg("query", np.dtype(np.int64)),
        lambda: mha.attention_weights(_x(4, 8, dtype=np.int64), _x(6, 8)),
    ),
]

VERDICT_CASES = [
    case(
        "max_abs_diff-shapes",
        ValueError,
        _msg("actual|expected", (2, 3), (3, 2)),
        lambda: mha.max_abs_diff(np.ones((2, 3)), np.ones((3, 2))),
    ),
    case(
        "max_abs_diff-str",
        TypeError,
        _msg("actual", also=(r"dtype <U1",)),
        lambda: mha.max_abs_diff("a", np.ones(1)),
    ),
    case(
        "max_abs_diff-complex",
        TypeError,
        _msg("expected", np.dtype(np.complex128)),
        lambda: mha.max_abs_diff(np.ones(2), np.ones(2) + 1j),
    ),
    case(
        "report_match-shapes",
        ValueError,
        _msg("actual|expected", (2, 3), (3, 2)),
        lambda: mha.report_match("output", np.ones((2, 3)), np.ones((3, 2))),
    ),
    case(
        "report_match-atol-str",
        TypeError,
        _msg("atol", "1e-5"),
        lambda: mha.report_match("output", np.ones(2), np.ones(2), atol="1e-5"),
    ),
    case(
        "report_match-atol-negative",
        ValueError,
        _msg("atol", -1.0),
        lambda: mha.report_match("output", np.ones(2), np.ones(2), atol=-1.0),
    ),
    case(
        "report_match-rtol-nan",
        ValueError,
        _msg("rtol", also=("nan",)),
        lambda: mha.report_match("output", np.ones(2), np.ones(2), rtol=float("nan")),
    ),
    case(
        "report_match-label-int",
        TypeError,
        _msg("label", 3),
        lambda: mha.report_match(3, np.ones(2), np.ones(2)),
    ),
]

CASES = (
    CONSTRUCTOR_CASES
    + FORWARD_CASES
    + BACKWARD_CASES
    + SDPA_CASES
    + BRIDGE_CASES
    + SEQUENTIAL_CASES
    + CONVERT_CASES
    + BLOCK_CASES
    + VERDICT_CASES
)

# The other of the two: a ValueError case must not also be a TypeError, and the reverse.
_NOT = {
    ValueError: TypeError,
    TypeError: ValueError,
    RuntimeError: (ValueError, TypeError),
}


def test_case_ids_are_unique():
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("call, exc, match", CASES)
def test_misuse_raises_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match) as info:
        call()
    assert not isinstance(info.value, _NOT[exc]), (
        f"{type(info.value).__name__} is also a {_NOT[exc]}"
    )


def _innermost_frame(error: BaseException):
    tb = error.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame


def _third_party_dirs() -> list[str]:
    dirs = [os.path.dirname(os.path.realpath(np.__file__))]
    try:
        import torch
    except ImportError:
        pass
    else:
        dirs.append(os.path.dirname(os.path.realpath(torch.__file__)))
    return [d + os.sep for d in dirs]


@pytest.mark.parametrize("call, exc, match", CASES)
def test_misuse_is_caught_by_mha_not_deep_in_numpy(call, exc, match):
    """The error is raised by mha's own checks, not by NumPy or torch failing further down."""
    try:
        call()
    except (ValueError, TypeError, RuntimeError, AssertionError) as error:
        frame = _innermost_frame(error)
        where = os.path.realpath(frame.f_code.co_filename)
        module = str(frame.f_globals.get("__name__", ""))
        deep = any(where.startswith(d) for d in _third_party_dirs()) or module.split(
            "."
        )[0] in ("numpy", "torch")
        assert not deep, (
            f"{type(error).__name__} raised inside {module or where} ({where}): {error}"
        )
    else:
        pytest.fail("no error raised")


def test_no_case_raises_assertion_error():
    offenders = []
    for param in CASES:
        call = param.values[0]
        try:
            call()
        except pytest.skip.Exception:
            continue
        except AssertionError as error:
            offenders.append(f"{param.id}: AssertionError({error})")
        except Exception:
            pass
    assert not offenders, "\n".join(offenders)


# ---------------------------------------------------------------- inputs are never modified


def _snapshot(arrays: dict) -> dict:
    return {name: np.array(a, copy=True) for name, a in arrays.items() if a is not None}


def _assert_unchanged(before: dict, arrays: dict, when: str) -> None:
    for name, old in before.items():
        new = arrays[name]
        assert new.dtype == old.dtype and new.shape == old.shape, (
            f"{name} changed dtype/shape {when}"
        )
        assert np.array_equal(new, old, equal_nan=True), f"{name} was modified {when}"


def _returned_arrays(result) -> list:
    items = result if isinstance(result, tuple) else (result,)
    return [a for a in items if isinstance(a, np.ndarray)]


def _assert_no_alias(returned, arrays: dict, when: str) -> None:
    for out in returned:
        for name, a in arrays.items():
            if a is not None:
                assert not np.shares_memory(out, a), (
                    f"an array returned {when} shares memory with {name}"
                )


FORWARD_SCENARIOS = {  # id -> (module kwargs, input shapes (query, key, value) or (query,), forward kwargs maker)
    "self-attention-float32-masks": (
        {},
        ((2, 3, 8),),
        lambda: {
            "key_padding_mask": np.array([[False, False, True], [False, False, False]]),
            "attn_mask": _x(3, 3, dtype=np.float32),
            "need_weights": True,
        },
    ),
    "cross-attention-kdim-vdim-float-kpm-3d-mask": (
        {"kdim": 6, "vdim": 4},
        ((2, 3, 8), (2, 5, 6), (2, 5, 4)),
        lambda: {
            "key_padding_mask": np.where(np.arange(5) > 3, -np.inf, 0.0)
            .astype(np.float32)[None]
            .repeat(2, 0),
            "attn_mask": np.eye(3, 5, dtype=bool)[None].repeat(4, 0),
            "need_weights": True,
            "average_attn_weights": False,
        },
    ),
    "float64-inputs-float32-module": (
        {},
        ((2, 3, 8), (2, 4, 8), (2, 4, 8)),
        lambda: {"attn_mask": _x(3, 4, dtype=np.float64)},
    ),
    "float64-module-float32-inputs": (
        {"dtype": np.float64},
        ((2, 3, 8), (2, 4, 8), (2, 4, 8)),
        lambda: {"key_padding_mask": np.zeros((2, 4), np.float64)},
    ),
    "seq_first": (
        {"batch_first": False},
        ((3, 2, 8), (4, 2, 8), (4, 2, 8)),
        lambda: {
            "key_padding_mask": np.zeros((2, 4), bool),
            "attn_mask": np.zeros((3, 4), np.float32),
        },
    ),
    "unbatched-float-kpm": (
        {},
        ((3, 8),),
        lambda: {
            "key_padding_mask": np.array([0.0, -1.0, -np.inf], np.float32),
            "need_weights": True,
        },
    ),
    "bias_kv-zero_attn-masks": (
        {"add_bias_kv": True, "add_zero_attn": True},
        ((2, 3, 8), (2, 4, 8), (2, 4, 8)),
        lambda: {
            "key_padding_mask": np.ones((2, 4), bool),
            "attn_mask": np.zeros((3, 4), np.float32),
        },
    ),
    "is_causal": ({}, ((2, 3, 8),), lambda: {"is_causal": True}),
    "same-array-three-times": (
        {},
        "same",
        lambda: {"key_padding_mask": np.zeros((2, 3), np.float32)},
    ),
}


@pytest.mark.parametrize("scenario", list(FORWARD_SCENARIOS))
def test_forward_and_backward_leave_their_inputs_untouched(scenario):
    module_kwargs, shapes, make_kwargs = FORWARD_SCENARIOS[scenario]
    m = _m(**module_kwargs)
    if shapes == "same":
        x = _x(2, 3, 8)
        inputs = (x, x, x)
    else:
        inputs = tuple(_x(*s) for s in shapes)
    if scenario == "float64-inputs-float32-module":
        inputs = tuple(a.astype(np.float64) for a in inputs)
    kwargs = make_kwargs()
    arrays = {f"input{i}": a for i, a in enumerate(inputs)}
    arrays.update({k: v for k, v in kwargs.items() if isinstance(v, np.ndarray)})
    before = _snapshot(arrays)

    result = m(*inputs, **kwargs)
    _assert_unchanged(before, arrays, "by forward")
    _assert_no_alias(_returned_arrays(result), arrays, "by forward")

    out = result[0] if isinstance(result, tuple) else result
    grad = _x(*out.shape, dtype=out.dtype)
    arrays["grad_output"] = grad
    before["grad_output"] = grad.copy()
    grads_in = m.backward(grad)
    _assert_unchanged(before, arrays, "by backward")
    _assert_no_alias(
        _returned_arrays(grads_in) + list(m.grads.values()), arrays, "by backward"
    )


def test_sdpa_leaves_its_inputs_untouched():
    arrays = {
        "query": _x(2, 3, 8),
        "key": _x(2, 5, 8),
        "value": _x(2, 5, 4),
        "attn_mask": _x(3, 5),
    }
    before = _snapshot(arrays)
    out = scaled_dot_product_attention(**arrays)
    _assert_unchanged(before, arrays, "by scaled_dot_product_attention")
    _assert_no_alias([out], arrays, "by scaled_dot_product_attention")


@pytest.mark.parametrize("x_shape", [(2, 3, 8), (3, 8)], ids=["batched", "unbatched"])
def test_sequential_forward_and_backward_leave_their_inputs_untouched(x_shape):
    s = SequentialMHA(8, 2, seed=0)
    arrays = {"x": _x(*x_shape), "dy": _x(*x_shape)}
    before = _snapshot(arrays)
    out = s(arrays["x"])
    dx = s.backward(arrays["dy"])
    _assert_unchanged(before, arrays, "by SequentialMHA forward/backward")
    _assert_no_alias([out, dx], arrays, "by SequentialMHA forward/backward")


def _torch_state(module) -> dict:
    """Everything of a torch module a bridge function could change, as comparable values."""
    return {
        "state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "training": [sub.training for sub in module.modules()],
        "requires_grad": [p.requires_grad for p in module.parameters()],
        "grads": [p.grad for p in module.parameters()],
        "dtypes": [p.dtype for p in module.parameters()],
        "batch_first": module.batch_first,
    }


def _assert_torch_unchanged(before: dict, module, when: str) -> None:
    torch = _torch()
    after = _torch_state(module)
    assert after["state_dict"].keys() == before["state_dict"].keys(), (
        f"torch module's parameters changed {when}"
    )
    for name, old in before["state_dict"].items():
        assert torch.equal(after["state_dict"][name], old), (
            f"torch module's {name} was modified {when}"
        )
    for key in ("training", "requires_grad", "dtypes", "batch_first"):
        assert after[key] == before[key], (
            f"torch module's {key} changed {when}: {before[key]} -> {after[key]}"
        )
    assert all(g is None for g in after["grads"]), f"torch module got .grad {when}"


def _numpy_params(m) -> dict:
    return {k: np.array(v, copy=True) for k, v in m.parameters().items()}


BRIDGE_SCENARIOS = {  # id -> (torch module kwargs, training?, numpy module kwargs)
    "eval": ({}, False, {}),
    "training-no-dropout": ({}, True, {}),
    "kdim-vdim-bias_kv-zero_attn-training": (
        {"kdim": 6, "vdim": 4, "add_bias_kv": True, "add_zero_attn": True},
        True,
        {"kdim": 6, "vdim": 4, "add_bias_kv": True},
    ),
    "torch-seq_first-numpy-batch_first": ({"batch_first": False}, False, {}),
    "float64-torch": ({"dtype": "float64"}, False, {}),
}


def _bridge_pair(scenario):
    torch = _torch()
    torch_kwargs, training, numpy_kwargs = copy.deepcopy(BRIDGE_SCENARIOS[scenario])
    if torch_kwargs.get("dtype") == "float64":
        torch_kwargs["dtype"] = torch.float64
    torch.manual_seed(0)
    tm = _tm(8, 2, **torch_kwargs).train(training)
    with torch.no_grad():
        for name, p in tm.named_parameters():
            if "bias" in name:
                p.add_(0.25)  # non-zero biases: nothing may hide behind zeros
    return _m(**numpy_kwargs), tm


@pytest.mark.parametrize("scenario", list(BRIDGE_SCENARIOS))
def test_load_weights_and_analyze_leave_the_torch_module_untouched(scenario):
    nm, tm = _bridge_pair(scenario)
    before = _torch_state(tm)
    load_weights_from_pytorch(nm, tm)
    _assert_torch_unchanged(before, tm, "by load_weights_from_pytorch")
    params = _numpy_params(nm)
    report = analyze_weight_differences(nm, tm)
    _assert_torch_unchanged(before, tm, "by analyze_weight_differences")
    _assert_unchanged(
        params,
        nm.parameters(),
        "(numpy_mha's parameters) by analyze_weight_differences",
    )
    assert all(r["max_diff"] < 1e-6 for r in report.values()), report


@pytest.mark.filterwarnings(
    "ignore:Support for mismatched key_padding_mask and attn_mask is deprecated"
)
@pytest.mark.parametrize("scenario", list(BRIDGE_SCENARIOS))
def test_compare_outputs_leaves_inputs_and_modules_untouched(scenario):
    nm, tm = _bridge_pair(scenario)
    load_weights_from_pytorch(nm, tm)
    before_torch = _torch_state(tm)
    params = _numpy_params(nm)
    f = np.float32
    kdim, vdim = nm.kdim, nm.vdim
    arrays = {
        "x": _x(2, 3, 8, dtype=f),
        "key": _x(2, 4, kdim, dtype=f),
        "value": _x(2, 4, vdim, dtype=f),
        "key_padding_mask": np.array([[0, 0, 0, -np.inf], [0, -1, 0, 0]], f),
        "attn_mask": np.triu(np.ones((3, 4), bool), k=2),
    }
    before = _snapshot(arrays)
    result = compare_outputs(
        nm,
        tm,
        arrays["x"],
        1e-4,
        key=arrays["key"],
        value=arrays["value"],
        key_padding_mask=arrays["key_padding_mask"],
        attn_mask=arrays["attn_mask"],
    )
    _assert_unchanged(before, arrays, "by compare_outputs")
    _assert_torch_unchanged(before_torch, tm, "by compare_outputs")
    _assert_unchanged(
        params, nm.parameters(), "(numpy_mha's parameters) by compare_outputs"
    )
    assert result, result  # the modules agree, so the comparison itself worked

    self_x = (
        {"x": _x(2, 3, 8, dtype=f), "key_padding_mask": np.zeros((2, 3), bool)}
        if kdim == vdim == 8
        else None
    )
    if self_x is not None:
        before = _snapshot(self_x)
        assert compare_outputs(
            nm,
            tm,
            self_x["x"],
            1e-4,
            key_padding_mask=self_x["key_padding_mask"],
            is_causal=True,
        )
        _assert_unchanged(
            before, self_x, "by compare_outputs (self-attention, is_causal)"
        )
        _assert_torch_unchanged(
            before_torch, tm, "by compare_outputs (self-attention, is_causal)"
        )


def test_create_matching_mha_leaves_torch_global_rng_alone():
    torch = _torch()
    state = torch.get_rng_state()
    create_matching_mha(8, 2, seed=3)
    assert torch.equal(torch.get_rng_state(), state)


def test_every_public_callable_has_a_misuse_case():
    """Derived from the cases, not listed by hand: every function that ``mha`` exports, and each
    exported class's constructor, forward and backward, is where at least one case above fails
    (read from the case's traceback: :func:`helpers.entry_point`). A new public entry point
    fails this test until it gets its misuse cases here. The modules ``mha`` exports check their
    own functions the same way beside their cases (e.g. tests/test_positional.py)."""
    reached = entry_points(p.values[0] for p in CASES)
    public = public_entry_points(
        mha, [n for n in mha.__all__ if not inspect.ismodule(getattr(mha, n))]
    )
    # the derivation found the API (not an empty set)
    assert len(public) > 20, sorted(public)
    assert public <= reached, sorted(public - reached)


def test_sdpa_mask_that_would_grow_the_scores_is_refused():
    q, k, v = np.ones((3, 5)), np.ones((6, 5)), np.ones((6, 3))
    with pytest.raises(
        ValueError,
        match=r"attn_mask of shape \(2, 3, 6\) does not broadcast to the scores' shape \(3, 6\)",
    ):
        mha.scaled_dot_product_attention(q, k, v, attn_mask=np.ones((2, 3, 6), bool))
