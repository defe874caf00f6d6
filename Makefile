# The README's commands. `make run` and `make test` do all the set-up on a fresh machine.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed-dev

.PHONY: run test lint clean

run: $(INSTALLED)
	$(BIN)/atp up --demo

test: $(INSTALLED)
	$(BIN)/pytest

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf .atp build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

# The virtualenv is made once; the project is (re)installed when pyproject.toml changes.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# Benchmarks (docs/benchmarks.md): the full run (>= 100k skus x 5 sites, some minutes) writes
# benchmarks/results/; the quick one (< 90 s, small data) writes benchmarks/results/quick/.
.PHONY: bench bench-quick

bench: $(INSTALLED)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

bench-quick: $(INSTALLED)
	$(BIN)/python -m benchmarks --quick $(BENCH_ARGS)
