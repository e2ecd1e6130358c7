# Entry points for a fresh Linux machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1 are what timm needs here (see docs/development.md).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench docs clean

$(VENV)/.xchm-installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

setup: $(VENV)/.xchm-installed

demo: setup
	$(BIN)/xchm demo -o out/demo --overwrite

test: setup
	@if [ "$$(id -u)" = 0 ]; then bash scripts/install_stac_test_deps.sh && bash scripts/install_storage_test_deps.sh; fi
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check xchm tests benchmarks examples
	$(BIN)/ruff format --check xchm tests benchmarks examples
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/model_forward.py

docs: setup
	$(BIN)/mkdocs build --strict   # the site goes to build/site

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
