"""Adam, step for step the update ``torch.optim.Adam`` makes (its default, single-tensor route).

For a parameter ``p`` with gradient ``g`` at step ``t = 1, 2, ...``::

    g  <- g + weight_decay * p                 (L2 penalty, as torch's Adam; not AdamW)
    m  <- m + (1 - beta1) (g - m)              (= beta1 m + (1 - beta1) g; torch's lerp)
    v  <- beta2 v + (1 - beta2) g^2
    p  <- p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

``m`` and ``v`` start at zero; the two corrections ``1 - beta^t`` undo that
start's pull towards zero in the first steps. Every operation is written in
the order torch performs it, so float64 runs agree to rounding error.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["Adam"]


class Adam:
    """Adam over a dict of NumPy parameters, updated in place by :meth:`step`.

    ``params``: ``{name: float array}``, for example ``model.parameters()``;
    the arrays themselves are changed, so whoever holds them sees the new
    values. ``step(grads)`` takes ``{name: gradient}`` with the same names
    and shapes. Attributes: ``lr, betas, eps, weight_decay``, ``t`` (steps
    taken) and ``state`` (``{name: {"m": array, "v": array}}``).
    """

    def __init__(
        self,
        params: dict[str, np.ndarray],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        self.params = _check_params(params)
        self.lr = _non_negative(lr, "lr")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for i, beta in enumerate(betas):
            if (
                isinstance(beta, bool)
                or not isinstance(beta, numbers.Real)
                or not 0.0 <= float(beta) < 1.0
            ):
                raise ValueError(f"betas[{i}] must be a number in [0, 1), got {beta!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = _non_negative(eps, "eps")
        self.weight_decay = _non_negative(weight_decay, "weight_decay")
        self.t = 0
        self.state = {
            name: {"m": np.zeros_like(p), "v": np.zeros_like(p)}
            for name, p in self.params.items()
        }

    def __repr__(self) -> str:
        return (
            f"Adam({len(self.params)} parameters, lr={self.lr}, betas={self.betas}, eps={self.eps}, "
            f"weight_decay={self.weight_decay}, t={self.t})"
        )

    def step(self, grads: dict[str, np.ndarray]) -> None:
        """One Adam update of every parameter with its gradient in ``grads``."""
        grads = self._check_grads(grads)
        self.t += 1
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1**self.t)
        bias_correction2_sqrt = math.sqrt(1 - beta2**self.t)
        for name, p in self.params.items():
            g, m, v = grads[name], self.state[name]["m"], self.state[name]["v"]
            if self.weight_decay:
                g = g + p.dtype.type(self.weight_decay) * p
            m += p.dtype.type(1 - beta1) * (g - m)  # the running mean of the gradient
            v *= p.dtype.type(beta2)  # ... and of its square
            v += (p.dtype.type(1 - beta2) * g) * g  # torch's addcmul order
            denom = np.sqrt(v) / p.dtype.type(bias_correction2_sqrt) + p.dtype.type(
                self.eps
            )
            p -= p.dtype.type(step_size) * (m / denom)

    def _check_grads(self, grads: object) -> dict[str, np.ndarray]:
        if not isinstance(grads, dict):
            raise TypeError(
                f"grads must be a dict {{name: gradient}}, got {type(grads).__name__}"
            )
        missing = [name for name in self.params if grads.get(name) is None]
        if missing:
            raise ValueError(
                f"grads has no gradient for parameter(s) {missing}; "
                f"expected one for each of {sorted(self.params)}"
            )
        checked = {}
        for name, p in self.params.items():
            g = np.asarray(grads[name])
            if not np.issubdtype(g.dtype, np.floating):
                raise TypeError(
                    f"gradient of {name!r} must be a floating-point array, got dtype {g.dtype}"
                )
            if g.shape != p.shape:
                raise ValueError(
                    f"gradient of {name!r} must have the parameter's shape {p.shape}, got {g.shape}"
                )
            checked[name] = g.astype(p.dtype, copy=False)
        return checked


def _check_params(params: object) -> dict[str, np.ndarray]:
    if not isinstance(params, dict) or not params:
        raise TypeError(
            f"params must be a non-empty dict {{name: array}}, got {type(params).__name__}"
            + (" (empty)" if isinstance(params, dict) else "")
        )
    for name, p in params.items():
        if not isinstance(p, np.ndarray) or p.dtype not in (np.float32, np.float64):
            kind = p.dtype if isinstance(p, np.ndarray) else type(p).__name__
            raise TypeError(
                f"parameter {name!r} must be a float32 or float64 NumPy array "
                f"(it is updated in place), got {kind}"
            )
        if not p.flags.writeable:
            raise ValueError(
                f"parameter {name!r} must be writeable: Adam updates it in place"
            )
    return dict(params)


def _non_negative(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a non-negative number, got {value!r} ({type(value).__name__})"
        )
    if not (float(value) >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a non-negative finite number, got {value}")
    return float(value)
