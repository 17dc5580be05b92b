"""pytest plugin for the torch-free run of `make test-colab` (Python 3.12, no torch installed).

A test module that imports torch cannot be collected there. Instead of an error (or a silent
ignore), its collection is reported as skipped, with the reason "needs torch", so the summary
(`-rs`) names every module left out and everything else runs. Any other import error still fails.
Use: `PYTHONPATH=tools python -m pytest -p torchless ...`.
"""

from __future__ import annotations

import pytest

_MISSING = ("No module named 'torch'", 'No module named "torch"')


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if report.failed and isinstance(collector, pytest.Module) and any(m in str(report.longrepr) for m in _MISSING):
        report.outcome = "skipped"
        report.longrepr = (str(collector.path), 0, "Skipped: needs torch (torch-free run on Colab's Python)")
