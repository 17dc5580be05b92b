"""mha.positional against torch twins written with torch ops, and the properties the chapter asserts.

torch has no built-in sinusoidal encoding or RoPE, so each function's twin
is written here in torch, independently of the package: the sinusoidal
encoding as PyTorch's transformer tutorial builds it (``exp(-log(base) 2i/d)``),
RoPE as Hugging Face Llama does (``cat(freqs, freqs)``, ``rotate_half``) and
as the complex product of RoFormer (``torch.polar``). torch's autograd
through the twin checks :func:`apply_rope_backward`; finite differences
check it without torch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import TOL, bad_input_tests

from mha import positional
from mha.positional import (
    apply_rope,
    apply_rope_backward,
    rope_frequencies,
    rotate_half,
    sinusoidal_encoding,
)

TORCH = {np.float32: torch.float32, np.float64: torch.float64}


# --- the torch twins ------------------------------------------------------------------------------


def torch_sinusoidal(num_positions, d_model, base=10000.0):
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)
    div_term = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(base) / d_model)
    )
    pe = torch.zeros(num_positions, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


def torch_angles(positions, head_dim, base=10000.0):
    inv_freq = 1.0 / (
        base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    )
    return positions.to(torch.float64)[..., None] * inv_freq  # (..., L, hd / 2)


def torch_rope_rotate_half(x, positions, base=10000.0):
    hd = x.shape[-1]
    angles = torch_angles(positions, hd, base)
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def torch_rope_complex(x, positions, base=10000.0):
    """Pair (x_i, x_(i + hd/2)) as the complex number x_i + 1j x_(i + hd/2), times e^(1j p theta_i)."""
    hd = x.shape[-1]
    z = torch.view_as_complex(
        torch.stack([x[..., : hd // 2], x[..., hd // 2 :]], dim=-1).contiguous()
    )
    angles = torch_angles(positions, hd, base)
    rotor = torch.polar(torch.ones_like(angles), angles).to(z.dtype)
    turned = torch.view_as_real(z * rotor)  # (..., L, hd / 2, 2)
    return torch.cat([turned[..., 0], turned[..., 1]], dim=-1)


# --- sinusoidal encoding --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "num_positions, d_model, base", [(1, 2, 10000.0), (50, 16, 10000.0), (7, 6, 100.0)]
)
def test_sinusoidal_matches_torch(num_positions, d_model, base, dtype):
    pe = sinusoidal_encoding(num_positions, d_model, base=base, dtype=dtype)
    assert pe.shape == (num_positions, d_model) and pe.dtype == dtype
    expected = torch_sinusoidal(num_positions, d_model, base).to(TORCH[dtype]).numpy()
    np.testing.assert_allclose(pe, expected, rtol=0, atol=TOL[dtype])


def test_sinusoidal_first_row_and_range():
    pe = sinusoidal_encoding(30, 8)
    np.testing.assert_array_equal(pe[0], np.tile([0.0, 1.0], 4))  # sin 0 = 0, cos 0 = 1
    assert np.all(np.abs(pe) <= 1)
    np.testing.assert_allclose(pe[:, 0], np.sin(np.arange(30)))  # theta_0 = 1
    np.testing.assert_allclose(pe[:, 0::2] ** 2 + pe[:, 1::2] ** 2, 1.0, atol=1e-15)


def shift_matrix(k, d_model, base=10000.0):
    """M_k: the 2x2 block (cos k theta_i, sin; -sin, cos) on features (2i, 2i+1)."""
    theta = base ** (-np.arange(0, d_model, 2) / d_model)
    m = np.zeros((d_model, d_model))
    c, s = np.cos(k * theta), np.sin(k * theta)
    i = np.arange(0, d_model, 2)
    m[i, i], m[i, i + 1], m[i + 1, i], m[i + 1, i + 1] = c, s, -s, c
    return m


@pytest.mark.parametrize("k", [1, 3, 17])
def test_sinusoidal_shift_is_one_rotation_for_every_position(k):
    d_model, P = 12, 64
    pe = sinusoidal_encoding(P + k, d_model)
    m = shift_matrix(k, d_model)
    # a rotation: orthogonal
    np.testing.assert_allclose(m @ m.T, np.eye(d_model), atol=1e-14)
    # PE[p + k] = M_k PE[p], all p
    np.testing.assert_allclose(pe[k:], pe[:P] @ m.T, atol=1e-12)
    # and M_k is the only such map: least squares on the pairs (PE[p], PE[p+k]) recovers it (a small
    # base, so that every frequency turns far enough over P positions for the system to be well posed)
    pe, m = sinusoidal_encoding(P + k, 6, base=10.0), shift_matrix(k, 6, base=10.0)
    solved, *_ = np.linalg.lstsq(pe[:P], pe[k:], rcond=None)
    np.testing.assert_allclose(solved.T, m, atol=1e-10)


def test_sinusoidal_shift_matrix_of_a_wrong_k_fails():
    pe = sinusoidal_encoding(20, 8)
    # the test can fail
    assert not np.allclose(pe[2:], pe[:18] @ shift_matrix(1, 8).T, atol=1e-3)


# --- RoPE tables ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rope_frequencies_layout(dtype):
    cos, sin = rope_frequencies(8, 40, dtype=dtype)
    assert cos.shape == sin.shape == (40, 8) and cos.dtype == sin.dtype == dtype
    # each angle twice, side by side
    np.testing.assert_array_equal(cos[:, :4], cos[:, 4:])
    np.testing.assert_array_equal(sin[:, :4], sin[:, 4:])
    angles = torch_angles(torch.arange(40), 8)
    np.testing.assert_allclose(
        cos[:, :4], angles.cos().numpy(), atol=TOL[dtype], rtol=0
    )
    np.testing.assert_allclose(
        sin[:, :4], angles.sin().numpy(), atol=TOL[dtype], rtol=0
    )
    np.testing.assert_array_equal(cos[0], 1)
    np.testing.assert_array_equal(sin[0], 0)


def test_rotate_half():
    np.testing.assert_array_equal(
        rotate_half(np.array([1.0, 2.0, 3.0, 4.0])), [-3.0, -4.0, 1.0, 2.0]
    )


# --- apply_rope forward --------------------------------------------------------------------------


def _x(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


CASES = [  # (shape of x, positions or None)
    ((5, 8), None),
    ((2, 3, 6, 16), None),
    ((4, 4), np.array([7, 0, 3, 100])),
    # per-sequence offsets (N, 1, L)
    ((2, 3, 5, 8), np.array([[[0, 1, 2, 3, 4]], [[10, 11, 12, 13, 14]]])),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, positions", CASES)
def test_apply_rope_matches_torch_rotate_half_and_complex(shape, positions, dtype):
    x = _x(shape, dtype)
    x_before = x.copy()
    out = apply_rope(x, positions)
    np.testing.assert_array_equal(x, x_before)  # input not modified
    assert out.shape == x.shape and out.dtype == dtype
    pos = torch.arange(shape[-2]) if positions is None else torch.tensor(positions)
    xt = torch.tensor(x)
    np.testing.assert_allclose(
        out, torch_rope_rotate_half(xt, pos).numpy(), rtol=TOL[dtype], atol=TOL[dtype]
    )
    np.testing.assert_allclose(
        out, torch_rope_complex(xt, pos).numpy(), rtol=TOL[dtype], atol=TOL[dtype]
    )


def test_rotate_half_equals_complex_product_in_numpy():
    x, hd = _x((9, 10), np.float64), 10
    cos, sin = rope_frequencies(hd, 9)
    z = x[:, : hd // 2] + 1j * x[:, hd // 2 :]
    rotor = cos[:, : hd // 2] + 1j * sin[:, : hd // 2]  # e^(1j p theta_i)
    turned = z * rotor
    np.testing.assert_allclose(
        apply_rope(x), np.concatenate([turned.real, turned.imag], axis=-1), atol=1e-14
    )


def test_rope_keeps_norms_and_position_zero_is_identity():
    x = _x((6, 8), np.float64)
    out = apply_rope(x)
    np.testing.assert_allclose(
        np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-14
    )
    np.testing.assert_array_equal(out[0], x[0])


@pytest.mark.parametrize("shift", [1, 5, 40])
def test_rope_scores_depend_only_on_the_offset(shift):
    L, hd = 7, 16
    q, k = _x((L, hd), np.float64, 1), _x((L, hd), np.float64, 2)
    pos = np.arange(L)
    scores = apply_rope(q, pos) @ apply_rope(k, pos).T
    shifted = apply_rope(q, pos + shift) @ apply_rope(k, pos + shift).T
    np.testing.assert_allclose(shifted, scores, atol=1e-12)
    # the same query and key vector at (i, j) and (i + s, j + s) give one score
    one_q, one_k = np.tile(q[0], (L, 1)), np.tile(k[0], (L, 1))
    s = apply_rope(one_q) @ apply_rope(one_k).T  # s[i, j] = f(i - j)
    for offset in range(-L + 1, L):
        diagonal = np.diagonal(s, offset=-offset)
        np.testing.assert_allclose(diagonal, diagonal[0], atol=1e-12)
    # and it does depend on the offset (otherwise RoPE would carry nothing)
    assert np.ptp(np.diagonal(s, offset=0)) < 1e-12 < abs(s[1, 0] - s[0, 0])


def test_freqs_argument_gives_the_same_result():
    x = _x((3, 5, 8), np.float32)
    freqs = rope_frequencies(8, 64, dtype=np.float32)
    np.testing.assert_array_equal(apply_rope(x, freqs=freqs), apply_rope(x))
    np.testing.assert_array_equal(
        apply_rope(x, np.arange(5) + 50, freqs=freqs), apply_rope(x, np.arange(5) + 50)
    )
    wide = apply_rope(x, freqs=rope_frequencies(8, 64))  # float64 tables, float32 x
    assert wide.dtype == np.float32
    np.testing.assert_allclose(wide, apply_rope(x), rtol=0, atol=1e-6)


# --- apply_rope backward -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, positions", CASES)
def test_rope_backward_matches_torch_autograd(shape, positions, dtype):
    x, dout = _x(shape, dtype, 3), _x(shape, dtype, 4)
    pos = torch.arange(shape[-2]) if positions is None else torch.tensor(positions)
    xt = torch.tensor(x, requires_grad=True)
    torch_rope_rotate_half(xt, pos).backward(torch.tensor(dout))
    dx = apply_rope_backward(dout, positions)
    assert dx.shape == x.shape and dx.dtype == dtype
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=TOL[dtype], atol=TOL[dtype])


def test_rope_backward_finite_differences():
    x, g = _x((2, 5, 6), np.float64, 5), _x((2, 5, 6), np.float64, 6)
    positions = np.array([3, 1, 4, 1, 5])
    h, numeric = 1e-6, np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        numeric[idx] = (
            np.sum(apply_rope(x + e, positions) * g)
            - np.sum(apply_rope(x - e, positions) * g)
        ) / (2 * h)
    np.testing.assert_allclose(
        apply_rope_backward(g, positions), numeric, rtol=1e-6, atol=1e-6
    )


def test_rope_backward_undoes_the_rotation():
    x = _x((4, 9, 8), np.float64, 7)
    np.testing.assert_allclose(apply_rope_backward(apply_rope(x)), x, atol=1e-14)
    # the forward twice does not
    assert not np.allclose(apply_rope(apply_rope(x)), x, atol=1e-3)


# --- bad input -----------------------------------------------------------------------------------

BAD = [
    (lambda: sinusoidal_encoding(10, 7), ValueError, r"d_model must be even.*got 7"),
    (
        lambda: sinusoidal_encoding(10, 0),
        ValueError,
        r"d_model must be a positive int, got 0",
    ),
    (
        lambda: sinusoidal_encoding(10, 8.0),
        TypeError,
        r"d_model must be a positive int, got 8\.0",
    ),
    (
        lambda: sinusoidal_encoding(True, 8),
        TypeError,
        r"num_positions must be a positive int, got True",
    ),
    (
        lambda: sinusoidal_encoding(-3, 8),
        ValueError,
        r"num_positions must be a positive int, got -3",
    ),
    (
        lambda: sinusoidal_encoding(4, 8, dtype=np.int32),
        TypeError,
        r"dtype must be np.float32 or np.float64, got int32",
    ),
    (
        lambda: sinusoidal_encoding(4, 8, base=1.0),
        ValueError,
        r"base must be a finite number greater than 1, got 1\.0",
    ),
    (
        lambda: sinusoidal_encoding(4, 8, base="1e4"),
        TypeError,
        r"base must be a number.*'1e4'",
    ),
    (lambda: rope_frequencies(5, 10), ValueError, r"head_dim must be even.*got 5"),
    (
        lambda: rope_frequencies(8, 0),
        ValueError,
        r"max_positions must be a positive int, got 0",
    ),
    (
        lambda: rope_frequencies(8, 10, base=float("inf")),
        ValueError,
        r"base must be a finite.*got inf",
    ),
    (
        lambda: apply_rope(np.zeros((4, 7))),
        ValueError,
        r"last dimension of x \(head_dim\).*even.*\(4, 7\)",
    ),
    (
        lambda: apply_rope(np.zeros(8)),
        ValueError,
        r"x must have shape \(\.\.\., L, head_dim\), got shape \(8,\)",
    ),
    (
        lambda: apply_rope(np.zeros((4, 8), dtype=np.int64)),
        TypeError,
        r"x must be a floating-point array.*int64",
    ),
    (
        lambda: apply_rope(np.zeros((4, 8)), np.arange(4.0)),
        TypeError,
        r"positions must be an array of ints.*float64",
    ),
    (
        lambda: apply_rope(np.zeros((4, 8)), np.ones(4, dtype=bool)),
        TypeError,
        r"positions must be an array of ints.*bool",
    ),
    (
        lambda: apply_rope(np.zeros((4, 8)), np.array([0, 1, -1, 2])),
        ValueError,
        r"positions must be in \[0, .*from -1 to 2",
    ),
    (
        lambda: apply_rope(
            np.zeros((4, 8)), np.arange(4) + 8, freqs=rope_frequencies(8, 10)
        ),
        ValueError,
        r"positions must be in \[0, 10\).*from 8 to 11",
    ),
    (
        lambda: apply_rope(np.zeros((4, 8)), np.arange(5)),
        ValueError,
        r"positions of shape \(5,\).*\(4,\)",
    ),
    (
        lambda: apply_rope(np.zeros((2, 4, 8)), np.zeros((3, 4), dtype=int)),
        ValueError,
        r"positions of shape \(3, 4\).*\(2, 4\)",
    ),
    (
        lambda: apply_rope(np.zeros((4, 8)), 3),
        ValueError,
        r"positions must have shape \(L,\) = \(4,\).*scalar",
    ),
    (
        lambda: apply_rope(np.zeros((4, 8)), freqs=rope_frequencies(6, 10)),
        ValueError,
        r"freqs\[0\] \(cos\).*\(P, 8\).*\(10, 6\)",
    ),
    (
        lambda: apply_rope(np.zeros((4, 8)), freqs=[1, 2]),
        TypeError,
        r"freqs must be the \(cos, sin\) pair.*list",
    ),
    (
        lambda: apply_rope_backward(np.zeros((4, 8), dtype=np.int32)),
        TypeError,
        r"dout must be a floating-point.*int32",
    ),
    (
        lambda: apply_rope_backward(
            np.zeros((3, 8)), np.array([0, 1, 2]), freqs=rope_frequencies(8, 2)
        ),
        ValueError,
        r"positions must be in \[0, 2\)",
    ),
    (
        lambda: rotate_half(np.zeros((2, 3))),
        ValueError,
        r"x must have an even last dimension.*\(2, 3\)",
    ),
]


test_bad_input_is_named, test_every_function_of_the_module_has_a_bad_input_case = (
    bad_input_tests(positional, BAD)
)


def test_module_is_exported_at_top_level():
    import mha

    assert mha.positional is positional
    assert set(positional.__all__) == {
        "sinusoidal_encoding",
        "rope_frequencies",
        "rotate_half",
        "apply_rope",
        "apply_rope_backward",
    }
