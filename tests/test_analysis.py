"""mha.analysis against torch's own measures of the same distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_close, bad_input_tests

import mha
from mha import analysis


def _maps(shape, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return mha.softmax(rng.standard_normal(shape) * 3).astype(dtype)


@pytest.mark.parametrize("shape", [(5, 7), (3, 5, 7), (2, 3, 5, 7)])
def test_entropy_is_torchs_categorical_entropy(shape):
    w = _maps(shape)
    expected = torch.distributions.Categorical(probs=torch.tensor(w)).entropy()
    assert_close("entropy", analysis.entropy(w), expected, 1e-12)
    assert_close(
        "normalized", analysis.entropy(w, normalize=True), expected / np.log(7), 1e-12
    )


def test_entropy_of_one_hot_is_zero_and_of_uniform_is_log_s():
    one_hot = np.eye(4)
    uniform = np.full((4, 4), 0.25)
    # 0 log 0 taken as 0, not NaN
    np.testing.assert_array_equal(analysis.entropy(one_hot), 0.0)
    np.testing.assert_allclose(analysis.entropy(uniform), np.log(4), rtol=1e-15)
    np.testing.assert_allclose(
        analysis.entropy(uniform, normalize=True), 1.0, rtol=1e-15
    )
    assert analysis.entropy(np.ones((3, 1)), normalize=True).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 5, 7)])
def test_top_k_keys_is_torch_topk(shape):
    w = _maps(shape, seed=1)
    idx, val = analysis.top_k_keys(w, 3)
    t_val, t_idx = torch.topk(torch.tensor(w), 3, dim=-1)  # random weights: no ties
    np.testing.assert_array_equal(idx, t_idx.numpy())
    assert_close("top-k values", val, t_val, 0)


def test_top_k_keeps_the_lower_key_first_on_ties():
    idx, _ = analysis.top_k_keys(np.array([[0.25, 0.25, 0.5, 0.0]]), 3)
    assert idx.tolist() == [[2, 0, 1]]


def test_sparsity_counts_weights_below_the_threshold():
    w = _maps((3, 5, 7), seed=2, dtype=np.float32)
    expected = (torch.tensor(w) < 0.05).double().mean(dim=(-2, -1))
    assert_close("sparsity", analysis.sparsity(w, 0.05), expected, 0)
    assert analysis.sparsity(np.full((4, 4), 0.25)) == 0.0
    assert analysis.sparsity(np.eye(4)) == 0.75  # one key read: (S - 1) / S


def test_compare_patterns_per_head_and_overall():
    a, b = _maps((2, 3, 5, 7), seed=3), _maps((2, 3, 5, 7), seed=4)
    r = analysis.compare_patterns(a, b)
    # (H, N*L*S)
    ta, tb = (torch.tensor(x).transpose(0, 1).reshape(3, -1) for x in (a, b))
    assert_close("max_abs_diff", r["max_abs_diff"], (ta - tb).abs().amax(-1), 0)
    assert_close(
        "mse",
        r["mse"],
        torch.nn.functional.mse_loss(ta, tb, reduction="none").mean(-1),
        1e-15,
    )
    assert_close(
        "cosine",
        r["cosine"],
        torch.nn.functional.cosine_similarity(ta, tb, dim=-1),
        1e-14,
    )
    overall = torch.nn.functional.cosine_similarity(
        ta.reshape(1, -1), tb.reshape(1, -1)
    )
    assert r["overall"]["cosine"] == pytest.approx(float(overall), abs=1e-14)
    assert r["overall"]["max_abs_diff"] == float(np.abs(a - b).max())
    same = analysis.compare_patterns(a, a)
    assert same["overall"] == {
        "max_abs_diff": 0.0,
        "mse": 0.0,
        "cosine": pytest.approx(1.0, abs=1e-15),
    }


def test_torch_tensors_are_accepted():
    w = torch.softmax(
        torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(0)), -1
    )
    assert analysis.entropy(w).shape == (2, 4)
    assert analysis.compare_patterns(w, w)["cosine"].shape == (2,)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.ones(4) / 4, r"must have shape \(L, S\), \(H, L, S\) or \(N, H, L, S\)"),
        (np.ones((4, 4)), "each row of weights must sum to 1"),
        (np.array([[0.5, np.nan]]), r"probabilities in \[0, 1\] \(no NaN/inf\)"),
        (np.array([[2.0, -1.0]]), "pass the weights after softmax, not the scores"),
        (np.zeros((2, 3)), "a fully masked query has no distribution"),
    ],
)
def test_non_distributions_are_refused_by_name(bad, message):
    with pytest.raises(ValueError, match=message):
        analysis.entropy(bad)


W = np.full((2, 4), 0.25)
BAD = [  # (call, error, message)
    (
        lambda: analysis.top_k_keys(W, 5),
        ValueError,
        "k must be at most the number of keys S=4, got 5",
    ),
    (lambda: analysis.top_k_keys(W, 1.5), TypeError, "k must be a positive int"),
    (lambda: analysis.sparsity(W, 0), ValueError, r"threshold must be in \(0, 1\]"),
    (
        lambda: analysis.sparsity(W, "0.1"),
        TypeError,
        "threshold must be a float, got '0.1'",
    ),
    (
        lambda: analysis.entropy(None),
        TypeError,
        "weights must be an array of attention weights",
    ),
    (
        lambda: analysis.compare_patterns(W, np.full((2, 2), 0.5)),
        ValueError,
        "a and b must have the same shape",
    ),
    (
        lambda: analysis.compare_patterns(W, -W),
        ValueError,
        r"b must hold probabilities in \[0, 1\]",
    ),
]


test_bad_input_is_named, test_every_function_of_the_module_has_a_bad_input_case = (
    bad_input_tests(analysis, BAD)
)


def test_float32_rows_with_rounding_are_accepted():
    w = _maps((4, 64, 512), seed=5, dtype=np.float32)
    assert analysis.entropy(w).shape == (4, 64)
