"""Multi-head self-attention built one head at a time, with hand-written backward passes.

Shape names used throughout: B batch size, T sequence length (time steps), C channels
(``in_channels``, the embedding size), H heads, hd = C // H channels per head.

Every op keeps what its backward needs in a cache during ``forward`` and turns an upstream
gradient ``d<out>`` into ``d<in>`` in ``backward``. Gradients of parameters are *set*
(not accumulated) on ``param.grad`` by each backward call.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ._checks import (
    as_float_array,
    flag,
    float_dtype,
    positive_int,
    rng_from_seed,
    shape_is,
)
from .functional import softmax, softmax_backward, sum_rows

_NOT_YET = "backward() called before forward(); run forward(x) first"


class Parameter(np.ndarray):
    """A NumPy array that can carry ``.grad`` (an array of its own shape, or None)."""

    grad: np.ndarray | None = None


def _param(values: ArrayLike, dtype: np.dtype) -> Parameter:
    return np.asarray(values, dtype=dtype).view(Parameter)


class Linear:
    """y = x @ w.T + b, applied over the last axis.

    w: (out_features, in_features), torch's layout; b: (out_features,) or None.
    With an ``rng`` both are drawn like torch's nn.Linear, U(-1/sqrt(in), 1/sqrt(in));
    with ``rng=None`` they start at zero (for callers that fill them in afterwards).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        rng: np.random.Generator | None,
        dtype: DTypeLike = np.float32,
    ) -> None:
        n_in = positive_int(in_features, "in_features")
        n_out = positive_int(out_features, "out_features")
        dt = float_dtype(dtype)
        bound = 1.0 / np.sqrt(n_in)
        draw = (
            (lambda *s: np.zeros(s))
            if rng is None
            else (lambda *s: rng.uniform(-bound, bound, s))
        )
        self.w = _param(draw(n_out, n_in), dt)  # (out, in)
        self.b: Parameter | None = _param(draw(n_out), dt) if bias else None  # (out,)
        self._x: np.ndarray | None = None

    def __repr__(self) -> str:
        out_features, in_features = self.w.shape
        return f"Linear(in_features={in_features}, out_features={out_features}, bias={self.b is not None})"

    def parameters(self) -> list[Parameter]:
        return [self.w] if self.b is None else [self.w, self.b]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (..., in) -> y: (..., out)."""
        self._x = x
        y = x @ np.asarray(self.w).T  # (..., in) @ (in, out) -> (..., out)
        return y if self.b is None else y + np.asarray(self.b)

    __call__ = forward

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy: (..., out) -> dx: (..., in); sets w.grad (out, in) and b.grad (out,)."""
        if self._x is None:
            raise RuntimeError(_NOT_YET)
        x2 = self._x.reshape(-1, self._x.shape[-1])  # (..., in) -> (N, in)
        dy2 = dy.reshape(-1, dy.shape[-1])  # (..., out) -> (N, out)
        self.w.grad = dy2.T @ x2  # (out, N) @ (N, in) -> (out, in), summed over N
        if self.b is not None:
            self.b.grad = sum_rows(dy2)  # (out,)
        return dy @ np.asarray(self.w)  # (..., out) @ (out, in) -> (..., in)


