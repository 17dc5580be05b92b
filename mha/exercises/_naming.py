"""The check behind every "diagnose" and "predict" exercise: compare what the reader names or
predicts with the answer, and explain a wrong answer (printed wrapped to the book's 88 columns)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any


def wrap(text: str) -> str:
    return textwrap.fill(text, width=88, subsequent_indent="  ")


def call_reader(function: Callable[[], Any], name: str) -> tuple[bool | None, Any]:
    """``(ok, value)``: ok is None (not attempted), False (raised) or True."""
    if not callable(function):
        print(f"Not quite: {name} must be a function, got {type(function).__name__}.")
        return False, None
    try:
        return True, function()
    except NotImplementedError:
        print(f"Not attempted yet: {name} still raises NotImplementedError.")
        return None, None
    except Exception as exc:  # the reader's code may fail in any way: report it
        print(wrap(f"Not quite: {name} raised {type(exc).__name__}: {exc}."))
        return False, None


def check_name(
    function: Callable[[], Any],
    *,
    name: str,
    choices: tuple[str, ...],
    answer: str,
    explanations: dict[str, str],
    correct: str,
) -> bool | None:
    """``function()`` must return ``answer``, one of ``choices``; a wrong choice prints its
    explanation (what that bug would look like instead)."""
    ok, got = call_reader(function, name)
    if not ok:
        return ok
    if got not in choices:
        print(wrap(f"Not quite: {name} must return one of {choices}, got {got!r}."))
        return False
    if got != answer:
        print(wrap(f"Not quite: with {got!r}, {explanations[got]}"))
        return False
    print(wrap(f"Correct: {correct}"))
    return True


def check_prediction(
    function: Callable[[], Any],
    *,
    name: str,
    labels: tuple[str, ...],
    truth: tuple[bool, ...],
    why: dict[int, str],
) -> bool | None:
    """``function()`` returns one bool per label; ``truth`` comes from running the experiment."""
    ok, got = call_reader(function, name)
    if not ok:
        return ok
    if (
        not isinstance(got, (tuple, list))
        or len(got) != len(labels)
        or not all(isinstance(g, bool) for g in got)
    ):
        print(
            wrap(
                f"Not quite: {name} must return {len(labels)} bools (True or False), "
                f"one per case, got {got!r}."
            )
        )
        return False
    wrong = [i for i, (g, t) in enumerate(zip(got, truth)) if g != t]
    if wrong:
        i = wrong[0]
        print(
            wrap(
                f"Not quite: {len(wrong)} of {len(labels)} predictions are off. Case "
                f"{i + 1}, {labels[i]}: it is {truth[i]}. {why[i]}"
            )
        )
        return False
    print(
        wrap(
            f"Correct: all {len(labels)} predictions agree with the experiment "
            f"({', '.join(str(t) for t in truth)})."
        )
    )
    return True
