"""Checks for the exercises of chapter 6, the backward pass.

Each ``check_<name>(your_function)`` calls the reader's function on a few
inputs drawn from a seeded generator (the same on every run and machine) and
compares the result with a reference:

- :func:`check_softmax_backward`: ``softmax_backward(dout, p)``, the
  Jacobian-vector product ``p * (dout - sum(dout * p))`` along the last axis;
- :func:`check_linear_backward`: ``linear_backward(dy, x, W)`` for
  ``y = x @ W + b``, returning ``(dx, dW, db)``;
- :func:`check_scores_backward`: ``scores_backward(d_scores, Q, K, scale)``
  for ``scores = scale * Q @ K^T`` with any leading batch axes, returning
  ``(dQ, dK)``;
- :func:`check_numerical_gradient`: ``numerical_gradient(f, x, h)``, central
  differences of a scalar function for every element of ``x``.

``COMMON_MISTAKES`` maps each check's name to a typical wrong answer; the test
suite uses it to make sure every check can tell right from wrong.
"""

from __future__ import annotations

import numpy as np

from ..functional import softmax
from ._core import check_function as _check_function

__all__ = ["check_softmax_backward", "check_linear_backward", "check_scores_backward",
           "check_numerical_gradient", "COMMON_MISTAKES"]

_SEED = 6006


def _rng(offset: int) -> np.random.Generator:
    return np.random.default_rng(_SEED + offset)


# --- softmax_backward ----------------------------------------------------------------------------

def _softmax_backward(dout, p):
    return p * (dout - np.sum(dout * p, axis=-1, keepdims=True))


def check_softmax_backward(softmax_backward):
    """``softmax_backward(dout, p)``: dL/dx for p = softmax(x) along the last axis, given dout = dL/dp."""
    rng = _rng(1)
    masked = rng.standard_normal((4, 6))
    masked[:, 4:] = -np.inf                              # the last two keys blocked: p = 0 there
    logits = [
        rng.standard_normal(5),                          # one row
        2.0 * rng.standard_normal((3, 7)),               # L = 3 queries, S = 7 keys
        rng.standard_normal((2, 3, 4, 5)),               # (N, H, L, S)
        masked,
    ]
    cases = [(rng.standard_normal(x.shape), softmax(x)) for x in logits]
    return _check_function(softmax_backward, _softmax_backward, cases, name="softmax_backward", atol=1e-10,
                          hint="the softmax Jacobian is diag(p) - p p^T, not just its diagonal p (1 - p): every "
                               "input moves every output. Its product with dout is p * (dout - s), where "
                               "s = sum(dout * p) along the last axis (keepdims=True).")


def _softmax_backward_diagonal_only(dout, p):
    return p * (1 - p) * dout                            # the element-wise derivative: the Jacobian's diagonal only


# --- linear_backward -----------------------------------------------------------------------------

def _linear_backward(dy, x, W):
    return dy @ W.T, x.T @ dy, dy.sum(axis=0)


def check_linear_backward(linear_backward):
    """``linear_backward(dy, x, W)`` for y = x @ W + b, x (N, in), W (in, out): returns (dx, dW, db)."""
    rng = _rng(2)
    cases = []
    for n, n_in, n_out in ((5, 4, 4), (7, 3, 6), (1, 8, 2), (16, 12, 12)):   # square W first: a transposed dW has the right shape
        cases.append((rng.standard_normal((n, n_out)), rng.standard_normal((n, n_in)), rng.standard_normal((n_in, n_out))))
    return _check_function(linear_backward, _linear_backward, cases, name="linear_backward", atol=1e-10,
                          hint="dW has W's shape (in, out): x^T @ dy, not dy^T @ x (that is torch's (out, in) "
                               "layout, the transpose). dx = dy @ W^T, and db sums dy over the rows (axis 0).")


def _linear_backward_torch_layout(dy, x, W):
    return dy @ W.T, dy.T @ x, dy.sum(axis=0)            # dW in torch's (out, in) layout: W's transpose


# --- scores_backward -----------------------------------------------------------------------------

def _scores_backward(d_scores, Q, K, scale):
    return d_scores @ K * scale, np.swapaxes(d_scores, -1, -2) @ Q * scale


def check_scores_backward(scores_backward):
    """``scores_backward(d_scores, Q, K, scale)`` for scores = scale * Q @ K^T: returns (dQ, dK)."""
    rng = _rng(3)
    cases = []
    for lead, L, S, E in (((), 4, 4, 8), ((), 3, 5, 2), ((2, 3), 5, 5, 4), ((2,), 6, 3, 16)):
        Q, K = rng.standard_normal((*lead, L, E)), rng.standard_normal((*lead, S, E))
        cases.append((rng.standard_normal((*lead, L, S)), Q, K, 1 / np.sqrt(E)))
    return _check_function(scores_backward, _scores_backward, cases, name="scores_backward", atol=1e-10,
                          hint="scores[i, j] = scale * q_i . k_j, so dQ = scale * d_scores @ K and "
                               "dK = scale * d_scores^T @ Q: transpose the last two axes of d_scores "
                               "(np.swapaxes(d_scores, -1, -2)) for the keys.")


def _scores_backward_untransposed(d_scores, Q, K, scale):
    return d_scores @ K * scale, d_scores @ Q * scale    # dK without the transpose: right shape when L == S only


# --- numerical_gradient --------------------------------------------------------------------------

def _numerical_gradient(f, x, h):
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

    def __init__(self, rng, shape):
        self.a = 1.0 + rng.random(shape)
        self.g = rng.standard_normal(shape)

    def __call__(self, x):
        return float(np.sum(softmax(np.asarray(x) * self.a) * self.g))


def check_numerical_gradient(numerical_gradient):
    """``numerical_gradient(f, x, h)``: central differences of the scalar f at x, one per element of x."""
    rng = _rng(4)
    cases = []
    for shape in ((5,), (3, 4), (2, 2, 3)):
        cases.append((_Loss(rng, shape), rng.standard_normal(shape), 1e-4))
    return _check_function(numerical_gradient, _numerical_gradient, cases, name="numerical_gradient", atol=1e-8,
                          hint="nudge one element at a time both ways, (f(x + h e_i) - f(x - h e_i)) / (2 h), and "
                               "put it back afterwards; the one-sided (f(x + h e_i) - f(x)) / h is only accurate "
                               "to about h.")


def _numerical_gradient_forward(f, x, h):
    x = np.array(x, dtype=np.float64)
    base = f(x)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        original = x[idx]
        x[idx] = original + h
        grad[idx] = (f(x) - base) / h                    # one-sided: error ~ h, not h^2
        x[idx] = original
    return grad


COMMON_MISTAKES = {
    "check_softmax_backward": _softmax_backward_diagonal_only,
    "check_linear_backward": _linear_backward_torch_layout,
    "check_scores_backward": _scores_backward_untransposed,
    "check_numerical_gradient": _numerical_gradient_forward,
}
