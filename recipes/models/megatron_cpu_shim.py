"""The ONE place where the training engines are taught to run without a GPU (tests, the CPU demo): megatron-core
(:func:`apply`) and NeMo AutoModel (:func:`apply_automodel`). The module keeps its historical name; both shims live
here so there is one room to audit for CPU-only behaviour.

megatron-core assumes CUDA in a handful of sites (listed for 0.19.2 below). On a machine
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
5. optimizer/clip_grads.py ``clip_grad_by_total_norm_fp32`` asserts ``torch.cuda.FloatTensor`` (its only CUDA
   assumption; the norm itself runs on CPU): replaced, in clip_grads and optimizer.py which imports it by name,
   by the same scaling with a dtype check.

6. DistributedDataParallel's grad sync (distributed/param_and_grad_buffer.py start_grad_sync) asks for
   ``torch.cuda.current_stream()`` to wait on CUDA-graph events: a stream object whose waits are no-ops.

7. megatron's optimizers (optimizer.py Float16OptimizerWithFloat16Params, distrib_optimizer.py) sort params by
   ``param.type()`` strings ('torch.cuda.FloatTensor', 'torch.cuda.BFloat16Tensor'): the argument-less
   ``Tensor.type()`` reports the CUDA name for CPU tensors (only megatron and NeMo compare these strings).

``apply()`` is a no-op when CUDA is available, so a GPU run can never be altered by it, and it is idempotent.
``torch.cuda.is_available()`` keeps returning False, so code that asks gets the truth.

NeMo AutoModel 0.7.0 (its VLM fine-tuning recipe on the FSDP2 path) has three CUDA-only call sites; on a machine
without CUDA :func:`apply_automodel` patches exactly these (also a no-op with CUDA, idempotent):

A. ``torch.cuda.reset_peak_memory_stats()`` (recipes/vlm/finetune.py ``setup`` and ``log_train_metrics``, every
   step) raises without a CUDA context: a no-op when CUDA is absent (peak memory is reported as 0 GiB on CPU).
B. ``_transformers/auto_model.py`` places the model on ``torch.cuda.current_device()`` (``_build_model``) and
   ``torch.device("cuda", torch.cuda.current_device())`` (``from_pretrained`` / ``from_config``): that module's
   global ``torch`` is replaced by a proxy whose ``cuda.current_device()`` and ``device("cuda", ...)`` mean the
   CPU; every other attribute is the real torch. Nothing outside that module sees the proxy (so the megatron
   shim's own ``torch.cuda.current_device`` patch cannot leak into it either).
Everything else AutoModel does with CUDA on this path is guarded by ``torch.cuda.is_available()`` or returns
harmless values (0 bytes of peak memory, empty CUDA RNG state lists). The run itself must pick CPU-capable options
(gloo, MaskedCrossEntropy, no Liger/Triton kernels, no autocast), which recipes/automodel/translate.py does.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)


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
        elif func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)  # site 7: the optimizers' "torch.cuda.FloatTensor" checks
            return name.replace("torch.", "torch.cuda.", 1) if not name.startswith("torch.cuda.") else name
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


def _clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad: bool = False) -> None:
    """megatron's clip_grad_by_total_norm_fp32 without its CUDA type assert (grads scaled in place)."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = []
    for p in parameters:
        g = getattr(p, "decoupled_grad", None) if use_decoupled_grad else p.grad
        if g is not None:
            assert g.dtype in (torch.float32, torch.bfloat16) if use_decoupled_grad else g.dtype == torch.float32
            grads.append(g.detach())
    coeff = max_norm / (total_norm + 1.0e-6)
    if isinstance(coeff, torch.Tensor):
        coeff = coeff.clamp_max(1.0)
    elif coeff >= 1.0:
        return
    torch._foreach_mul_(grads, coeff) if grads else None


class _CpuStream:
    """Stand-in for a CUDA stream on CPU: everything already happened in order."""

    def wait_event(self, *_a: Any) -> None:
        pass

    def wait_stream(self, *_a: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass


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
        # 5. megatron optimizer's grad clipping
        import megatron.core.optimizer.clip_grads as mclip
        import megatron.core.optimizer.optimizer as mopt

        mclip.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32
        mopt.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32
        # 6. streams (megatron DDP's grad sync): CPU work is synchronous, waiting is a no-op
        torch.cuda.current_stream = lambda *a, **k: _CpuStream()  # type: ignore[assignment]
        mode = _CudaDeviceToCpu()
        mode.__enter__()  # stays pushed for the life of the process (CPU runs only)
        _state.update(applied=True, mode=mode)
        log.info("megatron-core CPU shim active (no CUDA device)")
        return True


def is_active() -> bool:
    return bool(_state["applied"])


_am_state: dict[str, Any] = {"applied": False}


class _CpuCuda:
    """``torch.cuda`` as AutoModel's model builder sees it on a CPU-only machine."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)

    @staticmethod
    def current_device() -> torch.device:
        return torch.device("cpu")


class _CpuTorch:
    """``torch`` inside nemo_automodel._transformers.auto_model: CUDA placements mean the CPU (site B)."""

    cuda = _CpuCuda()

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def device(*args: Any, **kwargs: Any) -> torch.device:
        if args and isinstance(args[0], str) and args[0].startswith("cuda"):
            return torch.device("cpu")
        return torch.device(*args, **kwargs)


def apply_automodel() -> bool:
    """Patch NeMo AutoModel's CUDA-only call sites for a CPU-only process (sites A and B above). Returns True when
    active; a no-op with CUDA."""
    if torch.cuda.is_available():
        return False
    with _lock:
        if _am_state["applied"]:
            return True
        import nemo_automodel._transformers.auto_model as auto_model

        torch.cuda.reset_peak_memory_stats = lambda *a, **k: None  # type: ignore[assignment]  # site A
        auto_model.torch = _CpuTorch()  # site B
        _am_state["applied"] = True
        log.info("NeMo AutoModel CPU shim active (no CUDA device)")
        return True
