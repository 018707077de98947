# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= ../shared/data

.PHONY: serve test lint typecheck train evaluate docker-test clean triton-venv

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

# The client is its own distribution (client/); the tests drive the server through it.
$(BIN)/.installed-dev: $(BIN)/.installed pyproject.toml client/pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet -e ./client
	touch $@

serve: $(BIN)/.installed
	$(BIN)/python -m service

lint: $(BIN)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed-dev
	$(BIN)/mypy core models service weights bench evaluation tests client/digits_client

# The browser test drives Debian's chromium; as root on Debian it is installed here.
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; \
	else echo "install chromium (Debian: apt-get install chromium) or set CHROMIUM=/path/to/chromium" >&2; exit 1; fi

# The benchmark's load generator is wrk (bench/load.py); as root on Debian it is installed here.
WRK ?= /usr/bin/wrk
$(WRK):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null; \
	else echo "install wrk (Debian: apt-get install wrk; macOS: brew install wrk) or set WRK=/path/to/wrk" >&2; exit 1; fi

test: $(BIN)/.installed-dev $(CHROMIUM) $(WRK) lint typecheck
	DIGITS_TEST_DATA_DIR=$(DATA_DIR) DIGITS_CHROMIUM=$(CHROMIUM) $(BIN)/pytest

# Both recipes train from a fresh initialisation; these are the commands recorded in weights/*.json.
train: $(BIN)/.installed-dev
	$(BIN)/python -m models.train --arch resnet --data-dir $(DATA_DIR) --no-download --threads 1 --workers 2
	$(BIN)/python -m models.train --arch inception --data-dir $(DATA_DIR) --no-download --threads 1

# bench.peer's Triton: PyTriton in a venv on the distribution's python3.11 (its stub links that
# libpython), with this project's venv on its path for torch and the service's code.
TRITON_VENV := build/triton-venv
triton-venv: $(TRITON_VENV)/bin/pytriton-ready
$(TRITON_VENV)/bin/pytriton-ready: $(BIN)/.installed-dev
	/usr/bin/python3.11 -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet 'nvidia-pytriton>=0.7,<0.8'
	echo "$(abspath $(VENV))/lib/python3.11/site-packages" > $(TRITON_VENV)/lib/python3.11/site-packages/project-venv.pth
	touch $@

evaluate: $(BIN)/.installed-dev
	$(BIN)/python -m models.evaluate --data-dir $(DATA_DIR) --no-download
	$(BIN)/python -m evaluation.realworld --data-dir $(DATA_DIR) --out evaluation/results/realworld.json
	$(BIN)/python -m evaluation.numbers --data-dir $(DATA_DIR) --out evaluation/results/numbers.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts

docker-test: $(BIN)/.installed-dev
	VENV_BIN=$(BIN) deploy/docker/docker-test.sh
