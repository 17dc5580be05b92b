"""Checks for the exercises of chapter 6, the backward pass.

- :func:`check_zero_gradients` (predict): ``predict_exactly_zero()`` returns one bool per case of
  :data:`ZERO_CASES`, True where the named gradient entry is exactly 0; the check runs the
  experiment with ``mha.MultiHeadAttention`` in float64;
- :func:`check_backward_bug` (diagnose): ``name_the_bug()`` names, from :data:`BACKWARD_BUGS`,
  the bug behind :func:`mystery_gradients`, a hand-written backward pass graded against torch;
- :func:`check_log_softmax_backward` (build): ``log_softmax_backward(dout, logp)``, the
  gradient through ``logp = log_softmax(x)`` (its Jacobian is not the softmax's);
- :func:`check_linear_backward` (build): ``linear_backward(dy, x, weight)`` for torch's
  ``y = x @ weight.T + b``, weight (out, in), x with any number of leading axes;
- :func:`check_numerical_gradient` (build): ``numerical_gradient(f, x, h)``, central
  differences of a scalar function for every element of ``x``.

Every test case is drawn from a seeded generator, so a verdict is the same on every run.
``COMMON_MISTAKES`` maps each check's name to a typical wrong answer; the test suite uses it to
make sure every check can tell right from wrong. The chapter's capstone is in
:mod:`mha.exercises.capstone`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np

from ..attention import MultiHeadAttention
from ..functional import softmax
from . import capstone as _capstone
from ._core import check_function as _check_function
from ._naming import check_name, check_prediction

__all__ = [
    "check_zero_gradients",
    "ZERO_CASES",
    "check_backward_bug",
    "mystery_gradients",
    "BACKWARD_BUGS",
    "check_log_softmax_backward",
    "check_linear_backward",
    "check_numerical_gradient",
    "COMMON_MISTAKES",
]

_SEED = 6006


def _rng(offset: int) -> np.random.Generator:
    return np.random.default_rng(_SEED + offset)


# --- predict: which gradients are exactly zero? --------------------------------------------------

ZERO_CASES = (
    "cross-attention, key_padding_mask hides the last key: grad_key at the last key",
    "self-attention, the same padding: grad of x at the last (padded) token",
    "self-attention, the same padding, dy = 0 at the padded token: grad of x there",
    "causal self-attention, dy non-zero at the last token only: grad of x at token 0",
    "causal self-attention, dy non-zero at token 0 only: grad of x at the last token",
)


def _exactly_zero() -> tuple[bool, ...]:
    L, E = 5, 8
    layer = MultiHeadAttention(E, 2, dtype=np.float64, seed=_SEED)
    for name in ("b_Q", "b_K", "b_V", "b_O"):  # biases that count
        setattr(layer, name, 0.5 * _rng(1).standard_normal(E))
    rng = _rng(2)
    x, other, dy = (rng.standard_normal((1, L, E)) for _ in range(3))
    padding = np.zeros((1, L), dtype=bool)
    padding[0, -1] = True  # True = blocked
    verdicts = []

    layer(x, other, other, key_padding_mask=padding)
    _, grad_key, _ = layer.backward(dy)
    verdicts.append(bool(np.all(grad_key[0, -1] == 0)))

    layer(x, key_padding_mask=padding)
    # m(x): backward returns the one input gradient
    grad_x = cast(np.ndarray, layer.backward(dy))
    verdicts.append(bool(np.all(grad_x[0, -1] == 0)))

    dy_real = dy.copy()
    dy_real[0, -1] = 0  # the loss ignores padding
    layer(x, key_padding_mask=padding)
    grad_x = cast(np.ndarray, layer.backward(dy_real))
    verdicts.append(bool(np.all(grad_x[0, -1] == 0)))

    for token, looked_at in ((L - 1, 0), (0, L - 1)):
        dy_one = np.zeros_like(dy)
        dy_one[0, token] = dy[0, token]
        layer(x, is_causal=True)
        grad_x = cast(np.ndarray, layer.backward(dy_one))
        verdicts.append(bool(np.all(grad_x[0, looked_at] == 0)))
    return tuple(verdicts)


_ZERO_WHY = {
    0: "The padded key has weight exactly 0 in every row, so dS is 0 in its column (dK = s "
    "dS^T Q) and P^T dO is 0 in its row (dV): no gradient reaches it.",
    1: "In self-attention the padded token is a key and a query. Its key and value paths "
    "get nothing, but its own output row still depends on its query, and dy is not 0 "
    "there.",
    2: "With dy = 0 at the padded token its query path gets nothing too (dP, dS and dQ are 0 "
    "in its row), and the mask already zeroes its key and value paths.",
    3: "The last token attends to every token before it, token 0 included: its dy reaches "
    "token 0 through the keys and values.",
    4: "Token 0 attends to itself only; no row that depends on the last token has a non-zero "
    "dy, so all three of its paths get exact zeros.",
}


def check_zero_gradients(predict_exactly_zero: Callable[..., Any]) -> bool | None:
    """``predict_exactly_zero()`` -> one bool per case of ZERO_CASES."""
    return check_prediction(
        predict_exactly_zero,
        name="predict_exactly_zero",
        labels=ZERO_CASES,
        truth=_exactly_zero(),
        why=_ZERO_WHY,
    )


# --- diagnose: a hand-written backward pass with a bug --------------------------------------------

BACKWARD_BUGS = (
    "s(1-s) softmax backward",
    "no 1/sqrt(d_k) in the backward",
    "dK without transposing dS",
    "missing transpose in dW",
    "bias gradient summed over the wrong axis",
    "paths of x not added",
)


def mystery_gradients() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``[(label, ours, torch), ...]``: a hand-written forward and backward of torch's layer
    (d_model 16, 4 heads, 2 x 5 tokens, float32) with a bug from BACKWARD_BUGS, next to
    torch's autograd, in the order the backward pass computes them."""
    E, H, N, L = _capstone.SMALL
    state, x, dy = _capstone._problem(E, H, N, L, seed=_SEED)
    out, grads = _capstone._forward_backward(
        state, x, dy, H, bug="s(1-s) softmax backward"
    )
    out_t, grads_t = _capstone._torch_answer(state, x, dy, H)
    ours, theirs = (
        _capstone._graded(out, grads, E),
        _capstone._graded(out_t, grads_t, E),
    )
    return [
        (label, a.astype(np.float32), b) for (label, a), (_, b) in zip(ours, theirs)
    ]


