"""Tests for mha.sequential: the per-head MHA matches torch.nn.MultiheadAttention, forward and backward."""

import numpy as np
import pytest
from helpers import assert_close, tol_for, torch_run

from mha.sequential import (
    Head,
    Linear,
    Parameter,
    SequentialMHA,
    in_proj_bias,
    in_proj_weight,
)

torch = pytest.importorskip("torch")


# ---------------------------------------------------------------- helpers


def set_random_biases(seq, rng):
    """Give every bias of ``seq`` a non-zero value, so a bias mix-up cannot hide behind zeros."""
    for p in seq.parameters():
        if p.ndim == 1:
            p[...] = rng.uniform(0.1, 0.5, p.shape) * rng.choice([-1, 1], p.shape)


def torch_twin(seq, torch_dtype=None):
    """A torch.nn.MultiheadAttention holding exactly the numbers of ``seq``."""
    dtype = torch_dtype or (torch.float64 if seq.dtype == np.float64 else torch.float32)
    m = torch.nn.MultiheadAttention(
        seq.in_channels, seq.n_heads, bias=seq.bias, batch_first=True, dtype=dtype
    )
    with torch.no_grad():
        m.in_proj_weight.copy_(torch.from_numpy(seq.in_proj_weight()))
        m.out_proj.weight.copy_(torch.from_numpy(np.asarray(seq.out_proj.w)))
        if seq.bias:
            m.in_proj_bias.copy_(torch.from_numpy(seq.in_proj_bias()))
            m.out_proj.bias.copy_(torch.from_numpy(np.asarray(seq.out_proj.b)))
    return m


def grads_pairs(seq, m):
    """(ours, torch's) for every parameter gradient, under torch's names."""
    pairs = {
        "in_proj_weight.grad": (
            seq.in_proj_weight(grad=True),
            m.in_proj_weight.grad.numpy(),
        ),
        "out_proj.weight.grad": (seq.out_proj.w.grad, m.out_proj.weight.grad.numpy()),
    }
    if seq.bias:
        pairs["in_proj_bias.grad"] = (
            seq.in_proj_bias(grad=True),
            m.in_proj_bias.grad.numpy(),
        )
        pairs["out_proj.bias.grad"] = (
            seq.out_proj.b.grad,
            m.out_proj.bias.grad.numpy(),
        )
    return pairs


def seed_scenario(x_low):
    """The seed notebook's run: B, T, C, H = 16, 256, 384, 6 in float32, dy ~ N(0, 1)."""
    B, T, C, H = 16, 256, 384, 6
    rng = np.random.default_rng(42)
    x = rng.uniform(x_low, 1.0, (B, T, C)).astype(np.float32)
    seq = SequentialMHA(in_channels=C, n_heads=H, bias=False, seed=0)
    m = torch_twin(seq)
    out = seq(x)
    dy = rng.standard_normal(out.shape).astype(np.float32)
    dx = seq.backward(dy)
    out_t, _, (dx_t,), _ = torch_run(
        m, x, grad_output=dy, self_attention=True, need_weights=False
    )
    pairs = {
        "out": (out, out_t.detach().numpy()),
        "dx": (dx, dx_t.numpy()),
        **grads_pairs(seq, m),
    }
    return seq, m, x, dy, pairs


# ---------------------------------------------------------------- the seed's scenario


def test_seed_scenario_matches_torch_within_1e_5():
    # x ~ U[-1, 1): what the seed's cp.random.uniform(shape) draws by default
    _, _, _, _, pairs = seed_scenario(x_low=-1.0)
    for name, (ours, theirs) in pairs.items():
        assert ours.dtype == np.float32, name
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5, err_msg=name)


def test_seed_scenario_with_nonnegative_inputs():
    # x ~ U[0, 1): outputs and dx still agree within 1e-5. The weight gradients sum B*T = 4096
    # products of a zero-mean dy with positive-mean activations; float32 rounding of those sums
    # (~1e-4 absolute) exceeds 1e-5 on near-zero entries for torch's own float32 result as well,
    # so they are held to float64 truth instead: as accurate, relatively, as float32 allows.
    seq, _, x, dy, pairs = seed_scenario(x_low=0.0)
    for name in ("out", "dx"):
        np.testing.assert_allclose(*pairs[name], atol=1e-5, rtol=1e-5, err_msg=name)
    m64 = torch_twin(seq, torch.float64)
    torch_run(
        m64,
        x.astype(np.float64),
        grad_output=dy.astype(np.float64),
        self_attention=True,
        need_weights=False,
    )
    for name, (ours, truth) in grads_pairs(seq, m64).items():
        rel = np.linalg.norm(ours - truth) / np.linalg.norm(truth)
        assert rel < 2e-6, f"{name}: relative error {rel:.2e} against float64"


