"""Tests for mha.plot: the figures draw the right data and never call plt.show()."""

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from helpers import bad_input_tests
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from mha import plot


@pytest.fixture(autouse=True)
def _close_figures_and_forbid_show(monkeypatch):
    def no_show(*args, **kwargs):
        raise AssertionError("plt.show() must never be called")

    monkeypatch.setattr(plt, "show", no_show)
    yield
    plt.close("all")


def _softmax_rows(rng, L, S):
    scores = rng.normal(size=(L, S))
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _colorbar_axes(fig, ax):
    """All axes of ``fig`` other than the plotting axes: the colour bars."""
    plotted = set(np.atleast_1d(ax).tolist())
    return [a for a in fig.axes if a not in plotted]


# ---------------------------------------------------------------- attention_map


def test_attention_map_draws_the_weights_with_colorbar_and_labels():
    w = _softmax_rows(np.random.default_rng(0), 3, 5)
    fig, ax = plot.attention_map(w, title="Toy weights")
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    assert len(ax.images) == 1
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), w)
    assert ax.get_title() == "Toy weights"
    assert ax.get_xlabel() == "key position"
    assert ax.get_ylabel() == "query position"
    assert len(_colorbar_axes(fig, ax)) == 1
    assert ax.images[0].colorbar is not None
    assert ax.images[0].norm.vmin == 0.0
    assert ax.images[0].norm.vmax == pytest.approx(w.max())


