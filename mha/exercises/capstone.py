"""The capstone of chapter 6: the whole layer, forward and backward, from a torch ``state_dict``.

- :func:`milestone_problem` returns ``(state_dict, x, dy)``: the float32 parameters of an
  ``nn.MultiheadAttention`` (d_model 768, 12 heads, random non-zero biases) under torch's names
  and in torch's (out, in) layout, an input ``x`` (4, 128, 768) and an upstream gradient ``dy``;
- :func:`check_capstone` (build): ``forward_backward(state_dict, x, dy, num_heads)`` returns
  ``(out, grads)``, with ``grads`` keyed ``"in_proj_weight"``, ``"in_proj_bias"``,
  ``"out_proj.weight"``, ``"out_proj.bias"`` (torch's layout) and ``"x"``. The check runs it on a
  small layer first (d_model 16, 4 heads, 2 x 5 tokens), then at the milestone size, and
  grades the output and every gradient against torch's autograd, in the order the backward pass
  computes them. On a mismatch it names the first wrong step and, where the answer matches a
  known bug (:data:`CAPSTONE_BUGS`, computed by a reference with that bug switched on), the bug.

The tolerance is chapter 7's rule of thumb, ``10 * eps * sqrt(n) * max|torch|`` with float32's
``eps`` and ``n`` the longest sum behind an entry (at most ``max(N * L, 3 * d_model)``): a real
bug is off by far more, two correct float32 implementations by far less.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..functional import merge_heads, softmax, split_heads
from ._naming import call_reader, wrap

__all__ = ["milestone_problem", "check_capstone", "CAPSTONE_BUGS", "COMMON_MISTAKES"]

_SEED = 6060
# d_model, num_heads, N, L: the first test, where causes are diagnosed
SMALL = (
    16,
    4,
    2,
    5,
)
MILESTONE = (768, 12, 4, 128)

# What a reference with the bug switched on computes; the check compares a wrong answer with each.
CAPSTONE_BUGS = {
    "out_proj not transposed": "the output projection used out_proj.weight as it is stored, "
    "C @ W_O instead of C @ W_O.T: torch's layout is (out, in)",
    "no 1/sqrt(d_k)": "the scores were not scaled by 1/sqrt(d_k), in the forward pass",
    "reshape without transpose": "the heads were split with a reshape alone, (N, L, E) -> "
    "(N, H, L, hd), which mixes tokens and heads; split_heads "
    "reshapes to (N, L, H, hd) and then swaps L and H",
    "Q and K swapped": "the first block of in_proj_weight is the queries, the second the keys",
    "s(1-s) softmax backward": "the softmax backward was the element-wise p (1 - p) dP: only "
    "the Jacobian's diagonal. It is p * (dP - sum(dP * p)) along "
    "the keys",
    "no 1/sqrt(d_k) in the backward": "the forward pass scaled the scores, the backward pass "
    "did not: dQ = s dS K and dK = s dS^T Q, s = 1/sqrt(d_k)",
    "dK without transposing dS": "dK = s dS^T Q: the scores are q_i . k_j, so key j collects "
    "column j of dS (a square dS hides the missing transpose)",
    "dV without transposing P": "dV = P^T dO: value j collects column j of the weights P",
    "out_proj.weight from x": "the gradient of out_proj.weight is dY^T C with C the merged "
    "heads (the input of out_proj), not the layer's input x",
}
_BUG_NAMES = tuple(CAPSTONE_BUGS)


def _rng(offset: int) -> np.random.Generator:
    return np.random.default_rng(_SEED + offset)


def _problem(
    d_model: int, num_heads: int, N: int, L: int, seed: int
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """float32 ``state_dict`` of a seeded nn.MultiheadAttention with random biases, x and dy."""
    import torch

    from ..torch_bridge import create_matching_mha

    _, module = create_matching_mha(d_model, num_heads, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a zero bias hides mistakes: make them count
        module.in_proj_bias.normal_(0.0, 0.5, generator=generator)
        module.out_proj.bias.normal_(0.0, 0.5, generator=generator)
    state = {name: t.detach().numpy().copy() for name, t in module.state_dict().items()}
    rng = _rng(seed)
    x = rng.standard_normal((N, L, d_model)).astype(np.float32)
    dy = rng.standard_normal((N, L, d_model)).astype(np.float32)
    return state, x, dy


def milestone_problem() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """``(state_dict, x, dy)`` at d_model 768, 12 heads, 4 x 128 tokens (float32, seeded)."""
    return _problem(*MILESTONE, seed=_SEED)


def _torch_answer(
    state: dict[str, np.ndarray], x: np.ndarray, dy: np.ndarray, num_heads: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """torch's output and gradients, float32 autograd: the grade."""
    import torch

    module = torch.nn.MultiheadAttention(
        x.shape[-1], num_heads, batch_first=True
    ).eval()
    module.load_state_dict({name: torch.from_numpy(a) for name, a in state.items()})
    x_t = torch.tensor(x, requires_grad=True)
    out, _ = module(x_t, x_t, x_t, need_weights=False)
    out.backward(torch.from_numpy(dy))
    grads = {name: p.grad.numpy().copy() for name, p in module.named_parameters()}
    return out.detach().numpy(), {**grads, "x": x_t.grad.numpy().copy()}


