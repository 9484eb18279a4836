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

.PHONY: venv demo test test-slow test-all clean-venv help

help:
	@echo "make demo       build .venv if missing, then run the CPU demo (ecomvlm demo)"
	@echo "make test       build .venv if missing, then run the default test suite (no slow/gpu tests)"
	@echo "make test-slow  only the slow tests;  make test-all: everything that can run here"

$(STAMP): pyproject.toml setup.py
	@if [ -z "$(PYTHON312)" ]; then \
	  echo "error: Python 3.12 not found. Install it (pyenv install 3.12 / apt-get install python3.12)" \
	       "or point PYTHON312=/path/to/python3.12 at it." >&2; exit 1; fi
	@echo "creating $(VENV) with $(PYTHON312)"
	@[ -x $(VENV)/bin/python ] || $(PYTHON312) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(VENV)/bin/ecomvlm demo

test: venv
	$(VENV)/bin/python -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow: venv
	$(VENV)/bin/python -m pytest -m "slow" $(PYTEST_ARGS)

test-all: venv
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