def test_attention_map_tick_labels_and_axis_names():
    w = _softmax_rows(np.random.default_rng(1), 2, 3)
    _, ax = plot.attention_map(w, ["q0", "q1"], ["the", "cat", "sat"])
    assert ax.get_xlabel() == "key"
    assert ax.get_ylabel() == "query"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["the", "cat", "sat"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["q0", "q1"]


def test_attention_map_annotates_small_maps_automatically():
    w = np.array([[0.25, 0.75], [1.0, 0.0]])
    _, ax = plot.attention_map(w)
    assert sorted(t.get_text() for t in ax.texts) == ["0.00", "0.25", "0.75", "1.00"]


def test_attention_map_skips_annotation_for_large_maps_unless_asked():
    _, ax_edge = plot.attention_map(np.full((10, 10), 0.1))  # exactly 100 cells
    assert len(ax_edge.texts) == 100
    w = np.full((11, 10), 0.1)  # 110 cells > 100
    _, ax = plot.attention_map(w)
    assert len(ax.texts) == 0
    _, ax2 = plot.attention_map(w, annotate=True)
    assert len(ax2.texts) == 110
    _, ax3 = plot.attention_map(np.eye(2), annotate=False)
    assert len(ax3.texts) == 0


def test_attention_map_uses_given_axes_and_vmax():
    fig, given = plt.subplots()
    w = np.eye(3) * 0.5
    out_fig, out_ax = plot.attention_map(w, ax=given, vmax=1.0)
    assert out_fig is fig and out_ax is given
    assert given.images[0].norm.vmax == 1.0


def test_attention_map_accepts_array_like_and_torch_tensor():
    _, ax = plot.attention_map([[0.5, 0.5], [0.1, 0.9]])
    np.testing.assert_array_equal(ax.images[0].get_array(), [[0.5, 0.5], [0.1, 0.9]])
    torch = pytest.importorskip("torch")
    t = torch.softmax(torch.randn(2, 4), dim=-1)
    _, ax = plot.attention_map(t)
    np.testing.assert_allclose(ax.images[0].get_array(), t.numpy())


def test_attention_map_with_nan_still_draws():
    w = np.array([[0.5, np.nan], [0.2, 0.8]])
    _, ax = plot.attention_map(w)
    data = np.ma.getdata(ax.images[0].get_array())
    assert np.isnan(data[0, 1]) and data[1, 1] == 0.8
    assert "nan" not in [t.get_text() for t in ax.texts]
    assert len(ax.texts) == 3
    plt.gcf().canvas.draw()  # rendering must not fail either


def test_attention_map_per_head_maps_share_one_colorbar():
    rng = np.random.default_rng(2)
    w = np.stack([_softmax_rows(rng, 3, 4) for _ in range(4)])
    fig, axes = plot.attention_map(w, title="All heads")
    assert isinstance(fig, Figure)
    assert len(axes) == 4 and all(isinstance(a, Axes) for a in axes)
    assert [a.get_title() for a in axes] == ["head 0", "head 1", "head 2", "head 3"]
    for h, a in enumerate(axes):
        np.testing.assert_array_equal(a.images[0].get_array(), w[h])
    assert len(_colorbar_axes(fig, axes)) == 1
    assert fig.get_suptitle() == "All heads"
    assert [a.get_ylabel() for a in axes] == ["query position", "", "", ""]
    assert all(a.get_xlabel() == "key position" for a in axes)
    # Query tick labels only on the first map, so they do not overlap the others.
    fig.canvas.draw()
    assert [len(a.get_yticklabels()) > 0 for a in axes] == [True, False, False, False]
    # One shared scale, so colours are comparable across heads.
    assert {(a.images[0].norm.vmin, a.images[0].norm.vmax) for a in axes} == {
        (0.0, w.max())
    }


def test_attention_map_per_head_into_given_axes():
    fig, given = plt.subplots(1, 2)
    out_fig, axes = plot.attention_map(np.ones((2, 2, 2)) / 2, ax=given)
    assert out_fig is fig and list(axes) == list(given)
    with pytest.raises(
        ValueError, match=r"ax must hold one Axes per head \(3\).*got 2"
    ):
        plot.attention_map(np.ones((3, 2, 2)), ax=given)


@pytest.mark.parametrize(
    "weights, message",
    [
        (
            np.ones((2, 3, 4, 5)),
            r"weights must be 2-D \(L, S\) or 3-D \(H, L, S\), got shape \(2, 3, 4, 5\)",
        ),
        (np.ones(4), r"weights must be 2-D .* got shape \(4,\)"),
        (np.ones((0, 3)), r"weights must not be empty, got shape \(0, 3\)"),
    ],
)
def test_attention_map_rejects_bad_shapes(weights, message):
    with pytest.raises(ValueError, match=message):
        plot.attention_map(weights)


def test_attention_map_takes_a_tensor_requiring_grad():
    """Converted by mha.verify.as_float64 (detached, on the CPU), like every comparison's input."""
    torch = pytest.importorskip("torch")
    t = torch.tensor([[0.25, 0.75], [1.0, 0.0]], requires_grad=True)
    _, ax = plot.attention_map(t)
    np.testing.assert_array_equal(ax.images[0].get_array(), t.detach().numpy())


# ---------------------------------------------------------------- error_heatmap


def test_error_heatmap_shows_abs_diff_with_max_in_title():
    rng = np.random.default_rng(3)
    expected = rng.normal(size=(4, 6))
    actual = expected + rng.normal(scale=1e-6, size=(4, 6))
    fig, ax = plot.error_heatmap(actual, expected)
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    diff = np.abs(actual - expected)
    np.testing.assert_array_equal(ax.images[0].get_array(), diff)
    assert ax.get_title() == f"max |diff| = {diff.max():.2e}"
    assert ax.get_xlabel() == "feature" and ax.get_ylabel() == "token"
    assert isinstance(ax.images[0].norm, LogNorm)
    (cbar_ax,) = _colorbar_axes(fig, ax)
    assert cbar_ax.get_ylabel() == "|actual \u2212 expected|"


def test_error_heatmap_computes_in_float64():
    expected = np.array([1.0, 2.0], dtype=np.float32)
    actual = np.nextafter(expected, np.float32(3))  # one float32 ulp above
    _, ax = plot.error_heatmap(actual, expected)
    want = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    np.testing.assert_array_equal(ax.images[0].get_array(), want[np.newaxis, :])
    assert ax.images[0].get_array().dtype == np.float64


def test_error_heatmap_title_labels_and_linear_scale():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[1.0, 2.5], [3.0, 3.0]])
    _, ax = plot.error_heatmap(
        a, b, title="layer 0", xlabel="dim", ylabel="pos", log=False
    )
    assert ax.get_title() == "layer 0\nmax |diff| = 1.00e+00"
    assert ax.get_xlabel() == "dim" and ax.get_ylabel() == "pos"
    assert not isinstance(ax.images[0].norm, LogNorm)
    np.testing.assert_array_equal(ax.images[0].get_array(), [[0.0, 0.5], [0.0, 1.0]])


