# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export PYTHONUNBUFFERED := 1

.PHONY: install run test test-fast bench lint format clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes; the package is editable.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev,ray]"
	touch $(STAMP)

run: install
	$(BIN)/learnreg run configs/quickstart.yaml --out runs/quickstart

# Tests and notebooks (executed with nbmake, LEARNREG_FAST=1: small budgets).
test: install
	LEARNREG_FAST=1 $(BIN)/python -m pytest -q -n 2 --dist loadgroup --nbmake --nbmake-timeout=600 --durations=15 tests notebooks

test-fast: install
	$(BIN)/python -m pytest -q -x -m "not slow"

# Lists the benchmarks; each runs with `python -m benchmarks.<name>` (figures: BENCHMARKS.md).
bench: install
	$(BIN)/python -m benchmarks

lint: install
	$(BIN)/ruff check learnreg tests benchmarks
	$(BIN)/ruff format --check learnreg tests benchmarks

format: install
	$(BIN)/ruff format learnreg tests benchmarks
	$(BIN)/ruff check --fix learnreg tests benchmarks

clean:
	rm -rf $(VENV) runs wandb .pytest_cache .ruff_cache
