"""mha.losses.cross_entropy against torch.nn.functional.cross_entropy, forward and gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import bad_input_tests

from mha import losses
from mha.losses import cross_entropy, cross_entropy_backward, log_softmax

# Tighter than helpers.TOL (the layer's budget): a loss is one log-softmax and one reduction.
LOSS_TOL = {np.float32: 1e-6, np.float64: 1e-13}


def _case(shape, C, dtype, seed=0, ignore_share=0.0, ignore_index=-100):
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal(shape + (C,))).astype(dtype)
    targets = rng.integers(0, C, size=shape)
    if ignore_share:
        targets[rng.random(shape) < ignore_share] = ignore_index
    return logits, targets


def _torch_loss(logits, targets, dloss=None, **kwargs):
    C = logits.shape[-1]
    z = torch.tensor(logits.reshape(-1, C), requires_grad=True)
    loss = F.cross_entropy(z, torch.tensor(targets.reshape(-1)), **kwargs)
    if kwargs.get("reduction") == "none":
        loss = loss.reshape(targets.shape)
    grad = (
        torch.ones_like(loss)
        if dloss is None
        else torch.as_tensor(dloss, dtype=z.dtype)
    )
    loss.backward(grad)
    return loss.detach().numpy(), z.grad.numpy().reshape(logits.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("ignore_share", [0.0, 0.3])
def test_matches_torch(dtype, reduction, label_smoothing, ignore_share):
    shape = (4, 7)
    logits, targets = _case(shape, 5, dtype, ignore_share=ignore_share)
    assert ignore_share == 0 or (targets == -100).any()
    rng = np.random.default_rng(1)
    dloss = (
        rng.standard_normal(shape).astype(dtype)
        if reduction == "none"
        else np.asarray(0.7, dtype)
    )
    kwargs = dict(reduction=reduction, label_smoothing=label_smoothing)
    tol = LOSS_TOL[dtype]
    loss, cache = cross_entropy(logits, targets, **kwargs)
    ref_loss, ref_grad = _torch_loss(logits, targets, dloss, **kwargs)
    assert loss.dtype == dtype and loss.shape == ref_loss.shape
    np.testing.assert_allclose(loss, ref_loss, rtol=tol, atol=tol)
    grad = cross_entropy_backward(dloss, cache)
    assert grad.dtype == dtype
    np.testing.assert_allclose(grad, ref_grad, rtol=tol, atol=tol)


def test_other_ignore_index_and_one_dimensional_targets():
    logits, targets = _case(
        (9,), 4, np.float64, seed=3, ignore_share=0.4, ignore_index=2
    )
    loss, cache = cross_entropy(logits, targets, ignore_index=2, label_smoothing=0.2)
    ref_loss, ref_grad = _torch_loss(
        logits, targets, ignore_index=2, label_smoothing=0.2
    )
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-13)
    np.testing.assert_allclose(
        cross_entropy_backward(1.0, cache), ref_grad, rtol=1e-13, atol=1e-15
    )
    # ignored rows get no gradient
    assert not cross_entropy_backward(1.0, cache)[targets == 2].any()


def test_every_row_ignored_gives_nan_like_torch():
    logits, targets = _case((3,), 4, np.float64)
    targets[:] = -100
    loss, cache = cross_entropy(logits, targets)
    ref_loss, _ = _torch_loss(logits, targets)
    assert np.isnan(loss) and np.isnan(ref_loss)


def test_large_logits_stay_finite():
    logits = np.array([[1000.0, 0.0, -1000.0], [-800.0, 800.0, 0.0]], dtype=np.float32)
    targets = np.array([2, 0])
    loss, cache = cross_entropy(logits, targets)
    ref_loss, ref_grad = _torch_loss(logits, targets)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(cross_entropy_backward(1.0, cache), ref_grad, atol=1e-6)


def test_log_softmax_matches_torch():
    logits, _ = _case((3, 4), 6, np.float64)
    np.testing.assert_allclose(
        log_softmax(logits),
        F.log_softmax(torch.tensor(logits), -1).numpy(),
        rtol=1e-14,
        atol=1e-14,
    )


@pytest.mark.parametrize("label_smoothing", [0.0, 0.25])
def test_gradient_equals_finite_differences(label_smoothing):
    logits, targets = _case((3, 2), 4, np.float64, seed=5, ignore_share=0.3)
    kwargs = dict(label_smoothing=label_smoothing)
    _, cache = cross_entropy(logits, targets, **kwargs)
    analytic = cross_entropy_backward(1.0, cache)
    numeric = np.zeros_like(logits)
    h = 1e-6
    for idx in np.ndindex(logits.shape):
        up, down = logits.copy(), logits.copy()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (
            cross_entropy(up, targets, **kwargs)[0]
            - cross_entropy(down, targets, **kwargs)[0]
        ) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_inputs_are_not_modified():
    logits, targets = _case((2, 3), 4, np.float64, ignore_share=0.3)
    before = logits.copy(), targets.copy()
    _, cache = cross_entropy(logits, targets, label_smoothing=0.1)
    cross_entropy_backward(1.0, cache)
    assert np.array_equal(logits, before[0]) and np.array_equal(targets, before[1])


BAD_CALLS = [
    (dict(targets=np.zeros((2, 4), int)), ValueError, r"targets.*\(2, 3\).*\(2, 4\)"),
    (dict(targets=np.zeros((2, 3))), TypeError, r"targets.*integer.*float64"),
    (dict(targets=np.zeros((2, 3), bool)), TypeError, r"targets.*integer.*bool"),
    (dict(targets=np.full((2, 3), 5)), ValueError, r"targets.*\[0, 5\).*got 5"),
    (dict(targets=np.full((2, 3), -1)), ValueError, r"targets.*\[0, 5\).*-100.*got -1"),
    (dict(logits=np.zeros((2, 3, 5), int)), TypeError, r"logits.*integer dtype int64"),
    (dict(logits=np.zeros((2, 3, 0))), ValueError, r"logits.*class axis.*\(2, 3, 0\)"),
    (dict(label_smoothing=1.5), ValueError, r"label_smoothing.*\[0, 1\].*1\.5"),
    (dict(label_smoothing="0.1"), TypeError, r"label_smoothing.*'0\.1'"),
    (dict(reduction="avg"), ValueError, r"reduction.*'mean'.*'avg'"),
    (dict(ignore_index=1.5), TypeError, r"ignore_index.*int.*1\.5"),
]


def _cross_entropy_with(change):
    def call():
        kwargs = dict(logits=np.zeros((2, 3, 5)), targets=np.zeros((2, 3), int))
        kwargs.update(change)
        return cross_entropy(kwargs.pop("logits"), kwargs.pop("targets"), **kwargs)

    return call


def _backward_of(reduction, dloss):
    _, cache = cross_entropy(
        np.zeros((2, 3, 5)), np.zeros((2, 3), int), reduction=reduction
    )
    return lambda: cross_entropy_backward(dloss, cache)


BAD = [(_cross_entropy_with(change), e, m) for change, e, m in BAD_CALLS] + [
    (_backward_of("none", 1.0), ValueError, r"dloss.*\(2, 3\).*\(\)"),
    (_backward_of("mean", np.ones((2, 3))), ValueError, r"dloss.*scalar.*\(2, 3\)"),
    (
        lambda: log_softmax(np.zeros((2, 3), int)),
        TypeError,
        r"x must be a floating.*int64",
    ),
    (
        lambda: log_softmax(np.zeros(3), axis=1),
        ValueError,
        r"axis must be in \[-1, 1\).*got 1",
    ),
    (
        lambda: log_softmax(np.zeros(3), axis=0.5),
        TypeError,
        r"axis must be an int, got 0\.5",
    ),
]


test_bad_input_is_named, test_every_function_of_the_module_has_a_bad_input_case = (
    bad_input_tests(losses, BAD)
)


def test_backward_checks_dloss_shape():
    _, cache = cross_entropy(
        np.zeros((2, 3, 5)), np.zeros((2, 3), int), reduction="none"
    )
    with pytest.raises(ValueError, match=r"dloss.*\(2, 3\).*\(\)"):
        cross_entropy_backward(1.0, cache)
    _, cache = cross_entropy(np.zeros((2, 3, 5)), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match=r"dloss.*scalar.*\(2, 3\)"):
        cross_entropy_backward(np.ones((2, 3)), cache)