_BACKWARD_LOOKS = {
    "no 1/sqrt(d_k) in the backward": "the query and key gradients would be exactly "
    "sqrt(d_k) = 2 times torch's, every one of them, and "
    "the key bias would still get (almost) nothing.",
    "dK without transposing dS": "only the key side would be wrong: the query rows of "
    "in_proj_weight would agree with torch.",
    "missing transpose in dW": "every weight gradient would be wrong (transposed), the bias "
    "gradients right.",
    "bias gradient summed over the wrong axis": "a bias gradient would have the wrong shape "
    "or be wrong while the weights agree.",
    "paths of x not added": "every parameter gradient would agree, only the gradient of x "
    "would be wrong.",
}


def check_backward_bug(name_the_bug: Callable[..., Any]) -> bool | None:
    """``name_the_bug()`` -> one of BACKWARD_BUGS, the bug behind ``mystery_gradients``."""
    return check_name(
        name_the_bug,
        name="name_the_bug",
        choices=BACKWARD_BUGS,
        answer="s(1-s) softmax backward",
        explanations=_BACKWARD_LOOKS,
        correct="s(1-s) softmax backward. Everything computed before the softmax backward (the "
        "output, out_proj, the value side) agrees; everything after it is wrong, by no "
        "constant factor; and the key bias gets a gradient, because the rows of "
        "p (1 - p) dP do not sum to zero.",
    )


# --- build: log_softmax_backward ------------------------------------------------------------------


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _log_softmax_backward(dout: np.ndarray, logp: np.ndarray) -> np.ndarray:
    # d logp_i / d x_j = delta_ij - p_j, so dx_j = dout_j - p_j sum_i dout_i
    return dout - np.exp(logp) * dout.sum(axis=-1, keepdims=True)


def check_log_softmax_backward(log_softmax_backward: Callable[..., Any]) -> bool | None:
    """``log_softmax_backward(dout, logp)``: dL/dx for logp = log_softmax(x) along the last axis."""
    rng = _rng(3)
    logits = [
        rng.standard_normal(5),
        3.0 * rng.standard_normal((3, 7)),
        rng.standard_normal((2, 3, 4, 5)),
    ]
    cases = [(rng.standard_normal(x.shape), _log_softmax(x)) for x in logits]
    return _check_function(
        log_softmax_backward,
        _log_softmax_backward,
        cases,
        name="log_softmax_backward",
        atol=1e-10,
        hint="log p_i = x_i - log(sum_k exp(x_k)), so d log p_i / d x_j = "
        "delta_ij - p_j, with p = exp(logp): every input moves every "
        "output, not only its own. The vector product is dout - p * s, "
        "where s = sum(dout) along the last axis (keepdims=True).",
    )


