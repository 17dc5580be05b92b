"""The torch bridge: loading, comparing, creating, analysing, exporting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import assert_close, matching_pair

import mha


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_compare_outputs_result_is_truthy_and_unpacks():
    numpy_mha, torch_mha = mha.create_matching_mha(32, 4, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 6, 32)).astype(np.float32)
    result = mha.compare_outputs(numpy_mha, torch_mha, x)
    match, max_diff = result
    assert bool(result) is True and match is True
    assert type(max_diff) is float and 0 <= max_diff < 1e-5
    numpy_mha.W_V = numpy_mha.W_V.copy()
    numpy_mha.W_V[3, 5] += 1e-2  # a small bug in one weight ...
    result = mha.compare_outputs(numpy_mha, torch_mha, x)
    # ... is caught
    assert not result and result.match is False and result.max_diff > 1e-5
    assert not mha.compare_outputs(numpy_mha, torch_mha, x, atol=result.max_diff / 2)


def test_compare_outputs_with_masks_cross_attention_and_layouts():
    numpy_mha, torch_mha = matching_pair(
        16, 2, kdim=5, vdim=3, batch_first=False, seed=3
    )
    rng = np.random.default_rng(3)
    q, k, v = (
        rng.standard_normal((4, 2, 16)),
        rng.standard_normal((6, 2, 5)),
        rng.standard_normal((6, 2, 3)),
    )
    kpm = np.zeros((2, 6), bool)
    kpm[1, -1] = True
    assert mha.compare_outputs(
        numpy_mha, torch_mha, q.astype(np.float32), key=k, value=v, key_padding_mask=kpm
    )
    assert mha.compare_outputs(
        numpy_mha, torch_mha, q.astype(np.float32), key=k, value=v, is_causal=True
    )
    # a NumPy module reading batch-first against a torch module reading sequence-first
    numpy_bf = mha.load_weights_from_pytorch(
        mha.MultiHeadAttention(16, 2, kdim=5, vdim=3, batch_first=True), torch_mha
    )
    qb, kb, vb = (a.transpose(1, 0, 2) for a in (q, k, v))
    assert mha.compare_outputs(
        numpy_bf, torch_mha, qb, key=kb, value=vb, key_padding_mask=kpm
    )


def test_load_follows_the_torch_module_and_never_changes_it():
    torch.manual_seed(0)
    torch_mha = nn.MultiheadAttention(
        12, 3, bias=False, add_bias_kv=True, add_zero_attn=True, batch_first=True
    )
    before = _state(torch_mha)
    # has biases, no bias_k, no zero key
    numpy_mha = mha.MultiHeadAttention(12, 3, bias=True)
    returned = mha.load_weights_from_pytorch(numpy_mha, torch_mha)
    assert returned is numpy_mha
    assert numpy_mha.b_Q is None and numpy_mha.b_O is None
    assert numpy_mha.bias_k.shape == (12,) and numpy_mha.add_zero_attn
    assert torch_mha.training  # not switched to eval
    for name, value in _state(torch_mha).items():
        assert torch.equal(value, before[name]), f"{name} changed"
    x = np.random.default_rng(0).standard_normal((2, 4, 12)).astype(np.float32)
    # dropout=0: training mode changes nothing
    assert mha.compare_outputs(numpy_mha, torch_mha, x)


def test_load_from_float64_module_keeps_numpy_dtype():
    torch_mha = nn.MultiheadAttention(
        8, 2, batch_first=True, dtype=torch.float64
    ).eval()
    numpy_mha = mha.load_weights_from_pytorch(
        mha.MultiHeadAttention(8, 2, dtype=np.float64), torch_mha
    )
    x = np.random.default_rng(1).standard_normal((2, 3, 8))
    match, max_diff = mha.compare_outputs(numpy_mha, torch_mha, x, atol=1e-12)
    assert match and max_diff < 1e-12
    f32 = mha.load_weights_from_pytorch(mha.MultiHeadAttention(8, 2), torch_mha)
    assert f32.W_Q.dtype == np.float32 and f32(x).dtype == np.float32


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: none on this machine"
)
def test_load_from_gpu_module():
    torch_mha = nn.MultiheadAttention(8, 2, batch_first=True, device="cuda").eval()
    numpy_mha = mha.load_weights_from_pytorch(mha.MultiHeadAttention(8, 2), torch_mha)
    assert mha.compare_outputs(numpy_mha, torch_mha, np.ones((1, 3, 8), np.float32))


def test_create_matching_mha_options_seed_and_eval_mode():
    a, ta = mha.create_matching_mha(16, 4, seed=7, add_bias_kv=True, kdim=6, vdim=6)
    b, tb = mha.create_matching_mha(16, 4, seed=7, add_bias_kv=True, kdim=6, vdim=6)
    assert not ta.training and ta.batch_first and ta.q_proj_weight is not None
    for name, value in a.parameters().items():
        np.testing.assert_array_equal(value, getattr(b, name), err_msg=name)
    c, _ = mha.create_matching_mha(16, 4, seed=8, add_bias_kv=True, kdim=6, vdim=6)
    assert not np.array_equal(a.W_Q, c.W_Q)
    state = torch.random.get_rng_state()
    mha.create_matching_mha(16, 4, seed=1)
    assert torch.equal(state, torch.random.get_rng_state()), (
        "seed must not touch torch's global RNG"
    )
    d64, t64 = mha.create_matching_mha(16, 4, dtype=np.float64)
    assert d64.dtype == np.float64 and t64.in_proj_weight.dtype == torch.float64


def test_analyze_weight_differences_reports_every_parameter():
    numpy_mha, torch_mha = matching_pair(16, 4, add_bias_kv=True, seed=2)
    report = mha.analyze_weight_differences(numpy_mha, torch_mha)
    assert set(report) == {
        "W_Q",
        "W_K",
        "W_V",
        "W_O",
        "b_Q",
        "b_K",
        "b_V",
        "b_O",
        "bias_k",
        "bias_v",
    }
    assert all(r == {"max_diff": 0.0, "mean_diff": 0.0} for r in report.values())
    numpy_mha.W_K = numpy_mha.W_K + np.float32(0.25)
    numpy_mha.b_O = None  # a dropped bias counts as zeros
    report = mha.analyze_weight_differences(numpy_mha, torch_mha)
    assert math.isclose(report["W_K"]["max_diff"], 0.25, rel_tol=1e-6)
    assert math.isclose(report["W_K"]["mean_diff"], 0.25, rel_tol=1e-6)
    expected = float(np.abs(torch_mha.out_proj.bias.detach().numpy()).max())
    assert math.isclose(report["b_O"]["max_diff"], expected, rel_tol=1e-6)
    assert report["W_Q"]["max_diff"] == 0.0


def test_analyze_detects_the_forgotten_transpose():
    numpy_mha, torch_mha = mha.create_matching_mha(16, 4, seed=0)
    numpy_mha.W_Q = numpy_mha.W_Q.T.copy()
    assert (
        mha.analyze_weight_differences(numpy_mha, torch_mha)["W_Q"]["max_diff"] > 0.01
    )


@pytest.mark.parametrize(
    "options", [{}, {"bias": False}, {"kdim": 4, "vdim": 7}, {"add_bias_kv": True}]
)
def test_torch_state_dict_uses_torch_names_and_layout(options):
    numpy_mha, torch_mha = matching_pair(16, 4, seed=5, **options)
    state = mha.torch_state_dict(numpy_mha)
    assert set(state) == set(dict(torch_mha.named_parameters()))
    for name, value in torch_mha.named_parameters():
        assert_close(name, state[name], value, 0.0)


def test_torch_state_dict_grads_needs_backward():
    numpy_mha = mha.MultiHeadAttention(8, 2)
    with pytest.raises(RuntimeError, match="backward"):
        mha.torch_state_dict(numpy_mha, grads=True)


def test_to_pytorch_makes_a_new_independent_module():
    numpy_mha = mha.MultiHeadAttention(
        8, 2, seed=0, batch_first=False, add_zero_attn=True
    )
    torch_mha = mha.to_pytorch(numpy_mha)
    assert (
        isinstance(torch_mha, nn.MultiheadAttention)
        and not torch_mha.batch_first
        and torch_mha.add_zero_attn
    )
    with torch.no_grad():
        torch_mha.in_proj_weight.zero_()
    assert np.abs(numpy_mha.W_Q).max() > 0, (
        "the torch module must not share memory with the NumPy one"
    )
