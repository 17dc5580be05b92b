"""Figures used in the book: attention-weight maps and numerical-error plots.

Every function returns the matplotlib objects it drew on and never calls
``plt.show()``; showing or saving is left to the caller (or to Jupyter).
Inputs may be NumPy arrays, anything ``np.asarray`` accepts, or torch tensors
(detached and moved to the CPU by :func:`mha.verify.as_float64`, which converts
every input here). No global matplotlib state (``rcParams``, styles) is changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import ArrayLike

from .verify import abs_diff, as_float64

__all__ = ["attention_map", "error_range", "error_heatmap", "error_histogram", "glue"]

_AUTO_ANNOTATE_MAX_CELLS = 100
_DIFF_LABEL = "|actual \u2212 expected|"


def _tick_labels(labels: Sequence[object], n: int, name: str, axis: str) -> list[str]:
    """Validate one list of tick labels against the axis length ``n``."""
    if isinstance(labels, str):
        raise TypeError(f"{name} must be a sequence of labels, got a single str")
    text = [str(label) for label in labels]
    if len(text) != n:
        raise ValueError(
            f"{name} must have one label per {axis} position ({n}), got {len(text)}"
        )
    return text


def _draw_one_map(
    ax: Any,
    w: np.ndarray,
    qlabels: list[str] | None,
    klabels: list[str] | None,
    *,
    cmap: Any,
    norm: Normalize,
    annotate: bool,
    title: str,
) -> Any:
    """Draw one (L, S) map into ``ax`` and return the AxesImage."""
    image = ax.imshow(w, cmap=cmap, norm=norm, interpolation="nearest")
    ax.set_title(title)
    ax.set_xlabel("key" if klabels is not None else "key position")
    ax.set_ylabel("query" if qlabels is not None else "query position")
    if klabels is not None:
        ax.set_xticks(range(w.shape[1]), labels=klabels, rotation=45, ha="right")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if qlabels is not None:
        ax.set_yticks(range(w.shape[0]), labels=qlabels)
    else:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if annotate:
        for (i, j), value in np.ndenumerate(w):
            if np.isnan(value):
                continue
            # Light text on the dark end of the colour map, dark text elsewhere.
            colour = "white" if norm(value) < 0.5 else "black"
            ax.text(
                j, i, f"{value:.2f}", ha="center", va="center", color=colour, fontsize=8
            )
    return image


def attention_map(
    weights: ArrayLike,
    query_labels: Sequence[object] | None = None,
    key_labels: Sequence[object] | None = None,
    *,
    ax: Any = None,
    title: str = "Attention weights",
    cmap: Any = "viridis",
    annotate: bool | None = None,
    vmin: float = 0.0,
    vmax: float | None = None,
) -> tuple[Any, Any]:
    """Draw attention weights as an image with a colour bar.

    ``weights`` has shape (L, S): row ``i`` holds the weights query ``i`` puts
    on each of the S keys. A 3-D array of shape (H, L, S) draws one small map
    per head in a row ("head 0", "head 1", ...) sharing one colour bar, and
    ``title`` becomes the figure title.

    ``query_labels`` / ``key_labels`` (length L / S) become the tick labels.
    ``annotate=None`` writes each value (2 decimals) when L * S <= 100.
    ``vmax=None`` uses the largest finite weight. NaN cells are drawn blank.
    If ``ax`` is given it is used (for 3-D input: a sequence of H Axes).

    Returns ``(fig, ax)`` for 2-D input and ``(fig, axes)`` for 3-D input,
    where ``axes`` is a NumPy array of H Axes.
    """
    w = as_float64(weights, "weights")
    if w.ndim not in (2, 3):
        raise ValueError(
            f"weights must be 2-D (L, S) or 3-D (H, L, S), got shape {w.shape}"
        )
    if w.size == 0:
        raise ValueError(f"weights must not be empty, got shape {w.shape}")
    if annotate is not None and not isinstance(annotate, bool):
        raise TypeError(f"annotate must be None, True or False, got {annotate!r}")
    L, S = w.shape[-2:]
    qlabels = (
        None
        if query_labels is None
        else _tick_labels(query_labels, L, "query_labels", "query")
    )
    klabels = (
        None if key_labels is None else _tick_labels(key_labels, S, "key_labels", "key")
    )
    if annotate is None:
        annotate = L * S <= _AUTO_ANNOTATE_MAX_CELLS
    if vmax is None:
        finite = w[np.isfinite(w)]
        vmax = float(finite.max()) if finite.size else 1.0
        vmax = max(vmax, vmin + 1e-12)  # keep the range non-empty
    if not vmax > vmin:
        raise ValueError(
            f"vmax must be greater than vmin, got vmin={vmin}, vmax={vmax}"
        )
    norm = Normalize(vmin=vmin, vmax=vmax)

    if w.ndim == 2:
        if ax is None:
            fig, ax = plt.subplots(
                figsize=(min(3 + 0.45 * S, 12), min(2.5 + 0.4 * L, 10)),
                layout="constrained",
            )
        else:
            fig = ax.figure
        image = _draw_one_map(
            ax,
            w,
            qlabels,
            klabels,
            cmap=cmap,
            norm=norm,
            annotate=annotate,
            title=title,
        )
        fig.colorbar(image, ax=ax, label="weight")
        return fig, ax

    H = w.shape[0]
    if ax is None:
        side = min(1.5 + 0.3 * max(L, S), 4.5)
        fig, axes = plt.subplots(
            1,
            H,
            figsize=(side * H + 1.5, side + 1),
            squeeze=False,
            layout="constrained",
        )
        axes = axes[0]
    else:
        axes = np.asarray(ax, dtype=object).ravel()
        if axes.size != H:
            raise ValueError(
                f"ax must hold one Axes per head ({H}) for 3-D weights, got {axes.size}"
            )
        fig = axes[0].figure
    for h, head_ax in enumerate(axes):
        image = _draw_one_map(
            head_ax,
            w[h],
            qlabels,
            klabels,
            cmap=cmap,
            norm=norm,
            annotate=annotate,
            title=f"head {h}",
        )
        if h > 0:  # the rows are the same queries: label them only once
            head_ax.set_ylabel("")
            head_ax.tick_params(labelleft=False)
    fig.suptitle(title)
    fig.colorbar(image, ax=list(axes), label="weight")
    return fig, axes


def _abs_diff(actual: ArrayLike, expected: ArrayLike) -> np.ndarray:
    """|actual - expected| in float64 (:func:`mha.verify.abs_diff`); the inputs must not be empty."""
    diff = abs_diff(actual, expected)
    if diff.size == 0:
        raise ValueError(
            f"actual and expected must not be empty, got shape {diff.shape}"
        )
    return diff


def _input_eps(actual: ArrayLike, expected: ArrayLike) -> float:
    """Machine epsilon of the inputs' floating dtype (float64 for integers)."""
    arrays = (
        np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
        for x in (actual, expected)
    )
    dtype = np.result_type(*arrays)
    return float(np.finfo(dtype if dtype.kind == "f" else np.float64).eps)


