"""The tests' one home for shared tolerances, the torch reference run and the parity cases.

Import from here in any test file: ``from helpers import TOL, tol_for, assert_close``
(``tests/conftest.py`` puts this folder on ``sys.path``). Nothing here imports torch at
import time, so a torch-free test may use ``TOL`` too; the functions that need torch
import it when called.

Every comparison goes through :func:`assert_close` with a label, so a failure
names the step that broke ("grad in_proj_weight", "weights", ...).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

import mha

# The seed's float32 tolerance; float64 agrees to rounding error. rtol = atol = TOL[dtype].
TOL = {np.float32: 1e-5, np.float64: 1e-10}


def tol_for(dtype) -> float:
    """``TOL`` for a dtype given in any form (``np.float32``, ``"float64"``, an array's dtype)."""
    return TOL[np.dtype(dtype).type]


def torch_dtype(dtype):
    """torch's dtype for a NumPy floating dtype."""
    import torch

    return {np.float32: torch.float32, np.float64: torch.float64}[np.dtype(dtype).type]


def assert_close(label: str, ours, theirs, tol: float) -> None:
    """assert_allclose with the step's name in the message (rtol = atol = tol)."""
    theirs = (
        theirs.detach().cpu().numpy()
        if hasattr(theirs, "detach")
        else np.asarray(theirs)
    )
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, (
        f"{label}: shape {ours.shape} != torch's {theirs.shape}"
    )
    np.testing.assert_allclose(
        ours, theirs, rtol=tol, atol=tol, err_msg=f"{label} differs from torch"
    )


# ---------------------------------------------------------------- the torch reference run


def matching_pair(d_model, num_heads, *, dtype=np.float32, seed=0, **options):
    """(mha module, torch module) with the same random weights, every bias non-zero."""
    import torch

    numpy_mha, torch_mha = mha.create_matching_mha(
        d_model, num_heads, dtype=dtype, seed=seed, **options
    )
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in torch_mha.named_parameters():
            # torch initialises biases to zero, which would hide bias bugs
            if "bias" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    mha.load_weights_from_pytorch(numpy_mha, torch_mha)
    return numpy_mha, torch_mha


def to_torch(a, dtype=None, requires_grad=False):
    """A torch tensor of ``a`` (a copy), in ``dtype`` unless ``a`` is a bool mask; None stays None."""
    import torch

    if a is None:
        return None
    a = np.asarray(a)
    t = (
        torch.tensor(a)
        if dtype is None or a.dtype == np.bool_
        else torch.tensor(a, dtype=dtype)
    )
    return t.requires_grad_(requires_grad)


def torch_run(
    torch_mha,
    query,
    key=None,
    value=None,
    grad_output=None,
    *,
    self_attention=False,
    **kwargs,
):
    """torch's forward (and backward if ``grad_output``): (out, weights, input grads, param grads).

    ``self_attention=True`` feeds one tensor as query, key and value (``key``/``value`` are ignored),
    so its one gradient is ``input grads[0]``; otherwise the input grads are (query, key, value)'s.
    """
    import torch

    dtype = torch_mha.out_proj.weight.dtype
    need_grad = grad_output is not None
    q = to_torch(query, dtype, need_grad)
    if self_attention:
        k = v = q
    else:
        k, v = to_torch(key, dtype, need_grad), to_torch(value, dtype, need_grad)
    for name in ("attn_mask", "key_padding_mask"):
        if kwargs.get(name) is not None:
            kwargs[name] = to_torch(kwargs[name], dtype)
    torch_mha.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(need_grad):
        out, weights = torch_mha(q, k, v, **kwargs)
    grads = {}
    if need_grad:
        out.backward(to_torch(grad_output, dtype))
        grads = {n: p.grad for n, p in torch_mha.named_parameters()}
        inputs = (q.grad,) if self_attention else (q.grad, k.grad, v.grad)
    else:
        inputs = ()
    return out, weights, inputs, grads


# ---------------------------------------------------------------- the parity cases
# Shared by tests/test_torch_parity.py (the serial layer) and tests/test_parallel.py (threaded).

E, H = 16, 4  # d_model, num_heads
N, L, S = 3, 5, 7  # batch, query length, key length (L != S for cross-attention)

CONSTRUCTOR = [
    dict(bias=bias, add_bias_kv=bkv, add_zero_attn=zero, **dims)
    for bias, bkv, zero, dims in itertools.product(
        (True, False), (False, True), (False, True), ({}, {"kdim": 6, "vdim": 10})
    )
]
MASKS = [
    "none",
    "kpm_bool",
    "kpm_float",
    "attn2d_bool",
    "attn2d_float",
    "attn3d_bool",
    "attn3d_float",
    "causal",
    "kpm_and_attn",
]
LAYOUTS = ["batch_first", "seq_first", "unbatched"]


def option_ids(options: dict) -> str:
    """A test id for constructor options: ``bias=False-kdim=6`` (``default`` for none)."""
    return "-".join(f"{k}={v}" for k, v in options.items()) or "default"


def make_masks(kind, rng, n, L, S, batched, dtype):
    """(kwargs for our forward, kwargs for torch's forward): no row is fully masked."""
    n_mask = n if batched else 1
    kpm = np.zeros((n_mask, S), dtype=bool)
    kpm[0, -2:] = True  # first sequence: last two keys are padding
    blocked = rng.random((H * n_mask, L, S)) < 0.3
    blocked[..., 0] = False  # every query keeps key 0
    if not batched:
        kpm = kpm[0]
    ours = {}
    if kind in ("kpm_bool", "kpm_and_attn"):
        ours["key_padding_mask"] = kpm
    if kind == "kpm_float":
        ours["key_padding_mask"] = np.where(
            kpm, -np.inf, rng.standard_normal(kpm.shape)
        ).astype(dtype)
    if kind in ("attn2d_bool", "kpm_and_attn"):
        ours["attn_mask"] = blocked[0]
    if kind == "attn2d_float":
        ours["attn_mask"] = rng.standard_normal((L, S)).astype(dtype)
    if kind == "attn3d_bool":
        ours["attn_mask"] = blocked
    if kind == "attn3d_float":
        ours["attn_mask"] = np.where(
            blocked, -1e4, rng.standard_normal(blocked.shape)
        ).astype(dtype)
    theirs = dict(ours)
    if kind == "causal":
        ours["is_causal"] = True
        # the explicit mask is the reference
        theirs["attn_mask"] = np.triu(np.ones((L, S), dtype=bool), k=1)
    return ours, theirs


def make_inputs(rng, layout, self_attention, kdim, vdim, dtype):
    """(query, key, value, S) in ``layout``; self-attention uses S = L."""
    S_ = L if self_attention else S
    q = rng.standard_normal((N, L, E))
    k = rng.standard_normal((N, S_, kdim))
    v = rng.standard_normal((N, S_, vdim))
    if layout == "seq_first":
        q, k, v = (a.transpose(1, 0, 2).copy() for a in (q, k, v))
    if layout == "unbatched":
        q, k, v = q[0], k[0], v[0]
    return q.astype(dtype), k.astype(dtype), v.astype(dtype), S_


def check_case(options, mask_kind, layout, dtype, self_attention, average, seed):
    """One layer against torch: output, weights, input gradients, every parameter gradient."""
    rng = np.random.default_rng(seed)
    options = dict(options, batch_first=layout != "seq_first")
    numpy_mha, torch_mha = matching_pair(E, H, dtype=dtype, seed=seed, **options)
    tol = tol_for(dtype)
    q, k, v, S_ = make_inputs(
        rng, layout, self_attention, numpy_mha.kdim, numpy_mha.vdim, dtype
    )
    ours_kw, theirs_kw = make_masks(
        mask_kind, rng, N, L, S_, layout != "unbatched", dtype
    )
    if self_attention:
        out, weights = numpy_mha(
            q, need_weights=True, average_attn_weights=average, **ours_kw
        )
    else:
        out, weights = numpy_mha(
            q, k, v, need_weights=True, average_attn_weights=average, **ours_kw
        )
    grad_out = rng.standard_normal(out.shape).astype(dtype)
    grads_in = numpy_mha.backward(grad_out)
    assert out.dtype == dtype and weights.dtype == dtype

    # torch's weights come from its need_weights=True route ...
    t_out_w, t_weights, _, _ = torch_run(
        torch_mha,
        q,
        k,
        v,
        self_attention=self_attention,
        need_weights=True,
        average_attn_weights=average,
        **theirs_kw,
    )
    assert_close("output (torch need_weights=True route)", out, t_out_w, tol)
    assert_close("attention weights", weights, t_weights, tol)
    # ... and its gradients from the SDPA route it takes by default.
    t_out, _, t_grads_in, t_grads = torch_run(
        torch_mha,
        q,
        k,
        v,
        grad_out,
        self_attention=self_attention,
        need_weights=False,
        **theirs_kw,
    )
    assert_close("output", out, t_out, tol)
    if self_attention:
        assert_close("grad input", grads_in, t_grads_in[0], tol)
    else:
        for label, ours, theirs in zip(
            ("grad query", "grad key", "grad value"), grads_in, t_grads_in
        ):
            assert_close(label, ours, theirs, tol)
    state = mha.torch_state_dict(numpy_mha, grads=True)
    assert set(state) == set(t_grads), "parameter names differ from torch's"
    for name, theirs in t_grads.items():
        assert_close(f"grad {name}", state[name], theirs, tol)


# ---------------------------------------------------------------- which function a bad call reached

_MHA_DIR = mha.__file__.rsplit("/", 1)[0] + "/"


def entry_point(call: Callable[[], Any]) -> str | None:
    """``module.qualname`` of the first mha function that ``call()`` entered before it raised.

    That is the public function or method a bad-input case exercises (``mha.attention.
    MultiHeadAttention.__init__``, ``mha.functional.linear``, ...), read from the traceback,
    so a list of cases tells by itself which entry points it covers. None if nothing raised.
    """
    try:
        call()
    except Exception as error:  # noqa: BLE001 - any error will do: the case's own test checks its kind
        frames = []
        tb = error.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename.startswith(_MHA_DIR):
                frames.append(tb.tb_frame)
            tb = tb.tb_next
        if frames and frames[0].f_code.co_name == "__call__" and len(frames) > 1:
            # m(x) is m.forward(x): the layer's __call__ only passes it on
            frames.pop(0)
        if frames:
            name = f"{frames[0].f_globals['__name__']}.{frames[0].f_code.co_qualname}"
            if name.endswith(".__post_init__"):
                # a dataclass checks in __post_init__, called by the __init__ it generated
                # (which has no file, so no frame of its own here)
                name = name.removesuffix(".__post_init__") + ".__init__"
            return name
    return None


def entry_points(calls: Iterable[Callable[[], Any]]) -> set[str]:
    """Every entry point that a list of bad calls reached (see :func:`entry_point`)."""
    return {e for e in map(entry_point, calls) if e is not None}


def public_entry_points(module, names: Iterable[str] | None = None) -> set[str]:
    """What a module's users call: each function of ``names`` (its ``__all__``) and each class's
    constructor, ``forward`` and ``backward``, as ``module.qualname`` (where they are defined)."""
    found = set()
    for name in module.__all__ if names is None else names:
        obj = getattr(module, name)
        if isinstance(obj, type):
            for attr in ("__init__", "forward", "backward"):
                fn = obj.__dict__.get(attr)
                if fn is not None:
                    found.add(f"{obj.__module__}.{fn.__qualname__}")
        elif callable(obj) and hasattr(obj, "__code__"):
            found.add(f"{obj.__module__}.{obj.__qualname__}")
    return found


def bad_input_tests(
    module, cases: list, unchanged: Callable[[], None] | None = None
) -> tuple[Callable[..., None], Callable[[], None]]:
    """The two tests of a module's misuse ``cases``, each ``(call, error, message)``.

    The first: every call raises ``error`` with a message matching ``message`` (then
    ``unchanged()``, if given, asserts that the refused call left its state alone). The
    second: every public entry point of ``module`` has a case, derived from the cases'
    tracebacks (:func:`entry_point`), not from a list typed by hand. Assign both to
    ``test_...`` names at a test module's top level, so that pytest collects them.
    """
    import pytest

    @pytest.mark.parametrize(
        "call, error, message", cases, ids=[f"bad-{i}" for i in range(len(cases))]
    )
    def test_bad_input_is_named(call, error, message):
        with pytest.raises(error, match=message):
            call()
        if unchanged is not None:
            unchanged()

    def test_every_function_of_the_module_has_a_bad_input_case():
        assert public_entry_points(module) <= entry_points(call for call, _, _ in cases)

    return (
        test_bad_input_is_named,
        test_every_function_of_the_module_has_a_bad_input_case,
    )
