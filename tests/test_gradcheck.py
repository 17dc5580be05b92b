"""Finite-difference checks of the hand-written backward passes, in float64, without torch.

For a scalar loss ``f = sum(out * G)`` with a fixed random ``G``, every
element ``x_i`` of every input and parameter is nudged by ``±h`` and the
central difference ``(f(x + h e_i) - f(x - h e_i)) / 2h`` is compared with
the analytic gradient the package computes.

Why ``h = 1e-6`` and a tolerance of ``1e-6``: the central difference has a
truncation error ``h^2 / 6 * |f'''| ~ 1e-12`` (the third derivatives of
these smooth functions are O(1)-O(10)) and a rounding error of about
``eps * |f| / h ~ 2.2e-16 * 10 / 1e-6 ~ 2e-9`` for losses of size ~10. The
total, a few 1e-9, sits more than two orders of magnitude below 1e-6,
while a wrong backward (a missing term, a transposed weight, a lost
broadcast sum) is off by O(0.01-1): see ``test_wrong_softmax_backward_is_caught``.
"""

from __future__ import annotations

import numpy as np
import pytest

import mha.functional as F
from mha import MultiHeadAttention
from mha.functional import (
    attention_backward,
    attention_forward,
    linear,
    linear_backward,
    merge_heads,
    softmax,
    softmax_backward,
    split_heads,
)

STEP = 1e-6  # finite-difference step h
TOL = 1e-6  # rtol = atol: error budget derived in the module docstring

E, HEADS, N, L, S = 8, 2, 2, 3, 4  # d_model, num_heads, batch, query length, key length


def numeric_grad(loss, x: np.ndarray, h: float = STEP) -> np.ndarray:
    """Central differences of the scalar ``loss()`` with respect to every element of ``x``.

    ``x`` is perturbed in place (``loss`` must read it) and restored exactly.
    """
    assert x.dtype == np.float64, "finite differences at h=1e-6 need float64"
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        original = x[idx]
        x[idx] = original + h
        plus = loss()
        x[idx] = original - h
        minus = loss()
        x[idx] = original
        grad[idx] = (plus - minus) / (2 * h)
    return grad


def check_grad(label: str, analytic, numeric, tol: float = TOL) -> None:
    """assert_allclose naming the gradient that was checked."""
    analytic = np.asarray(analytic)
    assert analytic.shape == numeric.shape, (
        f"{label}: analytic shape {analytic.shape} != numeric {numeric.shape}"
    )
    assert np.isfinite(analytic).all(), f"{label}: analytic gradient is not finite"
    np.testing.assert_allclose(
        analytic,
        numeric,
        rtol=tol,
        atol=tol,
        err_msg=f"{label}: analytic gradient differs from central differences",
    )


# ------------------------------------------------------------------ MultiHeadAttention


def _masks(rng, batched, S_, kind):
    """Forward kwargs for one mask kind: a float attn_mask and a bool key_padding_mask."""
    n = N if batched else 1
    if kind is None:
        return {}
    if kind == "float_attn_bool_kpm":
        # one float mask per sequence and head
        attn = rng.standard_normal((n * HEADS, L, S_))
        attn[0, 0, 1] = -np.inf  # a blocked pair inside a float mask
        kpm = np.zeros((n, S_), dtype=bool)
        kpm[0, -1] = True  # first sequence: last key is padding
        # unbatched: (H, L, S), (S,)
        return dict(attn_mask=attn, key_padding_mask=kpm if batched else kpm[0])
    if kind == "float_attn_2d":
        return dict(attn_mask=rng.standard_normal((L, S_)))
    if kind == "fully_masked_row":  # query 1 may attend no key: output is b_O there
        attn = np.zeros((L, S_), dtype=bool)
        attn[1] = True
        return dict(attn_mask=attn)
    raise ValueError(kind)


# (id, constructor options, self-attention m(x)?, layout, mask kind)
MODULE_CASES = [
    ("self_attention", {}, True, "batch_first", None),
    ("cross_attention", {}, False, "batch_first", None),
    ("cross_kdim_vdim", dict(kdim=5, vdim=3), False, "batch_first", None),
    ("add_bias_kv", dict(add_bias_kv=True), False, "batch_first", None),
    ("add_bias_kv_self", dict(add_bias_kv=True), True, "batch_first", None),
    ("add_zero_attn", dict(add_zero_attn=True), False, "batch_first", None),
    ("no_bias", dict(bias=False), False, "batch_first", None),
    ("no_bias_self", dict(bias=False), True, "batch_first", None),
    ("float_attn_mask_bool_kpm", {}, False, "batch_first", "float_attn_bool_kpm"),
    ("float_attn_mask_bool_kpm_self", {}, True, "batch_first", "float_attn_bool_kpm"),
    ("seq_first", {}, False, "seq_first", None),
    ("seq_first_self", {}, True, "seq_first", "float_attn_2d"),
    ("unbatched", {}, False, "unbatched", None),
    (
        "unbatched_masks",
        dict(kdim=5, vdim=3),
        False,
        "unbatched",
        "float_attn_bool_kpm",
    ),
    ("fully_masked_row", {}, False, "batch_first", "fully_masked_row"),
    (
        "everything",
        dict(kdim=5, vdim=3, add_bias_kv=True, add_zero_attn=True),
        False,
        "seq_first",
        "float_attn_bool_kpm",
    ),
]


