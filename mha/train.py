"""Training the tiny model: the tasks, the loop (NumPy, optionally with its torch twin in step), accuracy.

The loop is the four lines every training loop has::

    logits = model(tokens)                                  # forward
    loss, cache = cross_entropy(logits, targets)            # loss
    grads = model.backward(cross_entropy_backward(1.0, cache))   # backward
    optimizer.step(grads)                                   # update

With ``twin=`` the torch twin takes the same step on the same batch with
autograd and ``torch.optim.Adam``, and the largest parameter difference
after every step is recorded.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike

from ._checks import as_float_array, flag, positive_int, rng_from_seed
from .losses import cross_entropy, cross_entropy_backward
from .optim import Adam
from .verify import max_abs_diff

if TYPE_CHECKING:
    from .model import TinyTransformer

T = TypeVar("T")

__all__ = ["SequenceTask", "fit", "accuracy", "IGNORE"]

IGNORE = -100  # the target of a position that is not scored
TASKS = ("reverse", "copy")


@dataclass(frozen=True)
class SequenceTask:
    """Random token sequences (N, L) over ``vocab_size`` tokens and their targets.

    ``"reverse"``: the target at position i is the token at L - 1 - i.
    ``"copy"``: the target at position i is the token ``offset`` positions
    back, i - offset; the first ``offset`` positions have no such token and
    get ``IGNORE`` (the loss's ``ignore_index``).
    """

    kind: str
    seq_len: int
    vocab_size: int
    offset: int = 0

    def __post_init__(self) -> None:
        if self.kind not in TASKS:
            raise ValueError(f"kind must be one of {TASKS}, got {self.kind!r}")
        positive_int(self.seq_len, "seq_len")
        positive_int(self.vocab_size, "vocab_size")
        if self.kind == "copy" and not 0 < self.offset < self.seq_len:
            raise ValueError(
                f"offset must be in [1, seq_len) = [1, {self.seq_len}) for copy, got {self.offset}"
            )

    def targets(self, tokens: np.ndarray) -> np.ndarray:
        """The targets (N, L) of ``tokens`` (N, L)."""
        if self.kind == "reverse":
            return tokens[:, ::-1].copy()
        out = np.full_like(tokens, IGNORE)
        out[:, self.offset :] = tokens[:, : -self.offset]
        return out

    def sample(
        self,
        n: int,
        rng: int | np.random.Generator | None,
        exclude: ArrayLike | frozenset[bytes] | set[bytes] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens, targets)`` for ``n`` random sequences; none of them is a row of ``exclude``
        (an (M, L) array, or the set that ``_rows`` makes of one)."""
        gen = rng_from_seed(rng, "rng")
        tokens = gen.integers(0, self.vocab_size, size=(n, self.seq_len))
        if exclude is not None:
            seen = exclude if isinstance(exclude, (set, frozenset)) else _rows(exclude)
            for i in range(n if seen else 0):
                # a held-out sequence: draw this row again
                while tokens[i].tobytes() in seen:
                    tokens[i] = gen.integers(0, self.vocab_size, size=self.seq_len)
        return tokens, self.targets(tokens)


def _rows(tokens: ArrayLike) -> frozenset[bytes]:
    return frozenset(row.tobytes() for row in np.asarray(tokens, dtype=np.int64))


def accuracy(
    logits: ArrayLike, targets: ArrayLike, *, per_position: bool = False
) -> float | np.ndarray:
    """Share of scored positions whose largest logit is the target (per position: an (L,) array).

    logits (..., V) and integer targets (...), ``IGNORE`` where a position is not scored.
    """
    z = as_float_array(logits, "logits")
    if z.ndim < 1 or z.shape[-1] == 0:
        raise ValueError(
            f"logits must have a class axis (..., V) with V >= 1 last, got shape {z.shape}"
        )
    y = np.asarray(targets)
    if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise TypeError(f"targets must hold integer class indices, got dtype {y.dtype}")
    if y.shape != z.shape[:-1]:
        raise ValueError(
            f"targets must have the logits' shape without the class axis, {z.shape[:-1]} "
            f"for logits {z.shape}, got {y.shape}"
        )
    per_position = flag(per_position, "per_position")
    scored = y != IGNORE
    right = (z.argmax(axis=-1) == y) & scored
    if per_position:  # NaN where no position is scored
        with np.errstate(invalid="ignore"):
            return right.sum(axis=0) / scored.sum(axis=0)
    return float(right.sum() / scored.sum())


@dataclass
class History:
    """What :func:`fit` recorded, one entry per step."""

    loss: np.ndarray
    torch_loss: np.ndarray | None = None
    param_diff: dict[str, np.ndarray] | None = (
        None  # name -> max |NumPy - torch| after each step
    )

    @property
    def max_param_diff(self) -> np.ndarray:
        """After each step, the largest |NumPy - torch| over all parameters."""
        if self.param_diff is None:
            raise ValueError("no parameter differences: fit() was run without a twin")
        return np.max(np.stack(list(self.param_diff.values())), axis=0)


def fit(
    model: TinyTransformer,
    task: SequenceTask,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int | np.random.Generator | None = 0,
    held_out: np.ndarray | None = None,
    twin: Any = None,
    progress: bool | None = None,
) -> History:
    """Train ``model`` with :class:`mha.optim.Adam` on ``steps`` fresh batches of ``task``.

    Batches come from ``np.random.default_rng(seed)`` and avoid the rows of
    ``held_out``, so two calls with the same seed see the same batches. With
    ``twin`` (``model.to_torch()``, made before training) torch trains it in
    step on the same batches; the history then holds its losses and, after
    every step, the largest |difference| of each parameter. ``progress``: a progress
    bar (tqdm, on stderr); None shows it only where a person watches.
    """
    from .model import TinyTransformer

    if not isinstance(model, TinyTransformer):
        raise TypeError(
            f"model must be a mha.model.TinyTransformer, got {type(model).__name__}"
        )
    if not isinstance(task, SequenceTask):
        raise TypeError(
            f"task must be a mha.train.SequenceTask, got {type(task).__name__}"
        )
    steps = positive_int(steps, "steps")
    rng = rng_from_seed(seed)
    seen = None if held_out is None else _rows(held_out)
    optimizer = Adam(model.parameters(), lr=lr)
    losses = np.empty(steps)
    if twin is not None:
        import torch

        from .model_torch import from_torch

        torch_optimizer = torch.optim.Adam(twin.parameters(), lr=lr)
        torch_losses = np.empty(steps)
        diffs = {name: np.empty(steps) for name in model.parameters()}
    for step in _progress(range(steps), progress, desc=f"training ({task.kind})"):
        tokens, targets = task.sample(batch_size, rng, exclude=seen)
        logits = model(tokens)
        loss, cache = cross_entropy(logits, targets, ignore_index=IGNORE)
        optimizer.step(model.backward(cross_entropy_backward(1.0, cache)))
        losses[step] = loss
        if twin is not None:
            torch_optimizer.zero_grad()
            V = model.vocab_size
            torch_loss = torch.nn.functional.cross_entropy(
                twin(torch.from_numpy(tokens)).reshape(-1, V),
                torch.from_numpy(targets).reshape(-1),
                ignore_index=IGNORE,
            )
            torch_loss.backward()
            torch_optimizer.step()
            torch_losses[step] = torch_loss.item()
            theirs = from_torch(twin)
            for name, p in model.parameters().items():
                diffs[name][step] = max_abs_diff(p, theirs[name])
    if twin is None:
        return History(losses)
    return History(losses, torch_losses, diffs)


def watched() -> bool:
    """True where a person watches the output: a terminal, or a notebook front end.

    Batch runners of notebooks (nbval, ``jupyter execute``, Jupyter Book)
    execute every cell with input disabled; a front end that a person uses
    (JupyterLab, Colab, VS Code) allows it. So a progress bar appears on the
    screen and never in a committed or compared output.
    """
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None else None
    kernel = getattr(ip, "kernel", None)
    if kernel is not None:
        return bool(getattr(kernel, "_allow_stdin", False))
    return sys.stderr.isatty()


def _progress(iterable: Iterable[T], show: bool | None, desc: str) -> Iterable[T]:
    if show is None:
        show = watched()
    if not show:
        return iterable
    try:
        from tqdm.std import tqdm  # the text bar: no widget library needed
    except ImportError:  # tqdm is optional: train without a bar
        return iterable
    return tqdm(iterable, desc=desc, file=sys.stderr, leave=False, mininterval=0.5)
