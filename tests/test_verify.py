"""mha.verify: the printed verdicts the chapters assert on."""

import numpy as np
import torch

import mha


def test_report_match_prints_and_returns_the_verdict(capsys):
    assert mha.report_match("output", np.ones(3), np.ones(3) + 1e-6) is True
    assert capsys.readouterr().out == "output: matches torch within 1e-05: True\n"
    assert (
        mha.report_match(
            "output", np.ones(3), np.ones(3) + 1e-4, atol=1e-5, reference="the fix"
        )
        is False
    )
    assert capsys.readouterr().out == "output: matches the fix within 1e-05: False\n"


def test_nan_never_matches():
    assert mha.report_match("x", np.array([np.nan]), np.array([1.0])) is False
    assert np.isnan(mha.max_abs_diff(np.array([1.0, np.nan]), np.array([1.0, 2.0])))
    # NaN where the reference has NaN
    assert mha.max_abs_diff(np.array([np.nan]), np.array([np.nan])) == 0.0


def test_max_abs_diff_takes_tensors():
    assert mha.max_abs_diff(torch.ones(2, dtype=torch.float64), np.zeros(2)) == 1.0
    assert type(mha.max_abs_diff(np.zeros(0), np.zeros(0))) is float


def test_report_match_relative_tolerance_like_allclose(capsys):
    big = np.array([1000.0, 0.0])
    off = big + np.array([5e-3, 0.0])  # 5e-3 absolute, 5e-6 relative
    assert mha.report_match("grad", off, big, atol=1e-5) is False
    assert mha.report_match("grad", off, big, atol=1e-5, rtol=1e-5) is True
    assert (
        capsys.readouterr().out.splitlines()[-1]
        == "grad: matches torch within atol 1e-05, rtol 1e-05: True"
    )
    assert (
        mha.report_match(
            "near zero", np.array([2e-5]), np.array([0.0]), atol=1e-5, rtol=1e-5
        )
        is False
    )


def test_as_float64_is_the_one_conversion():
    t = torch.tensor([1.5, 2.0], dtype=torch.float32, requires_grad=True)
    a = mha.verify.as_float64(t)
    assert a.dtype == np.float64 and a.tolist() == [1.5, 2.0]
    src = np.ones(3)
    assert not np.shares_memory(mha.verify.as_float64(src), src)  # always a new array
    assert mha.verify.as_float64([True, False]).tolist() == [1.0, 0.0]


def test_equal_infinities_differ_by_zero_and_opposite_ones_by_inf():
    inf = np.array([np.inf, -np.inf, 1.0])
    assert mha.max_abs_diff(inf, inf) == 0.0
    assert mha.max_abs_diff(inf, -inf) == np.inf
    np.testing.assert_array_equal(
        mha.verify.abs_diff(inf, np.array([np.inf, 0.0, np.nan])), [0.0, np.inf, np.nan]
    )


def test_the_helpers_that_share_these_use_them():
    """One home: the bridge, the figures and the analysis convert through mha.verify."""
    import inspect

    from mha import analysis, plot, torch_bridge

    for module in (torch_bridge, plot, analysis):
        source = inspect.getsource(module)
        assert "from .verify import" in source, module.__name__
        assert "astype(np.float64)" not in source and "np.isnan(a)" not in source, (
            module.__name__
        )
