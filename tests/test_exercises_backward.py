"""The exercises of chapter 6 and its capstone: what the chapter says about them holds.

tests/test_exercises.py runs every notebook's reference solution, a wrong answer and the
untouched cell; here the module's own references pass, each typical wrong answer fails with its
hint, the experiments behind the predict and diagnose answers are checked against torch's
autograd, and the capstone's check names the bug behind each wrong answer it knows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mha
from mha.exercises import backward, capstone


def _untouched(*args):
    raise NotImplementedError


def _lines_fit(text):
    for line in text.splitlines():
        assert len(line) <= 88, line


# ------------------------------------------------------------------------ the three answers

REFERENCES = {
    "check_zero_gradients": backward._exactly_zero,
    "check_backward_bug": lambda: "s(1-s) softmax backward",
    "check_log_softmax_backward": backward._log_softmax_backward,
    "check_linear_backward": backward._linear_backward,
    "check_numerical_gradient": backward._numerical_gradient,
}
HINTS = {  # a phrase of the explanation each typical wrong answer must print
    "check_zero_gradients": "its own output row still depends on its query",
    "check_backward_bug": "exactly sqrt(d_k) = 2 times torch's",
    "check_log_softmax_backward": "delta_ij - p_j",
    "check_linear_backward": "every axis but the last",
    "check_numerical_gradient": "only accurate to about h",
}


@pytest.mark.parametrize("check", sorted(REFERENCES))
def test_reference_passes(check, capsys):
    assert getattr(backward, check)(REFERENCES[check]) is True
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("check", sorted(REFERENCES))
def test_typical_wrong_answer_fails_with_its_hint(check, capsys):
    assert getattr(backward, check)(backward.COMMON_MISTAKES[check]) is False
    out = capsys.readouterr().out
    assert "Not quite" in out and HINTS[check] in " ".join(out.split())


@pytest.mark.parametrize("check", sorted(REFERENCES) + ["check_capstone"])
def test_untouched_says_not_attempted(check, capsys):
    module = capstone if check == "check_capstone" else backward
    assert getattr(module, check)(_untouched) is None
    assert "Not attempted yet" in capsys.readouterr().out


def test_every_check_has_a_typical_mistake():
    for module in (backward, capstone):
        checks = {name for name in module.__all__ if name.startswith("check_")}
        assert checks == set(module.COMMON_MISTAKES)


# ------------------------------------------------------------------------ predict


def test_zero_gradient_answers_hold_in_torch():
    """The five cases of ZERO_CASES, run through torch's autograd: the same exact zeros."""
    torch.manual_seed(0)
    module = torch.nn.MultiheadAttention(
        8, 2, batch_first=True, dtype=torch.float64
    ).eval()
    with torch.no_grad():
        module.in_proj_bias.normal_()
        module.out_proj.bias.normal_()
    gen = torch.Generator().manual_seed(1)
    x, other, dy = (
        torch.randn(1, 5, 8, dtype=torch.float64, generator=gen) for _ in range(3)
    )
    padding = torch.zeros(1, 5, dtype=torch.bool)
    padding[0, -1] = True
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1)

    def grads(q, kv, g, **masks):
        q, kv = (
            q.clone().requires_grad_(),
            (None if kv is None else kv.clone().requires_grad_()),
        )
        key = q if kv is None else kv
        out, _ = module(q, key, key, need_weights=False, **masks)
        out.backward(g)
        return q.grad, (None if kv is None else kv.grad)

    verdicts = [
        bool((grads(x, other, dy, key_padding_mask=padding)[1][0, -1] == 0).all())
    ]
    verdicts.append(
        bool((grads(x, None, dy, key_padding_mask=padding)[0][0, -1] == 0).all())
    )
    dy_real = dy.clone()
    dy_real[0, -1] = 0
    verdicts.append(
        bool((grads(x, None, dy_real, key_padding_mask=padding)[0][0, -1] == 0).all())
    )
    for token, looked_at in ((4, 0), (0, 4)):
        dy_one = torch.zeros_like(dy)
        dy_one[0, token] = dy[0, token]
        verdicts.append(
            bool((grads(x, None, dy_one, attn_mask=causal)[0][0, looked_at] == 0).all())
        )
    assert (
        tuple(verdicts) == backward._exactly_zero() == (True, False, True, False, True)
    )


# ------------------------------------------------------------------------ diagnose


