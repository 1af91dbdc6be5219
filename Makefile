# Bootstraps .venv on a fresh machine; every target below depends on it.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= plan,edge,server,video,ray,dev

.PHONY: venv demo test test-all lint format proto clean

$(STAMP): pyproject.toml setup.py splitpipe/kernels/_cquant.c
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/splitpipe demo

# The test command of README.md and .ci/run: lint and type checks, then the suite.
test: lint
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check splitpipe tests bench
	$(BIN)/ruff format --check splitpipe tests bench
	$(BIN)/mypy

format: venv
	$(BIN)/ruff check --fix splitpipe tests bench
	$(BIN)/ruff format splitpipe tests bench

proto: venv
	$(BIN)/python proto/generate.py

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
