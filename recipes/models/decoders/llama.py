"""Llama-3.x (Llama-3.1-8B, e-Llama3.1-8B, Lilium): GQA, RMSNorm, SwiGLU, RoPE with optional "llama3" scaling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ecomvlm.recipes.models.decoders.gpt import DecoderConfig, refuse_unsupported, rope_parameters

# megatron-core implements Llama-3.1 RoPE scaling with these constants only
LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@dataclass
class LlamaConfig(DecoderConfig):
    family: str = "llama"
    chat_format: str = "llama3"
    rope_scaling_factor: float | None = None  # Llama-3.1 "llama3" RoPE scaling (8.0); None = plain RoPE

    hf_model_types: ClassVar[tuple[str, ...]] = ("llama",)
    hf_architecture: ClassVar[str] = "LlamaForCausalLM"

    def gpt_kwargs(self) -> dict[str, Any]:
        return dict(rope_scaling=self.rope_scaling_factor is not None,
                    rope_scaling_factor=self.rope_scaling_factor or 8.0)

    @classmethod
    def from_hf(cls, hf, tp: int = 1) -> "LlamaConfig":
        refuse_unsupported(hf, f"{hf.model_type} config", attention_bias=False, mlp_bias=False, hidden_act="silu")
        rope = rope_parameters(hf)
        kind = rope.get("rope_type", rope.get("type", "default"))
        factor = None
        if kind == "llama3":
            bad = {k: rope.get(k) for k, v in LLAMA3_ROPE.items() if float(rope.get(k, v)) != v}
            if bad:
                raise ValueError(f"llama3 RoPE scaling with {bad} is not supported by megatron-core "
                                 f"(expects {LLAMA3_ROPE})")
            factor = float(rope["factor"])
        elif kind not in ("default", None):
            raise ValueError(f"RoPE type {kind!r} is not supported for {hf.model_type} (default | llama3)")
        return cls(**cls._dims_from_hf(hf, tp), rotary_base=float(rope["rope_theta"]), rope_scaling_factor=factor)

    def _hf_rope(self) -> dict[str, Any]:
        if self.rope_scaling_factor is None:
            return {"rope_type": "default", "rope_theta": self.rotary_base}
        return {"rope_type": "llama3", "rope_theta": self.rotary_base, "factor": self.rope_scaling_factor,
                **LLAMA3_ROPE}

    def to_hf(self):
        from transformers import LlamaConfig as HFLlamaConfig

        cfg = HFLlamaConfig(**self._hf_dims(), rope_parameters=self._hf_rope(), attention_bias=False, mlp_bias=False)
        cfg.architectures = [self.hf_architecture]
        return cfg
