"""Numeric precision of a run (conf/precision/*.yaml): parameter dtype and FP8 settings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FP8_MULTIPLE = 16  # FP8 GEMMs (the decoder layers, inside TE's fp8 region) need token counts divisible by 16


def dtype_of(name: str, where: str = "dtype") -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"{where}={name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def fp8_capable_gpu() -> bool:
    """FP8 tensor cores: Hopper (compute capability 9.0) or newer."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0)


@dataclass
class PrecisionConfig:
    params_dtype: str = "fp32"  # fp32 | bf16 (bf16: bf16 parameters, fp32 master weights in the optimizer)
    fp8: str | None = None  # None | hybrid | e4m3
    fp8_recipe: str = "delayed"  # delayed | tensorwise
    fp8_margin: int = 0
    fp8_amax_history_len: int = 1024
    fp8_amax_compute_algo: str = "max"

    @property
    def dtype(self) -> torch.dtype:
        return dtype_of(self.params_dtype, "precision.params_dtype")

    def transformer_overrides(self, decoder=None) -> dict[str, Any]:
        """TransformerConfig fields for this precision. FP8 is refused wherever it would not really run: without
        Transformer Engine, on a GPU older than Hopper, or for a decoder built from local (non-TE) layers."""
        from ecomvlm.recipes.models.decoders.gpt import te_available

        if self.fp8 is None:
            return {}
        if self.fp8 not in ("hybrid", "e4m3"):
            raise ValueError(f"precision.fp8={self.fp8!r}; choose hybrid, e4m3 or null")
        if self.fp8_recipe not in ("delayed", "tensorwise"):
            raise ValueError(f"precision.fp8_recipe={self.fp8_recipe!r}; choose delayed or tensorwise")
        if not te_available():
            raise ValueError("precision.fp8 needs Transformer Engine and a CUDA GPU (Hopper or newer); use "
                             "precision=bf16 here")
        if not fp8_capable_gpu():
            raise ValueError(f"precision.fp8 needs a Hopper-or-newer GPU (compute capability 9.0+); this one is "
                             f"{torch.cuda.get_device_name()} {torch.cuda.get_device_capability()}: use precision=bf16")
        if decoder is not None and not decoder.has_te_spec:
            raise ValueError(f"precision.fp8: the {decoder.family} decoder is built from local megatron layers, "
                             f"which have no FP8 path (it would silently run in bf16); use precision=bf16")
        return dict(fp8=self.fp8, fp8_recipe=self.fp8_recipe, fp8_margin=self.fp8_margin,
                    fp8_amax_history_len=self.fp8_amax_history_len, fp8_amax_compute_algo=self.fp8_amax_compute_algo)

    def pad_to_multiple(self, parallel) -> int:
        """The data pipeline pads every row to a multiple of this: FP8 GEMMs need 16; sequence parallelism splits
        the sequence over the TP ranks."""
        fp8 = FP8_MULTIPLE if self.fp8 else 1
        tp = parallel.tensor_model_parallel_size if parallel.sequence_parallel else 1
        return math.lcm(fp8, tp)
