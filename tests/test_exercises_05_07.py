"""The exercises of chapters 5 and 7, beyond what tests/test_exercises.py checks for every
chapter (reference passes, untouched says "not attempted", solution after the check): each
typical wrong answer fails with its own hint. The experiments behind the predict and diagnose
answers are checked against torch, and every wrong choice of a diagnose exercise has an
explanation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mha
from mha.exercises import options, precision

# What each check says about its typical wrong answer (COMMON_MISTAKES), whitespace aside.
HINTS = {
    (
        "options",
        "check_weights_shapes",
    ): "Case 1 (batch_first=False, input (5, 2, 16) = (L, N, E), "
    "need_weights=True): you said (5, 2, 5), the weights are "
    "(2, 5, 5). The weights are (N, L, S) whatever the layout",
    (
        "options",
        "check_mask_bug",
    ): "with 'mask polarity', the weights would sit on the <pad> columns only",
    ("options", "check_padding_mask"): "nn.MultiheadAttention reads True as *blocked*",
    ("options", "check_expand_mask"): "the num_heads rows of sequence 0 come first",
    ("options", "check_call_sequence_first"): "use x.transpose(1, 0, 2)",
    (
        "precision",
        "check_nan_prediction",
    ): "Case 3, float16, every key blocked by adding "
    "finfo(float16).min to scores (2, -20, 1): it is False. "
    "Only the scores below -16 overflow",
    (
        "precision",
        "check_fill_bug",
    ): "with '-1e9 fill in float16', every fully blocked row would be NaN",
    (
        "precision",
        "check_machine_epsilon",
    ): "With a Python float (1.0) the arithmetic is float64",
    ("precision", "check_allclose"): "with the magnitude of b (the reference) only",
    (
        "precision",
        "check_tolerance_ratio",
    ): "gives the large entries' allowance to the small ones",
}


def _words(text: str) -> str:
    return " ".join(text.split())


def test_every_check_of_both_modules_has_a_hint():
    checks = sorted(
        (m.__name__.rsplit(".", 1)[1], name)
        for m in (options, precision)
        for name, obj in vars(m).items()
        if name.startswith("check_") and getattr(obj, "__module__", None) == m.__name__
    )
    assert checks == sorted(HINTS)


@pytest.mark.parametrize(
    "module, check", sorted(HINTS), ids=[f"{m}-{c}" for m, c in sorted(HINTS)]
)
def test_typical_wrong_answer_fails_with_its_hint(module, check, capsys):
    wrong = globals()[module].COMMON_MISTAKES[check]
    assert getattr(globals()[module], check)(wrong) is False
    out = capsys.readouterr().out
    assert out.startswith("Not quite")
    assert _words(HINTS[module, check]) in _words(out), out


def test_shape_check_refuses_a_wrong_kind_of_answer(capsys):
    assert options.check_weights_shapes(lambda: "(2, 5, 5)") is False
    assert options.check_weights_shapes(lambda: [(2, 5, 5)]) is False
    assert "must return 5 shapes" in capsys.readouterr().out


# ------------------------------------------------------------------ the experiments, against torch


def test_weights_shapes_are_torchs():
    rng = np.random.default_rng(0)
    for (_, opts, forward, (q_shape, k_shape)), expected in zip(
        options.SHAPE_CASES, options._weights_shapes()
    ):
        module = torch.nn.MultiheadAttention(
            16,
            4,
            batch_first=opts.get("batch_first", True),
            add_bias_kv=opts.get("add_bias_kv", False),
            add_zero_attn=opts.get("add_zero_attn", False),
        ).eval()
        query = torch.from_numpy(rng.standard_normal(q_shape).astype(np.float32))
        key = (
            query
            if k_shape is None
            else torch.from_numpy(rng.standard_normal(k_shape).astype(np.float32))
        )
        with torch.no_grad():
            _, weights = module(query, key, key, **forward)
        assert tuple(weights.shape) == expected


def test_mask_mystery_is_torchs_head_major_mask():
    module, x, padding, mask = options._mystery_call()
    mystery = options.mystery_weights()
    xt = torch.from_numpy(x)
    with torch.no_grad():
        _, theirs = mha.to_pytorch(module)(
            xt,
            xt,
            xt,
            attn_mask=torch.from_numpy(mask),
            need_weights=True,
            average_attn_weights=False,
        )
    assert mha.report_match("mystery weights", mystery, theirs.numpy())
    N, H = len(options.SENTENCES), options.H_SHAPES
    for n in range(N):
        for h in range(H):
            zero_columns = (mystery[n, h] == 0).all(axis=0)
            # somebody else's padding
            assert np.array_equal(zero_columns, padding[(n * H + h) % N])
    # with np.repeat every head of a sentence blocks that sentence's padding, as key_padding_mask
    with torch.no_grad():
        _, right = mha.to_pytorch(module)(
            xt,
            xt,
            xt,
            key_padding_mask=torch.from_numpy(padding),
            need_weights=True,
            average_attn_weights=False,
        )
    repeated = np.repeat(np.broadcast_to(padding[:, None, :], (N, 6, 6)), H, axis=0)
    assert mha.report_match(
        "np.repeat mask",
        module(x, attn_mask=repeated, need_weights=True, average_attn_weights=False)[1],
        right.numpy(),
    )
    assert not np.allclose(mystery, right.numpy(), atol=1e-3)


def test_nan_predictions_are_torchs_float16():
    h = torch.float16
    blocked = torch.ones(3, dtype=torch.bool)
    scores = torch.tensor([2.0, -20.0, 1.0], dtype=h)
    logits = torch.tensor([12.0, 11.0, 10.0], dtype=h)
    minus_1e9 = torch.tensor(-1e9).half()  # -inf: masked_fill(-1e9) refuses float16
    with pytest.raises(RuntimeError, match="overflow"):
        scores.masked_fill(blocked, -1e9)
    rows = (
        torch.softmax(torch.where(blocked, minus_1e9, scores), dim=-1),
        torch.softmax(scores.float().masked_fill(blocked, -1e9), dim=-1),
        torch.softmax(
            scores + torch.where(blocked, torch.finfo(h).min, 0.0).to(h), dim=-1
        ),
        torch.exp(logits) / torch.exp(logits).sum(),
        torch.softmax(logits, dim=-1),
    )
    assert tuple(bool(r.isnan().any()) for r in rows) == precision._nan_rows()
    # wrong, but finite
    assert torch.equal(rows[2], torch.tensor([0.5, 0.0, 0.5], dtype=h))


def test_fill_mystery_is_torchs_added_finfo_min():
    scores, blocked, weights = precision.mystery_softmax()
    s, b = torch.from_numpy(scores), torch.from_numpy(blocked)
    lowest = torch.finfo(torch.float16).min
    added = torch.softmax(s + torch.where(b, lowest, 0.0).half(), dim=-1).numpy()
    assert np.array_equal(np.isnan(added), np.isnan(weights))
    assert np.allclose(added, weights, atol=1e-3, equal_nan=True)
    assert np.isnan(weights[3]).all() and not np.isnan(weights[:3]).any()
    # the other candidates: a -1e9 fill (and a naive softmax) turn both blocked rows into NaN
    filled = torch.softmax(torch.where(b, torch.tensor(-1e9).half(), s), dim=-1)
    assert filled[2:].isnan().all() and not filled[:2].isnan().any()
    naive = torch.exp(s.masked_fill(b, lowest))
    assert (naive / naive.sum(-1, keepdim=True))[2:].isnan().all()


@pytest.mark.parametrize(
    "check, bugs, looks, answer",
    [
        (
            options.check_mask_bug,
            options.MASK_BUGS,
            options._MASK_LOOKS,
            "np.tile instead of np.repeat",
        ),
        (
            precision.check_fill_bug,
            precision.FILL_BUGS,
            precision._FILL_LOOKS,
            "finfo.min added to the scores",
        ),
    ],
)
def test_every_wrong_bug_name_is_explained(check, bugs, looks, answer, capsys):
    assert set(looks) == set(bugs) - {answer}
    for name in bugs:
        assert check(lambda name=name: name) is (name == answer)
    assert check(lambda: "a bug not on the list") is False
    for line in capsys.readouterr().out.splitlines():
        assert len(line) <= 88, line


def test_prediction_messages_fit_the_page(capsys):
    options.check_weights_shapes(lambda: ((0,),) * 5)
    precision.check_nan_prediction(lambda: (False,) * 5)
    for line in capsys.readouterr().out.splitlines():
        assert len(line) <= 88, line