def test_mystery_is_right_before_the_softmax_backward_and_wrong_after():
    results = backward.mystery_gradients()
    agrees = {
        label: np.allclose(ours, theirs, rtol=0, atol=1e-5)
        for label, ours, theirs in results
    }
    labels = [label for label, _, _ in results]
    first_wrong = labels.index("grad of in_proj_weight, query rows")
    assert all(agrees[label] for label in labels[:first_wrong])
    assert not any(agrees[label] for label in labels[first_wrong:])
    by_label = {label: (ours, theirs) for label, ours, theirs in results}
    ours_bK, torch_bK = by_label["grad of in_proj_bias, key part"]
    # the key bias's tell
    assert np.abs(torch_bK).max() < 1e-5 < 0.1 < np.abs(ours_bK).max()
    ours_q, torch_q = by_label["grad of in_proj_weight, query rows"]
    ratio = np.abs(ours_q).max() / np.abs(torch_q).max()
    assert abs(ratio - 2.0) > 0.1  # not the missing 1/sqrt(d_k) = 1/2 of the backward


def test_every_wrong_bug_name_is_explained(capsys):
    assert set(backward._BACKWARD_LOOKS) == set(backward.BACKWARD_BUGS) - {
        "s(1-s) softmax backward"
    }
    for name in backward.BACKWARD_BUGS:
        assert backward.check_backward_bug(lambda name=name: name) is (
            name == "s(1-s) softmax backward"
        )
    assert backward.check_backward_bug(lambda: "a bug not on the list") is False
    _lines_fit(capsys.readouterr().out)


def test_predict_explanations_fit_the_page(capsys):
    for i in range(len(backward.ZERO_CASES)):
        wrong = list(backward._exactly_zero())
        wrong[i] = not wrong[i]
        assert backward.check_zero_gradients(lambda wrong=wrong: tuple(wrong)) is False
    _lines_fit(capsys.readouterr().out)


