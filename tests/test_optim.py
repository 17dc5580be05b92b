"""mha.optim.Adam against torch.optim.Adam, step for step on the layer's own parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mha
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


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(lr=-1e-3), ValueError, r"lr.*non-negative.*-0\.001"),
        (dict(lr=float("nan")), ValueError, r"lr.*nan"),
        (dict(lr="0.1"), TypeError, r"lr.*'0\.1'"),
        (dict(betas=(0.9, 1.0)), ValueError, r"betas\[1\].*\[0, 1\).*1\.0"),
        (dict(betas=(-0.1, 0.9)), ValueError, r"betas\[0\].*-0\.1"),
        (dict(betas=0.9), TypeError, r"betas.*pair.*0\.9"),
        (dict(eps=-1.0), ValueError, r"eps.*-1\.0"),
        (dict(weight_decay=-0.1), ValueError, r"weight_decay.*-0\.1"),
    ],
)
def test_bad_hyper_parameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        Adam(_layer_params(np.float64), **kwargs)


def test_bad_params():
    with pytest.raises(TypeError, match=r"params.*dict.*list"):
        Adam([np.zeros(3)])
    with pytest.raises(TypeError, match=r"params.*empty"):
        Adam({})
    with pytest.raises(TypeError, match=r"parameter 'w'.*float32 or float64.*int64"):
        Adam({"w": np.zeros(3, dtype=np.int64)})
    with pytest.raises(TypeError, match=r"parameter 'w'.*list"):
        Adam({"w": [0.0, 1.0]})
    frozen = np.zeros(3)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match=r"parameter 'w'.*writeable"):
        Adam({"w": frozen})


def test_missing_or_misshapen_gradient():
    params = _layer_params(np.float64)
    opt = Adam(params)
    grads = {n: np.zeros_like(p) for n, p in params.items()}
    with pytest.raises(ValueError, match=r"no gradient.*\['W_K'\]"):
        opt.step({n: g for n, g in grads.items() if n != "W_K"})
    with pytest.raises(ValueError, match=r"gradient of 'b_O'.*\(8,\).*\(7,\)"):
        opt.step({**grads, "b_O": np.zeros(7)})
    with pytest.raises(TypeError, match=r"gradient of 'W_Q'.*floating.*int64"):
        opt.step({**grads, "W_Q": np.zeros((8, 8), dtype=np.int64)})
    with pytest.raises(TypeError, match=r"grads.*dict.*list"):
        opt.step(list(grads.values()))
    # a refused step changes nothing
    assert opt.t == 0 and all(not s["m"].any() for s in opt.state.values())