@pytest.mark.parametrize(
    "case_id, options, self_attention, layout, mask_kind",
    MODULE_CASES,
    ids=[c[0] for c in MODULE_CASES],
)
def test_module_backward_matches_finite_differences(
    case_id, options, self_attention, layout, mask_kind
):
    rng = np.random.default_rng([c[0] for c in MODULE_CASES].index(case_id))
    m = MultiHeadAttention(
        E, HEADS, dtype=np.float64, batch_first=layout != "seq_first", seed=1, **options
    )
    for name, p in m.parameters().items():
        if name.startswith("b_"):
            # zero biases would hide a bias-gradient bug
            p[...] = rng.uniform(-0.5, 0.5, p.shape)
    S_ = L if self_attention else S

    def make(T, features):
        x = rng.standard_normal((N, T, features))
        if layout == "seq_first":
            return np.ascontiguousarray(x.transpose(1, 0, 2))
        return x[0].copy() if layout == "unbatched" else x

    q = make(L, E)
    k = make(S_, m.kdim)
    v = make(S_, m.vdim)
    kwargs = _masks(rng, layout != "unbatched", S_, mask_kind)
    if self_attention:

        def forward():
            return m(q, **kwargs)

        inputs = {"grad input (m(x))": q}
    else:

        def forward():
            return m(q, k, v, **kwargs)

        inputs = {"grad query": q, "grad key": k, "grad value": v}

    out = forward()
    G = rng.standard_normal(out.shape)
    grads_in = m.backward(G)
    grads_in = (grads_in,) if self_attention else grads_in
    analytic_params = {name: g.copy() for name, g in m.grads.items()}
    assert set(analytic_params) == set(m.parameters()), (
        f"m.grads has {sorted(analytic_params)}, the module's parameters are {sorted(m.parameters())}"
    )

    def loss():
        return float(np.sum(forward() * G))

    for (label, x), analytic in zip(inputs.items(), grads_in):
        check_grad(f"{case_id}: {label}", analytic, numeric_grad(loss, x))
    for name, p in m.parameters().items():
        check_grad(
            f"{case_id}: grad {name}", analytic_params[name], numeric_grad(loss, p)
        )


# ------------------------------------------------------------------ functional


@pytest.mark.parametrize("shape, axis", [((2, 3, 5), -1), ((4, 3), 0), ((2, 3, 4), 1)])
def test_softmax_backward_matches_finite_differences(shape, axis):
    rng = np.random.default_rng(len(shape) * 10 + axis)
    x = 2.0 * rng.standard_normal(shape)
    G = rng.standard_normal(shape)

    def loss():
        return float(np.sum(softmax(x, axis=axis) * G))

    check_grad(
        f"softmax_backward shape={shape} axis={axis}",
        softmax_backward(G, softmax(x, axis=axis), axis=axis),
        numeric_grad(loss, x),
    )


