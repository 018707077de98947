# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= ../shared/data

.PHONY: serve test lint typecheck unit train evaluate clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

serve: $(BIN)/.installed
	$(BIN)/python -m service

lint: $(BIN)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed-dev
	$(BIN)/mypy models service

test: $(BIN)/.installed-dev lint typecheck
	DIGITS_TEST_DATA_DIR=$(DATA_DIR) $(BIN)/pytest

train: $(BIN)/.installed-dev
	$(BIN)/python -m models.train --arch resnet --data-dir $(DATA_DIR) --no-download
	$(BIN)/python -m models.train --arch inception --data-dir $(DATA_DIR) --no-download

evaluate: $(BIN)/.installed-dev
	$(BIN)/python -m models.evaluate --data-dir $(DATA_DIR) --no-download

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts
