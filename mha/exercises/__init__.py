"""Check cells for the book's exercises, one module per chapter.

An exercise cell defines a function whose body starts as
``raise NotImplementedError``; the check cell below it calls
``check_<name>(your_function)``, which prints one of

- ``Not attempted yet ...`` while the body is untouched (so every notebook
  still runs top to bottom),
- ``Correct ...`` when the function agrees with the reference on every test case,
- ``Not quite ...`` with the first case that differs, and what differs.

and returns True, False or None accordingly (end the cell with ``;`` to hide it).
"""

import importlib
from types import ModuleType

from ._core import check_function

__all__ = ["check_function"]


def __getattr__(name: str) -> ModuleType:
    # `mha.exercises.sdpa` works after a plain `import mha`: chapter modules load on first use
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError:
        raise AttributeError(
            f"module 'mha.exercises' has no attribute {name!r}"
        ) from None