def test_error_heatmap_one_dimensional_input_is_one_row():
    _, ax = plot.error_heatmap([1.0, 2.0, 3.0], [1.5, 2.0, 2.0], log=False)
    np.testing.assert_array_equal(ax.images[0].get_array(), [[0.5, 0.0, 1.0]])


def test_error_heatmap_reduces_leading_axes_with_max():
    rng = np.random.default_rng(4)
    expected = rng.normal(size=(2, 3, 4, 5))
    actual = expected + rng.normal(scale=1e-3, size=expected.shape)
    _, ax = plot.error_heatmap(actual, expected)
    want = np.abs(actual - expected).max(axis=(0, 1))
    assert want.shape == (4, 5)
    np.testing.assert_array_equal(ax.images[0].get_array(), want)
    assert ax.get_title().endswith("(max over leading axes)")
    assert f"{np.abs(actual - expected).max():.2e}" in ax.get_title()


def test_error_heatmap_exact_match_draws():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    fig, ax = plot.error_heatmap(x, x.copy())
    fig.canvas.draw()
    data = np.asarray(ax.images[0].get_array())
    assert np.all(data > 0) and np.all(np.isfinite(data))  # zeros lifted to a floor
    assert data.max() <= np.finfo(np.float32).eps
    assert ax.get_title() == "max |diff| = 0.00e+00"
    _, ax_lin = plot.error_heatmap(x, x, log=False)
    np.testing.assert_array_equal(ax_lin.images[0].get_array(), np.zeros((3, 4)))


def test_error_heatmap_zeros_drawn_at_smallest_positive_diff():
    a = np.array([[0.0, 1e-3, 1e-6]])
    _, ax = plot.error_heatmap(a, np.zeros_like(a))
    np.testing.assert_array_equal(ax.images[0].get_array(), [[1e-6, 1e-3, 1e-6]])


def test_error_heatmap_tolerance_marker():
    a = np.array([[1e-7, 1e-4], [1e-6, 0.0]])
    fig, ax = plot.error_heatmap(a, np.zeros_like(a), tol=1e-5)
    assert "tol = 1e-05" in ax.get_title()
    (cbar_ax,) = _colorbar_axes(fig, ax)
    ys = [line.get_ydata() for line in cbar_ax.get_lines()]
    assert any(np.allclose(y, 1e-5) for y in ys)
    # A tolerance far outside the data still lands on the colour bar.
    _, ax2 = plot.error_heatmap(a, np.zeros_like(a), tol=1.0)
    assert ax2.images[0].norm.vmin < 1.0 < ax2.images[0].norm.vmax
    _, ax3 = plot.error_heatmap(a, np.zeros_like(a), tol=1.0, log=False)
    assert ax3.images[0].norm.vmin == 0.0 and 1.0 < ax3.images[0].norm.vmax


def test_error_heatmap_shared_range_puts_panels_on_one_scale():
    small, large = np.array([[0.0, 1e-7, 1e-6]]), np.array([[1e-3, 1e-1, 0.0]])
    _, ax_small = plot.error_heatmap(small, np.zeros_like(small), vmin=1e-8, vmax=1.0)
    _, ax_large = plot.error_heatmap(
        large, np.zeros_like(large), vmin=1e-8, vmax=1.0, tol=1e-5
    )
    for ax in (ax_small, ax_large):
        assert (ax.images[0].norm.vmin, ax.images[0].norm.vmax) == (1e-8, 1.0)
    # zeros at vmin
    np.testing.assert_array_equal(ax_small.images[0].get_array(), [[1e-8, 1e-7, 1e-6]])
    _, ax_lin = plot.error_heatmap(large, np.zeros_like(large), log=False, vmax=0.5)
    assert (ax_lin.images[0].norm.vmin, ax_lin.images[0].norm.vmax) == (0.0, 0.5)


