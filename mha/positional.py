"""Where each token is: sinusoidal positional encoding and rotary position embedding (RoPE).

Attention by itself treats its input as a set: permute the tokens and the
outputs are permuted the same way. Two ways to tell it the order:

- :func:`sinusoidal_encoding` (Vaswani et al., 2017) is *added* to the token
  embeddings once, before the first layer;
- RoPE (Su et al., RoFormer, 2021) *rotates* every query and key after the
  projections, before the scores, so a score depends only on the offset
  between the two positions. :func:`rope_frequencies` builds the cos/sin
  tables, :func:`apply_rope` rotates, :func:`apply_rope_backward` is its
  transpose (rotation by minus the angle) for training.

Pairing. Both use frequencies ``theta_i = base ** (-2 i / D)`` for
``i = 0 .. D/2 - 1``. The sinusoidal encoding interleaves, as the paper
writes it: ``PE[p, 2i] = sin(p theta_i)``, ``PE[p, 2i+1] = cos(p theta_i)``.
RoPE here uses the **"rotate half"** pairing of GPT-NeoX and of Hugging Face's
Llama (its ``rotate_half``): feature ``i`` is rotated together with feature
``i + D/2``. The RoFormer paper (and GPT-J, and Meta's original Llama code)
pairs neighbours ``(2i, 2i+1)`` instead; the two differ by a fixed permutation
of the features, which trained projection weights absorb, but weights trained
with one do not work with the other.

Shapes: ``L`` positions, ``D`` = ``d_model`` or ``head_dim``, ``P`` the
number of positions a table covers, ``...`` any leading (batch, head) axes.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ._checks import as_float_array, float_dtype, positive_int

__all__ = [
    "sinusoidal_encoding",
    "rope_frequencies",
    "rotate_half",
    "apply_rope",
    "apply_rope_backward",
]


def sinusoidal_encoding(
    num_positions: int,
    d_model: int,
    *,
    base: float = 10000.0,
    dtype: DTypeLike = np.float64,
) -> np.ndarray:
    """The sinusoidal positional encoding ``PE`` of shape (num_positions, d_model).

    PE[p, 2i] = sin(p / base^(2i / d_model)), PE[p, 2i+1] = cos(p / base^(2i / d_model)).
    Added to token embeddings (N, L, d_model) as ``x + PE[:L]``. Computed in
    float64 and returned as ``dtype``. For every shift ``k`` there is one
    matrix ``M_k`` (a 2x2 rotation by ``k theta_i`` per pair) with
    ``PE[p + k] = M_k @ PE[p]`` for every ``p``.
    """
    num_positions = positive_int(num_positions, "num_positions")
    d_model = _even_positive_int(d_model, "d_model")
    base, dtype = _base(base), float_dtype(dtype)
    angles = _angles(np.arange(num_positions), d_model, base)  # (P, d_model / 2)
    pe = np.empty((num_positions, d_model), dtype=np.float64)
    pe[:, 0::2] = np.sin(angles)  # even features: sin
    pe[:, 1::2] = np.cos(angles)  # odd features: cos
    return pe.astype(dtype)


def rope_frequencies(
    head_dim: int,
    max_positions: int,
    base: float = 10000.0,
    *,
    dtype: DTypeLike = np.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """The RoPE tables ``(cos, sin)``, each of shape (max_positions, head_dim).

    ``cos[p, j] = cos(p * theta_(j mod head_dim/2))`` with
    ``theta_i = base ** (-2 i / head_dim)``, and ``sin`` likewise: the
    ``head_dim / 2`` angles of position ``p`` written twice, side by side,
    the layout that "rotate half" needs (``cos[:, :head_dim // 2]`` holds
    each angle once). Angles are computed in float64 (a float32 ``p * theta``
    loses digits at large ``p``), the tables returned as ``dtype``.
    """
    head_dim = _even_positive_int(head_dim, "head_dim")
    max_positions = positive_int(max_positions, "max_positions")
    base, dtype = _base(base), float_dtype(dtype)
    angles = _angles(np.arange(max_positions), head_dim, base)  # (P, head_dim / 2)
    angles = np.concatenate([angles, angles], axis=-1)  # (P, head_dim)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def rotate_half(x: ArrayLike) -> np.ndarray:
    """``[x1, x2] -> [-x2, x1]`` on the last axis, split in two halves: (..., D) -> (..., D).

    Feature ``i`` and feature ``i + D/2`` form one pair, seen as the point
    ``(x_i, x_(i+D/2))``; this is that point turned by +90 degrees.
    """
    a = as_float_array(x, "x")
    if a.ndim < 1 or a.shape[-1] % 2:
        raise ValueError(f"x must have an even last dimension, got shape {a.shape}")
    half = a.shape[-1] // 2
    return np.concatenate([-a[..., half:], a[..., :half]], axis=-1)


def apply_rope(
    x: ArrayLike,
    positions: ArrayLike | None = None,
    *,
    freqs: tuple[ArrayLike, ArrayLike] | None = None,
    base: float = 10000.0,
) -> np.ndarray:
    """Rotate each feature pair of ``x`` (..., L, head_dim) by its position's angles.

    ``out = x * cos[positions] + rotate_half(x) * sin[positions]``: pair
    ``(x_i, x_(i+hd/2))`` at position ``p`` turns by ``p * theta_i``.
    Apply it to queries and keys after the projections and the head split,
    before the scores; never to values.

    positions: None (``0 .. L-1``) or non-negative ints of shape (L,) or any
    shape broadcastable to ``x.shape[:-1]``, e.g. (N, 1, L) for a batch of
    (N, H, L, hd) whose sequences start at different offsets.
    freqs: ``(cos, sin)`` from :func:`rope_frequencies`, or None to build
    them from ``base``; every position must be below ``len(cos)``.
    Returns a new array of x's shape and dtype (float32 or float64).
    """
    a, cos, sin = _rope_args(x, positions, freqs, base, "x")
    return a * cos + rotate_half(a) * sin


def apply_rope_backward(
    dout: ArrayLike,
    positions: ArrayLike | None = None,
    *,
    freqs: tuple[ArrayLike, ArrayLike] | None = None,
    base: float = 10000.0,
) -> np.ndarray:
    """Gradient through :func:`apply_rope`: ``dx`` of shape (..., L, head_dim).

    The rotation is linear and orthogonal, so its gradient is its transpose:
    the rotation by minus the angle, ``dout * cos - rotate_half(dout) * sin``.
    Takes the same ``positions``/``freqs``/``base`` as the forward call.
    """
    d, cos, sin = _rope_args(dout, positions, freqs, base, "dout")
    return d * cos - rotate_half(d) * sin


# --- helpers: the argument checks, so that the functions above read as the maths ----------------


def _angles(positions: np.ndarray, dim: int, base: float) -> np.ndarray:
    """``p * theta_i`` in float64: positions (P,) -> (P, dim / 2)."""
    theta = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)  # (dim / 2,)
    return np.outer(positions.astype(np.float64), theta)  # (P, dim / 2)


def _even_positive_int(value: object, name: str) -> int:
    n = positive_int(value, name)
    if n % 2:
        raise ValueError(
            f"{name} must be even (features are rotated in pairs), got {n}"
        )
    return n


def _base(base: object) -> float:
    if isinstance(base, bool) or not isinstance(base, numbers.Real):
        raise TypeError(
            f"base must be a number greater than 1, got {base!r} ({type(base).__name__})"
        )
    if not (math.isfinite(base) and float(base) > 1):
        raise ValueError(f"base must be a finite number greater than 1, got {base}")
    return float(base)


def _rope_args(
    x_in: ArrayLike,
    positions_in: ArrayLike | None,
    freqs: object,
    base: float,
    name: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked ``x`` (..., L, hd) and the cos/sin rows for its positions, broadcastable to x."""
    x = as_float_array(x_in, name)
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have shape (..., L, head_dim), got shape {x.shape}"
        )
    L, head_dim = x.shape[-2:]
    if head_dim == 0 or head_dim % 2:
        raise ValueError(
            f"the last dimension of {name} (head_dim) must be even and positive, got shape {x.shape}"
        )
    if positions_in is None:
        positions = np.arange(L)
    else:
        positions = np.asarray(positions_in)
        if positions.dtype == np.bool_ or not np.issubdtype(
            positions.dtype, np.integer
        ):
            raise TypeError(
                f"positions must be an array of ints, got dtype {positions.dtype}"
            )
        if positions.ndim == 0:
            raise ValueError(
                f"positions must have shape (L,) = ({L},) or broadcast to {x.shape[:-1]}, got a scalar"
            )
        try:
            fits = np.broadcast_shapes(positions.shape, x.shape[:-1]) == x.shape[:-1]
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(
                f"positions of shape {positions.shape} do not broadcast to {name}'s positions "
                f"{x.shape[:-1]} (..., L)"
            )
    if freqs is None:
        table_size = int(positions.max()) + 1 if positions.size else 1
        cos, sin = rope_frequencies(head_dim, max(table_size, 1), base, dtype=x.dtype)
    else:
        cos, sin = _tables(freqs, head_dim)
    if positions.size and (positions.min() < 0 or positions.max() >= len(cos)):
        raise ValueError(
            f"positions must be in [0, {len(cos)}) (the rows of the cos/sin tables), got values "
            f"from {positions.min()} to {positions.max()}"
        )
    dtype = x.dtype
    return (
        x,
        cos[positions].astype(dtype, copy=False),
        sin[positions].astype(dtype, copy=False),
    )


def _tables(freqs: object, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(freqs, tuple) and len(freqs) == 2):
        raise TypeError(
            f"freqs must be the (cos, sin) pair from rope_frequencies, got {type(freqs).__name__}"
        )
    cos, sin = (
        as_float_array(freqs[0], "freqs[0] (cos)"),
        as_float_array(freqs[1], "freqs[1] (sin)"),
    )
    for label, table in (("freqs[0] (cos)", cos), ("freqs[1] (sin)", sin)):
        if table.ndim != 2 or table.shape[1] != head_dim:
            raise ValueError(
                f"{label} must have shape (max_positions, head_dim) = (P, {head_dim}), "
                f"got {table.shape}"
            )
    if cos.shape != sin.shape:
        raise ValueError(
            f"freqs' cos and sin must have the same shape, got {cos.shape} and {sin.shape}"
        )
    return cos, sin
