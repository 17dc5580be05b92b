"""The book's tiny model: tokens -> embedding + position -> attention layer(s) -> logits.

Names: ``N`` sequences, ``L`` positions (``seq_len``), ``V`` vocabulary,
``E = d_model``, ``H`` heads, ``hd = E // H``. For tokens ``x`` (N, L)::

    h_0 = embedding[x] + P                  P: (L, E) fixed sinusoids, learned, or none
    h_l = attn_l(h_{l-1})  (+ h_{l-1} with residual=True)
    logits = h_last @ W_out + b_out         (N, L, V)

``attn_l`` is an ``mha.MultiHeadAttention``, forward and backward by its own
code; with ``positional="rope"`` no ``P`` is added and each layer rotates its
queries and keys by their positions after the projections
(``mha.positional.apply_rope``), with the same layer's weights. Parameters
are drawn from a seeded NumPy generator; :meth:`TinyTransformer.to_torch`
builds the torch twin holding the same values (``mha.model_torch``, which
also gives :func:`from_torch`, re-exported here).
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ._checks import float_dtype, positive_int, rng_from_seed
from .attention import BIAS_NAMES, WEIGHT_NAMES, MultiHeadAttention
from .functional import attention_backward, attention_forward

# from_torch is re-exported: chapter 9 imports it from here
from .model_torch import from_torch as from_torch
from .model_torch import twin_class
from .positional import (
    apply_rope,
    apply_rope_backward,
    rope_frequencies,
    sinusoidal_encoding,
)

__all__ = ["TinyTransformer", "POSITIONAL"]

POSITIONAL = ("none", "sinusoidal", "learned", "rope")
# each layer's parameters, as the layer names them
LAYER_PARAMS = WEIGHT_NAMES + BIAS_NAMES


class TinyTransformer:
    """Embedding, positional encoding, ``num_layers`` attention layers and a linear read-out.

    ``parameters()`` gives ``{name: array}`` (the arrays themselves, so an
    optimizer can update them in place): ``embedding`` (V, E),
    ``position`` (L, E) when learned, ``layers.<i>.W_Q`` ... ``layers.<i>.b_O``
    in the layer's (in, out) layout, ``readout.W`` (E, V), ``readout.b`` (V,).
    """

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        *,
        d_model: int = 32,
        num_heads: int = 2,
        num_layers: int = 1,
        positional: str = "sinusoidal",
        residual: bool = False,
        dtype: DTypeLike = np.float64,
        seed: int | np.random.Generator | None = 0,
    ) -> None:
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.seq_len = positive_int(seq_len, "seq_len")
        self.d_model, self.num_heads = (
            positive_int(d_model, "d_model"),
            positive_int(num_heads, "num_heads"),
        )
        self.num_layers = positive_int(num_layers, "num_layers")
        if positional not in POSITIONAL:
            raise ValueError(
                f"positional must be one of {POSITIONAL}, got {positional!r}"
            )
        if not isinstance(residual, bool):
            raise TypeError(f"residual must be True or False, got {residual!r}")
        self.positional, self.residual, self.dtype = (
            positional,
            residual,
            float_dtype(dtype),
        )
        V, L, E = self.vocab_size, self.seq_len, self.d_model
        rng = rng_from_seed(seed)
        # like nn.Embedding: N(0, 1)
        self.embedding = rng.standard_normal((V, E)).astype(self.dtype)
        self.position: np.ndarray | None = None
        self.encoding: np.ndarray | None = None
        if positional == "sinusoidal":
            # fixed, not trained
            self.encoding = np.asarray(sinusoidal_encoding(L, E), dtype=self.dtype)
        elif positional == "learned":
            self.position = (0.5 * rng.standard_normal((L, E))).astype(self.dtype)
        self.layers = [
            MultiHeadAttention(E, self.num_heads, dtype=self.dtype, seed=rng)
            for _ in range(num_layers)
        ]
        bound = 1.0 / math.sqrt(E)  # like nn.Linear's default
        # drawn (out, in), kept (in, out)
        self.W_out = rng.uniform(-bound, bound, (V, E)).T.astype(self.dtype)
        self.b_out = rng.uniform(-bound, bound, V).astype(self.dtype)
        self.rope: tuple[np.ndarray, np.ndarray] | None = None
        if positional == "rope":  # the (cos, sin) tables, (L, hd) each
            self.rope = rope_frequencies(E // self.num_heads, L, dtype=self.dtype)
        self._cache: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return (
            f"TinyTransformer(vocab_size={self.vocab_size}, seq_len={self.seq_len}, d_model={self.d_model}, "
            f"num_heads={self.num_heads}, num_layers={self.num_layers}, positional={self.positional!r}, "
            f"residual={self.residual}, dtype={self.dtype})"
        )

    def parameters(self) -> dict[str, np.ndarray]:
        """Every trained array by name (the arrays themselves, not copies)."""
        params = {"embedding": self.embedding}
        if self.position is not None:
            params["position"] = self.position
        for i, layer in enumerate(self.layers):
            params.update({f"layers.{i}.{n}": getattr(layer, n) for n in LAYER_PARAMS})
        params["readout.W"], params["readout.b"] = self.W_out, self.b_out
        return params

    # ------------------------------------------------------------------ forward and backward

    def forward(
        self, tokens: ArrayLike, *, need_weights: bool = False
    ) -> np.ndarray | tuple[np.ndarray, list[np.ndarray]]:
        """Logits (N, L, V) for tokens (N, L) of ints in [0, V); with ``need_weights``
        also the attention weights of every layer, a list of (N, H, L, L)."""
        x = self._check_tokens(tokens)
        h = self.embedding[x]  # (N, L) -> (N, L, E)
        if self.encoding is not None:
            h = h + self.encoding
        elif self.position is not None:
            h = h + self.position
        caches: list[dict[str, Any] | None] = []
        weights: list[Any] = []
        for layer in self.layers:
            if self.positional == "rope":
                a, cache = self._rope_attention(layer, h)
                w = cache["attn"]["weights"] if need_weights else None
            elif need_weights:
                a, w = layer(h, need_weights=True, average_attn_weights=False)
                cache = None  # each layer keeps its own cache
            else:
                a, w, cache = cast(np.ndarray, layer(h)), None, None  # m(x): one array
            caches.append(cache)
            weights.append(w)
            h = h + a if self.residual else a
        logits = h @ self.W_out + self.b_out  # (N, L, E) @ (E, V) -> (N, L, V)
        self._cache = dict(tokens=x, h=h, layer_caches=caches)
        return (logits, weights) if need_weights else logits

    __call__ = forward

    def backward(self, dlogits: ArrayLike) -> dict[str, np.ndarray]:
        """Gradients of the last forward for ``dlogits`` (N, L, V): ``{name: gradient}`` like ``parameters()``."""
        c = self._cache
        if c is None:
            raise RuntimeError(
                "backward() called before forward(): run the forward pass first"
            )
        d = np.asarray(dlogits, dtype=self.dtype)
        N, L = c["tokens"].shape
        if d.shape != (N, L, self.vocab_size):
            raise ValueError(
                f"dlogits must have the logits' shape {(N, L, self.vocab_size)}, got {d.shape}"
            )
        h2 = c["h"].reshape(N * L, -1)  # (N, L, E) -> (N*L, E)
        grads = {
            "readout.W": h2.T @ d.reshape(N * L, -1),  # (E, N*L) @ (N*L, V) -> (E, V)
            "readout.b": d.sum(axis=(0, 1)),
        }
        dh = d @ self.W_out.T  # (N, L, V) @ (V, E) -> (N, L, E)
        for i in reversed(range(len(self.layers))):
            layer = self.layers[i]
            if self.positional == "rope":
                dx, layer_grads = self._rope_attention_backward(
                    layer, dh, c["layer_caches"][i]
                )
            else:
                dx = cast(np.ndarray, layer.backward(dh))  # after m(x): one gradient
                layer_grads = layer.grads
            grads.update({f"layers.{i}.{n}": layer_grads[n] for n in LAYER_PARAMS})
            dh = dx + dh if self.residual else dx
        if self.position is not None:
            grads["position"] = dh.sum(axis=0)  # (N, L, E) -> (L, E)
        d_embedding = np.zeros_like(self.embedding)
        # each row of dh goes to its token's row
        np.add.at(d_embedding, c["tokens"], dh)
        grads["embedding"] = d_embedding
        return {name: grads[name] for name in self.parameters()}

    def _check_tokens(self, tokens: ArrayLike) -> np.ndarray:
        x = np.asarray(tokens)
        if not np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
            raise TypeError(
                f"tokens must be an integer array (N, L), got dtype {x.dtype}"
            )
        if x.ndim != 2 or x.shape[1] != self.seq_len:
            raise ValueError(
                f"tokens must have shape (N, {self.seq_len}), got {x.shape}"
            )
        if x.size and (x.min() < 0 or x.max() >= self.vocab_size):
            bad = x[(x < 0) | (x >= self.vocab_size)].flat[0]
            raise ValueError(f"tokens must be in [0, {self.vocab_size}), got {bad}")
        return x

    # ------------------------------------------------------------------ RoPE inside a layer

    def _rope_attention(
        self, layer: MultiHeadAttention, h: np.ndarray
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """``layer``'s attention with queries and keys rotated by position: ``(out, cache)``."""
        N, L, E = h.shape
        H, hd = layer.num_heads, layer.head_dim
        x2 = h.reshape(N * L, E)  # (N, L, E) -> (N*L, E)

        # (N*L, E) -> (N, L, H, hd) -> (N, H, L, hd)
        def heads(W: np.ndarray, b: np.ndarray | None) -> np.ndarray:
            return (x2 @ W + b).reshape(N, L, H, hd).transpose(0, 2, 1, 3)

        q, k, v = (
            heads(layer.W_Q, layer.b_Q),
            heads(layer.W_K, layer.b_K),
            heads(layer.W_V, layer.b_V),
        )
        # the one new step
        q, k = (apply_rope(q, freqs=self.rope), apply_rope(k, freqs=self.rope))
        out, attn = attention_forward(q, k, v)  # (N, H, L, hd)
        # (N, H, L, hd) -> (N, L, H, hd) -> (N*L, E)
        concat = out.transpose(0, 2, 1, 3).reshape(N * L, E)
        a = (concat @ layer.W_O + layer.b_O).reshape(N, L, E)
        return a, dict(x2=x2, attn=attn, concat=concat, shape=(N, L, E))

    def _rope_attention_backward(
        self, layer: MultiHeadAttention, dout: np.ndarray, cache: dict[str, Any]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Gradients of :meth:`_rope_attention`: ``(d_input, {name: gradient})``."""
        N, L, E = cache["shape"]
        H, hd = layer.num_heads, layer.head_dim
        d2 = dout.reshape(N * L, E)  # (N, L, E) -> (N*L, E)
        grads = {"W_O": cache["concat"].T @ d2, "b_O": d2.sum(axis=0)}
        # -> (N, H, L, hd)
        d_heads = (d2 @ layer.W_O.T).reshape(N, L, H, hd).transpose(0, 2, 1, 3)
        dq, dk, dv = attention_backward(d_heads, cache["attn"])
        # the rotation's transpose: rotate back
        dq = apply_rope_backward(dq, freqs=self.rope)
        dk = apply_rope_backward(dk, freqs=self.rope)
        dx = np.zeros_like(cache["x2"])
        for tag, d in (("Q", dq), ("K", dk), ("V", dv)):
            # (N, H, L, hd) -> (N, L, H, hd) -> (N*L, E)
            d = d.transpose(0, 2, 1, 3).reshape(N * L, E)
            grads["W_" + tag] = cache["x2"].T @ d
            grads["b_" + tag] = d.sum(axis=0)
            dx += d @ getattr(layer, "W_" + tag).T
        return dx.reshape(N, L, E), grads

    # ------------------------------------------------------------------ the torch twin

    def to_torch(self) -> Any:  # a torch.nn.Module
        """A new ``torch.nn.Module`` with copies of this model's parameters, computing the same logits.

        Its parts: ``embedding`` and (learned) ``position`` as ``nn.Parameter``,
        the sinusoids as the buffer ``encoding``, ``layers`` an ``nn.ModuleList``
        of ``nn.MultiheadAttention`` (``mha.to_pytorch``), ``readout`` an
        ``nn.Linear``. ``forward(tokens)`` takes a LongTensor (N, L).
        """
        return twin_class()(self)