def test_log_softmax_backward_matches_torch():
    x = torch.randn(
        3,
        7,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(2),
        requires_grad=True,
    )
    logp = torch.log_softmax(x, dim=-1)
    dout = torch.randn(
        3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    logp.backward(dout)
    ours = backward._log_softmax_backward(dout.numpy(), logp.detach().numpy())
    assert mha.report_match("log_softmax backward", ours, x.grad, atol=1e-12)


def test_linear_backward_matches_torch_on_a_batch():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    layer = torch.nn.Linear(4, 3, dtype=torch.float64)
    dy = torch.randn(2, 5, 3, dtype=torch.float64, generator=gen)
    layer(x).backward(dy)
    dx, d_weight, db = backward._linear_backward(
        dy.numpy(), x.detach().numpy(), layer.weight.detach().numpy()
    )
    for label, ours, theirs in (
        ("dx", dx, x.grad),
        ("weight.grad", d_weight, layer.weight.grad),
        ("bias.grad", db, layer.bias.grad),
    ):
        assert mha.report_match(label, ours, theirs, atol=1e-12)


# ------------------------------------------------------------------------ capstone


def _solution(state, x, dy, num_heads):
    """The notebook's reference solution, in float32 like a reader's."""
    W, b = state["in_proj_weight"], state["in_proj_bias"]
    W_O, b_O = state["out_proj.weight"], state["out_proj.bias"]
    E = x.shape[-1]
    s = 1 / np.sqrt(E // num_heads)
    qkv = x @ W.T + b
    q, k, v = (mha.split_heads(a, num_heads) for a in np.split(qkv, 3, -1))
    P = mha.softmax(s * q @ np.swapaxes(k, -1, -2))
    C = mha.merge_heads(P @ v)
    out = C @ W_O.T + b_O
    G = dy.reshape(-1, E)
    grads = {"out_proj.weight": G.T @ C.reshape(-1, E), "out_proj.bias": G.sum(axis=0)}
    d_heads = mha.split_heads(dy @ W_O, num_heads)
    dv = np.swapaxes(P, -1, -2) @ d_heads
    dP = d_heads @ np.swapaxes(v, -1, -2)
    dS = P * (dP - np.sum(dP * P, axis=-1, keepdims=True))
    dq, dk = s * dS @ k, s * np.swapaxes(dS, -1, -2) @ q
    d_qkv = np.concatenate([mha.merge_heads(d) for d in (dq, dk, dv)], -1)
    rows = d_qkv.reshape(-1, 3 * E)
    grads["in_proj_weight"] = rows.T @ x.reshape(-1, E)
    grads["in_proj_bias"] = rows.sum(axis=0)
    grads["x"] = d_qkv @ W
    return out, grads


def _with_bug(bug):
    def forward_backward(state, x, dy, num_heads):
        out, grads = capstone._forward_backward(state, x, dy, num_heads, bug=bug)
        grads.pop("_paths")
        return out.astype(np.float32), {
            k: v.astype(np.float32) for k, v in grads.items()
        }

    return forward_backward


def _edited(edit):
    """The float32 solution with one result changed by ``edit(out, grads, x, dy)``."""

    def forward_backward(state, x, dy, num_heads):
        out, grads = _solution(state, x, dy, num_heads)
        return edit(out, grads, x, dy)

    return forward_backward


def test_capstone_reference_and_mha_pass_at_the_milestone(capsys):
    assert capstone.check_capstone(_solution) is True

    def with_mha(state, x, dy, num_heads):  # another correct float32 implementation
        layer = mha.MultiHeadAttention(x.shape[-1], num_heads)
        module = torch.nn.MultiheadAttention(x.shape[-1], num_heads, batch_first=True)
        module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        mha.load_weights_from_pytorch(layer, module)
        out = layer(x)
        dx = layer.backward(dy)
        return out, {**mha.torch_state_dict(layer, grads=True), "x": dx}

    assert capstone.check_capstone(with_mha) is True
    out = capsys.readouterr().out
    assert "milestone, d_model 768" in " ".join(out.split())
    _lines_fit(out)


def test_capstone_grades_against_torch():
    state, x, dy = capstone._problem(*capstone.SMALL, seed=1)
    out, grads = capstone._forward_backward(state, x, dy, capstone.SMALL[1])
    out_t, grads_t = capstone._torch_answer(state, x, dy, capstone.SMALL[1])
    assert mha.report_match("output", out, out_t, atol=1e-5)
    for name in (
        "in_proj_weight",
        "in_proj_bias",
        "out_proj.weight",
        "out_proj.bias",
        "x",
    ):
        assert mha.report_match(
            f"grad of {name}", grads[name], grads_t[name], atol=1e-5
        )


@pytest.mark.parametrize("bug", list(capstone.CAPSTONE_BUGS))
def test_capstone_names_each_known_bug(bug, capsys):
    assert capstone.check_capstone(_with_bug(bug)) is False
    out = " ".join(capsys.readouterr().out.split())
    assert f"the bug {bug!r}" in out, out


@pytest.mark.parametrize(
    "edit, phrase",
    [
        (
            lambda o, g, x, dy: (o, {**g, "out_proj.weight": g["out_proj.weight"].T}),
            "the right gradient, transposed",
        ),
        (
            lambda o, g, x, dy: (o, {**g, "out_proj.bias": dy.sum(axis=0)}),
            "the batch and the token axes",
        ),
        (
            lambda o, g, x, dy: (o, {**g, "in_proj_weight": g["in_proj_weight"].T}),
            "torch stores weights (out, in)",
        ),
        (
            lambda o, g, x, dy: (o, {k: v for k, v in g.items() if k != "x"}),
            "grads has no x",
        ),
        (lambda o, g, x, dy: g, "must return (out, grads)"),
        (lambda o, g, x, dy: (o, {**g, "x": g["x"] * (1 + 1e-3)}), "first wrong one"),
        (
            lambda o, g, x, dy: (
                o,
                {**g, "out_proj.bias": np.zeros_like(g["out_proj.bias"])},
            ),
            "zero everywhere",
        ),
    ],
)
def test_capstone_explains_other_mistakes(edit, phrase, capsys):
    assert capstone.check_capstone(_edited(edit)) is False
    out = capsys.readouterr().out
    assert phrase in " ".join(out.split()), out
    _lines_fit(out)


def test_capstone_names_a_missing_path_of_x(capsys):
    def value_path_only(state, x, dy, num_heads):
        out, grads = capstone._forward_backward(state, x, dy, num_heads)
        grads["x"] = grads.pop("_paths")[2]
        return out, grads

    assert capstone.check_capstone(value_path_only) is False
    assert "the value path only" in " ".join(capsys.readouterr().out.split())


def test_capstone_right_when_small_wrong_at_the_milestone(capsys):
    def sixteen_only(state, x, dy, num_heads):
        return _solution(state, x, dy, 4)  # the number of heads hard-coded

    assert capstone.check_capstone(sixteen_only) is False
    out = " ".join(capsys.readouterr().out.split())
    assert "d_model 768" in out and "right on the small layer" in out


def test_capstone_reports_an_exception(capsys):
    def broken(state, x, dy, num_heads):
        return state["in_proj_weight"] @ x  # shapes that do not chain

    assert capstone.check_capstone(broken) is False
    assert "raised ValueError" in capsys.readouterr().out


def test_milestone_problem_is_the_milestone_and_repeatable():
    state, x, dy = capstone.milestone_problem()
    again, x2, dy2 = capstone.milestone_problem()
    assert x.shape == dy.shape == (4, 128, 768) and x.dtype == np.float32
    assert state["in_proj_weight"].shape == (2304, 768)
    assert (
        np.abs(state["in_proj_bias"]).max() > 0.1
        and np.abs(state["out_proj.bias"]).max() > 0.1
    )
    assert all(np.array_equal(state[k], again[k]) for k in state)
    assert np.array_equal(x, x2) and np.array_equal(dy, dy2)
