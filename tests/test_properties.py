"""Property tests: ``mha`` against torch over randomly drawn shapes, options and masks.

Hypothesis draws the configuration (heads, head size, batch, lengths,
constructor options, layout, dtype, masks); the arrays themselves come from
a NumPy generator seeded by a drawn integer. ``derandomize=True`` makes
every run draw the same examples, so CI is deterministic.

Tolerances are the parity tests': 1e-10 in float64, 1e-5 in float32
(``helpers.tol_for``), as rtol = atol.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from helpers import assert_close, matching_pair, tol_for, torch_run
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mha

DTYPES = st.sampled_from([np.float32, np.float64])


def deterministic(max_examples):
    return settings(max_examples=max_examples, deadline=None, derandomize=True)


# ------------------------------------------------------------------ MultiHeadAttention vs torch


@dataclass
class MHACase:
    H: int
    head_dim: int
    N: int
    L: int
    S: int
    options: dict  # constructor options (bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first)
    self_attention: bool  # m(x) rather than m(q, k, v)
    unbatched: bool
    dtype: type  # the module's dtype
    input_dtype: type  # the arrays' dtype (cast by the module)
    need_weights: bool
    average: bool
    kpm: bool  # draw a key_padding_mask
    attn: str | None  # None, "2d" (L, S) or "3d" (N * H, L, S)
    mask_dtype: str  # "bool" or "float" (both masks)
    fully_masked: bool  # leave fully masked query rows in place
    seed: int


@st.composite
def mha_cases(draw):
    H, head_dim = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    self_attention, unbatched = draw(st.booleans()), draw(st.booleans())
    N = 1 if unbatched else draw(st.integers(1, 3))
    L = draw(st.integers(1, 6))
    S = L if self_attention else draw(st.integers(1, 6))
    dims = st.none() | st.integers(1, 7)
    options = dict(
        bias=draw(st.booleans()),
        add_bias_kv=draw(st.booleans()),
        add_zero_attn=draw(st.booleans()),
        kdim=None if self_attention else draw(dims),
        vdim=None if self_attention else draw(dims),
        batch_first=draw(st.booleans()),
    )
    return MHACase(
        H=H,
        head_dim=head_dim,
        N=N,
        L=L,
        S=S,
        options=options,
        self_attention=self_attention,
        unbatched=unbatched,
        dtype=draw(DTYPES),
        input_dtype=draw(DTYPES),
        need_weights=draw(st.booleans()),
        average=draw(st.booleans()),
        kpm=draw(st.booleans()),
        attn=draw(st.sampled_from([None, "2d", "3d"])),
        mask_dtype=draw(st.sampled_from(["bool", "float"])),
        fully_masked=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def draw_masks(case: MHACase, rng, extra_keys: int):
    """(forward kwargs, blocked (N, H, L, S') bool, dead (N, H, L) bool: rows with no key left).

    Masks use nn.MultiheadAttention's convention, True = blocked. With
    ``case.fully_masked`` one query row is blocked entirely (it keeps the
    extra keys of add_bias_kv/add_zero_attn, which are never masked);
    otherwise every row that lost all its keys gets one back.
    """
    N, H, L, S = case.N, case.H, case.L, case.S
    rate = rng.uniform(0.2, 0.9)
    kpm = rng.random((N, S)) < rate if case.kpm else None
    attn = None
    if case.attn == "2d":
        attn = rng.random((L, S)) < rate
    elif case.attn == "3d":
        attn = rng.random((N * H, L, S)) < rate

    def blocked_now():
        b = np.zeros((N, H, L, S), dtype=bool)
        if attn is not None:
            b |= attn if attn.ndim == 2 else attn.reshape(N, H, L, S)
        if kpm is not None:
            b |= kpm[:, None, None, :]
        return b

    if case.fully_masked:  # make sure one row really has no key left
        if attn is not None:
            row = (
                (rng.integers(L),)
                if attn.ndim == 2
                else (rng.integers(N * H), rng.integers(L))
            )
            attn[row] = True  # every key of this (sequence, head,) query
        elif kpm is not None:
            kpm[rng.integers(N)] = True
    else:
        for n, h, l in zip(*np.nonzero(blocked_now().all(axis=-1))):
            j = rng.integers(S)  # give this row key j back, in both masks
            if attn is not None:
                attn[(l, j) if attn.ndim == 2 else (n * H + h, l, j)] = False
            if kpm is not None:
                kpm[n, j] = False
    blocked = np.concatenate(
        [blocked_now(), np.zeros((N, H, L, extra_keys), dtype=bool)], axis=-1
    )
    dead = blocked.all(axis=-1)
    if not case.fully_masked:
        assert not dead.any()

    def as_given(mask, noise):
        if case.mask_dtype == "bool":
            return mask
        values = rng.standard_normal(mask.shape) if noise else np.zeros(mask.shape)
        # float masks: added to the scores
        return np.where(mask, -np.inf, values).astype(case.dtype)

    kwargs = {}
    if kpm is not None:
        kwargs["key_padding_mask"] = as_given(
            kpm[0] if case.unbatched else kpm, noise=False
        )
    if attn is not None:
        # 3d unbatched: (H, L, S) since N == 1
        kwargs["attn_mask"] = as_given(attn, noise=True)
    return kwargs, blocked, dead


def batch_major(a, case: MHACase):
    """An output/input in the caller's layout -> (N, L, features)."""
    a = np.asarray(a)
    if case.unbatched:
        return a[None]
    return a if case.options["batch_first"] else a.transpose(1, 0, 2)


@deterministic(max_examples=200)
@given(case=mha_cases())
def test_mha_matches_torch(case: MHACase):
    rng = np.random.default_rng(case.seed)
    E = case.H * case.head_dim
    m, torch_mha = matching_pair(
        E, case.H, dtype=case.dtype, seed=case.seed, **case.options
    )
    tol = tol_for(case.dtype)
    extra_keys = int(case.options["add_bias_kv"]) + int(case.options["add_zero_attn"])

    def make(T, features):
        x = rng.standard_normal((case.N, T, features)).astype(case.input_dtype)
        if case.unbatched:
            return x[0]
        return (
            x
            if case.options["batch_first"]
            else np.ascontiguousarray(x.transpose(1, 0, 2))
        )

    q = make(case.L, E)
    k = make(case.S, m.kdim)
    v = make(case.S, m.vdim)
    masks, blocked, dead = draw_masks(case, rng, extra_keys)
    # shown by --hypothesis-show-statistics
    event(f"fully masked rows: {bool(dead.any())}")
    event(
        f"masks: {', '.join(sorted(masks)) + ' (' + case.mask_dtype + ')' if masks else 'none'}"
    )
    before = {
        "query": q.copy(),
        "key": k.copy(),
        "value": v.copy(),
        **{n: a.copy() for n, a in masks.items()},
    }

    args = (q,) if case.self_attention else (q, k, v)
    result = m(
        *args,
        need_weights=case.need_weights,
        average_attn_weights=case.average,
        **masks,
    )
    out, weights = result if case.need_weights else (result, None)
    assert out.dtype == m.dtype, f"output dtype {out.dtype} != module dtype {m.dtype}"
    assert out.shape == q.shape, f"output shape {out.shape} != query shape {q.shape}"
    G = rng.standard_normal(out.shape).astype(case.dtype)
    G_before = G.copy()
    grads_in = m.backward(G)
    grads_in = (grads_in,) if case.self_attention else grads_in

    # inputs, masks and grad_output are never written to
    for name, original in before.items():
        current = {"query": q, "key": k, "value": v}.get(name, masks.get(name))
        np.testing.assert_array_equal(
            current, original, err_msg=f"{name} was modified by forward/backward"
        )
    np.testing.assert_array_equal(
        G, G_before, err_msg="grad_output was modified by backward"
    )

    # output and every gradient against torch's default (SDPA) route, which gives zeros for dead rows
    t_out, _, t_grads_in, t_grads = torch_run(
        torch_mha,
        q,
        k,
        v,
        G,
        self_attention=case.self_attention,
        need_weights=False,
        **masks,
    )
    assert_close("output (torch need_weights=False route)", out, t_out, tol)
    labels = (
        ("grad input",)
        if case.self_attention
        else ("grad query", "grad key", "grad value")
    )
    for label, ours, theirs in zip(labels, grads_in, t_grads_in):
        assert ours.dtype == m.dtype, (
            f"{label} dtype {ours.dtype} != module dtype {m.dtype}"
        )
        assert_close(label, ours, theirs, tol)
    state = mha.torch_state_dict(m, grads=True)
    assert set(state) == set(t_grads), (
        f"parameter gradients {sorted(state)} != torch's {sorted(t_grads)}"
    )
    for name, theirs in t_grads.items():
        assert state[name].dtype == m.dtype, (
            f"grad {name} dtype {state[name].dtype} != module dtype {m.dtype}"
        )
        assert_close(f"grad {name}", state[name], theirs, tol)

    if not case.need_weights:
        return
    assert weights.dtype == m.dtype, (
        f"weights dtype {weights.dtype} != module dtype {m.dtype}"
    )
    w = weights[None] if case.unbatched else weights  # (N, H, L, S') or (N, L, S')
    S_total = case.S + extra_keys
    # each head's row sums to 1, or 0 when no key is left
    head_alive = (~dead).astype(np.float64)
    expected_sums = head_alive.mean(axis=1) if case.average else head_alive
    assert w.shape == expected_sums.shape + (S_total,), f"weights shape {weights.shape}"
    np.testing.assert_allclose(
        w.sum(axis=-1),
        expected_sums,
        rtol=0,
        atol=tol,
        err_msg="attention weight rows must sum to 1 (0 where every key is masked)",
    )
    if not case.average:
        assert np.all(w[blocked] == 0), "a blocked key got attention weight"

    # torch's need_weights=True route: NaN wherever a head has no key left, so compare the other rows
    t_out_w, t_weights, _, _ = torch_run(
        torch_mha,
        q,
        k,
        v,
        self_attention=case.self_attention,
        need_weights=True,
        average_attn_weights=case.average,
        **masks,
    )
    t_w = t_weights.detach().numpy()
    t_w = t_w[None] if case.unbatched else t_w
    row_ok = ~dead.any(axis=1)  # (N, L): every head of the query has a key
    weight_rows = row_ok if case.average else ~dead
    assert_close(
        "attention weights (rows with a key left)",
        w[weight_rows],
        t_w[weight_rows],
        tol,
    )
    assert_close(
        "output (torch need_weights=True route, rows with a key left)",
        batch_major(out, case)[row_ok],
        batch_major(t_out_w.detach().numpy(), case)[row_ok],
        tol,
    )


# ------------------------------------------------------------------ softmax


@st.composite
def logits(draw, dtype, low, high, allow_neg_inf=False):
    """(x, axis): an array of 1-4 dims and one of its axes."""
    x = draw(
        hnp.arrays(
            dtype,
            hnp.array_shapes(min_dims=1, max_dims=4, max_side=5),
            elements=st.floats(low, high, width=np.dtype(dtype).itemsize * 8),
        )
    )
    if allow_neg_inf:
        x = np.where(draw(hnp.arrays(np.bool_, x.shape)), -np.inf, x).astype(dtype)
    return x, draw(st.integers(-x.ndim, x.ndim - 1))


@deterministic(max_examples=150)
@given(data=st.data())
def test_softmax_invariant_to_row_constant(data):
    """softmax(x + c) == softmax(x) for c constant along the axis, -inf entries included.

    float64, |x| <= 50, |c| <= 100: rounding x + c costs at most ulp(150) ~ 3e-14
    per logit, so the probabilities agree to well within 1e-12.
    """
    x, axis = data.draw(logits(np.float64, -50, 50, allow_neg_inf=True))
    row_shape = list(x.shape)
    row_shape[axis] = 1
    c = data.draw(
        hnp.arrays(np.float64, tuple(row_shape), elements=st.floats(-100, 100))
    )
    x_before = x.copy()
    p = mha.softmax(x, axis=axis)
    np.testing.assert_array_equal(x, x_before, err_msg="softmax modified its input")
    np.testing.assert_allclose(
        mha.softmax(x + c, axis=axis),
        p,
        rtol=0,
        atol=1e-12,
        err_msg="softmax(x + c) != softmax(x)",
    )
    dead = np.isneginf(x).all(axis=axis, keepdims=True)
    np.testing.assert_allclose(
        p.sum(axis=axis, keepdims=True),
        np.where(dead, 0.0, 1.0),
        rtol=0,
        atol=1e-12,
        err_msg="softmax rows must sum to 1 (0 when every entry is -inf)",
    )


@deterministic(max_examples=150)
@given(data=st.data(), dtype=DTYPES)
def test_softmax_matches_torch(data, dtype):
    x, axis = data.draw(logits(dtype, -1e3, 1e3))
    ours = mha.softmax(x, axis=axis)
    assert ours.dtype == x.dtype, f"softmax of {x.dtype} returned {ours.dtype}"
    assert_close(
        f"softmax axis={axis}",
        ours,
        torch.softmax(torch.from_numpy(x), dim=axis),
        tol_for(dtype),
    )


# ------------------------------------------------------------------ scaled_dot_product_attention


@dataclass
class SDPACase:
    q_shape: tuple
    k_shape: tuple
    v_shape: tuple
    mask: str | None  # None, "bool" (True = takes part), "float" or "causal"
    mask_shape: tuple | None
    scale: float | None
    enable_gqa: bool
    dtype: type
    seed: int


@st.composite
def sdpa_cases(draw):
    L, S, E, Ev = (draw(st.integers(1, 5)) for _ in range(4))
    gqa = draw(st.booleans())
    batch = draw(st.lists(st.integers(1, 3), min_size=1 if gqa else 0, max_size=3))
    q_batch = k_batch = list(batch)
    if gqa:  # axis -3 holds the heads: Hq = group * Hkv
        hkv, group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        q_batch, k_batch = batch[:-1] + [hkv * group], batch[:-1] + [hkv]

    def broadcast_view(shape, keep):
        """Drop some leading axes and set some to 1; the last ``keep`` axes stay as they are."""
        drop = draw(st.integers(0, len(shape) - keep))
        shape = shape[drop:]
        free = len(shape) - keep
        return tuple(
            1 if i < free and draw(st.booleans()) else d for i, d in enumerate(shape)
        )

    keep = 1 if gqa else 0  # GQA needs the heads axis on all three
    q_shape = broadcast_view(q_batch, keep) + (L, E)
    k_view = broadcast_view(k_batch, keep)
    v_view = k_view if gqa and draw(st.booleans()) else broadcast_view(k_batch, keep)
    if gqa:  # key and value must have the same heads
        v_view = v_view[:-1] + (k_view[-1],)
    k_shape, v_shape = k_view + (S, E), v_view + (S, Ev)
    # the scores q k^T broadcast q's and k's batch axes (value's join only after the softmax)
    lead = 3 if gqa else 2
    scores_batch = np.broadcast_shapes(q_shape[:-lead], k_shape[:-lead]) + (
        (q_shape[-3],) if gqa else ()
    )
    mask = draw(st.sampled_from([None, "bool", "float", "causal"]))
    mask_shape = None
    if mask in ("bool", "float"):  # broadcastable to the scores (..., L, S)
        mask_shape = broadcast_view(list(scores_batch) + [L, S], 0)
        mask_shape = mask_shape if len(mask_shape) else (L, S)
    scale = draw(st.none() | st.floats(0.05, 2.0))
    return SDPACase(
        q_shape,
        k_shape,
        v_shape,
        mask,
        mask_shape,
        scale,
        gqa,
        draw(DTYPES),
        draw(st.integers(0, 2**16)),
    )


@deterministic(max_examples=250)
@given(case=sdpa_cases())
def test_sdpa_matches_torch(case: SDPACase):
    rng = np.random.default_rng(case.seed)
    q, k, v = (
        rng.standard_normal(s).astype(case.dtype)
        for s in (case.q_shape, case.k_shape, case.v_shape)
    )
    kwargs = {}
    if case.mask == "bool":  # True = takes part; fully masked rows are allowed
        kwargs["attn_mask"] = rng.random(case.mask_shape) < rng.uniform(0.3, 1.0)
    elif case.mask == "float":
        values = rng.standard_normal(case.mask_shape)
        kwargs["attn_mask"] = np.where(
            rng.random(case.mask_shape) < 0.3, -np.inf, values
        ).astype(case.dtype)
    elif case.mask == "causal":
        kwargs["is_causal"] = True
    if case.scale is not None:
        kwargs["scale"] = case.scale
    if case.enable_gqa:
        kwargs["enable_gqa"] = True
    event(f"mask: {case.mask}, enable_gqa: {case.enable_gqa}")
    event(
        f"q, k, v batch axes broadcast: {len({s[:-2] for s in (case.q_shape, case.k_shape, case.v_shape)}) > 1}"
    )
    before = [a.copy() for a in (q, k, v)]

    ours = mha.scaled_dot_product_attention(q, k, v, **kwargs)
    for name, a, b in zip(("query", "key", "value"), (q, k, v), before):
        np.testing.assert_array_equal(a, b, err_msg=f"{name} was modified")
    t_kwargs = {
        n: torch.from_numpy(np.asarray(a)) if n == "attn_mask" else a
        for n, a in kwargs.items()
    }
    theirs = torch.nn.functional.scaled_dot_product_attention(
        torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), **t_kwargs
    )
    assert ours.dtype == q.dtype, f"output dtype {ours.dtype} != input dtype {q.dtype}"
    assert_close(f"sdpa {case}", ours, theirs, tol_for(case.dtype))
