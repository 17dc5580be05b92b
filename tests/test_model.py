"""mha.model.TinyTransformer against its torch twin, and the training loop of mha.train."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import entry_points, public_entry_points

from mha import model as model_module
from mha import train as train_module
from mha.losses import cross_entropy, cross_entropy_backward
from mha.model import POSITIONAL, TinyTransformer, from_torch
from mha.train import IGNORE, SequenceTask, accuracy, fit, watched

V, L = 7, 5


def _gradients(model, task, dtype=np.float64, label_smoothing=0.0):
    tokens, targets = task.sample(6, 3)
    twin = model.to_torch()
    logits = model(tokens)
    loss, cache = cross_entropy(logits, targets, label_smoothing=label_smoothing)
    grads = model.backward(cross_entropy_backward(1.0, cache))
    torch_logits = twin(torch.from_numpy(tokens))
    torch_loss = F.cross_entropy(
        torch_logits.reshape(-1, V),
        torch.from_numpy(targets).reshape(-1),
        label_smoothing=label_smoothing,
    )
    torch_loss.backward()
    return logits, torch_logits, loss, torch_loss, grads, from_torch(twin, grads=True)


@pytest.mark.parametrize("positional", POSITIONAL)
@pytest.mark.parametrize("num_layers, residual", [(1, False), (2, True), (2, False)])
@pytest.mark.parametrize("kind", ["reverse", "copy"])
def test_gradients_equal_torch_autograd_of_the_twin(
    positional, num_layers, residual, kind
):
    model = TinyTransformer(
        V,
        L,
        d_model=8,
        num_heads=2,
        num_layers=num_layers,
        positional=positional,
        residual=residual,
        seed=4,
    )
    task = SequenceTask(kind, L, V, offset=2 if kind == "copy" else 0)
    logits, t_logits, loss, t_loss, grads, t_grads = _gradients(
        model, task, label_smoothing=0.1
    )
    np.testing.assert_allclose(logits, t_logits.detach().numpy(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(loss, t_loss.item(), rtol=1e-14)
    assert list(grads) == list(t_grads) == list(model.parameters())
    for name in grads:
        assert grads[name].shape == model.parameters()[name].shape, name
        np.testing.assert_allclose(
            grads[name], t_grads[name], rtol=0, atol=1e-13, err_msg=name
        )


def test_float32_model_matches_its_float32_twin():
    model = TinyTransformer(
        V, L, d_model=8, positional="rope", dtype=np.float32, seed=1
    )
    logits, t_logits, _, _, grads, t_grads = _gradients(
        model, SequenceTask("reverse", L, V)
    )
    assert logits.dtype == np.float32 and t_logits.dtype == torch.float32
    np.testing.assert_allclose(logits, t_logits.detach().numpy(), atol=1e-5)
    for name in grads:
        assert grads[name].dtype == np.float32
        np.testing.assert_allclose(grads[name], t_grads[name], atol=1e-5, err_msg=name)


def test_gradient_equals_finite_differences():
    model = TinyTransformer(
        V,
        L,
        d_model=4,
        num_heads=2,
        positional="rope",
        num_layers=2,
        residual=True,
        seed=2,
    )
    tokens, targets = SequenceTask("reverse", L, V).sample(3, 1)

    def loss():
        return float(cross_entropy(model(tokens), targets)[0])

    loss()
    _, cache = cross_entropy(model(tokens), targets)
    grads = model.backward(cross_entropy_backward(1.0, cache))
    rng = np.random.default_rng(0)
    for name, p in model.parameters().items():
        for idx in [tuple(rng.integers(0, n) for n in p.shape) for _ in range(3)]:
            old = p[idx]
            p[idx] = old + 1e-6
            up = loss()
            p[idx] = old - 1e-6
            down = loss()
            p[idx] = old
            assert abs((up - down) / 2e-6 - grads[name][idx]) < 1e-7, name


def test_parameters_are_the_arrays_themselves_and_the_twin_holds_copies():
    model = TinyTransformer(V, L, positional="learned", seed=0)
    params = model.parameters()
    assert (
        params["layers.0.W_Q"] is model.layers[0].W_Q
        and params["readout.W"] is model.W_out
    )
    twin = model.to_torch()
    params["embedding"] += 1.0
    assert not np.allclose(from_torch(twin)["embedding"], model.embedding)
    assert set(from_torch(twin)) == set(params)


def test_attention_weights_are_returned_per_layer():
    for positional in ("sinusoidal", "rope"):
        model = TinyTransformer(
            V,
            L,
            d_model=8,
            num_heads=2,
            num_layers=2,
            residual=True,
            positional=positional,
        )
        tokens, _ = SequenceTask("reverse", L, V).sample(3, 0)
        logits, weights = model(tokens, need_weights=True)
        assert logits.shape == (3, L, V) and len(weights) == 2
        for w in weights:
            assert w.shape == (3, 2, L, L)
            np.testing.assert_allclose(w.sum(-1), 1.0)


def test_same_seed_same_model_and_sinusoids_are_fixed():
    a, b = TinyTransformer(V, L, seed=3), TinyTransformer(V, L, seed=3)
    assert all(np.array_equal(p, b.parameters()[n]) for n, p in a.parameters().items())
    assert "position" not in a.parameters()
    assert not np.array_equal(a.embedding, TinyTransformer(V, L, seed=4).embedding)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(positional="absolute"), ValueError, r"positional.*'rope'.*'absolute'"),
        (dict(d_model=10, num_heads=3), ValueError, r"d_model \(10\).*num_heads \(3\)"),
        (dict(num_layers=0), ValueError, r"num_layers.*positive.*0"),
        (dict(residual=1), TypeError, r"residual.*1"),
        (dict(dtype=np.int32), TypeError, r"dtype.*int32"),
        (dict(d_model=6, num_heads=2, positional="sinusoidal"), None, None),
        (
            dict(d_model=6, num_heads=2, positional="rope"),
            ValueError,
            r"head_dim.*even.*3",
        ),
    ],
)
def test_bad_constructor_arguments(kwargs, error, message):
    if error is None:
        TinyTransformer(V, L, **kwargs)
        return
    with pytest.raises(error, match=message):
        TinyTransformer(V, L, **kwargs)


def _backward_after_forward(dlogits):
    def call():
        model = TinyTransformer(V, L)
        model(np.zeros((2, L), int))
        return model.backward(dlogits)

    return call


BAD_CALLS = [  # (call, error, message)
    (
        lambda: TinyTransformer(V, L)(np.zeros((2, L))),
        TypeError,
        r"tokens.*integer.*float64",
    ),
    (
        lambda: TinyTransformer(V, L)(np.zeros((2, 4), int)),
        ValueError,
        r"tokens.*\(N, 5\).*\(2, 4\)",
    ),
    (
        lambda: TinyTransformer(V, L)(np.full((2, L), 7)),
        ValueError,
        r"tokens.*\[0, 7\).*got 7",
    ),
    (
        lambda: TinyTransformer(V, L).backward(np.zeros((2, L, V))),
        RuntimeError,
        "forward",
    ),
    (
        _backward_after_forward(np.zeros((2, L, 6))),
        ValueError,
        r"dlogits.*\(2, 5, 7\).*\(2, 5, 6\)",
    ),
    (
        lambda: TinyTransformer(V, L, num_layers=0),
        ValueError,
        r"num_layers.*positive.*0",
    ),
]


@pytest.mark.parametrize(
    "call, error, message", BAD_CALLS, ids=[f"bad-{i}" for i in range(len(BAD_CALLS))]
)
def test_bad_tokens_and_dlogits(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_every_entry_point_of_the_model_has_a_bad_input_case():
    """Derived from BAD_CALLS' tracebacks (helpers.entry_point), not from a list typed here."""
    assert public_entry_points(model_module) <= entry_points(c for c, _, _ in BAD_CALLS)


