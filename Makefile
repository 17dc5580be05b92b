# Two commands, each doing its own set-up in a local venv (.venv):
#   make book   install, execute every chapter, build the HTML book into _build/html
#   make test   install, then ruff (lint, format), mypy, unit tests, nbval over every notebook, strict book build, browser test
#   make test-colab   the same unit tests and nbval on the Colab floor (requirements-colab.txt)
#   make repo URL=https://github.com/OWNER/NAME [REF=main]   the repository address, everywhere
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The notebooks' kernel is the venv's python; keep its bin first on PATH for every tool.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: book test install lint unit nbval browser clean bench bench-scale test-colab test-notorch repo

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
	$(BIN)/ruff format --check mha tests benchmarks tools
	$(BIN)/mypy
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/zizmor --offline --quiet .github/workflows/
	$(BIN)/python tools/set_repository.py --check

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

bench-scale: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(BIN)/python benchmarks/bench_scale.py

# The Colab floor: the oldest versions the package promises (pyproject.toml), in .venv-colab on
# Python 3.11 (the only Python whose torch, 2.13.0 CPU, installs here without a CUDA download).
# Then, where a Python 3.12 (Colab's) is on the machine, the tests that need no torch run in a
# torch-free .venv-notorch; the modules that import torch are reported as skipped (tools/torchless.py).
PY311 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.11.*/bin/python) $(shell command -v python3.11))
PY312 ?= $(lastword $(wildcard $(HOME)/.pyenv/versions/3.12.*/bin/python))
COLAB := .venv-colab
NOTORCH := .venv-notorch

$(COLAB)/.installed: requirements-colab.txt pyproject.toml
	$(PY311) -m venv $(COLAB)
	$(COLAB)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-colab.txt
	touch $@

$(NOTORCH)/.installed: requirements-colab.txt pyproject.toml
	$(PY312) -m venv $(NOTORCH)
	grep -v '^torch' requirements-colab.txt > $(NOTORCH)/requirements.txt
	$(NOTORCH)/bin/python -m pip install --quiet --disable-pip-version-check -r $(NOTORCH)/requirements.txt
	touch $@

test-colab: $(COLAB)/.installed
	$(COLAB)/bin/python -c "import sys, numpy, matplotlib, IPython, ipykernel, torch; \
	print('colab floor: Python', sys.version.split()[0], 'numpy', numpy.__version__, 'matplotlib', matplotlib.__version__, \
	'IPython', IPython.__version__, 'ipykernel', ipykernel.__version__, 'torch', torch.__version__); \
	assert torch.__version__.startswith('2.13.0'), 'pip resolved another torch: ' + torch.__version__"
	PATH=$(CURDIR)/$(COLAB)/bin:$$PATH $(COLAB)/bin/python -m pytest tests -q -p no:cacheprovider --ignore=tests/browser
	PATH=$(CURDIR)/$(COLAB)/bin:$$PATH $(COLAB)/bin/python -m pytest --nbval chapters -q -p no:cacheprovider
	@if [ -n "$(PY312)" ]; then $(MAKE) --no-print-directory test-notorch; \
	else echo "test-colab: SKIPPED the torch-free run on Python 3.12: no ~/.pyenv/versions/3.12.*/bin/python here (set PY312=...)"; fi

test-notorch: $(NOTORCH)/.installed
	$(NOTORCH)/bin/python -c "import importlib.util, sys; assert importlib.util.find_spec('torch') is None; print('torch-free: Python', sys.version.split()[0])"
	PYTHONPATH=tools $(NOTORCH)/bin/python -m pytest tests -q -rfEs -p no:cacheprovider -p torchless --ignore=tests/browser

# One place for the repository address (_config.yml's repository section): write it everywhere.
repo:
	@test -n "$(URL)" || { echo "usage: make repo URL=https://github.com/OWNER/NAME [REF=main]"; exit 2; }
	$(or $(wildcard $(BIN)/python),$(PYTHON)) tools/set_repository.py "$(URL)" "$(or $(REF),main)"

clean:
	rm -rf _build .pytest_cache .hypothesis