def _log_softmax_backward_diagonal_only(
    dout: np.ndarray, logp: np.ndarray
) -> np.ndarray:
    return dout * (1 - np.exp(logp))  # only the Jacobian's diagonal


# --- build: linear_backward in torch's layout, any leading axes ----------------------------------


def _linear_backward(
    dy: np.ndarray, x: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows_dy, rows_x = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
    return dy @ weight, rows_dy.T @ rows_x, rows_dy.sum(axis=0)


def check_linear_backward(linear_backward: Callable[..., Any]) -> bool | None:
    """``linear_backward(dy, x, weight)`` for y = x @ weight.T + b, weight (out, in), x (..., in):
    returns (dx, d_weight, db), shaped like x, weight and b."""
    rng = _rng(4)
    cases = []
    # square weights first (a transposed d_weight has the right shape), then (N, L, in) batches
    for lead, n_in, n_out in (
        ((5,), 4, 4),
        ((7,), 3, 6),
        ((2, 5), 4, 4),
        ((3, 1, 4), 6, 2),
    ):
        cases.append(
            (
                rng.standard_normal((*lead, n_out)),
                rng.standard_normal((*lead, n_in)),
                rng.standard_normal((n_out, n_in)),
            )
        )
    return _check_function(
        linear_backward,
        _linear_backward,
        cases,
        name="linear_backward",
        atol=1e-10,
        hint="d_weight has the weight's (out, in) shape: dy^T x, with dy and x "
        "reshaped to rows, (-1, out) and (-1, in), so that every token of "
        "every sequence adds its share; db sums dy over every axis but the "
        "last, and dx = dy @ weight.",
    )


def _linear_backward_first_axis_only(
    dy: np.ndarray, x: np.ndarray, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows_dy, rows_x = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
    return dy @ weight, rows_dy.T @ rows_x, dy.sum(axis=0)  # db: the batch axis only


# --- build: numerical_gradient --------------------------------------------------------------------


def _numerical_gradient(
    f: Callable[[np.ndarray], float], x: np.ndarray, h: float
) -> np.ndarray:
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        original = x[idx]
        x[idx] = original + h
        plus = f(x)
        x[idx] = original - h
        minus = f(x)
        x[idx] = original
        grad[idx] = (plus - minus) / (2 * h)
    return grad


class _Loss:
    """A scalar test function with fixed random coefficients: sum(softmax(x * a) * g)."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, ...]) -> None:
        self.a = 1.0 + rng.random(shape)
        self.g = rng.standard_normal(shape)

    def __call__(self, x: np.ndarray) -> float:
        return float(np.sum(softmax(np.asarray(x) * self.a) * self.g))


def check_numerical_gradient(numerical_gradient: Callable[..., Any]) -> bool | None:
    """``numerical_gradient(f, x, h)``: central differences of the scalar f at x, one per element."""
    rng = _rng(5)
    cases = []
    for shape in ((5,), (3, 4), (2, 2, 3)):
        cases.append((_Loss(rng, shape), rng.standard_normal(shape), 1e-4))
    return _check_function(
        numerical_gradient,
        _numerical_gradient,
        cases,
        name="numerical_gradient",
        atol=1e-8,
        hint="nudge one element at a time both ways, (f(x + h e_i) - "
        "f(x - h e_i)) / (2 h), and put it back afterwards; the one-sided "
        "(f(x + h e_i) - f(x)) / h is only accurate to about h.",
    )


def _numerical_gradient_forward(
    f: Callable[[np.ndarray], float], x: np.ndarray, h: float
) -> np.ndarray:
    x = np.array(x, dtype=np.float64)
    base = f(x)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        original = x[idx]
        x[idx] = original + h
        grad[idx] = (f(x) - base) / h  # one-sided: error ~ h, not h^2
        x[idx] = original
    return grad


COMMON_MISTAKES = {
    "check_zero_gradients": lambda: (True, True, True, False, True),
    "check_backward_bug": lambda: "no 1/sqrt(d_k) in the backward",
    "check_log_softmax_backward": _log_softmax_backward_diagonal_only,
    "check_linear_backward": _linear_backward_first_axis_only,
    "check_numerical_gradient": _numerical_gradient_forward,
}
