"""``MultiHeadAttention``: torch's ``nn.MultiheadAttention`` (eval mode) in NumPy, forward and backward.

Names: ``N`` batch, ``L`` query length, ``S`` key length, ``E = d_model``,
``H = num_heads``, ``hd = head_dim = E // H``. Weights are stored in
NumPy's (in_features, out_features) layout, so a projection is ``x @ W + b``;
torch stores the transpose, (out_features, in_features).
"""

from __future__ import annotations

import math

import numpy as np

from . import parallel
from ._checks import as_float_array, flag, float_dtype, positive_int, rng_from_seed
from .functional import sum_rows
from .masks import merge_masks
from .parallel import matmul_cols, matmul_rows

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

    def __init__(self, d_model, num_heads, *, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=True, dtype=np.float32, seed=None):
        self.d_model = positive_int(d_model, "d_model")
        self.num_heads = positive_int(num_heads, "num_heads")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        self.head_dim = self.d_model // self.num_heads
        self.kdim = self.d_model if kdim is None else positive_int(kdim, "kdim")
        self.vdim = self.d_model if vdim is None else positive_int(vdim, "vdim")
        bias, add_bias_kv = flag(bias, "bias"), flag(add_bias_kv, "add_bias_kv")
        self.add_zero_attn = flag(add_zero_attn, "add_zero_attn")
        self.batch_first = flag(batch_first, "batch_first")
        self.dtype = float_dtype(dtype)
        E, rng = self.d_model, rng_from_seed(seed)

        def xavier_uniform(fan_out, fan_in):  # drawn in torch's (out, in) layout, returned as (in, out)
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            return rng.uniform(-bound, bound, size=(fan_out, fan_in)).T.astype(self.dtype)

        if self.kdim == E and self.vdim == E:
            in_proj = xavier_uniform(3 * E, E)            # torch's in_proj_weight (3E, E), transposed: (E, 3E)
            self.W_Q, self.W_K, self.W_V = (in_proj[:, i * E:(i + 1) * E].copy() for i in range(3))
        else:
            self.W_Q, self.W_K, self.W_V = xavier_uniform(E, E), xavier_uniform(E, self.kdim), xavier_uniform(E, self.vdim)
        bound = 1.0 / math.sqrt(E)
        self.W_O = rng.uniform(-bound, bound, size=(E, E)).T.astype(self.dtype)
        zeros = (lambda: np.zeros(E, dtype=self.dtype)) if bias else (lambda: None)
        self.b_Q, self.b_K, self.b_V, self.b_O = zeros(), zeros(), zeros(), zeros()
        if add_bias_kv:
            std = math.sqrt(1.0 / E)                      # xavier_normal_ on torch's (1, 1, E)
            self.bias_k = rng.normal(0.0, std, size=E).astype(self.dtype)
            self.bias_v = rng.normal(0.0, std, size=E).astype(self.dtype)
        else:
            self.bias_k = self.bias_v = None
        self.grads: dict[str, np.ndarray] = {}
        self._cache = None

    def __repr__(self):
        extras = "".join(f", {k}={v}" for k, v in (("kdim", self.kdim), ("vdim", self.vdim)) if v != self.d_model)
        return (f"MultiHeadAttention(d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}"
                f"{extras}, bias={self.b_Q is not None}, add_bias_kv={self.bias_k is not None}, "
                f"add_zero_attn={self.add_zero_attn}, batch_first={self.batch_first}, dtype={self.dtype})")

    def parameters(self) -> dict[str, np.ndarray]:
        """The parameters that are present (not None), by attribute name."""
        return {name: getattr(self, name) for name in PARAMETER_NAMES if getattr(self, name) is not None}

    def _param(self, name: str, shape: tuple):
        """Attribute ``name`` as an array of the module's dtype, its shape checked (users may reassign it)."""
        value = getattr(self, name)
        if value is None:
            return None
        arr = np.asarray(value, dtype=self.dtype)
        if arr.shape != shape:
            raise ValueError(f"parameter {name} must have shape {shape}, got {arr.shape}")
        return arr

    def __call__(self, query, key=None, value=None, **kwargs):
        return self.forward(query, key, value, **kwargs)

    def forward(self, query, key=None, value=None, *, key_padding_mask=None, attn_mask=None,
                is_causal=False, need_weights=False, average_attn_weights=True):
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
        E, H, hd = self.d_model, self.num_heads, self.head_dim
        self_attention = key is None and value is None
        key = query if key is None else key
        value = key if value is None else value
        q_in = as_float_array(query, "query", self.dtype)
        k_in = q_in if key is query else as_float_array(key, "key", self.dtype)
        v_in = k_in if value is key else as_float_array(value, "value", self.dtype)
        if q_in.ndim not in (2, 3):
            layout = "(N, L, E)" if self.batch_first else "(L, N, E)"
            raise ValueError(f"query must be 3-D {layout} or 2-D (L, E) unbatched, got shape {q_in.shape}")
        for name, arr in (("key", k_in), ("value", v_in)):
            if arr.ndim != q_in.ndim:
                raise ValueError(f"{name} must be {q_in.ndim}-D like query {q_in.shape}, got shape {arr.shape}")
        for name, arr, size, attr in (("query", q_in, E, "d_model"), ("key", k_in, self.kdim, "kdim"), ("value", v_in, self.vdim, "vdim")):
            if arr.shape[-1] != size:
                raise ValueError(f"{name} must have {size} features ({attr}) in its last axis, got shape {arr.shape}")
        batched = q_in.ndim == 3

        def to_nle(x):  # caller's layout -> (N, L, features)
            if not batched:
                return x[None]                            # (L, E) -> (1, L, E)
            return x if self.batch_first else x.transpose(1, 0, 2)   # (L, N, E) -> (N, L, E)

        fused = k_in is q_in and v_in is q_in              # one input: one (E, 3E) projection
        q3 = to_nle(q_in)
        k3, v3 = (q3, q3) if fused else (to_nle(k_in), to_nle(v_in))
        N, L, S = q3.shape[0], q3.shape[1], k3.shape[1]
        if k3.shape[0] != N or v3.shape[0] != N:
            raise ValueError(f"query, key and value must have the same batch size, got query {q_in.shape}, "
                             f"key {k_in.shape}, value {v_in.shape} (batch_first={self.batch_first})")
        if v3.shape[1] != S:
            raise ValueError(f"key and value must have the same sequence length, got key {k_in.shape} and value {v_in.shape}")
        if L == 0 or S == 0:
            raise ValueError(f"query and key must have at least one position, got query {q_in.shape} and key {k_in.shape}")
        W_Q, W_K, W_V, W_O = (self._param(n, s) for n, s in zip(WEIGHT_NAMES, ((E, E), (self.kdim, E), (self.vdim, E), (E, E))))
        b_Q, b_K, b_V, b_O = (self._param(n, (E,)) for n in BIAS_NAMES)
        bias_k, bias_v = self._param("bias_k", (E,)), self._param("bias_v", (E,))
        if (bias_k is None) != (bias_v is None):
            raise ValueError("bias_k and bias_v must both be arrays or both be None")
        extra_keys = (bias_k is not None) + self.add_zero_attn
        mask = merge_masks(key_padding_mask=key_padding_mask, attn_mask=attn_mask, is_causal=is_causal,
                           batched=batched, N=N, H=H, L=L, S=S, extra_keys=extra_keys, dtype=self.dtype)

        with parallel.threads(_work_size(N, L, S, E, H)) as pmap:   # None: serial
            x_q = q3.reshape(N * L, E)                    # (N, L, E) -> (N*L, E)
            if fused:
                qkv = matmul_rows(pmap, x_q, np.concatenate([W_Q, W_K, W_V], axis=1), _cat_bias(b_Q, b_K, b_V))
                qkv = qkv.reshape(N, L, 3, H, hd).transpose(2, 0, 3, 1, 4)   # (N*L, 3E) -> (3, N, H, L, hd)
                q, k, v = qkv[0], qkv[1], qkv[2]
                x_k = x_v = x_q
            else:
                x_k, x_v = k3.reshape(N * S, self.kdim), v3.reshape(N * S, self.vdim)
                q = matmul_rows(pmap, x_q, W_Q, b_Q).reshape(N, L, H, hd).transpose(0, 2, 1, 3)   # (N*L, E) -> (N, H, L, hd)
                k = matmul_rows(pmap, x_k, W_K, b_K).reshape(N, S, H, hd).transpose(0, 2, 1, 3)   # (N*S, E) -> (N, H, S, hd)
                v = matmul_rows(pmap, x_v, W_V, b_V).reshape(N, S, H, hd).transpose(0, 2, 1, 3)
            if bias_k is not None:                        # one learned key/value shared by all sequences
                k = np.concatenate([k, np.broadcast_to(bias_k.reshape(1, H, 1, hd), (N, H, 1, hd))], axis=2)
                v = np.concatenate([v, np.broadcast_to(bias_v.reshape(1, H, 1, hd), (N, H, 1, hd))], axis=2)
            if self.add_zero_attn:                        # one all-zero key/value per head
                k = np.concatenate([k, np.zeros((N, H, 1, hd), self.dtype)], axis=2)
                v = np.concatenate([v, np.zeros((N, H, 1, hd), self.dtype)], axis=2)

            # The heads go straight into the merged layout: concat (N, L, H, hd) seen as (N, H, L, hd).
            concat = np.empty((N, L, H, hd), dtype=self.dtype)
            attn_caches = parallel.attention_chunks(pmap, q, k, v, mask, out=concat.transpose(0, 2, 1, 3))
            concat = concat.reshape(N * L, E)             # (N, L, H, hd) -> (N*L, E), no copy
            out = matmul_rows(pmap, concat, W_O, b_O).reshape(N, L, E)   # (N*L, E) -> (N, L, E)
        if not batched:
            out = out[0]                                  # (1, L, E) -> (L, E)
        elif not self.batch_first:
            out = out.transpose(1, 0, 2)                  # (N, L, E) -> (L, N, E)

        # backward needs the inputs as they are now, even if the caller edits its arrays in between
        def own(x, arr):
            return x.copy() if np.may_share_memory(x, arr) else x

        x_q = own(x_q, q_in)
        x_k, x_v = (x_q, x_q) if fused else (own(x_k, k_in), own(x_v, v_in))
        self._cache = dict(attn=attn_caches, concat=concat, x_q=x_q, x_k=x_k, x_v=x_v, fused=fused,
                           self_attention=self_attention, batched=batched, N=N, L=L, S=S,
                           out_shape=out.shape, params=(W_Q, W_K, W_V, W_O), bias_kv=bias_k is not None,
                           has_bias={n: b is not None for n, b in zip(BIAS_NAMES, (b_Q, b_K, b_V, b_O))})
        if not need_weights:
            return out
        weights = parallel.gather_weights(attn_caches, q.shape[:2])   # (N, H, L, S')
        weights = weights.mean(axis=1) if average_attn_weights else weights.copy()
        return out, (weights if batched else weights[0])

    def backward(self, grad_output):
        """Gradients of the last forward for ``grad_output`` (the output's shape).

        Returns the input gradient when the forward was ``m(x)`` (key and value
        omitted), else ``(grad_query, grad_key, grad_value)``, each shaped like
        its input. Parameter gradients go to ``self.grads`` by attribute name.
        """
        c = self._cache
        if c is None:
            raise RuntimeError("backward() called before forward(): run the forward pass first")
        dout = as_float_array(grad_output, "grad_output", self.dtype)
        if dout.shape != c["out_shape"]:
            raise ValueError(f"grad_output must have the output's shape {c['out_shape']}, got {dout.shape}")
        E, N, L, S = self.d_model, c["N"], c["L"], c["S"]
        if not c["batched"]:
            dout = dout[None]                             # (L, E) -> (1, L, E)
        elif not self.batch_first:
            dout = dout.transpose(1, 0, 2)                # (L, N, E) -> (N, L, E)
        with parallel.threads(_work_size(N, L, S, E, self.num_heads)) as pmap:   # None: serial
            grads, d_inputs = self._backward(pmap, dout.reshape(N * L, E))   # (N, L, E) -> (N*L, E)
        self._store_grads(grads)

        def to_input_layout(d, T):
            d = d.reshape(N, T, -1)                       # (N*T, in) -> (N, T, in)
            if not c["batched"]:
                return d[0]
            return d if self.batch_first else d.transpose(1, 0, 2)   # (N, T, in) -> (T, N, in)

        if c["fused"] and c["self_attention"]:            # m(x): one input, one gradient
            return to_input_layout(d_inputs, L)
        dx_q, dx_k, dx_v = d_inputs
        return to_input_layout(dx_q, L), to_input_layout(dx_k, S), to_input_layout(dx_v, S)

    def _backward(self, pmap, d_out2):
        """The gradients for d_out2 (N*L, E): ``(grads, dx)`` for ``m(x)``, else ``(grads, (dx_q, dx_k, dx_v))``."""
        c = self._cache
        E, H, hd, N, L, S = self.d_model, self.num_heads, self.head_dim, c["N"], c["L"], c["S"]
        W_Q, W_K, W_V, W_O = c["params"]
        grads = {"W_O": matmul_cols(pmap, c["concat"].T, d_out2)}   # (E, N*L) @ (N*L, E)
        if c["has_bias"]["b_O"]:
            grads["b_O"] = parallel.sum_rows(pmap, d_out2)
        d_heads = matmul_rows(pmap, d_out2, W_O.T).reshape(N, L, H, hd).transpose(0, 2, 1, 3)  # (N*L, E) -> (N, H, L, hd)
        dq, dk, dv = parallel.attention_backward_chunks(pmap, d_heads, c["attn"])   # (N, H, L, hd), (N, H, S', hd) x 2
        dk, dv = dk[:, :, :S + c["bias_kv"]], dv[:, :, :S + c["bias_kv"]]   # the zero key has no parameter
        if c["bias_kv"]:
            grads["bias_k"] = sum_rows(dk[:, :, S]).reshape(E)   # (N, H, hd) -> (H, hd) -> (E,)
            grads["bias_v"] = sum_rows(dv[:, :, S]).reshape(E)
            dk, dv = dk[:, :, :S], dv[:, :, :S]

        if c["fused"]:
            # the in-projection's output gradient, in its (N, L, 3, H, hd) layout: one copy per tensor
            d_qkv = np.empty((N, L, 3, H, hd), dtype=self.dtype)

            def put(i):
                d_qkv[:, :, i] = (dq, dk, dv)[i].transpose(0, 2, 1, 3)   # (N, H, L, hd) -> (N, L, H, hd)

            parallel.run(pmap, put, range(3))
            d_qkv = d_qkv.reshape(N * L, 3 * E)           # (N, L, 3, H, hd) -> (N*L, 3E), no copy
            d_w = matmul_cols(pmap, c["x_q"].T, d_qkv)    # (E, 3E): one matmul for the three weights
            d_b = parallel.sum_rows(pmap, d_qkv)
            for i, tag in enumerate("QKV"):
                grads["W_" + tag] = d_w[:, i * E:(i + 1) * E]
                if c["has_bias"]["b_" + tag]:
                    grads["b_" + tag] = d_b[i * E:(i + 1) * E]
            if c["self_attention"]:
                return grads, matmul_rows(pmap, d_qkv, np.concatenate([W_Q, W_K, W_V], axis=1).T)   # (N*L, 3E) @ (3E, E)
            return grads, tuple(matmul_rows(pmap, d_qkv[:, i * E:(i + 1) * E], W.T) for i, W in enumerate((W_Q, W_K, W_V)))
        d_rows = {}
        for tag, d, x, W, T in (("Q", dq, c["x_q"], W_Q, L), ("K", dk, c["x_k"], W_K, S), ("V", dv, c["x_v"], W_V, S)):
            d2 = d.transpose(0, 2, 1, 3).reshape(N * T, E)   # (N, H, T, hd) -> (N, T, H, hd) -> (N*T, E)
            grads["W_" + tag] = matmul_cols(pmap, x.T, d2)
            if c["has_bias"]["b_" + tag]:
                grads["b_" + tag] = parallel.sum_rows(pmap, d2)
            d_rows[tag] = matmul_rows(pmap, d2, W.T)      # (N*T, E) @ (E, in) -> (N*T, in)
        return grads, (d_rows["Q"], d_rows["K"], d_rows["V"])

    def _store_grads(self, grads: dict) -> None:
        self.grads = {name: grads[name] for name in PARAMETER_NAMES if name in grads}


def _work_size(N, L, S, E, H) -> int:
    """Elements a forward or backward touches: the projections (N, L, E) and the scores (N, H, L, S)."""
    return N * L * (E + H * S)


def _cat_bias(*biases):
    """Concatenated biases; a missing one counts as zeros, all missing gives None."""
    if all(b is None for b in biases):
        return None
    return np.concatenate([np.zeros_like(next(x for x in biases if x is not None)) if b is None else b for b in biases])
