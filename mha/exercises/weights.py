"""Checks for the exercises of chapter 4, "Matching PyTorch: the weight mapping".

torch keeps a linear layer's weight as (out_features, in_features) and
computes ``x @ W.T + b``; ``mha`` keeps (in_features, out_features) and
computes ``x @ W + b``. The exercises:

- :func:`check_bias_prediction` (predict): ``predict_still_matches()`` returns one bool per
  case of :data:`BIAS_CASES`, True where a port that drops that bias still matches torch;
- :func:`check_gallery_bug` (diagnose): ``name_the_bug()`` names, from :data:`GALLERY_BUGS`,
  the bug in :func:`mystery_forward`, whose error heatmap the chapter draws;
- :func:`check_pack_in_proj` (build): ``W_Q, ..., b_V`` -> ``(in_proj_weight, in_proj_bias)``;
- :func:`check_out_proj_forward` (build): ``out_proj``'s forward, written with torch's
  ``out_proj.weight`` and ``out_proj.bias``.

Every test case is drawn from a seeded generator, so a verdict is the same on every run.
``COMMON_MISTAKES`` holds one typical wrong answer per check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..functional import linear, merge_heads, softmax, split_heads
from ._core import check_function as _check_function
from ._naming import check_name, check_prediction

__all__ = [
    "check_bias_prediction",
    "check_gallery_bug",
    "mystery_forward",
    "GALLERY_BUGS",
    "check_pack_in_proj",
    "check_out_proj_forward",
    "COMMON_MISTAKES",
]

_SEED = 4


def _rng(offset: int) -> np.random.Generator:
    return np.random.default_rng(_SEED + offset)


# ----------------------------------------------------------------- reference solutions


def _pack_in_proj(
    W_Q: np.ndarray,
    W_K: np.ndarray,
    W_V: np.ndarray,
    b_Q: np.ndarray,
    b_K: np.ndarray,
    b_V: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([W_Q.T, W_K.T, W_V.T], axis=0), np.concatenate(
        [b_Q, b_K, b_V]
    )


def _out_proj_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    return x @ weight.T + bias


# ----------------------------------------------------------------- predict: which biases matter?

BIAS_CASES = (
    "b_K dropped",
    "b_Q dropped",
    "b_V dropped",
    "b_O dropped, torch module freshly made (never trained)",
)


def _still_matches() -> tuple[bool, ...]:
    import torch  # only this check needs torch

    from ..torch_bridge import (
        compare_outputs,
        create_matching_mha,
        load_weights_from_pytorch,
    )

    x = _rng(3).standard_normal((2, 6, 16)).astype(np.float32)
    verdicts = []
    for name, fresh in (("b_K", False), ("b_Q", False), ("b_V", False), ("b_O", True)):
        numpy_m, torch_m = create_matching_mha(16, 4, seed=_SEED)
        if not fresh:  # biases as training leaves them: not zero
            gen = torch.Generator().manual_seed(_SEED)
            with torch.no_grad():
                torch_m.in_proj_bias.copy_(0.5 * torch.randn(48, generator=gen))
                torch_m.out_proj.bias.copy_(0.5 * torch.randn(16, generator=gen))
            load_weights_from_pytorch(numpy_m, torch_m)
        getattr(numpy_m, name)[...] = 0.0  # the port forgets it
        verdicts.append(bool(compare_outputs(numpy_m, torch_m, x, atol=1e-5)))
    return tuple(verdicts)


_BIAS_WHY = {
    0: "b_K adds q_i . b_K to every score of row i, the same for every key, and a softmax "
    "does not change when a constant is added to its whole row.",
    1: "b_Q adds b_Q . k_j to the scores, which differs from key to key: the weights change.",
    2: "b_V reaches the output: the weights of a row sum to 1, so the row gains b_V W_O.",
    3: "torch starts every bias at zero, so a dropped zero changes nothing: a fresh module "
    "hides the mistake (which is why the chapter randomises the biases first).",
}


def check_bias_prediction(predict_still_matches: Callable[..., Any]) -> bool | None:
    """``predict_still_matches()`` -> one bool per case of BIAS_CASES."""
    return check_prediction(
        predict_still_matches,
        name="predict_still_matches",
        labels=BIAS_CASES,
        truth=_still_matches(),
        why=_BIAS_WHY,
    )


# ----------------------------------------------------------------- diagnose: a mystery port

GALLERY_BUGS = (
    "weights not transposed",
    "K taken before Q",
    "heads without transpose",
    "no 1/sqrt(d_k)",
    "softmax over queries",
    "output bias dropped",
    "mask polarity flipped",
)


def mystery_forward(
    x: ArrayLike, w: dict[str, np.ndarray], blocked: ArrayLike, num_heads: int
) -> np.ndarray:
    """A forward pass like the chapter's ``forward_by_hand``, x (N, L, E) -> (N, L, E),
    with one bug from GALLERY_BUGS (which one is the exercise)."""
    q, k, v = (
        split_heads(linear(x, w["W_" + n], w["b_" + n]), num_heads) for n in "QKV"
    )
    scores = q @ np.swapaxes(k, -1, -2)  # (N, H, L, L)
    scores = np.where(blocked, -np.inf, scores)
    return linear(merge_heads(softmax(scores) @ v), w["W_O"], w["b_O"])


_GALLERY_LOOKS = {
    "weights not transposed": "every row would be wrong, token 0 included.",
    "K taken before Q": "the first row would be clean, as here, but the bug is in the loader, "
    "and mystery_forward got the correct weights.",
    "heads without transpose": "every row would be wrong, token 0 included.",
    "softmax over queries": "token 0 would be wrong too: its weights would not sum to 1.",
    "output bias dropped": "every row would be off by the same -b_O: vertical stripes.",
    "mask polarity flipped": "token 0 would be wrong: it would see the future, not itself.",
}


def check_gallery_bug(name_the_bug: Callable[..., Any]) -> bool | None:
    """``name_the_bug()`` -> one of GALLERY_BUGS, the bug in ``mystery_forward``."""
    return check_name(
        name_the_bug,
        name="name_the_bug",
        choices=GALLERY_BUGS,
        answer="no 1/sqrt(d_k)",
        explanations=_GALLERY_LOOKS,
        correct="no 1/sqrt(d_k). A clean first row means wrong scores (token 0 attends only "
        "to itself, whatever its scores); with the correct weights the loader is not "
        "to blame, so the scores are computed wrong: here, never scaled.",
    )


# ----------------------------------------------------------------- checks


def check_pack_in_proj(answer: Callable[..., Any]) -> bool | None:
    """``answer(W_Q, W_K, W_V, b_Q, b_K, b_V)`` must return torch's ``(in_proj_weight, in_proj_bias)``."""
    rng = _rng(1)
    cases = [
        tuple(rng.standard_normal((E, E)) for _ in range(3))
        + tuple(rng.standard_normal(E) for _ in range(3))
        for E in (4, 6)
    ]
    return _check_function(
        answer,
        _pack_in_proj,
        cases,
        name="pack_in_proj",
        atol=1e-12,
        hint="in_proj_weight stacks W_Q.T, W_K.T, W_V.T by rows (shape (3E, E)); "
        "in_proj_bias is b_Q, b_K, b_V one after another (shape (3E,)).",
    )