# ---------------------------------------------------------------- small shapes, every option


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batched", [True, False])
def test_small_shapes_match_torch(bias, dtype, batched):
    rng = np.random.default_rng(7)
    B, T, C, H = 3, 5, 12, 3
    seq = SequentialMHA(C, H, bias=bias, seed=1, dtype=dtype)
    if bias:
        set_random_biases(seq, rng)
    m = torch_twin(seq)
    shape = (B, T, C) if batched else (T, C)
    x = rng.normal(size=shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    out = seq(x)
    dx = seq.backward(dy)
    out_t, _, (dx_t,), _ = torch_run(
        m, x, grad_output=dy, self_attention=True, need_weights=False
    )
    assert out.shape == dx.shape == shape
    for name, (ours, theirs) in {
        "out": (out, out_t),
        "dx": (dx, dx_t),
        **grads_pairs(seq, m),
    }.items():
        assert ours.dtype == dtype, name
        assert_close(name, ours, theirs, tol_for(dtype))


@pytest.mark.parametrize("C, H", [(8, 1), (8, 8), (6, 2)])
def test_head_counts_match_torch_in_float64(C, H):
    rng = np.random.default_rng(C * 10 + H)
    seq = SequentialMHA(C, H, bias=True, seed=3, dtype=np.float64)
    set_random_biases(seq, rng)
    m = torch_twin(seq)
    x, dy = rng.normal(size=(2, 4, C)), rng.normal(size=(2, 4, C))
    out, dx = seq(x), seq.backward(dy)
    out_t, _, (dx_t,), _ = torch_run(
        m, x, grad_output=dy, self_attention=True, need_weights=False
    )
    for name, (ours, theirs) in {
        "out": (out, out_t),
        "dx": (dx, dx_t),
        **grads_pairs(seq, m),
    }.items():
        assert_close(name, ours, theirs, 1e-10)


@pytest.mark.parametrize("batched", [True, False])
def test_attention_weights_of_each_head_match_torch(batched):
    rng = np.random.default_rng(11)
    seq = SequentialMHA(16, 4, bias=True, seed=5, dtype=np.float64)
    set_random_biases(seq, rng)
    x = rng.normal(size=(2, 6, 16) if batched else (6, 16))
    seq(x)
    _, w_t, _, _ = torch_run(
        torch_twin(seq),
        x,
        self_attention=True,
        need_weights=True,
        average_attn_weights=False,
    )
    # (B, H, T, T)
    w_t = w_t.detach().numpy() if batched else w_t.detach().numpy()[None]
    for h, head in enumerate(seq.heads):
        assert head.attn_weights.shape == (w_t.shape[0], 6, 6)
        np.testing.assert_allclose(head.attn_weights, w_t[:, h], atol=1e-12, rtol=1e-12)
        np.testing.assert_allclose(head.attn_weights.sum(axis=-1), 1.0, atol=1e-12)
    expected = w_t if batched else w_t[0]
    np.testing.assert_allclose(seq.attn_weights, expected, atol=1e-12, rtol=1e-12)


# ---------------------------------------------------------------- the building blocks


def test_linear_matches_torch_over_leading_axes():
    rng = np.random.default_rng(0)
    lin = Linear(5, 3, bias=True, rng=rng, dtype=np.float64)
    assert (
        isinstance(lin.w, Parameter) and lin.w.shape == (3, 5) and lin.b.shape == (3,)
    )
    assert lin.w.grad is None and lin.b.grad is None
    x, dy = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 4, 3))
    wt = torch.tensor(np.asarray(lin.w), requires_grad=True)
    bt = torch.tensor(np.asarray(lin.b), requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.linear(xt, wt, bt)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(lin(x), yt.detach().numpy(), atol=1e-12, rtol=1e-12)
    np.testing.assert_allclose(
        lin.backward(dy), xt.grad.numpy(), atol=1e-12, rtol=1e-12
    )
    np.testing.assert_allclose(lin.w.grad, wt.grad.numpy(), atol=1e-12, rtol=1e-12)
    np.testing.assert_allclose(lin.b.grad, bt.grad.numpy(), atol=1e-12, rtol=1e-12)
    assert type(lin(x)) is np.ndarray  # outputs are plain arrays, not Parameters


def test_linear_init_is_torch_default_and_float32():
    lin = Linear(64, 32, bias=True, rng=np.random.default_rng(0))
    assert lin.w.dtype == lin.b.dtype == np.float32
    bound = 1 / np.sqrt(64)
    assert np.abs(lin.w).max() <= bound and np.abs(lin.w).max() > 0.95 * bound
    assert np.abs(lin.b).max() <= bound and np.any(lin.b != 0)
    # rng=None: zeros, for callers that fill them in
    zero = Linear(4, 2, bias=True, rng=None)
    assert not np.any(zero.w) and not np.any(zero.b)


def test_head_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    head = Head(4, 3, bias=True, rng=rng, dtype=np.float64)
    x, dy = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 3))
    head(x)
    dx = head.backward(dy)

    def loss(x_):
        return float((head(x_) * dy).sum())

    eps, num = 1e-6, np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        num[i] = (loss(xp) - loss(xm)) / (2 * eps)
    np.testing.assert_allclose(dx, num, atol=1e-8, rtol=1e-6)


