"""Qwen3 (Qwen3-4B / 8B): a Llama-style decoder with per-head QK RMSNorm, tied head on the small models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ecomvlm.recipes.models.decoders.gpt import DecoderConfig, refuse_unsupported, rope_parameters


@dataclass
class Qwen3Config(DecoderConfig):
    family: str = "qwen3"
    chat_format: str = "chatml"
    qk_layernorm: bool = True

    hf_model_types: ClassVar[tuple[str, ...]] = ("qwen3",)
    hf_architecture: ClassVar[str] = "Qwen3ForCausalLM"

    @classmethod
    def from_hf(cls, hf, tp: int = 1) -> "Qwen3Config":
        refuse_unsupported(hf, "qwen3 config", attention_bias=False, hidden_act="silu", use_sliding_window=False)
        rope = rope_parameters(hf)
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise ValueError(f"RoPE type {rope.get('rope_type')!r} is not supported for qwen3 (default only)")
        return cls(**cls._dims_from_hf(hf, tp), rotary_base=float(rope["rope_theta"]), qk_layernorm=True)

    def to_hf(self):
        from transformers import Qwen3Config as HFQwen3Config

        cfg = HFQwen3Config(**self._hf_dims(), rope_parameters={"rope_type": "default", "rope_theta": self.rotary_base},
                            attention_bias=False)
        cfg.architectures = [self.hf_architecture]
        return cfg
