"""Per-head (``SequentialMHA``) and fused (``MultiHeadAttention``) weights, one to one.

Head ``h`` of a fused module owns the columns ``h*hd:(h+1)*hd`` of each of
W_Q, W_K, W_V (NumPy's (in, out) layout) and the rows ``h*hd:(h+1)*hd``
of W_O. A per-head module stores the same numbers in torch's (out, in)
layout: ``heads[h].q_proj.w`` is ``W_Q[:, h*hd:(h+1)*hd].T``, and torch's
``in_proj_weight`` is every head's q_proj.w, then every k_proj.w, then
every v_proj.w, stacked by rows.
"""

from __future__ import annotations

import numpy as np

from .attention import MultiHeadAttention
from .sequential import SequentialMHA

__all__ = ["sequential_to_fused", "fused_to_sequential"]


def sequential_to_fused(seq: SequentialMHA) -> MultiHeadAttention:
    """A new ``MultiHeadAttention`` (batch_first) computing what ``seq`` computes."""
    if not isinstance(seq, SequentialMHA):
        raise TypeError(f"seq must be an mha.SequentialMHA, got {type(seq).__name__}")
    C, H = seq.in_channels, seq.n_heads
    dtype = seq.out_proj.w.dtype
    fused = MultiHeadAttention(C, H, bias=seq.bias, dtype=dtype, seed=0)
    for tag, proj in (("Q", "q_proj"), ("K", "k_proj"), ("V", "v_proj")):
        linears = [getattr(head, proj) for head in seq.heads]
        # (hd, C) per head -> (H*hd, C) = (C, C) in (out, in) layout -> transpose to (in, out)
        setattr(
            fused,
            "W_" + tag,
            np.concatenate([lin.w for lin in linears], axis=0).T.copy(),
        )
        if seq.bias:
            setattr(
                fused, "b_" + tag, np.concatenate([lin.b for lin in linears]).copy()
            )
    fused.W_O = np.asarray(seq.out_proj.w).T.copy()  # (out, in) -> (in, out)
    if seq.bias:
        fused.b_O = np.asarray(seq.out_proj.b).copy()
    return fused


def fused_to_sequential(m: MultiHeadAttention) -> SequentialMHA:
    """A new ``SequentialMHA`` computing what ``m`` computes.

    Only the options a per-head model has: no ``kdim``/``vdim``,
    ``add_bias_kv`` or ``add_zero_attn`` (ValueError otherwise).
    """
    if not isinstance(m, MultiHeadAttention):
        raise TypeError(f"m must be an mha.MultiHeadAttention, got {type(m).__name__}")
    if m.kdim != m.d_model or m.vdim != m.d_model:
        raise ValueError(
            f"fused_to_sequential needs kdim == vdim == d_model, got kdim={m.kdim}, vdim={m.vdim}, d_model={m.d_model}"
        )
    if m.bias_k is not None or m.add_zero_attn:
        raise ValueError(
            f"fused_to_sequential needs no extra keys, got add_bias_kv={m.bias_k is not None}, "
            f"add_zero_attn={m.add_zero_attn}: a per-head model cannot express them"
        )
    has_bias = any(getattr(m, n) is not None for n in ("b_Q", "b_K", "b_V", "b_O"))
    seq = SequentialMHA(m.d_model, m.num_heads, bias=has_bias, seed=0, dtype=m.dtype)
    hd = m.head_dim
    for tag, proj in (("Q", "q_proj"), ("K", "k_proj"), ("V", "v_proj")):
        W, b = getattr(m, "W_" + tag), getattr(m, "b_" + tag)
        for h, head in enumerate(seq.heads):
            lin = getattr(head, proj)
            # (C, hd) columns -> (hd, C) rows
            lin.w[...] = W[:, h * hd : (h + 1) * hd].T
            if has_bias:
                lin.b[...] = 0 if b is None else b[h * hd : (h + 1) * hd]
    seq.out_proj.w[...] = np.asarray(m.W_O).T  # (in, out) -> (out, in)
    if seq.out_proj.b is not None:
        seq.out_proj.b[...] = 0 if m.b_O is None else m.b_O
    return seq