# ---------------------------------------------------------------- initialisation


def test_init_follows_torch_and_the_documented_draws():
    C, H = 48, 4
    seq = SequentialMHA(C, H, bias=True, seed=123)
    a = np.sqrt(6 / (C + 3 * C))
    rng = np.random.default_rng(123)
    w_in = rng.uniform(-a, a, (3 * C, C))
    w_out = rng.uniform(-1 / np.sqrt(C), 1 / np.sqrt(C), (C, C))
    np.testing.assert_array_equal(seq.in_proj_weight(), w_in.astype(np.float32))
    np.testing.assert_array_equal(seq.out_proj.w, w_out.astype(np.float32))
    hd = C // H
    np.testing.assert_array_equal(
        seq.heads[1].k_proj.w, w_in[C + hd : C + 2 * hd].astype(np.float32)
    )
    np.testing.assert_array_equal(
        seq.heads[3].v_proj.w, w_in[2 * C + 3 * hd :].astype(np.float32)
    )
    W = seq.in_proj_weight()
    assert np.abs(W).max() <= a and np.abs(W).max() > 0.99 * a
    assert abs(W.var() - a**2 / 3) < 0.05 * a**2 / 3
    assert np.abs(seq.out_proj.w).max() <= 1 / np.sqrt(C)
    assert not np.any(seq.in_proj_bias()) and not np.any(seq.out_proj.b)
    assert (seq.in_channels, seq.n_heads, seq.head_dim, seq.bias, len(seq.heads)) == (
        C,
        H,
        hd,
        True,
        H,
    )
    assert all(
        isinstance(p, Parameter) and p.dtype == np.float32 for p in seq.parameters()
    )
    # per head q, k, v weights and biases; out_proj's two
    assert len(seq.parameters()) == 6 * H + 2


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (
        SequentialMHA(16, 2, seed=9),
        SequentialMHA(16, 2, seed=9),
        SequentialMHA(16, 2, seed=10),
    )
    np.testing.assert_array_equal(a.in_proj_weight(), b.in_proj_weight())
    np.testing.assert_array_equal(a.out_proj.w, b.out_proj.w)
    assert not np.array_equal(a.in_proj_weight(), c.in_proj_weight())
    assert not np.array_equal(
        SequentialMHA(16, 2).out_proj.w, SequentialMHA(16, 2).out_proj.w
    )
    d = SequentialMHA(16, 2, seed=9, dtype=np.float64)
    assert d.in_proj_weight().dtype == np.float64
    np.testing.assert_array_equal(
        d.in_proj_weight().astype(np.float32), a.in_proj_weight()
    )
    assert a.in_proj_bias() is None and in_proj_bias(a) is None
    np.testing.assert_array_equal(in_proj_weight(a), a.in_proj_weight())


# ---------------------------------------------------------------- backward bookkeeping


def test_backward_sets_grads_and_keeps_inputs_intact():
    rng = np.random.default_rng(2)
    seq = SequentialMHA(8, 2, bias=True, seed=0, dtype=np.float64)
    x, dy = rng.normal(size=(2, 3, 8)), rng.normal(size=(2, 3, 8))
    x0, dy0 = x.copy(), dy.copy()
    seq(x)
    dx1, g1 = seq.backward(dy), seq.in_proj_weight(grad=True)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)
    dx2, g2 = seq.backward(dy), seq.in_proj_weight(grad=True)  # set, not accumulated
    np.testing.assert_array_equal(dx1, dx2)
    np.testing.assert_array_equal(g1, g2)
    seq(x)
    x[...] = 0.0  # editing x after forward must not change the gradients
    np.testing.assert_array_equal(seq.backward(dy), dx1)
    for p in seq.parameters():
        assert (
            p.grad is not None
            and p.grad.shape == p.shape
            and p.grad.dtype == np.float64
        )
    assert seq.in_proj_bias(grad=True).shape == (24,)