def test_error_range_spans_every_panel_as_the_heatmap_draws_it():
    small, large = (
        np.array([[0.0, 1e-7, 1e-6]]),
        np.array([[[1e-3, 1e-1, 0.0]], [[2e-3, 0.5, 0.0]]]),
    )
    scale = plot.error_range(
        (small, np.zeros_like(small)), (large, np.zeros_like(large))
    )
    assert scale == {"vmin": 1e-7, "vmax": 0.5}
    assert plot.error_range((small, np.zeros_like(small)), tol=1e-5) == {
        "vmin": 1e-7,
        "vmax": 2e-5,
    }
    assert plot.error_range((large, np.zeros_like(large)), log=False) == {
        "vmin": 0.0,
        "vmax": 0.5,
    }
    _, ax = plot.error_heatmap(small, np.zeros_like(small), **scale)
    assert (ax.images[0].norm.vmin, ax.images[0].norm.vmax) == (1e-7, 0.5)
    with pytest.raises(ValueError, match="error_range needs at least one"):
        plot.error_range()


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"vmin": 0.0}, ValueError, "vmin must be a positive finite number, got 0.0"),
        (
            {"vmax": float("inf")},
            ValueError,
            "vmax must be a positive finite number, got inf",
        ),
        ({"vmin": "1e-8"}, TypeError, "vmin must be a number, got str"),
        (
            {"vmin": 1.0, "vmax": 1e-3},
            ValueError,
            "vmin must be below vmax, got vmin=1.0 and vmax=0.001",
        ),
    ],
)
def test_error_heatmap_refuses_a_bad_range(kwargs, exc, match):
    with pytest.raises(exc, match=re.escape(match)):
        plot.error_heatmap(np.ones((2, 2)), np.zeros((2, 2)), **kwargs)


def test_error_heatmap_nan_difference_is_reported_not_crashing():
    a = np.array([[1.0, np.nan]])
    fig, ax = plot.error_heatmap(a, np.ones_like(a))
    fig.canvas.draw()
    assert ax.get_title() == "max |diff| = nan"


def test_error_heatmap_uses_given_axes():
    fig, given = plt.subplots()
    out_fig, out_ax = plot.error_heatmap(np.ones(3), np.zeros(3), ax=given)
    assert out_fig is fig and out_ax is given


# -------------------------------------------------------------- error_histogram


def test_error_histogram_counts_log10_diffs_and_zeros():
    a = np.array([1e-3, 1e-3, 1e-6, 0.0, 0.0])
    fig, ax = plot.error_histogram(a, np.zeros_like(a), bins=3, title="check")
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    assert ax.get_title() == "check\n3 nonzero, 2 exactly zero"
    heights = [p.get_height() for p in ax.patches]
    assert sum(heights) == 3 and max(heights) == 2
    lefts = [p.get_x() for p in ax.patches]
    assert min(lefts) == pytest.approx(-6.0)


def test_error_histogram_all_equal_and_non_finite():
    _, ax = plot.error_histogram(np.ones(4), np.ones(4))
    assert ax.get_title() == "0 nonzero, 4 exactly zero"
    _, ax2 = plot.error_histogram([np.inf, 1.0], [0.0, 1.0])
    assert ax2.get_title() == "0 nonzero, 1 exactly zero, 1 non-finite"