def check_out_proj_forward(answer: Callable[..., Any]) -> bool | None:
    """``answer(x, weight, bias)`` must compute out_proj's output for ``x`` of shape (..., E)."""
    rng = _rng(2)
    cases = [
        (
            rng.standard_normal(shape),
            rng.standard_normal((shape[-1], shape[-1])),
            rng.standard_normal(shape[-1]),
        )
        for shape in ((5, 4), (2, 3, 6))
    ]
    return _check_function(
        answer,
        _out_proj_forward,
        cases,
        name="out_proj_forward",
        atol=1e-10,
        hint="out_proj.weight is (out, in): torch computes x @ weight.T + bias.",
    )


# ----------------------------------------------------------------- typical wrong answers


def _pack_without_transpose(
    W_Q: np.ndarray,
    W_K: np.ndarray,
    W_V: np.ndarray,
    b_Q: np.ndarray,
    b_K: np.ndarray,
    b_V: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([W_Q, W_K, W_V], axis=0), np.concatenate([b_Q, b_K, b_V])


def _out_proj_without_transpose(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray
) -> np.ndarray:
    return x @ weight + bias  # runs (weight is square), wrong


COMMON_MISTAKES = {
    "check_bias_prediction": lambda: (True, True, True, True),
    "check_gallery_bug": lambda: "K taken before Q",
    "check_pack_in_proj": _pack_without_transpose,
    "check_out_proj_forward": _out_proj_without_transpose,
}
