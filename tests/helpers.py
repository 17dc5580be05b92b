"""Shared test helpers: one torch reference run, compared step by step.

Every comparison goes through :func:`assert_close` with a label, so a failure
names the step that broke ("grad in_proj_weight", "weights", ...).
"""

from __future__ import annotations

import numpy as np
import torch

import mha

# The seed's float32 tolerance; float64 agrees to rounding error.
TOL = {np.float32: 1e-5, np.float64: 1e-10}
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def tol_for(dtype) -> float:
    return TOL[np.dtype(dtype).type]


def assert_close(label: str, ours, theirs, tol: float) -> None:
    """assert_allclose with the step's name in the message (rtol = atol = tol)."""
    theirs = theirs.detach().cpu().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, f"{label}: shape {ours.shape} != torch's {theirs.shape}"
    np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol, err_msg=f"{label} differs from torch")


def matching_pair(d_model, num_heads, *, dtype=np.float32, seed=0, **options):
    """(mha module, torch module) with the same random weights, every bias non-zero."""
    numpy_mha, torch_mha = mha.create_matching_mha(d_model, num_heads, dtype=dtype, seed=seed, **options)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in torch_mha.named_parameters():
            if "bias" in name:  # torch initialises biases to zero, which would hide bias bugs
                p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    mha.load_weights_from_pytorch(numpy_mha, torch_mha)
    return numpy_mha, torch_mha


def to_torch(a, dtype=None, requires_grad=False):
    if a is None:
        return None
    a = np.asarray(a)
    t = torch.tensor(a) if dtype is None or a.dtype == np.bool_ else torch.tensor(a, dtype=dtype)
    return t.requires_grad_(requires_grad)


def torch_run(torch_mha, query, key, value, grad_output=None, *, self_attention=False, **kwargs):
    """torch's forward (and backward if ``grad_output``): (out, weights, input grads, param grads)."""
    dtype = torch_mha.out_proj.weight.dtype
    need_grad = grad_output is not None
    q = to_torch(query, dtype, need_grad)
    if self_attention:
        k = v = q
    else:
        k, v = to_torch(key, dtype, need_grad), to_torch(value, dtype, need_grad)
    for name in ("attn_mask", "key_padding_mask"):
        if kwargs.get(name) is not None:
            kwargs[name] = to_torch(kwargs[name], dtype)
    torch_mha.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(need_grad):
        out, weights = torch_mha(q, k, v, **kwargs)
    grads = {}
    if need_grad:
        out.backward(to_torch(grad_output, dtype))
        grads = {n: p.grad for n, p in torch_mha.named_parameters()}
        inputs = (q.grad,) if self_attention else (q.grad, k.grad, v.grad)
    else:
        inputs = ()
    return out, weights, inputs, grads
