"""The scenarios of the two documents the project grew from (../shared/seeds/).

- The lab: load ``nn.MultiheadAttention``'s weights, match its output within
  1e-5; its example code as written and its milestone (d_model 768, 12
  heads, batch 4 x 128 tokens).
- The per-head ("sequential") notebook at B, T, C, H = 16, 256, 384, 6 lives
  in test_sequential.py; here: the same scenario through the fused module.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from helpers import assert_close, torch_run

import mha
from mha import MultiHeadAttention, load_weights_from_pytorch


def test_lab_example_code_as_written():
    torch.manual_seed(0)
    np.random.seed(0)
    pytorch_mha = nn.MultiheadAttention(
        embed_dim=64, num_heads=8, batch_first=True, bias=False
    )
    numpy_mha = MultiHeadAttention(d_model=64, num_heads=8)
    load_weights_from_pytorch(numpy_mha, pytorch_mha)
    x_np = np.random.randn(2, 10, 64).astype(np.float32)
    x_torch = torch.from_numpy(x_np)
    out_np = numpy_mha(x_np)
    with torch.no_grad():
        out_torch, _ = pytorch_mha(x_torch, x_torch, x_torch)
    np.testing.assert_allclose(out_np, out_torch.numpy(), atol=1e-5)
    # The module followed torch: no bias anywhere.
    assert numpy_mha.b_Q is None and numpy_mha.b_O is None


def test_lab_milestone_768_dims_12_heads_4_by_128():
    numpy_mha, pytorch_mha = mha.create_matching_mha(768, 12, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 128, 768)).astype(np.float32)
    result = mha.compare_outputs(numpy_mha, pytorch_mha, x, atol=1e-5)
    match, max_diff = result
    assert result and match is True, f"milestone missed: max diff {max_diff:.2e}"
    assert isinstance(max_diff, float) and 0 < max_diff < 1e-5
    report = mha.analyze_weight_differences(numpy_mha, pytorch_mha)
    assert all(r["max_diff"] == 0.0 for r in report.values())


def test_lab_milestone_backward():
    numpy_mha, pytorch_mha = mha.create_matching_mha(768, 12, seed=1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 128, 768)).astype(np.float32)
    out = numpy_mha(x)
    g = rng.standard_normal(out.shape).astype(np.float32)
    dx = numpy_mha.backward(g)
    t_out, _, (t_dx,), t_grads = torch_run(
        pytorch_mha, x, None, None, g, self_attention=True, need_weights=False
    )
    assert_close("output", out, t_out, 1e-5)
    assert_close("grad input", dx, t_dx, 1e-5)
    state = mha.torch_state_dict(numpy_mha, grads=True)
    for name, theirs in t_grads.items():
        assert_close(f"grad {name}", state[name], theirs, 1e-5)


def test_sequential_seed_scenario_through_the_fused_module():
    """B, T, C, H = 16, 256, 384, 6; x ~ U(-1, 1) as the seed draws it; dy ~ N(0, 1)."""
    B, T, C, H = 16, 256, 384, 6
    rng = np.random.default_rng(42)
    seq = mha.SequentialMHA(in_channels=C, n_heads=H, bias=False, seed=42)
    fused = mha.sequential_to_fused(seq)
    x = rng.uniform(-1, 1, (B, T, C)).astype(np.float32)
    dy = rng.standard_normal((B, T, C)).astype(np.float32)
    out_seq, out_fused = seq(x), fused(x)
    dx_seq, dx_fused = seq.backward(dy), fused.backward(dy)
    torch_mha = mha.to_pytorch(fused)
    t_out, _, (t_dx,), t_grads = torch_run(
        torch_mha, x, None, None, dy, self_attention=True, need_weights=False
    )
    assert_close("sequential output", out_seq, t_out, 1e-5)
    assert_close("fused output", out_fused, t_out, 1e-5)
    assert_close("sequential grad input", dx_seq, t_dx, 1e-5)
    assert_close("fused grad input", dx_fused, t_dx, 1e-5)
    assert_close(
        "sequential in_proj_weight grad",
        seq.in_proj_weight(grad=True),
        t_grads["in_proj_weight"],
        1e-5,
    )
    assert_close(
        "sequential out_proj grad",
        seq.out_proj.w.grad,
        t_grads["out_proj.weight"],
        1e-5,
    )
    state = mha.torch_state_dict(fused, grads=True)
    assert_close(
        "fused in_proj_weight grad",
        state["in_proj_weight"],
        t_grads["in_proj_weight"],
        1e-5,
    )
    assert_close(
        "fused out_proj grad",
        state["out_proj.weight"],
        t_grads["out_proj.weight"],
        1e-5,
    )


def test_sequential_and_fused_convert_both_ways():
    for bias in (False, True):
        seq = mha.SequentialMHA(12, 3, bias=bias, seed=1, dtype=np.float64)
        if bias:
            for p in (seq.heads[1].k_proj.b, seq.out_proj.b):
                p[...] = np.linspace(-1, 1, p.size)
        x = np.random.default_rng(1).standard_normal((2, 5, 12))
        fused = mha.sequential_to_fused(seq)
        np.testing.assert_allclose(fused(x), seq(x), rtol=0, atol=1e-13)
        back = mha.fused_to_sequential(fused)
        np.testing.assert_allclose(back(x), seq(x), rtol=0, atol=1e-13)
        np.testing.assert_array_equal(back.in_proj_weight(), seq.in_proj_weight())
        # the seed's order: torch's in_proj_weight is every q head, then every k head, then every v head
        np.testing.assert_array_equal(
            mha.torch_state_dict(fused)["in_proj_weight"], seq.in_proj_weight()
        )
