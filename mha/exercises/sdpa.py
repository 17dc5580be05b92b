"""Checks for the exercises of chapter 2, scaled dot-product attention.

Each ``check_<name>(your_function)`` calls the reader's function on a few
inputs drawn from a seeded generator (the same on every run and machine)
and compares the result with a reference:

- :func:`check_scaled_scores`: ``scaled_scores(Q, K)`` = Q K^T / sqrt(d_k),
  with any leading batch axes;
- :func:`check_stable_softmax`: ``stable_softmax(x)`` along the last axis,
  finite for huge logits and zeros for a row that is entirely ``-inf``;
- :func:`check_causal_mask`: ``causal_mask(L)``, bool (L, L), True where
  query ``i`` may attend key ``j`` (``F.scaled_dot_product_attention``'s
  polarity);
- :func:`check_blocked_to_additive`: ``blocked_to_additive(mask)`` turns an
  ``nn.MultiheadAttention``-style bool mask (True = blocked) into an additive
  float mask (``-inf`` where blocked, 0 elsewhere).

``COMMON_MISTAKES`` maps each check's name to a typical wrong answer; the
test suite uses it to make sure every check can tell right from wrong.
"""

from __future__ import annotations

import numpy as np

from ..functional import softmax
from ._core import check_function as _check_function

__all__ = ["check_scaled_scores", "check_stable_softmax", "check_causal_mask", "check_blocked_to_additive",
           "COMMON_MISTAKES"]

_SEED = 2002


def _rng(offset: int) -> np.random.Generator:
    return np.random.default_rng(_SEED + offset)


# --- scaled_scores -------------------------------------------------------------------------------

def _scaled_scores(Q, K):
    return Q @ np.swapaxes(K, -1, -2) / np.sqrt(Q.shape[-1])


def check_scaled_scores(scaled_scores):
    """``scaled_scores(Q, K)``: Q (..., L, d_k), K (..., S, d_k) -> (..., L, S)."""
    rng = _rng(1)
    cases = [
        (rng.standard_normal((3, 4)), rng.standard_normal((5, 4))),              # L=3, S=5, d_k=4
        (rng.standard_normal((4, 1)), rng.standard_normal((2, 1))),              # d_k = 1: no scaling
        (rng.standard_normal((2, 3, 4, 16)), rng.standard_normal((2, 3, 6, 16))),  # (N, H, L, d_k), (N, H, S, d_k)
    ]
    return _check_function(scaled_scores, _scaled_scores, cases, name="scaled_scores", atol=1e-10,
                          hint="divide by sqrt(d_k), where d_k = Q.shape[-1], and transpose only the last two "
                               "axes of K (np.swapaxes(K, -1, -2)): K.T reverses every axis of a batched K.")


def _scaled_scores_with_dot_T(Q, K):
    return Q @ K.T / np.sqrt(Q.shape[-1])  # right for 2-D K only


# --- stable_softmax ------------------------------------------------------------------------------

def _softmax_last(x):
    return softmax(x, axis=-1)


def check_stable_softmax(stable_softmax):
    """``stable_softmax(x)`` along the last axis; zeros for a row that is entirely -inf."""
    rng = _rng(2)
    inf = np.inf
    cases = [
        (2.0 * rng.standard_normal((4, 6)),),
        (rng.standard_normal((2, 3, 5)),),
        (np.array([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]], dtype=np.float32),),  # overflow, underflow
        (np.array([[0.5, -inf, 1.5, -inf], [-inf, -inf, -inf, -inf], [2.0, 2.0, -inf, 0.0]]),),  # masked keys; row 1 all masked
    ]
    return _check_function(stable_softmax, _softmax_last, cases, name="stable_softmax", atol=1e-6,
                          hint="subtract each row's maximum (keepdims=True) before np.exp; for a row that is all "
                               "-inf, the maximum is -inf and -inf - (-inf) is NaN: use 0 as that row's maximum, "
                               "and make its sum 1, so the row comes out as zeros.")


def _softmax_without_masked_rows(x):
    with np.errstate(invalid="ignore"):  # -inf - (-inf): NumPy warns, and the row becomes NaN
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


# --- causal_mask ---------------------------------------------------------------------------------

def _causal_mask(L):
    return np.tril(np.ones((L, L), dtype=bool))


def check_causal_mask(causal_mask):
    """``causal_mask(L)``: bool (L, L), True where query i may attend key j (j <= i)."""
    rng = _rng(3)
    cases = [(1,), (2,), (5,), (int(rng.integers(6, 20)),)]
    return _check_function(causal_mask, _causal_mask, cases, name="causal_mask",
                          hint="True marks a key the query may attend: key j <= query i, the diagonal included "
                               "(np.tril). A mask with True above the diagonal is nn.MultiheadAttention's polarity "
                               "(True = blocked).")


def _causal_mask_blocked_polarity(L):
    return np.triu(np.ones((L, L), dtype=bool), k=1)  # True = blocked: right for nn.MultiheadAttention only


# --- blocked_to_additive -------------------------------------------------------------------------

def _blocked_to_additive(mask):
    return np.where(mask, np.float32(-np.inf), np.float32(0))


def _random_blocked(rng, shape):
    """A random bool mask (True = blocked) that leaves every row at least one key."""
    mask = rng.random(shape) < 0.4
    mask[..., 0] = False
    return rng.permuted(mask, axis=-1)


def check_blocked_to_additive(blocked_to_additive):
    """``blocked_to_additive(mask)``: True (blocked) -> -inf, False -> 0.0, same shape."""
    rng = _rng(4)
    cases = [
        (np.triu(np.ones((4, 4), dtype=bool), k=1),),   # nn.MultiheadAttention's causal mask
        (_random_blocked(rng, (3, 5)),),
        (_random_blocked(rng, (2, 4, 6)),),              # (N * num_heads, L, S)
        (np.array([False, False, True]),),               # a key_padding_mask for one sequence
    ]
    return _check_function(blocked_to_additive, _blocked_to_additive, cases, name="blocked_to_additive",
                          hint="in nn.MultiheadAttention's convention True means blocked, so True must become "
                               "-inf and False 0.0 (np.where(mask, -np.inf, 0.0)); mask * -np.inf gives NaN "
                               "where the mask is False (0 * inf).")


def _blocked_to_additive_inverted(mask):
    return np.where(mask, np.float32(0), np.float32(-np.inf))  # reads True as "attend", like SDPA


COMMON_MISTAKES = {
    "check_scaled_scores": _scaled_scores_with_dot_T,
    "check_stable_softmax": _softmax_without_masked_rows,
    "check_causal_mask": _causal_mask_blocked_polarity,
    "check_blocked_to_additive": _blocked_to_additive_inverted,
}
