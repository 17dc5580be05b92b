"""pytest set-up shared by every test file.

``tests/helpers.py`` is the one home of the shared tolerances (``TOL``, ``tol_for``), the
torch reference run (``torch_run``, ``matching_pair``, ``assert_close``) and the parity
cases; a test file imports them with ``from helpers import TOL, ...``. This file puts the
tests' folder on ``sys.path`` so that the import works whatever pytest's import mode or
the directory it is started from.
"""

from __future__ import annotations

import pathlib
import sys

_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
