# The two commands: `make demo` (set up, generate a project, train it briefly on CPU, sample from it)
# and `make test` (set up, lint and type-check, run the test suite). Both create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := build/demo
# torch first, pinned: on these machines 2.13.0 resolves to a local CPU wheel; anything else pulls
# gigabytes of CUDA wheels. pyproject.toml declares a range that 2.13.0 satisfies.
TORCH_SPEC ?= torch==2.13.0
DEMO_STEPS ?= 300
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: demo test lint install bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/llmgen new demo --dir $(DEMO) --yes --force --no-git
	$(MAKE) -C $(DEMO) demo PYTHON=$(CURDIR)/$(BIN)/python DEMO_STEPS=$(DEMO_STEPS)

# ruff (lint + format) and mypy, configured in pyproject.toml; `make test` runs them before the suite.
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Two workers, each file kept on one worker (its module fixtures are built once); tests/conftest.py gives
# each worker its share of the cores, so a worker's torch threads do not fight the other's.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=40

# gpu_check.py needs a GPU (without one it exits 2): run it with `bash benchmarks/gpu_check.sh`.
bench: $(VENV)/.installed
	for b in benchmarks/*.py; do [ $$b = benchmarks/gpu_check.py ] && continue; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf build dist .pytest_cache
