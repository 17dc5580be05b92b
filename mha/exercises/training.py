"""Checks for the exercises of chapter 9, what a trained model attends to.

- :func:`check_first_step_size` (predict): ``first_step_size(lr, grad)``, how
  far Adam's first step moves a parameter whose gradient is ``grad``;
- :func:`check_diagnosis` (diagnose): ``diagnosis()`` returns the name, one of
  :data:`ADAM_BUGS`, of the bug hidden in :func:`mystery_adam`, whose steps
  the chapter compares with a correct Adam's;
- :func:`check_adamw_step` (build): ``adamw_step(p, g, m, v, t, lr, betas, eps,
  weight_decay)`` returns the new ``(p, m, v)`` of one ``torch.optim.AdamW``
  step (decoupled weight decay), checked against torch itself.

``COMMON_MISTAKES`` maps each check's name to a typical wrong answer; the test
suite uses it to make sure every check can tell right from wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..optim import Adam
from ._core import check_function as _check_function

__all__ = [
    "check_first_step_size",
    "check_diagnosis",
    "check_adamw_step",
    "mystery_adam",
    "ADAM_BUGS",
    "COMMON_MISTAKES",
]

_SEED = 2009


def _rng(offset: int) -> np.random.Generator:
    return np.random.default_rng(_SEED + offset)


# --- first_step_size (predict) ------------------------------------------------------------------


def _adam_first_step(lr: float, grad: np.ndarray) -> np.ndarray:
    p = np.zeros_like(grad)
    Adam({"p": p}, lr=lr).step({"p": grad})
    return np.abs(p)


def check_first_step_size(first_step_size: Callable[..., Any]) -> bool | None:
    """``first_step_size(lr, grad)`` -> |change| of each element after one Adam step (default betas, eps)."""
    rng = _rng(1)
    cases = [
        (1e-3, rng.standard_normal(5)),
        (3e-3, 1e3 * rng.standard_normal((2, 3))),
        (1e-2, 1e-3 * rng.standard_normal(4)),
        (0.5, np.array([-2.0, 7.0, 1e-2])),
    ]
    ok = _check_function(
        first_step_size,
        _adam_first_step,
        cases,
        name="first_step_size",
        atol=1e-6,
        hint="at t = 1, m = (1 - beta1) g and v = (1 - beta2) g^2; the bias corrections "
        "divide them by exactly those factors, so m_hat / sqrt(v_hat) = g / |g|.",
    )
    if ok:
        print(
            "Adam's first step moves every parameter by lr, whatever the size of its gradient "
            "(up to eps): only the gradient's sign counts. That is why a gradient of pure rounding "
            "noise still moves a parameter."
        )
    return ok


def _first_step_proportional_to_gradient(lr: float, grad: np.ndarray) -> np.ndarray:
    return lr * np.abs(grad)  # plain gradient descent's step, not Adam's


# --- diagnosis (diagnose) -----------------------------------------------------------------------

ADAM_BUGS = (
    "no bias correction",  # m and v used without dividing by 1 - beta^t
    "eps inside the square root",  # sqrt(v_hat + eps) instead of sqrt(v_hat) + eps
    "betas swapped",  # beta1 for v, beta2 for m
    "gradient ascent",  # p += ... instead of p -= ...
)


def mystery_adam(
    grads: Sequence[np.ndarray] | np.ndarray,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> np.ndarray:
    """Adam with one of :data:`ADAM_BUGS`: the parameters (steps, ...) after each step, from zeros."""
    beta1, beta2 = betas
    p, m, v, out = (
        np.zeros_like(grads[0]),
        np.zeros_like(grads[0]),
        np.zeros_like(grads[0]),
        [],
    )
    for g in grads:
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        p = p - lr * m / (np.sqrt(v) + eps)  # the bias corrections are missing
        out.append(p.copy())
    return np.array(out)


def check_diagnosis(diagnosis: Callable[..., Any]) -> bool | None:
    """``diagnosis()`` -> the name of mystery_adam's bug, one of ADAM_BUGS."""
    try:
        answer = diagnosis()
    except NotImplementedError:
        print("Not attempted yet: diagnosis still raises NotImplementedError.")
        return None
    except Exception as exc:
        print(f"Not quite: diagnosis raised {type(exc).__name__}: {exc}.")
        return False
    if answer not in ADAM_BUGS:
        print(f"Not quite: diagnosis() must return one of {ADAM_BUGS}, got {answer!r}.")
        return False
    if answer != ADAM_BUGS[0]:
        print(
            f"Not quite: {answer!r} does not explain the ratios above. Hint: work out the first "
            "step (t = 1, m and v start at zero) for each suspect; which one gives 3.16?"
        )
        return False
    print(
        "Correct: without the bias corrections the first step is (1 - beta1) / sqrt(1 - beta2) = 3.16 "
        "times too large, and the error fades as beta1^t and beta2^t go to zero."
    )
    return True


def _wrong_diagnosis() -> str:
    return "eps inside the square root"


# --- adamw_step (build) -------------------------------------------------------------------------


def _adamw_step(
    p: np.ndarray,
    g: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    t: int,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import torch

    param = torch.tensor(p, requires_grad=True)
    opt = torch.optim.AdamW(
        [param], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay
    )
    if t > 1:  # resume from the given state
        opt.state[param] = {
            "step": torch.tensor(float(t - 1)),
            "exp_avg": torch.tensor(m),
            "exp_avg_sq": torch.tensor(v),
        }
    param.grad = torch.tensor(g)
    opt.step()
    state = opt.state[param]
    return param.detach().numpy(), state["exp_avg"].numpy(), state["exp_avg_sq"].numpy()


def check_adamw_step(adamw_step: Callable[..., Any]) -> bool | None:
    """``adamw_step(p, g, m, v, t, lr, betas, eps, weight_decay)`` -> new (p, m, v), as torch.optim.AdamW."""
    rng = _rng(3)
    cases = []
    for t, shape, wd in (
        (1, (4,), 0.01),
        (5, (2, 3), 0.1),
        (50, (3,), 0.0),
        (2, (2, 2), 1.0),
    ):
        p, g = rng.standard_normal(shape), rng.standard_normal(shape)
        m = 0.1 * rng.standard_normal(shape) if t > 1 else np.zeros(shape)
        v = 0.1 * rng.random(shape) if t > 1 else np.zeros(shape)
        cases.append((p, g, m, v, t, 1e-2, (0.9, 0.999), 1e-8, wd))
    return _check_function(
        adamw_step,
        _adamw_step,
        cases,
        name="adamw_step",
        atol=1e-12,
        hint="AdamW shrinks the parameter itself, p <- p * (1 - lr * weight_decay), "
        "before the Adam update, and leaves the gradient alone; Adam's L2 penalty "
        "adds weight_decay * p to the gradient instead. t counts from 1.",
    )


def _adamw_as_adam_l2(
    p: np.ndarray,
    g: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    t: int,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    beta1, beta2 = betas
    g = g + weight_decay * p  # Adam's L2 penalty: not AdamW
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    denom = np.sqrt(v) / np.sqrt(1 - beta2**t) + eps
    return p - lr / (1 - beta1**t) * m / denom, m, v


COMMON_MISTAKES = {
    "check_first_step_size": _first_step_proportional_to_gradient,
    "check_diagnosis": _wrong_diagnosis,
    "check_adamw_step": _adamw_as_adam_l2,
}