class Head:
    """One head of scaled dot-product self-attention: x (B, T, C) -> (B, T, hd).

    q, k, v = x @ Wq.T, x @ Wk.T, x @ Wv.T          each (B, T, hd)
    attn_weights = softmax(q @ k^T / sqrt(hd))       (B, T, T), rows sum to 1
    out = attn_weights @ v                           (B, T, hd)
    """

    def __init__(
        self,
        in_channels: int,
        head_dim: int,
        bias: bool = False,
        *,
        rng: np.random.Generator | None,
        dtype: DTypeLike = np.float32,
    ) -> None:
        self.head_dim = positive_int(head_dim, "head_dim")
        self.q_proj = Linear(in_channels, head_dim, bias, rng=rng, dtype=dtype)
        self.k_proj = Linear(in_channels, head_dim, bias, rng=rng, dtype=dtype)
        self.v_proj = Linear(in_channels, head_dim, bias, rng=rng, dtype=dtype)
        self.attn_weights: np.ndarray | None = None  # (B, T, T) of the last forward

    def __repr__(self) -> str:
        return f"Head(q_proj={self.q_proj}, k_proj={self.k_proj}, v_proj={self.v_proj})"

    def parameters(self) -> list[Parameter]:
        return [
            p
            for lin in (self.q_proj, self.k_proj, self.v_proj)
            for p in lin.parameters()
        ]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (B, T, C) -> out: (B, T, hd)."""
        # a Python float keeps float32 float32
        self._scale = 1.0 / float(np.sqrt(self.head_dim))
        # (B, T, hd)
        self._q, self._k, self._v = (self.q_proj(x), self.k_proj(x), self.v_proj(x))
        # (B, T, hd) @ (B, hd, T) -> (B, T, T)
        scores = self._q @ self._k.swapaxes(-1, -2) * self._scale
        self.attn_weights = softmax(scores)  # (B, T, T), stable: shifted by the row max
        return self.attn_weights @ self._v  # (B, T, T) @ (B, T, hd) -> (B, T, hd)

    __call__ = forward

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy: (B, T, hd) -> dx: (B, T, C); sets the grads of q_proj, k_proj and v_proj."""
        if self.attn_weights is None:
            raise RuntimeError(_NOT_YET)
        w = self.attn_weights
        dw = dy @ self._v.swapaxes(-1, -2)  # (B, T, hd) @ (B, hd, T) -> (B, T, T)
        dv = w.swapaxes(-1, -2) @ dy  # (B, T, T) @ (B, T, hd) -> (B, T, hd)
        # (B, T, T): ds_i = w_i * (dw_i - <dw_i, w_i>), row by row
        ds = softmax_backward(dw, w)
        dq = ds @ self._k * self._scale  # (B, T, T) @ (B, T, hd) -> (B, T, hd)
        # (B, T, T) @ (B, T, hd) -> (B, T, hd)
        dk = ds.swapaxes(-1, -2) @ self._q * self._scale
        return (
            self.q_proj.backward(dq)
            + self.k_proj.backward(dk)
            + self.v_proj.backward(dv)
        )


