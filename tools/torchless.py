"""pytest plugin for the torch-free run of `make test-colab` (Python 3.12, no torch installed).

A test that needs torch cannot run there. Instead of an error (or a silent ignore), it is
reported as skipped with the reason "needs torch", so the summary (`-rs`) names every module and
test left out, and everything else runs:
- a test module that imports torch at the top: its collection is reported as skipped;
- a test whose own code (tests/) or mha.torch_bridge (torch's only door into mha) imports torch
  while it runs: reported as skipped.
A torch import from anywhere else in mha is a real failure (mha must import without torch), and
so is every other error. Use: `PYTHONPATH=tools python -m pytest -p torchless ...`.
"""

from __future__ import annotations

import pathlib

import pytest

_MISSING = ("No module named 'torch'", 'No module named "torch"')
_ROOT = pathlib.Path(__file__).resolve().parent.parent
_ALLOWED = (_ROOT / "tests", _ROOT / "mha" / "torch_bridge.py")
REASON = "needs torch (torch-free run on Colab's Python)"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if (
        report.failed
        and isinstance(collector, pytest.Module)
        and any(m in str(report.longrepr) for m in _MISSING)
    ):
        report.outcome = "skipped"
        report.longrepr = (str(collector.path), 0, f"Skipped: {REASON}")


def _imported_by_allowed_code(excinfo) -> bool:
    if not (
        excinfo.errisinstance(ModuleNotFoundError) and excinfo.value.name == "torch"
    ):
        return False
    importer = pathlib.Path(str(excinfo.traceback[-1].path)).resolve()
    return any(importer == place or place in importer.parents for place in _ALLOWED)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (
        report.failed
        and call.excinfo is not None
        and _imported_by_allowed_code(call.excinfo)
    ):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {REASON}")