def test_softmax_backward_with_blocked_entries():
    """-inf logits (masked keys) have zero probability and zero gradient; the rest is unchanged."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 6))
    x[0, [1, 4]] = -np.inf
    x[2, 0] = -np.inf
    G = rng.standard_normal(x.shape)

    def loss():
        return float(np.sum(softmax(x) * G))

    analytic = softmax_backward(G, softmax(x))
    # -inf +- h stays -inf: the numeric derivative there is 0
    numeric = numeric_grad(loss, x)
    check_grad("softmax_backward with -inf logits", analytic, numeric)
    assert np.all(analytic[np.isneginf(x)] == 0)


ATTENTION_SHAPES = {
    # id: (q, k, v, float mask) shapes
    "same_batch": ((2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 3), (3, 5)),
    "broadcast_kv": ((2, 2, 3, 4), (1, 2, 5, 4), (2, 5, 3), (2, 1, 3, 5)),
    "broadcast_q": ((2, 1, 3, 4), (2, 2, 5, 4), (1, 2, 5, 3), (1, 2, 3, 5)),
}


@pytest.mark.parametrize("scale", [None, 0.7])
@pytest.mark.parametrize("shapes_id", list(ATTENTION_SHAPES))
def test_attention_backward_matches_finite_differences(shapes_id, scale):
    """dq, dk, dv of softmax(q k^T * scale + mask) v, with a float mask and broadcast batch axes."""
    q_shape, k_shape, v_shape, mask_shape = ATTENTION_SHAPES[shapes_id]
    rng = np.random.default_rng(list(ATTENTION_SHAPES).index(shapes_id))
    q, k, v = (
        rng.standard_normal(q_shape),
        rng.standard_normal(k_shape),
        rng.standard_normal(v_shape),
    )
    mask = rng.standard_normal(mask_shape)
    mask[..., 0, 2] = -np.inf  # one blocked key inside the float mask
    out, cache = attention_forward(q, k, v, mask, scale)
    G = rng.standard_normal(out.shape)
    dq, dk, dv = attention_backward(G, cache)

    def loss():
        return float(np.sum(attention_forward(q, k, v, mask, scale)[0] * G))

    for label, analytic, x in (("dq", dq, q), ("dk", dk, k), ("dv", dv, v)):
        check_grad(
            f"attention_backward {shapes_id} scale={scale}: {label}",
            analytic,
            numeric_grad(loss, x),
        )


@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("lead", [(), (2,), (2, 3)], ids=["1-D", "2-D", "3-D"])
def test_linear_backward_matches_finite_differences(lead, has_bias):
    """dx, dW, db of x @ W + b over any leading axes."""
    rng = np.random.default_rng(len(lead))
    x, W = rng.standard_normal((*lead, 4)), rng.standard_normal((4, 5))
    b = rng.standard_normal(5) if has_bias else None
    G = rng.standard_normal((*lead, 5))
    dx, dW, db = linear_backward(G, x, W, has_bias)

    def loss():
        return float(np.sum(linear(x, W, b) * G))

    pairs = [("dx", dx, x), ("dW", dW, W)] + ([("db", db, b)] if has_bias else [])
    for label, analytic, arr in pairs:
        check_grad(
            f"linear_backward lead={lead}: {label}", analytic, numeric_grad(loss, arr)
        )
    assert has_bias or db is None


def test_merge_heads_is_the_backward_of_split_heads():
    """split_heads is a reshape and transpose: its gradient is merge_heads of the upstream one."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 6))
    G = rng.standard_normal((2, 2, 3, 3))  # (N, H, L, hd)

    def loss():
        return float(np.sum(split_heads(x, 2) * G))

    check_grad("split_heads backward", merge_heads(G), numeric_grad(loss, x))


# ------------------------------------------------------------------ the check can fail


def wrong_softmax_backward(dout, probs, axis=-1):
    """The classic mistake: only the Jacobian's diagonal, p (1 - p) dout."""
    return probs * (1 - probs) * dout


def test_wrong_softmax_backward_is_caught():
    """The same check rejects the element-wise ``p (1 - p) dout``, by orders of magnitude."""
    rng = np.random.default_rng(0)
    x = 2.0 * rng.standard_normal((2, 3, 5))
    G = rng.standard_normal(x.shape)

    def loss():
        return float(np.sum(softmax(x) * G))

    numeric = numeric_grad(loss, x)
    p = softmax(x)
    # the right one passes ...
    check_grad("softmax_backward (right)", softmax_backward(G, p), numeric)
    wrong = wrong_softmax_backward(G, p)
    error = np.max(np.abs(wrong - numeric))
    assert error > 1e4 * TOL, (
        f"p*(1-p)*dout is off by only {error:.3g}: the check would not tell it apart"
    )
    # ... the wrong one fails
    with pytest.raises(AssertionError, match="softmax_backward \\(wrong\\)"):
        check_grad("softmax_backward (wrong)", wrong, numeric)


def test_wrong_softmax_backward_breaks_attention_check(monkeypatch):
    """Put the wrong softmax backward inside attention_backward: dq and dk fail, dv (no softmax) still passes."""
    rng = np.random.default_rng(1)
    q, k, v = (
        rng.standard_normal((2, 3, 4)),
        rng.standard_normal((2, 5, 4)),
        rng.standard_normal((2, 5, 3)),
    )
    mask = rng.standard_normal((3, 5))
    out, cache = attention_forward(q, k, v, mask)
    G = rng.standard_normal(out.shape)

    def loss():
        return float(np.sum(attention_forward(q, k, v, mask)[0] * G))

    numeric = {
        "dq": numeric_grad(loss, q),
        "dk": numeric_grad(loss, k),
        "dv": numeric_grad(loss, v),
    }
    monkeypatch.setattr(F, "softmax_backward", wrong_softmax_backward)
    dq, dk, dv = attention_backward(G, cache)
    for label, analytic in (("dq", dq), ("dk", dk)):
        error = np.max(np.abs(analytic - numeric[label]))
        assert error > 1e3 * TOL, (
            f"{label} with the wrong softmax backward is off by only {error:.3g}"
        )
        with pytest.raises(
            AssertionError, match=f"{label} with wrong softmax backward"
        ):
            check_grad(f"{label} with wrong softmax backward", analytic, numeric[label])
    check_grad("dv with wrong softmax backward (does not use it)", dv, numeric["dv"])