def _check_limit(name: str, value: object, *, positive: bool) -> None:
    """``tol``, ``vmin``, ``vmax``: None, or a finite number (above zero where a log scale needs it)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not np.isfinite(value) or (positive and value <= 0):
        raise ValueError(
            f"{name} must be a {'positive ' if positive else ''}finite number, got {value}"
        )


def _heatmap_diff(actual: ArrayLike, expected: ArrayLike) -> tuple[np.ndarray, bool]:
    """|actual - expected| as the 2-D array a heatmap draws, and whether leading axes were reduced (max)."""
    diff = _abs_diff(actual, expected)
    if diff.ndim == 1:
        return diff[np.newaxis, :], False
    if diff.ndim > 2:
        return diff.reshape(-1, *diff.shape[-2:]).max(axis=0), True
    return diff, False


def _colour_range(
    diffs: list[np.ndarray], eps: float, *, log: bool, tol: float | None
) -> tuple[float, float]:
    """(vmin, vmax) that shows every difference in ``diffs`` and keeps the ``tol`` marker on the bar."""
    finite = np.concatenate([d[np.isfinite(d)].ravel() for d in diffs])
    if log:
        positive = finite[finite > 0]
        low = float(positive.min()) if positive.size else eps
        high = float(positive.max()) if positive.size else low
        if tol is not None:
            low, high = min(low, tol / 2), max(high, tol * 2)
        return low, high
    high = float(finite.max()) if finite.size else 0.0
    return 0.0, high if tol is None else max(high, tol * 1.05)


def error_range(
    *pairs: tuple[ArrayLike, ArrayLike], log: bool = True, tol: float | None = None
) -> dict[str, float]:
    """One colour range for several error heatmaps: ``{"vmin": .., "vmax": ..}``.

    ``pairs`` are the ``(actual, expected)`` pairs of the panels; pass the result
    on, ``error_heatmap(actual, expected, **scale)``, so that one colour means
    one size of error in every panel. ``log`` and ``tol`` as in :func:`error_heatmap`.
    """
    if not pairs:
        raise ValueError("error_range needs at least one (actual, expected) pair")
    _check_limit("tol", tol, positive=True)
    diffs = [_heatmap_diff(actual, expected)[0] for actual, expected in pairs]
    low, high = _colour_range(diffs, _input_eps(*pairs[0]), log=log, tol=tol)
    return {"vmin": low, "vmax": high}


def error_heatmap(
    actual: ArrayLike,
    expected: ArrayLike,
    *,
    ax: Any = None,
    title: str | None = None,
    xlabel: str = "feature",
    ylabel: str = "token",
    log: bool = True,
    cmap: Any = "magma",
    tol: float | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> tuple[Any, Any]:
    """Draw ``|actual - expected|`` element-wise, computed in float64.

    Both inputs have the same shape. 1-D input of shape (N,) is drawn as one
    row; 2-D input (rows, cols) as is; input with more axes (..., rows, cols)
    is reduced to (rows, cols) by taking the maximum over the leading axes.

    With ``log=True`` the colours use a log scale; exact zeros are drawn in
    the bottom colour of the bar (the smallest positive difference, or the
    inputs' machine epsilon when everything matches exactly). ``tol`` is marked on the colour bar, whose
    range is widened if needed so the marker is visible. ``vmin``/``vmax``
    set the colour range instead: :func:`error_range` gives several panels
    one scale. The title reports the maximum difference.

    Returns ``(fig, ax)``.
    """
    diff, reduced = _heatmap_diff(actual, expected)
    max_diff = float(np.max(diff))  # NaN if any entry is NaN, which is worth seeing
    _check_limit("tol", tol, positive=True)
    _check_limit("vmin", vmin, positive=log)
    _check_limit("vmax", vmax, positive=log)
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise ValueError(f"vmin must be below vmax, got vmin={vmin} and vmax={vmax}")
    low, high = _colour_range([diff], _input_eps(actual, expected), log=log, tol=tol)
    low, high = (
        (low if vmin is None else float(vmin)),
        (high if vmax is None else float(vmax)),
    )
    if log:
        if high <= low:
            high = low * 10
        # exact zeros take the bottom colour of the bar
        shown = np.where(diff == 0, low, diff)
        norm: Normalize = LogNorm(vmin=low, vmax=high)
    else:
        shown = diff
        norm = Normalize(vmin=low, vmax=high if high > low else low + 1.0)

    rows, cols = shown.shape
    if ax is None:
        fig, ax = plt.subplots(
            figsize=(min(max(4 + 0.3 * cols, 5), 12), min(max(2 + 0.3 * rows, 3), 8)),
            layout="constrained",
        )
    else:
        fig = ax.figure
    image = ax.imshow(
        shown, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest"
    )
    cbar = fig.colorbar(image, ax=ax, label=_DIFF_LABEL)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)

    summary = f"max |diff| = {max_diff:.2e}"
    if tol is not None:
        cbar.ax.axhline(tol, color="cyan", linewidth=2)
        summary += f", tol = {tol:.0e}"
    if reduced:
        summary += " (max over leading axes)"
    ax.set_title(summary if title is None else f"{title}\n{summary}")
    return fig, ax


def error_histogram(
    actual: ArrayLike,
    expected: ArrayLike,
    *,
    ax: Any = None,
    bins: int = 50,
    title: str | None = None,
) -> tuple[Any, Any]:
    """Histogram of ``log10 |actual - expected|`` over all elements.

    Inputs have the same (any) shape. Exact zeros have no logarithm; they are
    counted in the title instead, as are non-finite differences.

    Returns ``(fig, ax)``.
    """
    diff = _abs_diff(actual, expected).ravel()
    finite = diff[np.isfinite(diff)]
    positive = finite[finite > 0]
    n_zero = int(np.count_nonzero(finite == 0))
    n_bad = diff.size - finite.size

    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    else:
        fig = ax.figure
    ax.hist(np.log10(positive), bins=bins)
    ax.set_xlabel("log10 " + _DIFF_LABEL)
    ax.set_ylabel("count")

    summary = f"{positive.size} nonzero, {n_zero} exactly zero"
    if n_bad:
        summary += f", {n_bad} non-finite"
    ax.set_title(summary if title is None else f"{title}\n{summary}")
    return fig, ax


def glue(name: str, fig: Any) -> None:
    """Show ``fig`` below the cell and, during a Jupyter Book build, keep it under ``name``.

    Another page can then show the same figure with
    ``{glue:figure} chapters/<notebook>::<name>`` (the book's landing page
    does). Outside a book build (Colab, Jupyter) this just shows the figure.
    The figure is closed afterwards so that it is not shown twice.
    """
    if not isinstance(name, str):
        raise TypeError(
            f"name must be a str (the figure's key in the book), got {name!r} "
            f"({type(name).__name__})"
        )
    if not name:
        raise ValueError("name must be a non-empty str (the figure's key in the book)")
    if not isinstance(fig, Figure):
        raise TypeError(
            "fig must be a matplotlib Figure (e.g. the first item that attention_map "
            f"returns), got {type(fig).__name__}"
        )
    try:
        from myst_nb import glue as myst_glue  # type: ignore[import-untyped]
    except ImportError:
        from IPython.display import display

        display(fig)
    else:
        myst_glue(name, fig, display=True)
    plt.close(fig)
