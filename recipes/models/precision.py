"""Numeric precision of a run (conf/precision/*.yaml): parameter dtype and FP8 settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FP8_MULTIPLE = 16  # FP8 GEMMs need token counts divisible by 16


def dtype_of(name: str, where: str = "dtype") -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"{where}={name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def pad_image_tokens_to(fp8: Any) -> int:
    return FP8_MULTIPLE if fp8 else 1


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

    def transformer_overrides(self) -> dict[str, Any]:
        """TransformerConfig fields for this precision. FP8 is refused where it cannot run."""
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
        return dict(fp8=self.fp8, fp8_recipe=self.fp8_recipe, fp8_margin=self.fp8_margin,
                    fp8_amax_history_len=self.fp8_amax_history_len, fp8_amax_compute_algo=self.fp8_amax_compute_algo)

    @property
    def pad_to_multiple(self) -> int:
        """The data pipeline pads sequences to this (FP8 GEMMs)."""
        return pad_image_tokens_to(self.fp8)