# ---------------------------------------------------------------- tasks and the training loop


def test_task_targets():
    tokens = np.arange(10).reshape(2, 5)
    assert np.array_equal(
        SequenceTask("reverse", 5, 10).targets(tokens), tokens[:, ::-1]
    )
    copy = SequenceTask("copy", 5, 10, offset=2).targets(tokens)
    assert np.array_equal(copy[:, :2], np.full((2, 2), IGNORE)) and np.array_equal(
        copy[:, 2:], tokens[:, :3]
    )


_TASK = SequenceTask("reverse", L, V)

TRAIN_BAD_CALLS = [  # (call, error, message)
    (
        lambda: SequenceTask("copy", 5, 10, offset=5),
        ValueError,
        r"offset must be in \[1, seq_len\) = \[1, 5\) for copy, got 5",
    ),
    (lambda: SequenceTask("sort", 5, 10), ValueError, r"kind must be one of .*'sort'"),
    (
        lambda: SequenceTask("copy", 0, 10, offset=1),
        ValueError,
        r"seq_len must be a positive int, got 0",
    ),
    (
        lambda: fit(TinyTransformer(V, L), _TASK, steps=0),
        ValueError,
        r"steps must be a positive int, got 0",
    ),
    (
        # once an AttributeError from inside ('list' object has no attribute 'parameters')
        lambda: fit([TinyTransformer(V, L)], _TASK, steps=1),
        TypeError,
        r"model must be a mha.model.TinyTransformer, got list",
    ),
    (
        lambda: fit(TinyTransformer(V, L), "reverse", steps=1),
        TypeError,
        r"task must be a mha.train.SequenceTask, got str",
    ),
    (
        # once a NumPy broadcasting error
        lambda: accuracy(np.zeros((2, L, V)), np.zeros((2, L - 1), int)),
        ValueError,
        r"targets must have the logits' shape without the class axis, \(2, 5\) "
        r"for logits \(2, 5, 7\), got \(2, 4\)",
    ),
    (
        # once a silent score: float targets compared with the argmax
        lambda: accuracy(np.zeros((2, L, V)), np.zeros((2, L))),
        TypeError,
        r"targets must hold integer class indices, got dtype float64",
    ),
    (
        lambda: accuracy(np.zeros((2, L, V), int), np.zeros((2, L), int)),
        TypeError,
        r"logits must be a floating-point array, got integer dtype int64",
    ),
    (
        lambda: accuracy(np.zeros(()), np.zeros((), int)),
        ValueError,
        r"logits must have a class axis \(..., V\) .*got shape \(\)",
    ),
    (
        lambda: accuracy(np.zeros((2, V)), np.zeros(2, int), per_position="yes"),
        TypeError,
        r"per_position must be True or False, got 'yes'",
    ),
]