def _forward_backward(
    state: dict[str, np.ndarray],
    x: np.ndarray,
    dy: np.ndarray,
    num_heads: int,
    bug: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The reference: torch's layer by hand in float64, with one of CAPSTONE_BUGS if asked."""
    W, b = (
        state["in_proj_weight"].astype(np.float64),
        state["in_proj_bias"].astype(np.float64),
    )
    W_O, b_O = (
        state["out_proj.weight"].astype(np.float64),
        state["out_proj.bias"].astype(np.float64),
    )
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    N, L, E = x.shape
    H, hd = num_heads, E // num_heads
    s = 1.0 if bug == "no 1/sqrt(d_k)" else 1 / np.sqrt(hd)
    s_back = 1.0 if bug == "no 1/sqrt(d_k) in the backward" else s
    if bug == "reshape without transpose":

        def split(a: np.ndarray) -> np.ndarray:
            return a.reshape(N, H, L, hd)

        def merge(a: np.ndarray) -> np.ndarray:
            return a.reshape(N, L, E)
    else:

        def split(a: np.ndarray) -> np.ndarray:
            return split_heads(a, H)

        def merge(a: np.ndarray) -> np.ndarray:
            return merge_heads(a)

    W_out = W_O.T if bug == "out_proj not transposed" else W_O  # used as C @ W_out.T

    qkv = x @ W.T + b  # (N, L, 3E)
    q, k, v = (split(a) for a in np.split(qkv, 3, axis=-1))  # (N, H, L, hd)
    if bug == "Q and K swapped":
        q, k = k, q
    P = softmax(s * q @ np.swapaxes(k, -1, -2))  # (N, H, L, L)
    C = merge(P @ v)  # (N, L, E)
    out = C @ W_out.T + b_O

    rows_dy = dy.reshape(-1, E)
    grads = {"out_proj.bias": rows_dy.sum(axis=0)}
    source = x if bug == "out_proj.weight from x" else C
    grads["out_proj.weight"] = rows_dy.T @ source.reshape(-1, E)  # (out, in)
    d_heads = split(dy @ W_out)  # (N, H, L, hd)
    P_for_dv = P if bug == "dV without transposing P" else np.swapaxes(P, -1, -2)
    dv = P_for_dv @ d_heads
    dP = d_heads @ np.swapaxes(v, -1, -2)
    if bug == "s(1-s) softmax backward":
        dS = P * (1 - P) * dP
    else:
        dS = P * (dP - np.sum(dP * P, axis=-1, keepdims=True))
    dq = s_back * dS @ k
    dS_for_dk = dS if bug == "dK without transposing dS" else np.swapaxes(dS, -1, -2)
    dk = s_back * dS_for_dk @ q
    if bug == "Q and K swapped":
        dq, dk = dk, dq
    paths = [merge(d) for d in (dq, dk, dv)]  # each (N, L, E)
    d_qkv = np.concatenate(paths, axis=-1).reshape(-1, 3 * E)
    grads["in_proj_weight"] = d_qkv.T @ x.reshape(-1, E)  # (3E, E)
    grads["in_proj_bias"] = d_qkv.sum(axis=0)
    grads["x"] = (d_qkv @ W).reshape(N, L, E)  # the three paths, added
    grads["_paths"] = [p @ W[i * E : (i + 1) * E] for i, p in enumerate(paths)]
    return out, grads


# ------------------------------------------------------------------ grading

_PART = ("query", "key", "value")


def _graded(out: np.ndarray, grads: dict[str, Any], E: int) -> list[tuple[str, Any]]:
    """(label, array) in the order the backward pass computes them."""
    items = [
        ("output", out),
        ("grad of out_proj.bias", grads["out_proj.bias"]),
        ("grad of out_proj.weight", grads["out_proj.weight"]),
    ]
    for i in (2, 0, 1):  # value, query, key
        items.append(
            (
                f"grad of in_proj_weight, {_PART[i]} rows",
                grads["in_proj_weight"][i * E : (i + 1) * E],
            )
        )
        items.append(
            (
                f"grad of in_proj_bias, {_PART[i]} part",
                grads["in_proj_bias"][i * E : (i + 1) * E],
            )
        )
    items.append(("grad of x", grads["x"]))
    return items


def _tolerance(reference: np.ndarray, N: int, L: int, E: int) -> float:
    n = max(N * L, 3 * E, L)
    scale = max(float(np.abs(reference).max()), 1.0)
    return 10 * float(np.finfo(np.float32).eps) * np.sqrt(n) * scale


def _close(got: Any, expected: ArrayLike, tol: float) -> bool:
    got = np.asarray(got)
    if got.shape != np.shape(expected) or not np.issubdtype(got.dtype, np.number):
        return False
    with np.errstate(invalid="ignore"):
        return bool(np.all(np.abs(got.astype(np.float64) - expected) <= tol))


def _shape_problem(label: str, got: Any, expected: np.ndarray) -> str:
    got = np.asarray(got)
    if not np.issubdtype(got.dtype, np.number):
        return f"{label} holds {got.dtype}, not numbers."
    if got.shape == expected.shape:
        return ""
    text = f"{label} has shape {got.shape}, expected {expected.shape}."
    if "bias" in label:
        text += (
            " A bias is added to every token of every sequence, so its gradient sums dy "
            "(or d_qkv) over every axis but the last: the batch and the token axes."
        )
    elif got.shape == expected.shape[::-1]:
        text += " torch stores weights (out, in): the gradient is dY^T X, not X^T dY."
    return text


def _why(
    label: str,
    got: Any,
    expected: np.ndarray,
    tol: float,
    variants: dict[str, dict[str, np.ndarray]],
    paths: list[np.ndarray],
) -> str:
    """The likely cause of a wrong ``got`` for ``label``."""
    got = np.asarray(got, dtype=np.float64)
    if (
        got.ndim == 2
        and got.shape == expected.shape[::-1]
        and _close(got.T, expected, tol)
    ):
        return (
            "it is the right gradient, transposed: torch stores weights (out, in), so the "
            "gradient is dY^T X, not X^T dY (the book's (in, out) layout)."
        )
    for name, graded in variants.items():
        if _close(got, graded[label], tol):
            return f"it is what a layer with the bug {name!r} gives: {CAPSTONE_BUGS[name]}."
    if label == "grad of x":
        for used in ((0,), (1,), (2,), (0, 1), (0, 2), (1, 2)):
            if _close(got, sum(paths[i] for i in used), tol):
                kept = " and ".join(_PART[i] for i in used)
                return (
                    f"it holds the {kept} path only: x feeds the query, key and value "
                    "projections, so its gradient is the sum of all three paths."
                )
    if np.allclose(got, 0):
        return "it is zero everywhere: is a gradient left at its initial zeros?"
    return "it matches none of the known bugs; " + _FORMULA[label.split(",")[0]]


_FORMULA = {
    "output": "the forward pass is x @ in_proj_weight.T + in_proj_bias, split into heads, "
    "softmax(Q K^T / sqrt(d_k)) V per head, merged, then out_proj.",
    "grad of out_proj.bias": "it is dy summed over the batch and the token axes.",
    "grad of out_proj.weight": "it is dY^T C, C the merged heads, both as (N*L, E) rows.",
    "grad of in_proj_weight": "it is d_qkv^T X, with d_qkv the merged dQ, dK, dV side by side.",
    "grad of in_proj_bias": "it is d_qkv summed over the batch and the token axes.",
    "grad of x": "it is d_qkv @ in_proj_weight (the three paths, added).",
}


def _grade(
    answer: Callable[..., Any], size: tuple[int, int, int, int], diagnose: bool
) -> str | None:
    """None if ``answer`` agrees with torch at ``size``, else the message (after the reader ran)."""
    E, H, N, L = size
    state, x, dy = _problem(*size, seed=_SEED + E)
    try:
        result = answer({k: v.copy() for k, v in state.items()}, x.copy(), dy.copy(), H)
    except NotImplementedError:
        raise
    except Exception as exc:  # the reader's code may fail in any way: report it
        return f"forward_backward raised {type(exc).__name__}: {exc}."
    if not (
        isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)
    ):
        return "forward_backward must return (out, grads), grads a dict."
    out, grads = result
    missing = [
        n
        for n in (
            "in_proj_weight",
            "in_proj_bias",
            "out_proj.weight",
            "out_proj.bias",
            "x",
        )
        if n not in grads
    ]
    if missing:
        return f"grads has no {', '.join(missing)}."
    if out is None or any(grads[n] is None for n in grads):
        return "an entry is None (is a `return` missing?)."
    for name in ("in_proj_weight", "in_proj_bias"):
        expected_shape = (3 * E, E) if name == "in_proj_weight" else (3 * E,)
        problem = _shape_problem(
            f"grad of {name}", grads[name], np.empty(expected_shape)
        )
        if problem:
            return problem
    theirs_out, theirs = _torch_answer(state, x, dy, H)
    ours, reference = _graded(out, grads, E), dict(_graded(theirs_out, theirs, E))
    wrong = []
    for label, got in ours:
        problem = _shape_problem(label, got, reference[label])
        if problem:
            return problem
        if not _close(got, reference[label], _tolerance(reference[label], N, L, E)):
            wrong.append(label)
    if not wrong:
        return None
    where = f"d_model {E}, {H} heads, {N} x {L} tokens"
    text = (
        f"at {where}, {len(ours) - len(wrong)} of {len(ours)} results agree with torch; "
        f"wrong: {'; '.join(wrong)}. The first wrong one, in the order the backward pass "
        f"computes them, is {wrong[0]}: "
    )
    if not diagnose:
        return text + (
            "it was right on the small layer, so look for what changes with the "
            "size: a hard-coded shape or number of heads, or float16 arithmetic."
        )
    variants = {}
    for name in _BUG_NAMES:
        bug_out, bug_grads = _forward_backward(state, x, dy, H, bug=name)
        variants[name] = dict(_graded(bug_out, bug_grads, E))
    _, exact = _forward_backward(state, x, dy, H)
    label = wrong[0]
    cause = _why(
        label,
        dict(ours)[label],
        reference[label],
        _tolerance(reference[label], N, L, E),
        variants,
        exact["_paths"],
    )
    return text + cause


