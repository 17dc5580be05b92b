"""The exercises of chapter 10 (attention at scale): every check passes its reference, fails a
typical wrong answer with its hint, says "not attempted" while untouched; the experiments behind
the answers hold against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mha.exercises import scale


def _untouched(*args):
    raise NotImplementedError


def test_predicted_masks_are_the_experiment_and_torch_agrees():
    assert scale._decode_mask_verdicts() == (False, True, False, True)
    assert scale.check_decode_masks(lambda: [False, True, False, True]) is True
    # torch's is_causal is the same top-left triangle: one query over 7 keys sees key 0 only
    q, k, v = torch.randn(1, 1, 8), torch.randn(1, 7, 8), torch.randn(1, 7, 3)
    torch.testing.assert_close(
        F.scaled_dot_product_attention(q, k, v, is_causal=True), v[:, :1]
    )


def test_wrong_prediction_explains_the_case(capsys):
    assert (
        scale.check_decode_masks(scale.COMMON_MISTAKES["check_decode_masks"]) is False
    )
    out = capsys.readouterr().out
    assert "Not quite" in out and "no mask at all: it is True" in out
    assert scale.check_decode_masks(lambda: [0, 1, 0, 1]) is False  # ints are not bools
    assert "4 bools" in capsys.readouterr().out


def test_mystery_errors_have_the_top_left_signature():
    errors = scale.mystery_errors()
    assert errors.shape == (5, 4)
    assert np.all(errors[0] < 1e-12)  # the square prefill is right
    assert np.all(errors[1:] > 1e-3)  # every step, every head wrong
    # the same top-left triangle as torch's is_causal=True
    mask = torch.ones(1, 4, dtype=torch.bool).tril()
    assert mask.tolist() == [[True, False, False, False]]


def test_every_wrong_bug_name_is_explained(capsys):
    for name in scale.DECODING_BUGS:
        assert scale.check_decoding_bug(lambda name=name: name) is (
            name == "top-left causal mask"
        )
    assert scale.check_decoding_bug(lambda: "a bug not on the list") is False
    out = capsys.readouterr().out
    assert out.count("Not quite") == len(scale.DECODING_BUGS)
    assert "Which rows are wrong" in out
    for line in out.splitlines():
        assert len(line) <= 88, line


def test_merge_reference_equals_full_attention():
    out_a, lse_a, out_b, lse_b = scale._halves((5, 8), 12, 6, 5, seed=0)
    out, lse = scale._merge_partials(out_a, lse_a, out_b, lse_b)
    rng = scale._rng(10)  # the same draws as _halves
    q, k, v = (
        rng.standard_normal((5, 8)),
        rng.standard_normal((12, 8)),
        rng.standard_normal((12, 6)),
    )
    want = F.scaled_dot_product_attention(*(torch.from_numpy(a) for a in (q, k, v)))
    np.testing.assert_allclose(out, want.numpy(), rtol=0, atol=1e-12)
    scores = torch.from_numpy(q @ k.T / np.sqrt(8))
    np.testing.assert_allclose(
        lse, torch.logsumexp(scores, -1).numpy(), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize(
    "check, answer",
    [
        (scale.check_decode_masks, lambda: [False, True, False, True]),
        (scale.check_decoding_bug, lambda: "top-left causal mask"),
        (scale.check_merge_partials, scale._merge_partials),
    ],
)
def test_reference_passes_mistake_fails_untouched_not_attempted(check, answer, capsys):
    assert check(answer) is True
    assert "Correct" in capsys.readouterr().out
    assert check(scale.COMMON_MISTAKES[check.__name__]) is False
    out = capsys.readouterr().out
    assert "Not quite" in out
    assert check(_untouched) is None
    assert "Not attempted yet" in capsys.readouterr().out


def test_merge_mistakes_get_the_hint(capsys):
    assert scale.check_merge_partials(scale._plain_mean) is False
    assert "Hint: each part's output" in capsys.readouterr().out

    def no_shift(out_a, lse_a, out_b, lse_b):  # overflows at large scores
        wa, wb = np.exp(lse_a), np.exp(lse_b)
        return (wa[..., None] * out_a + wb[..., None] * out_b) / (wa + wb)[
            ..., None
        ], np.log(wa + wb)

    with np.errstate(over="ignore", invalid="ignore"):
        assert scale.check_merge_partials(no_shift) is False
    assert "Subtract the larger lse" in capsys.readouterr().out
