"""Checks for the exercises of chapter 4, "Matching PyTorch: the weight mapping".

torch keeps a linear layer's weight as (out_features, in_features) and
computes ``x @ W.T + b``; ``mha`` keeps (in_features, out_features) and
computes ``x @ W + b``. The exercises move weights across that boundary:

- :func:`check_split_in_proj`: torch's ``in_proj_weight`` (3E, E) -> ``W_Q, W_K, W_V`` (E, E) each, in (in, out) layout;
- :func:`check_pack_in_proj`: the way back, ``W_Q, ..., b_V`` -> ``(in_proj_weight, in_proj_bias)``;
- :func:`check_out_proj_forward`: ``out_proj``'s forward, written with torch's ``out_proj.weight`` and ``out_proj.bias``.

Every test case is drawn from a seeded generator, so a verdict is the same on every run.
``COMMON_MISTAKES`` holds one typical wrong answer per check (all three forget a transpose,
which is the mistake the chapter is about: with square E x E weights it runs and computes
something else).
"""

from __future__ import annotations

import numpy as np

from ._core import check_function as _check_function

__all__ = ["check_split_in_proj", "check_pack_in_proj", "check_out_proj_forward", "COMMON_MISTAKES"]

_SEED = 4


def _rng(offset: int) -> np.random.Generator:
    return np.random.default_rng(_SEED + offset)


# ----------------------------------------------------------------- reference solutions


def _split_in_proj(in_proj_weight):
    E = in_proj_weight.shape[1]
    return tuple(in_proj_weight[i * E:(i + 1) * E].T for i in range(3))     # rows of torch -> columns here


def _pack_in_proj(W_Q, W_K, W_V, b_Q, b_K, b_V):
    return np.concatenate([W_Q.T, W_K.T, W_V.T], axis=0), np.concatenate([b_Q, b_K, b_V])


def _out_proj_forward(x, weight, bias):
    return x @ weight.T + bias


# ----------------------------------------------------------------- checks


def check_split_in_proj(answer) -> bool | None:
    """``answer(in_proj_weight)`` must return ``(W_Q, W_K, W_V)``, each (E, E) in (in, out) layout."""
    rng = _rng(0)
    cases = [(rng.standard_normal((3 * E, E)),) for E in (4, 6, 8)]
    return _check_function(answer, _split_in_proj, cases, name="split_in_proj", atol=1e-12,
                          hint="rows 0:E of in_proj_weight are W_Q in torch's (out, in) layout; "
                               "mha's W_Q is their transpose, in_proj_weight[:E].T.")


def check_pack_in_proj(answer) -> bool | None:
    """``answer(W_Q, W_K, W_V, b_Q, b_K, b_V)`` must return torch's ``(in_proj_weight, in_proj_bias)``."""
    rng = _rng(1)
    cases = [tuple(rng.standard_normal((E, E)) for _ in range(3)) + tuple(rng.standard_normal(E) for _ in range(3))
             for E in (4, 6)]
    return _check_function(answer, _pack_in_proj, cases, name="pack_in_proj", atol=1e-12,
                          hint="in_proj_weight stacks W_Q.T, W_K.T, W_V.T by rows (shape (3E, E)); "
                               "in_proj_bias is b_Q, b_K, b_V one after another (shape (3E,)).")


def check_out_proj_forward(answer) -> bool | None:
    """``answer(x, weight, bias)`` must compute out_proj's output for ``x`` of shape (..., E)."""
    rng = _rng(2)
    cases = [(rng.standard_normal(shape), rng.standard_normal((shape[-1], shape[-1])), rng.standard_normal(shape[-1]))
             for shape in ((5, 4), (2, 3, 6))]
    return _check_function(answer, _out_proj_forward, cases, name="out_proj_forward", atol=1e-10,
                          hint="out_proj.weight is (out, in): torch computes x @ weight.T + bias.")


# ----------------------------------------------------------------- typical wrong answers


def _split_without_transpose(in_proj_weight):
    E = in_proj_weight.shape[1]
    return tuple(in_proj_weight[i * E:(i + 1) * E] for i in range(3))        # torch's blocks, still (out, in)


def _pack_without_transpose(W_Q, W_K, W_V, b_Q, b_K, b_V):
    return np.concatenate([W_Q, W_K, W_V], axis=0), np.concatenate([b_Q, b_K, b_V])


def _out_proj_without_transpose(x, weight, bias):
    return x @ weight + bias                                                 # runs (weight is square), wrong


COMMON_MISTAKES = {
    "check_split_in_proj": _split_without_transpose,
    "check_pack_in_proj": _pack_without_transpose,
    "check_out_proj_forward": _out_proj_without_transpose,
}
