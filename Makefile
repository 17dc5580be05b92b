# Two commands, each doing its own set-up in a local venv (.venv):
#   make book   install, execute every chapter, build the HTML book into _build/html
#   make test   install, then ruff, unit tests, nbval over every notebook, strict book build, browser test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The notebooks' kernel is the venv's python; keep its bin first on PATH for every tool.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: book test install lint unit nbval browser clean bench

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

install: $(STAMP)

# The book is built strictly: a warning (or a failing cell, which Jupyter Book reports
# as a warning) fails the build.
book: $(STAMP)
	rm -rf _build/html _build/.doctrees _build/jupyter_execute
	$(BIN)/jupyter-book build . -W -n --keep-going

lint: $(STAMP)
	$(BIN)/ruff check .

unit: $(STAMP)
	$(BIN)/python -m pytest tests -q --ignore=tests/browser

nbval: $(STAMP)
	@if ls chapters/*.ipynb >/dev/null 2>&1; then $(BIN)/python -m pytest --nbval chapters -q -p no:cacheprovider; \
	else echo "nbval: no notebooks in chapters/ yet"; fi

# Needs the built book (make book) and Debian's chromium (.ci/run installs it in CI).
browser: $(STAMP)
	$(BIN)/python -m pytest tests/browser -q -rs

test: lint unit nbval book browser

bench: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(BIN)/python benchmarks/bench_mha.py

clean:
	rm -rf _build .pytest_cache .hypothesis
