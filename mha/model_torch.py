"""The tiny model's torch twin: :class:`~mha.model.TinyTransformer` in torch, autograd doing
the backward, and :func:`from_torch`, which reads the twin's parameters (or gradients) back in
the NumPy model's names and layout.

``TinyTransformer.to_torch()`` builds the twin; torch is imported on first use, so ``mha``
imports without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .attention import BIAS_NAMES, WEIGHT_NAMES
from .verify import as_float64

if TYPE_CHECKING:
    import torch

    from .model import TinyTransformer

__all__ = ["from_torch", "twin_class"]

LAYER_PARAMS = WEIGHT_NAMES + BIAS_NAMES


def from_torch(twin: Any, *, grads: bool = False) -> dict[str, np.ndarray]:
    """The twin's parameters (or with ``grads=True`` their ``.grad``) in :class:`TinyTransformer`'s
    names and (in, out) layout, as float64 arrays: compare them one to one with ``parameters()``."""

    def arr(p: Any) -> np.ndarray:
        t = p.grad if grads else p
        if t is None:
            raise RuntimeError(
                "from_torch(grads=True) needs gradients: call backward() on the twin first"
            )
        return as_float64(t)

    out = {"embedding": arr(twin.embedding)}
    if twin.position is not None:
        out["position"] = arr(twin.position)
    for i, layer in enumerate(twin.layers):
        E = layer.embed_dim
        # (3E, E), (3E,): Q, K, V stacked
        w, b = (arr(layer.in_proj_weight), arr(layer.in_proj_bias))
        for j, tag in enumerate("QKV"):
            # torch's (out, in) -> (in, out)
            out[f"layers.{i}.W_{tag}"] = w[j * E : (j + 1) * E].T
            out[f"layers.{i}.b_{tag}"] = b[j * E : (j + 1) * E]
        out[f"layers.{i}.W_O"], out[f"layers.{i}.b_O"] = (
            arr(layer.out_proj.weight).T,
            arr(layer.out_proj.bias),
        )
    out["readout.W"], out["readout.b"] = (
        arr(twin.readout.weight).T,
        arr(twin.readout.bias),
    )
    order = [f"layers.{i}.{n}" for i in range(len(twin.layers)) for n in LAYER_PARAMS]
    return {
        name: out[name]
        for name in ["embedding", "position"] + order + ["readout.W", "readout.b"]
        if name in out
    }


_TWIN: Any = None


def twin_class() -> Any:
    """The torch twin's class, defined on first use so that ``mha`` imports without torch."""
    global _TWIN
    if _TWIN is not None:
        return _TWIN
    import torch
    import torch.nn.functional as F

    from .torch_bridge import to_pytorch

    class TinyTransformerTorch(torch.nn.Module):
        """:class:`TinyTransformer` in torch, autograd doing the backward."""

        def __init__(self, model: TinyTransformer) -> None:
            super().__init__()
            dt = torch.float64 if model.dtype == np.float64 else torch.float32
            self.positional, self.residual = model.positional, model.residual
            self.embedding = torch.nn.Parameter(torch.tensor(model.embedding, dtype=dt))
            self.position = (
                None
                if model.position is None
                else torch.nn.Parameter(torch.tensor(model.position))
            )
            self.register_buffer(
                "encoding",
                None if model.encoding is None else torch.tensor(model.encoding),
            )
            self.layers = torch.nn.ModuleList(
                to_pytorch(layer) for layer in model.layers
            )
            self.readout = torch.nn.Linear(model.d_model, model.vocab_size, dtype=dt)
            with torch.no_grad():
                # (in, out) -> torch's (out, in)
                self.readout.weight.copy_(torch.tensor(model.W_out.T))
                self.readout.bias.copy_(torch.tensor(model.b_out))
            if model.rope is not None:
                self.register_buffer("rope_cos", torch.tensor(model.rope[0]))
                self.register_buffer("rope_sin", torch.tensor(model.rope[1]))

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            h = self.embedding[tokens]  # (N, L) -> (N, L, E)
            if self.encoding is not None:
                h = h + self.encoding
            elif self.position is not None:
                h = h + self.position
            for layer in self.layers:
                if self.positional == "rope":
                    a = self._rope_attention(layer, h)
                else:
                    a = layer(h, h, h, need_weights=False)[0]
                h = h + a if self.residual else a
            return self.readout(h)

        # RoPE, "rotate half": (N, H, L, hd)
        def _rotate(self, t: torch.Tensor) -> torch.Tensor:
            half = t.shape[-1] // 2
            rotated = torch.cat([-t[..., half:], t[..., :half]], dim=-1)
            return t * self.rope_cos + rotated * self.rope_sin

        def _rope_attention(self, layer: Any, h: torch.Tensor) -> torch.Tensor:
            N, L, E = h.shape
            H = layer.num_heads
            qkv = F.linear(h, layer.in_proj_weight, layer.in_proj_bias)  # (N, L, 3E)
            # -> (3, N, H, L, hd)
            qkv = qkv.reshape(N, L, 3, H, E // H).permute(2, 0, 3, 1, 4)
            q, k, v = self._rotate(qkv[0]), self._rotate(qkv[1]), qkv[2]
            out = F.scaled_dot_product_attention(q, k, v)  # (N, H, L, hd)
            return layer.out_proj(out.transpose(1, 2).reshape(N, L, E))  # -> (N, L, E)

    _TWIN = TinyTransformerTorch
    return _TWIN
