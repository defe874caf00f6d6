# The README's commands. `make run` and `make test` do all the set-up on a fresh machine.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed-dev

.PHONY: run test lint clean browser screenshots

run: $(INSTALLED)
	$(BIN)/atp up --demo

test: $(INSTALLED) browser
	$(BIN)/pytest

# Headless Chromium for the browser tests (tests/e2e/test_dashboard.py) and `make screenshots`:
# Debian's package, driven by Playwright (browsers cannot be downloaded here). Installed when
# missing and apt-get can (as root); where it cannot be, those tests skip, saying why.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && [ -z "$$ATP_CHROMIUM" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed: the browser tests will skip"; \
	  else \
	    echo "no chromium and no apt-get as root: the browser tests will skip"; \
	  fi; \
	fi

# docs/dashboard-laptop.png and docs/dashboard-phone.png, from `atp up --demo` (about a minute).
screenshots: $(INSTALLED) browser
	$(BIN)/python -m tests.e2e.dashboard_screenshots --out docs

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
.PHONY: bench bench-quick bench-durability

bench: $(INSTALLED)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

bench-quick: $(INSTALLED)
	$(BIN)/python -m benchmarks --quick $(BENCH_ARGS)

# What Redis persistence and WAIT cost a reservation (docs/operations-scale.md): each setting in
# turns, back to back; writes benchmarks/results/durability/.
bench-durability: $(INSTALLED)
	$(BIN)/python -m benchmarks.durability $(BENCH_ARGS)
