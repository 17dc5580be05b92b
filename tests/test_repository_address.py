"""The repository address has one source, `_config.yml`: every other place must agree with it.

Covers every notebook under chapters/ (chapters and appendices added later included), README.md,
CONTRIBUTING.md and the Pages address; `make repo URL=... [REF=...]` (tools/set_repository.py)
writes them all.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
_SPEC = importlib.util.spec_from_file_location(
    "set_repository", ROOT / "tools" / "set_repository.py"
)
repo = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(repo)


def test_every_place_agrees_with_config():
    assert repo.disagreements() == []


def test_every_notebook_is_covered():
    assert len(repo.notebooks()) >= 8


@pytest.fixture
def scratch(tmp_path):
    for name in ("_config.yml", *repo.DOCS):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(
        ROOT / "chapters",
        tmp_path / "chapters",
        ignore=shutil.ignore_patterns(".*", "__pycache__"),
    )
    return tmp_path


def test_write_changes_every_place_and_check_then_agrees(scratch):
    changed = repo.write(
        "https://github.com/some-fork/attention-notes.git", "v0.1.0", root=scratch
    )
    nbs = [str(p.relative_to(scratch)) for p in repo.notebooks(scratch)]
    assert sorted(changed) == sorted(["_config.yml", *repo.DOCS, *nbs])
    assert repo.configured(scratch) == (
        "https://github.com/some-fork/attention-notes",
        "v0.1.0",
    )
    assert repo.disagreements(scratch) == []
    assert "attention-course" not in "".join((scratch / p).read_text() for p in changed)
    assert (
        repo.write(
            "https://github.com/some-fork/attention-notes", "v0.1.0", root=scratch
        )
        == []
    )


def test_a_missed_place_is_reported(scratch):
    nb = repo.notebooks(scratch)[-1]
    nb.write_text(
        nb.read_text().replace("attention-course/mha-book@main", "someone/else@main")
    )
    readme = scratch / "README.md"
    readme.write_text(
        readme.read_text() + "\npip install git+https://github.com/old/place\n"
    )
    problems = repo.disagreements(scratch)
    assert any(nb.name in p for p in problems) and any(
        "README.md" in p and "old/place" in p for p in problems
    )


def test_a_new_notebook_without_bootstrap_is_reported(scratch):
    (scratch / "chapters" / "c_new.ipynb").write_text(
        json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    )
    assert any(
        "c_new.ipynb: no Colab bootstrap" in p for p in repo.disagreements(scratch)
    )


BAD = [
    ("http://github.com/a/b", "main", "URL"),
    ("https://gitlab.com/a/b", "main", "URL"),
    ("https://github.com/a/b", "../x", "REF"),
    ("https://github.com/a/b", "a b", "REF"),
]


@pytest.mark.parametrize(("url", "ref", "argument"), BAD)
def test_bad_address_is_refused_naming_the_argument(scratch, url, ref, argument):
    before = (scratch / "_config.yml").read_text()
    with pytest.raises(ValueError, match=argument):
        repo.write(url, ref, root=scratch)
    assert (scratch / "_config.yml").read_text() == before
