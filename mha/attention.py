"""``MultiHeadAttention``: torch's ``nn.MultiheadAttention`` (eval mode) in NumPy, forward and backward.

Names: ``N`` batch, ``L`` query length, ``S`` key length, ``E = d_model``,
``H = num_heads``, ``hd = head_dim = E // H``. Weights are stored in
NumPy's (in_features, out_features) layout, so a projection is ``x @ W + b``;
torch stores the transpose, (out_features, in_features).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _threaded
from ._checks import as_float_array, flag, float_dtype, positive_int, rng_from_seed
from .functional import merge_heads, split_heads, sum_rows
from .masks import merge_masks

__all__ = ["MultiHeadAttention"]

WEIGHT_NAMES = ("W_Q", "W_K", "W_V", "W_O")
BIAS_NAMES = ("b_Q", "b_K", "b_V", "b_O")
PARAMETER_NAMES = WEIGHT_NAMES + BIAS_NAMES + ("bias_k", "bias_v")


class MultiHeadAttention:
    """Multi-head attention with the semantics of ``torch.nn.MultiheadAttention`` in eval mode.

    Parameters mirror torch's constructor (no dropout: it cannot be matched
    element for element). ``seed`` seeds ``np.random.default_rng`` for an
    initialisation distributed like torch's: Xavier-uniform input
    projections, U(-1/sqrt(E), 1/sqrt(E)) output projection, zero biases,
    ``bias_k``/``bias_v`` ~ N(0, 1/E).

    Attributes: ``d_model, num_heads, head_dim, kdim, vdim``; weights
    ``W_Q (E, E)``, ``W_K (kdim, E)``, ``W_V (vdim, E)``, ``W_O (E, E)``;
    biases ``b_Q, b_K, b_V, b_O (E,)`` or None; ``bias_k, bias_v (E,)`` or
    None; ``grads``, a dict filled by :meth:`backward` with the same names.
    """

    W_Q: np.ndarray
    W_K: np.ndarray
    W_V: np.ndarray
    W_O: np.ndarray
    b_Q: np.ndarray | None
    b_K: np.ndarray | None
    b_V: np.ndarray | None
    b_O: np.ndarray | None
    bias_k: np.ndarray | None
    bias_v: np.ndarray | None

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = True,
        dtype: DTypeLike = np.float32,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        self.d_model = positive_int(d_model, "d_model")
        self.num_heads = positive_int(num_heads, "num_heads")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})"
            )
        self.head_dim = self.d_model // self.num_heads
        self.kdim = self.d_model if kdim is None else positive_int(kdim, "kdim")
        self.vdim = self.d_model if vdim is None else positive_int(vdim, "vdim")
        bias, add_bias_kv = flag(bias, "bias"), flag(add_bias_kv, "add_bias_kv")
        self.add_zero_attn = flag(add_zero_attn, "add_zero_attn")
        self.batch_first = flag(batch_first, "batch_first")
        self.dtype = float_dtype(dtype)
        E, rng = self.d_model, rng_from_seed(seed)

        # drawn in torch's (out, in) layout, returned as (in, out)
        def xavier_uniform(fan_out: int, fan_in: int) -> np.ndarray:
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            return rng.uniform(-bound, bound, size=(fan_out, fan_in)).T.astype(
                self.dtype
            )

        if self.kdim == E and self.vdim == E:
            # torch's in_proj_weight (3E, E), transposed: (E, 3E)
            in_proj = xavier_uniform(3 * E, E)
            self.W_Q, self.W_K, self.W_V = (
                in_proj[:, i * E : (i + 1) * E].copy() for i in range(3)
            )
        else:
            self.W_Q, self.W_K, self.W_V = (
                xavier_uniform(E, E),
                xavier_uniform(E, self.kdim),
                xavier_uniform(E, self.vdim),
            )
        bound = 1.0 / math.sqrt(E)
        self.W_O = rng.uniform(-bound, bound, size=(E, E)).T.astype(self.dtype)
        for name in BIAS_NAMES:
            setattr(self, name, np.zeros(E, dtype=self.dtype) if bias else None)
        if add_bias_kv:
            std = math.sqrt(1.0 / E)  # xavier_normal_ on torch's (1, 1, E)
            self.bias_k = rng.normal(0.0, std, size=E).astype(self.dtype)
            self.bias_v = rng.normal(0.0, std, size=E).astype(self.dtype)
        else:
            self.bias_k = self.bias_v = None
        self.grads: dict[str, np.ndarray] = {}
        self._cache: dict[str, Any] | None = None

    def __repr__(self) -> str:
        extras = "".join(
            f", {k}={v}"
            for k, v in (("kdim", self.kdim), ("vdim", self.vdim))
            if v != self.d_model
        )
        return (
            f"MultiHeadAttention(d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}"
            f"{extras}, bias={self.b_Q is not None}, add_bias_kv={self.bias_k is not None}, "
            f"add_zero_attn={self.add_zero_attn}, batch_first={self.batch_first}, dtype={self.dtype})"
        )

    def parameters(self) -> dict[str, np.ndarray]:
        """The parameters that are present (not None), by attribute name."""
        return {
            name: getattr(self, name)
            for name in PARAMETER_NAMES
            if getattr(self, name) is not None
        }

    def _param(self, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """Attribute ``name`` as an array of the module's dtype, its shape checked (users may reassign it)."""
        value = getattr(self, name)
        if value is None:
            return None
        arr = np.asarray(value, dtype=self.dtype)
        if arr.shape != shape:
            raise ValueError(
                f"parameter {name} must have shape {shape}, got {arr.shape}"
            )
        return arr

    def __call__(
        self,
        query: ArrayLike,
        key: ArrayLike | None = None,
        value: ArrayLike | None = None,
        **kwargs: Any,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        return self.forward(query, key, value, **kwargs)

    def forward(
        self,
        query: ArrayLike,
        key: ArrayLike | None = None,
        value: ArrayLike | None = None,
        *,
        key_padding_mask: ArrayLike | None = None,
        attn_mask: ArrayLike | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        average_attn_weights: bool = True,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Attention of ``query`` over ``key``/``value``; ``m(x)`` is self-attention.

        query (N, L, E), key (N, S, kdim), value (N, S, vdim) with
        ``batch_first=True``; (L, N, ·) with ``batch_first=False``; (L, E)
        unbatched. ``key`` defaults to ``query`` and ``value`` to ``key``.
        Masks use torch's convention, **True = blocked**:
        ``key_padding_mask`` (N, S) or (S,); ``attn_mask`` (L, S) or
        (N * num_heads, L, S); float masks are added to the scores.

        ``is_causal=True`` with no ``attn_mask`` applies the causal mask and
        means exactly what passing that (L, S) mask explicitly means; with an
        ``attn_mask`` it is only a hint and the mask is used. (torch wants the
        mask passed too, and its own ``is_causal`` fast route differs from its
        explicit-mask route when ``add_bias_kv`` or ``add_zero_attn`` is on,
        because it does not pad the mask for the extra keys: the explicit
        mask is the reference here.)

        A query whose keys are all masked gets zero attention, so its output
        is ``b_O``, never NaN (torch's paths disagree there: NaN when it
        returns weights, zeros from its SDPA route).

        Returns the output, shaped like ``query``, or with
        ``need_weights=True`` ``(output, weights)``: weights (N, L, S')
        averaged over heads, or (N, H, L, S') with
        ``average_attn_weights=False``; S' counts ``bias_k`` and the zero key.
        """
        E, H = self.d_model, self.num_heads
        a = self._forward_arguments(
            query, key, value, key_padding_mask, attn_mask, is_causal
        )
        W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O, bias_k, bias_v = a.params
        # (N, L, E), (N, S, kdim), (N, S, vdim)
        x_q, x_k, x_v, mask = (a.x_q, a.x_k, a.x_v, a.mask)
        with _threaded.blocks(a.work) as F:  # mha.functional, or its threaded drop-in
            if a.self_attention:  # one input: one (E, 3E) projection
                # (N, L, 3E)
                qkv = F.linear(x_q, _cat(W_Q, W_K, W_V), _cat_bias(b_Q, b_K, b_V))
                q, k, v = np.split(qkv, 3, axis=-1)  # (N, L, 3E) -> 3 x (N, L, E)
            else:
                q, k, v = (
                    F.linear(x_q, W_Q, b_Q),
                    F.linear(x_k, W_K, b_K),
                    F.linear(x_v, W_V, b_V),
                )
            # (N, H, L|S, hd)
            q, k, v = (split_heads(q, H), split_heads(k, H), split_heads(v, H))
            if bias_k is not None:  # one learned key/value, shared by all sequences
                k = _append_key(k, split_heads(bias_k[None], H))  # (N, H, S+1, hd)
                v = _append_key(v, split_heads(bias_v[None], H))
            if self.add_zero_attn:  # one all-zero key/value per head
                k = _append_key(k, np.zeros((H, 1, E // H), self.dtype))
                v = _append_key(v, np.zeros((H, 1, E // H), self.dtype))
            heads, attn_cache = F.attention_forward(q, k, v, mask)  # (N, H, L, hd)
            concat = merge_heads(heads)  # (N, H, L, hd) -> (N, L, E)
            out = F.linear(concat, W_O, b_O)  # (N, L, E)
        self._cache = dict(a=a, attn=attn_cache, concat=concat)
        if need_weights:
            weights = attn_cache["weights"]  # (N, H, L, S')
            weights = weights.mean(axis=1) if average_attn_weights else weights.copy()
            return a.to_caller(out), a.to_caller(weights, weights=True)
        return a.to_caller(out)

    def backward(
        self, grad_output: ArrayLike
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Gradients of the last forward for ``grad_output`` (the output's shape).

        Returns the input gradient when the forward was ``m(x)`` (key and value
        omitted), else ``(grad_query, grad_key, grad_value)``, each shaped like
        its input. Parameter gradients go to ``self.grads`` by attribute name.
        """
        c = self._cache
        if c is None:
            raise RuntimeError(
                "backward() called before forward(): run the forward pass first"
            )
        a = c["a"]
        dout = a.from_caller(grad_output)  # (N, L, E)
        H, S, has = self.num_heads, a.S, a.has_bias
        W_Q, W_K, W_V, W_O = a.params[:4]
        grads = {}
        with _threaded.blocks(a.work) as F:  # mha.functional, or its threaded drop-in
            d_concat, grads["W_O"], grads["b_O"] = F.linear_backward(
                dout, c["concat"], W_O, has
            )
            # (N, H, L|S', hd)
            dq, dk, dv = F.attention_backward(split_heads(d_concat, H), c["attn"])
            if a.params[8] is not None:  # bias_k, bias_v: summed over the sequences
                # (N, H, hd) -> (H, hd) -> (E,)
                grads["bias_k"] = sum_rows(dk[:, :, S]).reshape(-1)
                grads["bias_v"] = sum_rows(dv[:, :, S]).reshape(-1)
            # (N, L|S, E)
            dq, dk, dv = (
                merge_heads(dq),
                merge_heads(dk[:, :, :S]),
                merge_heads(dv[:, :, :S]),
            )
            if a.self_attention:  # the (E, 3E) projection: one backward
                dx, dW, db = F.linear_backward(
                    np.concatenate([dq, dk, dv], axis=-1),
                    a.x_q,
                    _cat(W_Q, W_K, W_V),
                    has,
                )
                grads.update(zip(("W_Q", "W_K", "W_V"), np.split(dW, 3, axis=1)))
                grads.update(
                    zip(("b_Q", "b_K", "b_V"), np.split(db, 3) if has else (None,) * 3)
                )
                d_inputs = a.to_caller(dx)
            else:
                d_inputs = []
                for tag, d, x, W in (
                    ("Q", dq, a.x_q, W_Q),
                    ("K", dk, a.x_k, W_K),
                    ("V", dv, a.x_v, W_V),
                ):
                    dx, grads["W_" + tag], grads["b_" + tag] = F.linear_backward(
                        d, x, W, has
                    )
                    d_inputs.append(a.to_caller(dx))
                d_inputs = tuple(d_inputs)
        present = dict(zip(WEIGHT_NAMES + BIAS_NAMES + ("bias_k", "bias_v"), a.params))
        self.grads = {
            n: grads[n]
            for n in PARAMETER_NAMES
            if present[n] is not None and grads.get(n) is not None
        }
        return d_inputs

    def _forward_arguments(
        self,
        query: ArrayLike,
        key: ArrayLike | None,
        value: ArrayLike | None,
        key_padding_mask: ArrayLike | None,
        attn_mask: ArrayLike | None,
        is_causal: bool,
    ) -> _Arguments:
        """Every check of :meth:`forward`'s arguments; returns them as an :class:`_Arguments`."""
        E, H = self.d_model, self.num_heads
        self_attention = key is None and value is None
        key = query if key is None else key
        value = key if value is None else value
        q_in = as_float_array(query, "query", self.dtype)
        k_in = q_in if key is query else as_float_array(key, "key", self.dtype)
        v_in = k_in if value is key else as_float_array(value, "value", self.dtype)
        if q_in.ndim not in (2, 3):
            layout = "(N, L, E)" if self.batch_first else "(L, N, E)"
            raise ValueError(
                f"query must be 3-D {layout} or 2-D (L, E) unbatched, got shape {q_in.shape}"
            )
        for name, arr in (("key", k_in), ("value", v_in)):
            if arr.ndim != q_in.ndim:
                raise ValueError(
                    f"{name} must be {q_in.ndim}-D like query {q_in.shape}, got shape {arr.shape}"
                )
        for name, arr, size, attr in (
            ("query", q_in, E, "d_model"),
            ("key", k_in, self.kdim, "kdim"),
            ("value", v_in, self.vdim, "vdim"),
        ):
            if arr.shape[-1] != size:
                raise ValueError(
                    f"{name} must have {size} features ({attr}) in its last axis, got shape {arr.shape}"
                )
        a = _Arguments(batched=q_in.ndim == 3, batch_first=self.batch_first)
        a.self_attention = self_attention and k_in is q_in and v_in is q_in
        q3 = a.from_caller(q_in, check=False)
        k3, v3 = (
            (q3, q3)
            if a.self_attention
            else (a.from_caller(k_in, check=False), a.from_caller(v_in, check=False))
        )
        N, L, S = q3.shape[0], q3.shape[1], k3.shape[1]
        if k3.shape[0] != N or v3.shape[0] != N:
            raise ValueError(
                f"query, key and value must have the same batch size, got query {q_in.shape}, "
                f"key {k_in.shape}, value {v_in.shape} (batch_first={self.batch_first})"
            )
        if v3.shape[1] != S:
            raise ValueError(
                f"key and value must have the same sequence length, got key {k_in.shape} and value {v_in.shape}"
            )
        if L == 0 or S == 0:
            raise ValueError(
                f"query and key must have at least one position, got query {q_in.shape} and key {k_in.shape}"
            )
        weights = (
            self._param(n, s)
            for n, s in zip(
                WEIGHT_NAMES, ((E, E), (self.kdim, E), (self.vdim, E), (E, E))
            )
        )
        biases = (self._param(n, (E,)) for n in BIAS_NAMES)
        bias_k, bias_v = self._param("bias_k", (E,)), self._param("bias_v", (E,))
        if (bias_k is None) != (bias_v is None):
            raise ValueError("bias_k and bias_v must both be arrays or both be None")
        a.params = (*weights, *biases, bias_k, bias_v)
        a.has_bias = any(b is not None for b in a.params[4:8])
        extra_keys = (bias_k is not None) + self.add_zero_attn
        a.mask = merge_masks(
            key_padding_mask=key_padding_mask,
            attn_mask=attn_mask,
            is_causal=is_causal,
            batched=a.batched,
            N=N,
            H=H,
            L=L,
            S=S,
            extra_keys=extra_keys,
            dtype=self.dtype,
        )

        # backward needs the inputs as they are now, even if the caller edits its arrays in between
        def own(x: np.ndarray, arr: np.ndarray) -> np.ndarray:
            return x.copy() if np.may_share_memory(x, arr) else x

        a.x_q = own(q3, q_in)
        a.x_k, a.x_v = (
            (a.x_q, a.x_q) if a.self_attention else (own(k3, k_in), own(v3, v_in))
        )
        a.L, a.S, a.out_shape, a.dtype = L, S, q_in.shape[:-1] + (E,), self.dtype
        a.work = _work_size(N, L, S, E, H)
        return a


class _Arguments:
    """A forward's checked arguments, in the (N, L, features) layout, and the way back to the caller's."""

    self_attention: bool
    params: tuple[Any, ...]  # W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O, bias_k, bias_v
    has_bias: bool
    mask: np.ndarray | None
    x_q: np.ndarray
    x_k: np.ndarray
    x_v: np.ndarray
    L: int
    S: int
    out_shape: tuple[int, ...]
    dtype: np.dtype
    work: int

    def __init__(self, batched: bool, batch_first: bool) -> None:
        self.batched, self.batch_first = batched, batch_first

    def from_caller(self, x: ArrayLike, check: bool = True) -> np.ndarray:
        """Caller's layout -> (N, L, features); with ``check``, x is grad_output and must be shaped like the output."""
        arr = as_float_array(x, "grad_output", self.dtype) if check else np.asarray(x)
        if check and arr.shape != self.out_shape:
            raise ValueError(
                f"grad_output must have the output's shape {self.out_shape}, got {arr.shape}"
            )
        if not self.batched:
            return arr[None]  # (L, E) -> (1, L, E)
        # (L, N, E) -> (N, L, E)
        return arr if self.batch_first else arr.transpose(1, 0, 2)

    def to_caller(self, x: np.ndarray, weights: bool = False) -> np.ndarray:
        """(N, L, features) -> the caller's layout; weights (N, [H,] L, S) only lose the batch axis if unbatched."""
        if not self.batched:
            return x[0]  # (1, L, E) -> (L, E)
        # (N, L, E) -> (L, N, E)
        return x if (self.batch_first or weights) else x.transpose(1, 0, 2)


def _cat(*Ws: np.ndarray) -> np.ndarray:
    """Weights (in, E) side by side: (in, 3E), the fused in-projection."""
    return np.concatenate(Ws, axis=1)


def _append_key(k: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """k (N, H, S, hd) with one more key (H, 1, hd) for every sequence: (N, H, S+1, hd)."""
    N, H, _, hd = k.shape
    return np.concatenate([k, np.broadcast_to(extra, (N, H, 1, hd))], axis=2)


def _work_size(N: int, L: int, S: int, E: int, H: int) -> int:
    """Elements a forward or backward touches: the projections (N, L, E) and the scores (N, H, L, S)."""
    return N * L * (E + H * S)


def _cat_bias(*biases: np.ndarray | None) -> np.ndarray | None:
    """Concatenated biases; a missing one counts as zeros, all missing gives None."""
    if all(b is None for b in biases):
        return None
    return np.concatenate(
        [
            np.zeros_like(next(x for x in biases if x is not None)) if b is None else b
            for b in biases
        ]
    )
