"""The ONE place where megatron-core is taught to run without a GPU (tests, the CPU demo).

megatron-core assumes CUDA in a handful of sites (measured on 0.19.2, see shared/docs/STACK.md). On a machine
without CUDA, :func:`apply` patches exactly these, and nothing else:

1. RNG tracker (tensor_parallel/random.py): the "CUDA" RNG state that megatron forks for tensor-parallel
   dropout/init is mapped onto the CPU generator (torch.cuda.get/set_rng_state, manual_seed, and the
   module's private _get/_set_cuda_rng_state).
2. ``torch.cuda.current_device()`` (~60 sites, e.g. rotary_pos_embedding.py) returns ``"cpu"``.
3. ``device="cuda"`` factories (transformer/utils.py get_default_causal_mask, pipeline_parallel/schedules.py,
   ...), ``Tensor.cuda()`` / ``Module.cuda()`` (clip_vit_model.py) and ``Tensor.to("cuda")``: a
   TorchFunctionMode rewrites any CUDA device argument to CPU; ``torch.cuda.synchronize`` is a no-op.
4. CLIPViT's default norm (torch.nn.LayerNorm rejects ``config=``) is a non-TE bug, not a CUDA one, so it is
   NOT patched here: the model builders pass ``WrappedTorchNorm`` whenever TE is absent (GPU or not).
5. optimizer/clip_grads.py asserts ``torch.cuda.FloatTensor``: the training glue clips with torch utilities on
   CPU (see :data:`CPU_GRAD_CLIP_NOTE`), nothing to patch at import.

``apply()`` is a no-op when CUDA is available, so a GPU run can never be altered by it, and it is idempotent.
``torch.cuda.is_available()`` keeps returning False, so code that asks gets the truth.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

CPU_GRAD_CLIP_NOTE = "megatron's clip_grad_norm_fp32 asserts CUDA tensors; on CPU use torch.nn.utils.clip_grad_norm_"

_state: dict[str, Any] = {"applied": False, "mode": None}
_lock = threading.Lock()


def _is_cuda(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # a bare int means "GPU ordinal" to torch factories; on a CPU-only machine that can only be a GPU request
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaDeviceToCpu(TorchFunctionMode):
    """Rewrites CUDA device arguments of any torch call to CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dev = kwargs.get("device")
        if dev is not None and _is_cuda(dev):
            kwargs = {**kwargs, "device": "cpu"}
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        elif func is torch.Tensor.pin_memory:
            return args[0]  # pinning needs a CUDA context; on CPU it is meaningless
        return func(*args, **kwargs)


def _get_cpu_rng_state(*_args: Any, **_kwargs: Any) -> torch.Tensor:
    return torch.get_rng_state()


def _set_cpu_rng_state(new_state: torch.Tensor, *_args: Any, **_kwargs: Any) -> None:
    torch.set_rng_state(new_state)


class _ForkWarningFilter(logging.Filter):
    # With the CUDA RNG mapped onto the CPU generator, megatron's "CPU RNG state changed within GPU RNG
    # context" warning fires on every tensor-parallel dropout; it is expected here and only noise.
    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def apply() -> bool:
    """Patch megatron-core's CUDA assumptions for a CPU-only process. Returns True if the shim is active."""
    if torch.cuda.is_available():
        return False
    with _lock:
        if _state["applied"]:
            return True
        import megatron.core.tensor_parallel.random as mrandom

        # 1. RNG
        torch.cuda.get_rng_state = _get_cpu_rng_state  # type: ignore[assignment]
        torch.cuda.random.get_rng_state = _get_cpu_rng_state  # type: ignore[assignment]
        torch.cuda.set_rng_state = _set_cpu_rng_state  # type: ignore[assignment]
        torch.cuda.manual_seed = torch.manual_seed  # type: ignore[assignment]
        mrandom._get_cuda_rng_state = _get_cpu_rng_state
        mrandom._set_cuda_rng_state = _set_cpu_rng_state
        logging.getLogger(mrandom.__name__).addFilter(_ForkWarningFilter())
        # 2. current device
        torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
        # 3. device="cuda" factories, .cuda(), synchronize
        torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
        torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
        torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
        mode = _CudaDeviceToCpu()
        mode.__enter__()  # stays pushed for the life of the process (CPU runs only)
        _state.update(applied=True, mode=mode)
        log.info("megatron-core CPU shim active (no CUDA device)")
        return True


def is_active() -> bool:
    return bool(_state["applied"])