def check_capstone(forward_backward: Callable[..., Any]) -> bool | None:
    """``forward_backward(state_dict, x, dy, num_heads)`` -> ``(out, grads)``, graded against torch."""
    name = "forward_backward"

    def first_size() -> str | None:
        return _grade(forward_backward, SMALL, diagnose=True)

    ok, problem = call_reader(first_size, name)
    if not ok:
        return ok
    if problem is None:
        problem = _grade(forward_backward, MILESTONE, diagnose=False)
    if problem:
        print(wrap(f"Not quite: {problem}"))
        return False
    print(
        wrap(
            "Correct: the output and all four parameter gradients and the gradient of x "
            "agree with torch's autograd, at d_model 16 (4 heads, 2 x 5 tokens) and at the "
            "milestone, d_model 768 (12 heads, 4 x 128 tokens)."
        )
    )
    return True


def _softmax_diagonal_only(
    state: dict[str, np.ndarray], x: np.ndarray, dy: np.ndarray, num_heads: int
) -> tuple[np.ndarray, dict[str, Any]]:
    out, grads = _forward_backward(
        state, x, dy, num_heads, bug="s(1-s) softmax backward"
    )
    grads.pop("_paths")
    return out, grads


COMMON_MISTAKES = {"check_capstone": _softmax_diagonal_only}