class SequentialMHA:
    """Multi-head self-attention as a list of independent heads, then an output projection.

    x (B, T, C) -> concat(head_0(x), ..., head_{H-1}(x)) (B, T, C) -> out_proj -> (B, T, C).
    An unbatched x (T, C) gives (T, C), as torch does. No masking, no dropout.

    Initialised like torch's nn.MultiheadAttention from ``np.random.default_rng(seed)``:
    first ``rng.uniform(-a, a, (3C, C))`` with a = sqrt(6 / (C + 3C)) (xavier_uniform of the
    fused in_proj_weight), whose rows are, in order, the query weights of heads 0..H-1, then the
    key weights, then the value weights; then ``rng.uniform(-1/sqrt(C), 1/sqrt(C), (C, C))`` for
    out_proj.w. All biases start at zero. Draws are float64, then cast to ``dtype``.
    Inputs are cast to ``dtype`` (so a float64 x is rounded for a float32 model).
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        bias: bool = False,
        seed: int | None = None,
        *,
        dtype: DTypeLike = np.float32,
    ) -> None:
        C = self.in_channels = positive_int(in_channels, "in_channels")
        H = self.n_heads = positive_int(n_heads, "n_heads")
        if C % H:
            raise ValueError(f"in_channels ({C}) must be divisible by n_heads ({H})")
        rng = rng_from_seed(seed)
        self.head_dim, self.bias, self.dtype = (
            C // H,
            flag(bias, "bias"),
            float_dtype(dtype),
        )
        hd = self.head_dim
        self.heads = [
            Head(C, hd, self.bias, rng=None, dtype=self.dtype) for _ in range(H)
        ]
        self.out_proj = Linear(C, C, self.bias, rng=None, dtype=self.dtype)

        a = np.sqrt(6.0 / (C + 3 * C))
        # (3C, C): [q heads 0..H-1; k heads; v heads]
        w_in = rng.uniform(-a, a, (3 * C, C))
        for h, head in enumerate(self.heads):
            for j, lin in enumerate((head.q_proj, head.k_proj, head.v_proj)):
                lin.w[...] = w_in[j * C + h * hd : j * C + (h + 1) * hd]  # (hd, C)
        # (C, C)
        self.out_proj.w[...] = rng.uniform(-1 / np.sqrt(C), 1 / np.sqrt(C), (C, C))
        self._out_shape: tuple[int, ...] | None = None

    def __repr__(self) -> str:
        return (
            f"SequentialMHA(in_channels={self.in_channels}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
            f"bias={self.bias}, dtype={self.dtype})"
        )

    def parameters(self) -> list[Parameter]:
        return [
            p for head in self.heads for p in head.parameters()
        ] + self.out_proj.parameters()

    def forward(self, x: ArrayLike) -> np.ndarray:
        """x: (B, T, C) or (T, C) -> out of the same shape."""
        # the cache must not see later edits of x
        x = as_float_array(x, "x", self.dtype).copy()
        if x.ndim not in (2, 3) or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"x must have shape (B, T, {self.in_channels}) or (T, {self.in_channels}), "
                f"got {x.shape}"
            )
        if x.shape[-2] == 0:
            raise ValueError(
                f"x must have at least one time step (T >= 1), got shape {x.shape}"
            )
        x3 = x if x.ndim == 3 else x[None]  # (T, C) -> (1, T, C)
        # H x (B, T, hd) -> (B, T, C)
        cat = np.concatenate([head(x3) for head in self.heads], axis=-1)
        out = self.out_proj(cat)  # (B, T, C)
        self._out_shape = x.shape
        return out.reshape(x.shape)  # (1, T, C) -> (T, C) when unbatched

    __call__ = forward

    def backward(self, dy: ArrayLike) -> np.ndarray:
        """dy: shape of the last forward's output -> dx of the same shape; sets every .grad."""
        if self._out_shape is None:
            raise RuntimeError(_NOT_YET)
        dy = as_float_array(dy, "dy", self.dtype)
        shape_is(dy, self._out_shape, "dy", "(the shape of the last forward's output)")
        dy3 = dy if dy.ndim == 3 else dy[None]  # (T, C) -> (1, T, C)
        dcat = self.out_proj.backward(dy3)  # (B, T, C)
        hd = self.head_dim
        dx: np.ndarray = sum(  # type: ignore[assignment]  # a sum of arrays is an array
            head.backward(dcat[..., h * hd : (h + 1) * hd])  # slice (B, T, hd) per head
            for h, head in enumerate(self.heads)
        )
        return dx.reshape(self._out_shape)  # (B, T, C), or (T, C) when unbatched

    @property
    def attn_weights(self) -> np.ndarray | None:
        """(B, H, T, T) weights of the last forward, (H, T, T) if it was unbatched; or None."""
        if self._out_shape is None:
            return None
        # H x (B, T, T) -> (B, H, T, T)
        w = np.stack([np.asarray(head.attn_weights) for head in self.heads], axis=1)
        return w if len(self._out_shape) == 3 else w[0]

    def in_proj_weight(self, grad: bool = False) -> np.ndarray:
        """(3C, C) like torch's in_proj_weight (or its .grad): q rows, then k rows, then v rows."""
        return in_proj_weight(self, grad)

    def in_proj_bias(self, grad: bool = False) -> np.ndarray | None:
        """(3C,) like torch's in_proj_bias (or its .grad), or None when bias=False."""
        return in_proj_bias(self, grad)


def _stack_in_proj(seq: SequentialMHA, attr: str, grad: bool) -> np.ndarray | None:
    lins = [
        getattr(h, name) for name in ("q_proj", "k_proj", "v_proj") for h in seq.heads
    ]
    params = [getattr(lin, attr) for lin in lins]
    if params[0] is None:
        return None
    if grad and any(p.grad is None for p in params):
        raise RuntimeError(
            "no gradients yet: call backward() before asking for grad=True"
        )
    return np.concatenate([p.grad if grad else np.asarray(p) for p in params], axis=0)


def in_proj_weight(seq: SequentialMHA, grad: bool = False) -> np.ndarray:
    """(3C, C): every head's q_proj.w, then k_proj.w, then v_proj.w (or their grads)."""
    w = _stack_in_proj(seq, "w", grad)
    assert w is not None  # every Linear has a weight
    return w


def in_proj_bias(seq: SequentialMHA, grad: bool = False) -> np.ndarray | None:
    """(3C,): the heads' q, k, v biases in the same order (or their grads); None if no bias."""
    return _stack_in_proj(seq, "b", grad)
