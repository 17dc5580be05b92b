"""The masks of ``nn.MultiheadAttention``, merged into one additive float mask.

``nn.MultiheadAttention`` takes two masks with torch's convention
**True = blocked** (the opposite of ``scaled_dot_product_attention``):

- ``key_padding_mask`` (N, S), or (S,) for unbatched input: True marks a
  padding key that no query may attend.
- ``attn_mask`` (L, S) shared by every sequence and head, or
  (N * num_heads, L, S) one per sequence and head (batch-major: row
  ``n * num_heads + h``), or (num_heads, L, S) for unbatched input.

A float mask is added to the scores as it is. Both become one array of
shape (N, H, L, S') with ``-inf`` where blocked, where S' = S plus one
column for ``bias_k`` and one for ``add_zero_attn``; those extra keys are
never masked, exactly as torch pads its masks with zeros.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._checks import mask_array
from .functional import causal_mask

__all__ = ["merge_masks", "causal_mask"]


def _to_additive(mask: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Bool True = blocked -> -inf / 0; float masks are cast as they are."""
    if mask.dtype == np.bool_:
        return np.where(mask, dtype.type(-np.inf), dtype.type(0))
    return mask.astype(dtype, copy=False)


def merge_masks(
    *,
    key_padding_mask: ArrayLike | None,
    attn_mask: ArrayLike | None,
    is_causal: bool,
    batched: bool,
    N: int,
    H: int,
    L: int,
    S: int,
    extra_keys: int,
    dtype: np.dtype,
) -> np.ndarray | None:
    """Check both masks against the shapes and return one additive mask.

    Returns an array broadcastable to (N, H, L, S + extra_keys), or None
    when nothing is masked. ``is_causal=True`` without ``attn_mask`` builds
    the causal (L, S) mask, so it means exactly what passing that mask does.
    """
    kpm = mask_array(key_padding_mask, "key_padding_mask")
    mask = mask_array(attn_mask, "attn_mask")
    if is_causal and mask is None:
        # True = blocked, as nn.MultiheadAttention expects
        mask = ~causal_mask(L, S)
    merged = None
    if mask is not None:
        if mask.ndim == 2:
            if mask.shape != (L, S):
                raise ValueError(
                    f"attn_mask must have shape (L, S) = {(L, S)}, got {mask.shape}"
                )
            merged = _to_additive(mask, dtype)[None, None]  # (1, 1, L, S)
        elif mask.ndim == 3:
            expected: tuple[int, ...] = (N * H, L, S) if batched else (H, L, S)
            if mask.shape != expected:
                what = "(N * num_heads, L, S)" if batched else "(num_heads, L, S)"
                raise ValueError(
                    f"attn_mask must have shape {what} = {expected}, got {mask.shape}"
                )
            # (N*H, L, S) -> (N, H, L, S)
            merged = _to_additive(mask, dtype).reshape(N, H, L, S)
        else:
            raise ValueError(
                f"attn_mask must be 2-D (L, S) or 3-D (N * num_heads, L, S), got shape {mask.shape}"
            )
    if kpm is not None:
        expected = (N, S) if batched else (S,)
        if kpm.shape != expected:
            what = "(N, S)" if batched else "(S,)"
            raise ValueError(
                f"key_padding_mask must have shape {what} = {expected}, got {kpm.shape}"
            )
        # (N, S) -> (N, 1, 1, S)
        padding = _to_additive(kpm, dtype).reshape(N, 1, 1, S)
        merged = padding if merged is None else merged + padding
    if merged is not None and extra_keys:
        # bias_k and the zero key take part for every query: pad with 0 ("attend").
        pad = [(0, 0)] * (merged.ndim - 1) + [(0, extra_keys)]
        merged = np.pad(merged, pad)
    return merged