@pytest.mark.parametrize(
    "call, error, message",
    TRAIN_BAD_CALLS,
    ids=[f"bad-{i}" for i in range(len(TRAIN_BAD_CALLS))],
)
def test_bad_tasks_fits_and_accuracies(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_every_entry_point_of_the_training_loop_has_a_bad_input_case():
    """Derived from TRAIN_BAD_CALLS' tracebacks (helpers.entry_point), as for the model."""
    assert public_entry_points(train_module) <= entry_points(
        c for c, _, _ in TRAIN_BAD_CALLS
    )


def test_samples_avoid_held_out_rows_and_repeat_with_the_seed():
    task = SequenceTask("reverse", 2, 3)  # only 9 sequences exist
    held_out, _ = task.sample(1, 0)
    tokens, targets = task.sample(200, 1, exclude=held_out)
    assert not (tokens == held_out[0]).all(axis=1).any()
    assert np.array_equal(tokens, task.sample(200, 1, exclude=held_out)[0])


def test_accuracy_counts_scored_positions_only():
    targets = np.array([[IGNORE, 1, 2], [IGNORE, 0, 2]])
    # right at 3 of the 4 scored positions
    logits = np.eye(3)[np.array([[0, 1, 0], [2, 0, 2]])]
    assert accuracy(logits, targets) == 0.75
    per = accuracy(logits, targets, per_position=True)
    assert np.isnan(per[0]) and np.array_equal(per[1:], [1.0, 0.5])


def test_fit_in_float64_stays_with_torch_and_learns():
    task = SequenceTask("reverse", L, V)
    held_x, held_y = task.sample(300, 10)
    model = TinyTransformer(V, L, d_model=16, seed=0)
    twin = model.to_torch()
    history = fit(
        model, task, steps=150, lr=1e-2, held_out=held_x, twin=twin, progress=False
    )
    assert history.loss.shape == history.torch_loss.shape == (150,)
    np.testing.assert_allclose(history.loss, history.torch_loss, rtol=1e-12)
    # b_K's gradient is rounding noise that Adam scales up
    for name, diff in history.param_diff.items():
        assert diff.max() <= (1e-9 if name.endswith("b_K") else 1e-12), name
    assert history.loss[-10:].mean() < 0.2 * history.loss[:10].mean()
    assert accuracy(model(held_x), held_y) > 0.9


def test_progress_is_off_where_nobody_watches(capsys):
    assert watched() is False  # pytest captures stderr: not a terminal
    fit(TinyTransformer(V, L), SequenceTask("reverse", L, V), steps=2)
    assert capsys.readouterr().err == ""


def test_progress_shows_where_a_front_end_accepts_input(monkeypatch, capsys):
    import types

    kernel = types.SimpleNamespace(_allow_stdin=True)  # JupyterLab, Colab, VS Code
    shell = types.SimpleNamespace(kernel=kernel)
    monkeypatch.setitem(
        __import__("sys").modules,
        "IPython",
        types.SimpleNamespace(get_ipython=lambda: shell),
    )
    assert watched() is True
    kernel._allow_stdin = False  # nbval, jupyter execute, Jupyter Book
    assert watched() is False
    fit(TinyTransformer(V, L), SequenceTask("reverse", L, V), steps=2, progress=True)
    # asked for explicitly: shown
    assert "training (reverse)" in capsys.readouterr().err
