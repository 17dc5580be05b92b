"""mha.optim.Adam against torch.optim.Adam, step for step on the layer's own parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import bad_input_tests

import mha
from mha import optim
from mha.optim import Adam


def _layer_params(dtype, seed=0):
    layer = mha.MultiHeadAttention(8, 2, add_bias_kv=True, dtype=dtype, seed=seed)
    return {name: p.copy() for name, p in layer.parameters().items()}


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6),
        dict(lr=1e-2, weight_decay=0.1),
        dict(lr=1e-2, betas=(0.0, 0.5), eps=0.0),
    ],
)
def test_100_steps_match_torch_in_float64(options):
    params = _layer_params(np.float64)
    tensors = {n: torch.tensor(p, requires_grad=True) for n, p in params.items()}
    ours, theirs = (
        Adam(params, **options),
        torch.optim.Adam(list(tensors.values()), **options),
    )
    rng = np.random.default_rng(7)
    for _ in range(100):
        # gradients that depend on the parameters, as in training, plus noise
        noise = {n: 0.1 * rng.standard_normal(p.shape) for n, p in params.items()}
        ours.step({n: np.sin(3 * p) + noise[n] for n, p in params.items()})
        for n, t in tensors.items():
            t.grad = torch.sin(3 * t.detach()) + torch.tensor(noise[n])
        theirs.step()
    assert ours.t == 100
    for n, p in params.items():
        np.testing.assert_allclose(
            p, tensors[n].detach().numpy(), rtol=0, atol=1e-12, err_msg=n
        )


def test_same_gradients_float64_agree_to_rounding_and_float32_within_float32():
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-6)):
        params = _layer_params(dtype, seed=1)
        tensors = [torch.tensor(p, requires_grad=True) for p in params.values()]
        ours, theirs = Adam(params, lr=1e-2), torch.optim.Adam(tensors, lr=1e-2)
        rng = np.random.default_rng(2)
        for _ in range(100):
            grads = {
                n: rng.standard_normal(p.shape).astype(dtype) for n, p in params.items()
            }
            ours.step(grads)
            for t, g in zip(tensors, grads.values()):
                t.grad = torch.tensor(g)
            theirs.step()
        for p, t in zip(params.values(), tensors):
            assert p.dtype == dtype
            np.testing.assert_allclose(p, t.detach().numpy(), rtol=0, atol=tol)


def test_parameters_are_updated_in_place():
    layer = mha.MultiHeadAttention(4, 2, dtype=np.float64, seed=0)
    before = layer.W_Q.copy()
    opt = Adam(layer.parameters(), lr=0.1)
    opt.step({n: np.ones_like(p) for n, p in layer.parameters().items()})
    # first step: lr * sign(g) (up to eps)
    np.testing.assert_allclose(layer.W_Q, before - 0.1)
    assert opt.state["W_Q"]["m"].shape == before.shape


def test_grads_are_not_modified():
    params = _layer_params(np.float64)
    grads = {n: np.ones_like(p) for n, p in params.items()}
    Adam(params, weight_decay=0.5).step(grads)
    assert all(np.array_equal(g, np.ones_like(g)) for g in grads.values())


def _adam(**kwargs):
    return lambda: Adam(_layer_params(np.float64), **kwargs)


def _frozen():
    a = np.zeros(3)
    a.flags.writeable = False
    return a


# One optimizer for the refused steps: a refused step must change nothing.
_OPT = Adam(_layer_params(np.float64))
_GRADS = {n: np.zeros_like(p) for n, p in _OPT.params.items()}

BAD = [  # (call, error, message)
    (_adam(lr=-1e-3), ValueError, r"lr.*non-negative.*-0\.001"),
    (_adam(lr=float("nan")), ValueError, r"lr.*nan"),
    (_adam(lr="0.1"), TypeError, r"lr.*'0\.1'"),
    (_adam(betas=(0.9, 1.0)), ValueError, r"betas\[1\].*\[0, 1\).*1\.0"),
    (_adam(betas=(-0.1, 0.9)), ValueError, r"betas\[0\].*-0\.1"),
    (_adam(betas=0.9), TypeError, r"betas.*pair.*0\.9"),
    (_adam(eps=-1.0), ValueError, r"eps.*-1\.0"),
    (_adam(weight_decay=-0.1), ValueError, r"weight_decay.*-0\.1"),
    (lambda: Adam([np.zeros(3)]), TypeError, r"params.*dict.*list"),
    (lambda: Adam({}), TypeError, r"params.*empty"),
    (
        lambda: Adam({"w": np.zeros(3, dtype=np.int64)}),
        TypeError,
        r"parameter 'w'.*float32 or float64.*int64",
    ),
    (lambda: Adam({"w": [0.0, 1.0]}), TypeError, r"parameter 'w'.*list"),
    (lambda: Adam({"w": _frozen()}), ValueError, r"parameter 'w'.*writeable"),
    (
        lambda: _OPT.step({n: g for n, g in _GRADS.items() if n != "W_K"}),
        ValueError,
        r"no gradient.*\['W_K'\]",
    ),
    (
        lambda: _OPT.step({**_GRADS, "b_O": np.zeros(7)}),
        ValueError,
        r"gradient of 'b_O'.*\(8,\).*\(7,\)",
    ),
    (
        lambda: _OPT.step({**_GRADS, "W_Q": np.zeros((8, 8), dtype=np.int64)}),
        TypeError,
        r"gradient of 'W_Q'.*floating.*int64",
    ),
    (lambda: _OPT.step(list(_GRADS.values())), TypeError, r"grads.*dict.*list"),
]


def _unchanged():
    # a refused step changes nothing
    assert _OPT.t == 0 and all(not s["m"].any() for s in _OPT.state.values())


test_bad_input_is_named, test_every_function_of_the_module_has_a_bad_input_case = (
    bad_input_tests(optim, BAD, unchanged=_unchanged)
)
