#!/usr/bin/env bash
# The prepared GPU check: one H100/H200 machine with PyTorch (+ transformers, lightning) but no internet, no
# megatron-core, no vLLM, no Transformer Engine; runs in well under 8 minutes.
#
#   here (PyPI reachable):  make gpu-wheels       # -> .whl/: megatron_core-0.19.2 (cp312 build), hydra_core-1.3.2,
#                                                 #    omegaconf-2.3.0, antlr4_python3_runtime-4.9.3 (all --no-deps)
#   there:                  bash benchmarks/gpu_check.sh        (the device tool: carry .whl)
#   here, as a smoke run:   GPU_CHECK_SMOKE=1 PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh   (tiny, CPU)
#
# Prints two tables: bf16 training tokens/s, model TFLOP/s and MFU (vision tower FLOPs counted) of siglip2_qwen3_4b
# at its real width with as many decoder layers as fit (36, else 24, else 12), packed rows of 4096 tokens, megatron
# local layer specs, without and with full activation recomputation; and HF-generate sec/example of the export of a
# random-weights siglip2_qwen3_4b (8 layers) on items of 5 photos.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false CUDA_DEVICE_MAX_CONNECTIONS=1
py=${PYTHON:-python3}

site=/tmp/ecomvlm-site
mkdir -p "$site/ecomvlm"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl || exit 1
fi
# the repository's rooms as the ecomvlm.* namespace, without an install (setup.py maps them the same way)
cp -r ecomvlm/. "$site/ecomvlm/"
for room in recipes conf data_modules eval launcher; do ln -sfn "$PWD/$room" "$site/ecomvlm/$room"; done
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c "import torch, megatron.core; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
  torch.cuda.get_device_name() if torch.cuda.is_available() else '-')" || exit 1

if [ -n "${GPU_CHECK_SMOKE:-}" ]; then
  model=tiny_siglip_qwen3; layer_tries="2"; seq=512; gen_layers=2; steps=2; precision=fp32
else
  model=siglip2_qwen3_4b; layer_tries="36 24 12"; seq=4096; gen_layers=8; steps=6; precision=bf16
fi
for layers in $layer_tries; do
  if "$py" benchmarks/train_throughput.py --model "$model" --layers "$layers" --seq "$seq" --micro-batches 2 \
      --samples-per-row 4 --images-per-row 2 --precision "$precision" --steps "$steps" --compare recompute; then
    break
  fi
  echo "[gpu_check] $layers decoder layers did not fit; fewer" >&2
done
"$py" benchmarks/generate_latency.py --model "$model" --layers "$gen_layers" --images 5 --examples 4 \
  --new-tokens 64
