"""The predict and diagnose exercises of chapters 2-4: what the chapters say about them holds.

tests/test_exercises.py runs every reference solution, a wrong answer and the untouched cell;
here the experiments behind the answers are checked against torch, and every wrong choice of a
diagnose exercise has an explanation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mha
from mha.exercises import heads, sdpa, weights


def test_fill_prediction_is_the_float32_rounding_story():
    assert sdpa._fill_is_mean() == (True, False, False)
    # the reason: float32 spacing near 1e9 is 64, float64's about 1e-7
    assert np.spacing(np.float32(1e9)) == 64 and np.spacing(1e9) < 1e-6


def test_sdpa_mystery_is_a_column_softmax():
    w = sdpa.mystery_weights()
    assert np.allclose(w.sum(axis=0), 1) and not np.allclose(w.sum(axis=-1), 1)
    assert np.all(np.triu(w, k=1) == 0)  # still causal


def test_reshape_prediction_matches_torch_view():
    for (T, H), expected in zip(heads.RESHAPE_CASES, heads._reshape_is_enough()):
        x = torch.arange(T * 2 * H, dtype=torch.float64).reshape(1, T, 2 * H)
        right = x.view(1, T, H, 2).transpose(1, 2)
        assert torch.equal(x.view(1, H, T, 2), right) == expected


def test_heads_mystery_is_flatter_in_every_head():
    mystery, correct = heads.mystery_weights()
    assert np.all(
        mha.analysis.entropy(mystery).mean(-1) > mha.analysis.entropy(correct).mean(-1)
    )


def test_head_contributions_sum_to_torch_output():
    rng = np.random.default_rng(0)
    layer = mha.MultiHeadAttention(12, 3, bias=False, dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 5, 12))
    parts = heads._head_contributions(x, layer.W_Q, layer.W_K, layer.W_V, layer.W_O, 3)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        out, _ = mha.to_pytorch(layer)(xt, xt, xt, need_weights=False)
    assert parts.shape == (3, 2, 5, 12)
    assert mha.report_match(
        "sum of head contributions", parts.sum(axis=0), out, atol=1e-12
    )


def test_bias_prediction_truth():
    assert weights._still_matches() == (True, False, False, True)


def test_gallery_mystery_has_a_clean_first_row_only():
    numpy_m, torch_m = mha.create_matching_mha(16, 4, seed=3)
    with torch.no_grad():
        torch_m.in_proj_bias.copy_(
            0.5 * torch.randn(48, generator=torch.Generator().manual_seed(0))
        )
    mha.load_weights_from_pytorch(numpy_m, torch_m)
    x = np.random.default_rng(1).standard_normal((2, 6, 16)).astype(np.float32)
    blocked = np.triu(np.ones((6, 6), dtype=bool), k=1)
    out = weights.mystery_forward(x, numpy_m.parameters(), blocked, 4)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        ref = torch_m(
            xt, xt, xt, attn_mask=torch.from_numpy(blocked), need_weights=False
        )[0]
    assert mha.report_match("token 0", out[:, 0], ref[:, 0])
    assert not mha.report_match("tokens 1-5", out[:, 1:], ref[:, 1:])


@pytest.mark.parametrize(
    "module, bugs, looks, answer",
    [
        (sdpa, sdpa.SDPA_BUGS, sdpa._SDPA_LOOKS, "softmax over the wrong axis"),
        (heads, heads.HEAD_BUGS, heads._HEADS_LOOK, "divided by sqrt(d_model)"),
        (weights, weights.GALLERY_BUGS, weights._GALLERY_LOOKS, "no 1/sqrt(d_k)"),
    ],
)
def test_every_wrong_bug_name_is_explained(module, bugs, looks, answer, capsys):
    assert set(looks) == set(bugs) - {answer}
    check = next(getattr(module, n) for n in module.__all__ if n.endswith("_bug"))
    for name in bugs:
        assert check(lambda name=name: name) is (name == answer)
    assert check(lambda: "a bug not on the list") is False
    for line in capsys.readouterr().out.splitlines():
        assert len(line) <= 88, line