def test_exact_zeros_take_the_bottom_colour_when_tol_widens_the_bar():
    actual = np.array([[0.0, 1e-3], [2e-3, 0.0]])
    fig, ax = plot.error_heatmap(actual, np.zeros_like(actual), tol=1e-5)
    image = ax.images[0]
    shown = np.asarray(image.get_array())
    assert image.norm.vmin == pytest.approx(5e-6)
    assert shown[0, 0] == pytest.approx(image.norm.vmin) and shown[
        1, 1
    ] == pytest.approx(image.norm.vmin)
    assert shown[0, 1] == pytest.approx(1e-3)


# ---------------------------------------------------------------- misuse of every function

_W = np.ones((2, 3)) / 3

BAD = [  # (call, error, message)
    (
        lambda: plot.attention_map(_W, query_labels=["a", "b", "c"]),
        ValueError,
        r"query_labels must have one label per query position \(2\), got 3",
    ),
    (
        lambda: plot.attention_map(_W, key_labels=["a", "b"]),
        ValueError,
        r"key_labels .* \(3\), got 2",
    ),
    (
        lambda: plot.attention_map(_W, key_labels="abc"),
        TypeError,
        "key_labels must be a sequence",
    ),
    (
        lambda: plot.attention_map(np.array([["a", "b"]])),
        TypeError,
        "weights must hold real numbers, got dtype",
    ),
    (
        lambda: plot.attention_map(_W, annotate="yes"),
        TypeError,
        "annotate must be None, True or False",
    ),
    (
        lambda: plot.attention_map(_W, vmin=0.5, vmax=0.5),
        ValueError,
        "vmax must be greater than vmin",
    ),
    (
        lambda: plot.attention_map([[0.5, 0.5], [1.0]]),
        TypeError,
        "weights must be array-like, got list",
    ),
    (
        lambda: plot.error_heatmap(np.ones((2, 3)), np.ones((3, 2))),
        ValueError,
        r"same shape, got actual \(2, 3\) and expected \(3, 2\)",
    ),
    (
        lambda: plot.error_heatmap(np.ones((0, 2)), np.ones((0, 2))),
        ValueError,
        r"actual and expected must not be empty, got shape \(0, 2\)",
    ),
    (
        lambda: plot.error_heatmap(np.ones(2), np.array(["a", "b"])),
        TypeError,
        "expected must hold real numbers",
    ),
    (
        lambda: plot.error_heatmap(np.ones(2), np.ones(2), tol=-1.0),
        ValueError,
        "tol must be a positive finite number, got -1",
    ),
    (
        lambda: plot.error_heatmap(np.ones(2), np.ones(2), tol="1e-5"),
        TypeError,
        "tol must be a number, got str",
    ),
    (
        lambda: plot.error_range(),
        ValueError,
        r"error_range needs at least one \(actual, expected\) pair",
    ),
    (
        lambda: plot.error_range((np.ones(2), np.ones(3))),
        ValueError,
        r"same shape, got actual \(2,\) and expected \(3,\)",
    ),
    (
        lambda: plot.error_range((np.ones(2), np.zeros(2)), tol=0.0),
        ValueError,
        "tol must be a positive finite number, got 0.0",
    ),
    (
        lambda: plot.error_histogram(np.ones((2, 3)), np.ones(3)),
        ValueError,
        r"same shape, got actual \(2, 3\) and expected \(3,\)",
    ),
    (
        lambda: plot.error_histogram(np.ones(0), np.ones(0)),
        ValueError,
        r"actual and expected must not be empty, got shape \(0,\)",
    ),
    (
        lambda: plot.error_histogram(np.array(["a"]), np.ones(1)),
        TypeError,
        "actual must hold real numbers, got dtype <U1",
    ),
    (
        lambda: plot.glue(3, plt.figure()),
        TypeError,
        r"name must be a str .*got 3 \(int\)",
    ),
    (
        lambda: plot.glue("", plt.figure()),
        ValueError,
        "name must be a non-empty str",
    ),
    (
        lambda: plot.glue("heads", plt.subplots()[1]),
        TypeError,
        "fig must be a matplotlib Figure .*got Axes",
    ),
]


test_bad_input_is_named, test_every_function_of_the_module_has_a_bad_input_case = (
    bad_input_tests(plot, BAD)
)
