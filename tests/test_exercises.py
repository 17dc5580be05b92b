"""Every exercise in every notebook: the reference solution passes its check,
a common mistake fails it, and the untouched cell says "not attempted"."""

from __future__ import annotations

import importlib
import json
import pathlib
import re

import matplotlib
import numpy as np
import pytest
import torch

import mha

matplotlib.use("Agg")
CHAPTERS = pathlib.Path(__file__).resolve().parent.parent / "chapters"
CHECK_CALL = re.compile(r"mha\.exercises\.(\w+)\.(check_\w+)\((\w+)\)")
SOLUTION = re.compile(r":::\{dropdown\}[^\n]*\n(?:.*?\n)?```python\n(.*?)```", re.S)


def _source(cell) -> str:
    return (
        "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    )


def _exercises():
    found = []
    for path in sorted(CHAPTERS.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        for i, cell in enumerate(cells):
            match = (
                CHECK_CALL.search(_source(cell))
                if cell["cell_type"] == "code"
                else None
            )
            if match:
                task = next(
                    _source(c)
                    for c in reversed(cells[: i - 1])
                    if c["cell_type"] == "markdown"
                )
                # the reference solution: in the task above the exercise, or (the newer layout) in the
                # markdown cell right after the check cell
                after = (
                    cells[i + 1]
                    if i + 1 < len(cells) and cells[i + 1]["cell_type"] == "markdown"
                    else None
                )
                solution = SOLUTION.search(task) or (
                    after and SOLUTION.search(_source(after))
                )
                found.append(
                    pytest.param(
                        match.groups(),
                        _source(cells[i - 1]),
                        solution and solution.group(1),
                        id=f"{path.stem}-{match.group(2)}",
                    )
                )
    return found


EXERCISES = _exercises()


def _namespace():
    return {"np": np, "torch": torch, "mha": mha}


def _check(module: str, name: str):
    return getattr(importlib.import_module(f"mha.exercises.{module}"), name)


@pytest.mark.parametrize("call, exercise_cell, solution", EXERCISES)
def test_untouched_exercise_says_not_attempted(call, exercise_cell, solution, capsys):
    module, check, function = call
    assert "raise NotImplementedError" in exercise_cell
    ns = _namespace()
    exec(exercise_cell, ns)
    assert _check(module, check)(ns[function]) is None
    assert "Not attempted yet" in capsys.readouterr().out


@pytest.mark.parametrize("call, exercise_cell, solution", EXERCISES)
def test_reference_solution_passes(call, exercise_cell, solution, capsys):
    module, check, function = call
    assert solution, (
        "the markdown cell before the exercise must hold a dropdown with a ```python solution"
    )
    ns = _namespace()
    exec(solution, ns)
    assert _check(module, check)(ns[function]) is True, capsys.readouterr().out
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("call, exercise_cell, solution", EXERCISES)
def test_common_mistake_fails(call, exercise_cell, solution, capsys):
    module, check, _ = call
    mistakes = importlib.import_module(f"mha.exercises.{module}").COMMON_MISTAKES
    assert check in mistakes, (
        f"mha.exercises.{module}.COMMON_MISTAKES has no wrong answer for {check}"
    )
    assert _check(module, check)(mistakes[check]) is False
    assert "Not quite" in capsys.readouterr().out


def test_every_check_is_used_by_a_notebook():
    used = {(m, c) for (m, c, _), *_ in (p.values for p in EXERCISES)}
    for path in sorted(
        (pathlib.Path(mha.__file__).parent / "exercises").glob("[!_]*.py")
    ):
        module = importlib.import_module(f"mha.exercises.{path.stem}")
        for name, obj in vars(module).items():
            if (
                name.startswith("check_")
                and getattr(obj, "__module__", None) == module.__name__
            ):
                assert (path.stem, name) in used, (
                    f"mha.exercises.{path.stem}.{name} is not used by any notebook"
                )
