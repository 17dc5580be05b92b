"""Every exercise in every notebook: the reference solution passes its check,
a common mistake fails it, the untouched cell says "not attempted", and the
solution sits collapsed after the check cell, never above it."""

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
# a collapsed dropdown that holds the reference solution and nothing else
SOLUTION = re.compile(
    r":::\{dropdown\} Reference solution\n```python\n(.*?)```\n:::", re.S
)


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
                # the reference solution: in the markdown cell right after the check cell
                after = cells[i + 1] if i + 1 < len(cells) else None
                solution = (
                    after is not None
                    and after["cell_type"] == "markdown"
                    and SOLUTION.search(_source(after))
                )
                found.append(
                    pytest.param(
                        match.groups(),
                        _source(cells[i - 1]),
                        solution and solution.group(1),
                        task,
                        id=f"{path.stem}-{match.group(2)}",
                    )
                )
    return found


EXERCISES = _exercises()


def _namespace():
    return {"np": np, "torch": torch, "mha": mha}


def _check(module: str, name: str):
    return getattr(importlib.import_module(f"mha.exercises.{module}"), name)


@pytest.mark.parametrize("call, exercise_cell, solution, task", EXERCISES)
def test_untouched_exercise_says_not_attempted(
    call, exercise_cell, solution, task, capsys
):
    module, check, function = call
    assert "raise NotImplementedError" in exercise_cell
    ns = _namespace()
    exec(exercise_cell, ns)
    assert _check(module, check)(ns[function]) is None
    assert (
        f"Not attempted yet: {function} still raises NotImplementedError."
        in capsys.readouterr().out
    )


@pytest.mark.parametrize("call, exercise_cell, solution, task", EXERCISES)
def test_reference_solution_passes(call, exercise_cell, solution, task, capsys):
    module, check, function = call
    assert solution, (
        "the markdown cell after the check cell must hold a dropdown with a ```python solution"
    )
    ns = _namespace()
    exec(solution, ns)
    assert _check(module, check)(ns[function]) is True, capsys.readouterr().out
    assert capsys.readouterr().out.startswith("Correct")


@pytest.mark.parametrize("call, exercise_cell, solution, task", EXERCISES)
def test_solution_sits_collapsed_after_its_check_cell(
    call, exercise_cell, solution, task
):
    assert solution, (
        "the markdown cell after the check cell holds the reference solution"
    )
    # and nowhere above it: the task and the exercise cell show no solution
    assert ":::{dropdown}" not in task
    assert "raise NotImplementedError" in exercise_cell


def test_every_check_is_used_once():
    used = [(m, c) for (m, c, _), *_ in (p.values for p in EXERCISES)]
    assert len(used) == len(set(used)), "a check is called by two exercise cells"


@pytest.mark.parametrize("call, exercise_cell, solution, task", EXERCISES)
def test_common_mistake_fails(call, exercise_cell, solution, task, capsys):
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