def test_backward_before_forward_raises():
    with pytest.raises(RuntimeError, match=r"backward\(\) called before forward\(\)"):
        SequentialMHA(8, 2).backward(np.zeros((1, 2, 8)))
    with pytest.raises(RuntimeError, match=r"backward\(\) called before forward\(\)"):
        Head(8, 4, rng=None).backward(np.zeros((1, 2, 4)))
    with pytest.raises(RuntimeError, match=r"backward\(\) called before forward\(\)"):
        Linear(8, 4, rng=None).backward(np.zeros((2, 4)))
    with pytest.raises(RuntimeError, match="call backward"):
        SequentialMHA(8, 2).in_proj_weight(grad=True)
    assert SequentialMHA(8, 2).attn_weights is None


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            {"in_channels": 10, "n_heads": 3},
            ValueError,
            r"in_channels \(10\) must be divisible by n_heads \(3\)",
        ),
        (
            {"in_channels": 0, "n_heads": 1},
            ValueError,
            r"in_channels must be a positive int, got 0",
        ),
        (
            {"in_channels": 8, "n_heads": -2},
            ValueError,
            r"n_heads must be a positive int, got -2",
        ),
        (
            {"in_channels": 8.0, "n_heads": 2},
            TypeError,
            r"in_channels must be a positive int, got 8\.0 \(float\)",
        ),
        (
            {"in_channels": 8, "n_heads": True},
            TypeError,
            r"n_heads must be a positive int, got True \(bool\)",
        ),
        (
            {"in_channels": 8, "n_heads": 2, "bias": "yes"},
            TypeError,
            r"bias must be True or False, got .yes. \(str\)",
        ),
        (
            {"in_channels": 8, "n_heads": 2, "seed": -1},
            ValueError,
            r"seed must be a non-negative int, got -1",
        ),
        (
            {"in_channels": 8, "n_heads": 2, "dtype": np.int32},
            TypeError,
            r"dtype must be np\.float32 or np\.float64",
        ),
        (
            {"in_channels": 8, "n_heads": 2, "dtype": np.float16},
            TypeError,
            r"dtype must be np\.float32 or np\.float64",
        ),
    ],
)
def test_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        SequentialMHA(**kwargs)


@pytest.mark.parametrize(
    "x, error, match",
    [
        (
            np.zeros(8),
            ValueError,
            r"x must have shape \(B, T, 8\) or \(T, 8\), got \(8,\)",
        ),
        (
            np.zeros((1, 2, 3, 8)),
            ValueError,
            r"x must have shape \(B, T, 8\) or \(T, 8\), got \(1, 2, 3, 8\)",
        ),
        (
            np.zeros((2, 3, 7)),
            ValueError,
            r"x must have shape \(B, T, 8\) or \(T, 8\), got \(2, 3, 7\)",
        ),
        (np.zeros((2, 0, 8)), ValueError, r"at least one time step"),
        (
            np.zeros((2, 3, 8), dtype=bool),
            TypeError,
            r"x must hold real floating-point numbers, got dtype bool",
        ),
        (
            np.zeros((2, 3, 8), dtype=np.int64),
            TypeError,
            r"x must be a floating-point array",
        ),
    ],
)
def test_input_errors(x, error, match):
    with pytest.raises(error, match=match):
        SequentialMHA(8, 2, seed=0)(x)


def test_dy_must_have_the_output_shape():
    seq = SequentialMHA(8, 2, seed=0)
    seq(np.zeros((2, 3, 8), dtype=np.float32))
    with pytest.raises(
        ValueError, match=r"dy must have shape \(2, 3, 8\).*got \(3, 8\)"
    ):
        seq.backward(np.zeros((3, 8), dtype=np.float32))
    with pytest.raises(TypeError, match=r"dy must hold real"):
        seq.backward(np.zeros((2, 3, 8), dtype=complex))


def test_reprs_show_structure_not_addresses():
    seq = SequentialMHA(12, 3, bias=True, seed=0)
    assert (
        repr(seq)
        == "SequentialMHA(in_channels=12, n_heads=3, head_dim=4, bias=True, dtype=float32)"
    )
    assert (
        repr(seq.heads[0].q_proj) == "Linear(in_features=12, out_features=4, bias=True)"
    )
    assert repr(seq.heads[0]).startswith(
        "Head(q_proj=Linear(in_features=12, out_features=4"
    )
    assert "0x" not in repr(seq.heads[0]) and "0x" not in repr(seq.out_proj)
