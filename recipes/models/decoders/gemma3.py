"""Gemma3 text decoder (the LLM of Gemma3-4B/12B/27B): config, HF config both ways, weight mapping. Its megatron
layers (sandwich norms, (1+w) RMSNorm, sliding-window attention with local RoPE) are in gemma3_layers.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch.nn.functional as F

from ecomvlm.recipes.models.decoders.gpt import DecoderConfig, refuse_unsupported


@dataclass
class Gemma3Config(DecoderConfig):
    family: str = "gemma3"
    chat_format: str = "gemma3"
    norm_epsilon: float = 1e-6
    qk_layernorm: bool = True
    tie_word_embeddings: bool = True
    sliding_window: int = 1024  # tokens a sliding-window layer sees (incl. itself)
    sliding_layers: list[int] | None = None  # per layer: 1 = sliding window, 0 = global; None = 5 sliding : 1 global
    local_rotary_base: float = 10000.0  # RoPE base on sliding layers
    rope_linear_factor: float | None = None  # linear RoPE scaling on global layers (Gemma3-4B: 8)
    query_pre_attn_scalar: float = 256.0  # attention scale = this^-0.5

    hf_model_types: ClassVar[tuple[str, ...]] = ("gemma3_text",)
    hf_architecture: ClassVar[str] = "Gemma3ForCausalLM"
    norms_per_layer: ClassVar[int] = 4
    has_te_spec: ClassVar[bool] = False

    @property
    def layer_pattern(self) -> list[int]:
        if self.sliding_layers is not None:
            if len(self.sliding_layers) != self.num_layers:
                raise ValueError(f"sliding_layers has {len(self.sliding_layers)} entries for {self.num_layers} layers")
            return list(self.sliding_layers)
        return [int((i + 1) % 6 != 0) for i in range(self.num_layers)]  # HF's default: every 6th layer is global

    def embedding_multiplier(self) -> float | None:
        return self.hidden_size ** 0.5

    def transformer_kwargs(self) -> dict[str, Any]:
        return dict(activation_func=partial(F.gelu, approximate="tanh"), bias_activation_fusion=False,
                    softmax_scale=self.query_pre_attn_scalar ** -0.5,
                    window_size=(self.sliding_window - 1, 0),  # HF: a token sees itself + the W-1 before it
                    window_attn_skip_freq=self.layer_pattern)

    def gpt_kwargs(self) -> dict[str, Any]:
        return dict(seq_len_interpolation_factor=self.rope_linear_factor)

    def layer_spec(self, config) -> Any:
        from ecomvlm.recipes.models.decoders.gemma3_layers import gemma3_block_spec

        return gemma3_block_spec(config, self.local_rotary_base)

    def layer_norm_names(self) -> list[tuple[str, str]]:
        """The sandwich norms ride on the output projections (RowParallelLinearWithPostNorm)."""
        return [("input_layernorm.weight", "input_layernorm.weight"),
                ("self_attention.linear_proj.post_layernorm.weight", "post_attention_layernorm.weight"),
                ("pre_mlp_layernorm.weight", "pre_feedforward_layernorm.weight"),
                ("mlp.linear_fc2.post_layernorm.weight", "post_feedforward_layernorm.weight")]

    @classmethod
    def from_hf(cls, hf, tp: int = 1) -> "Gemma3Config":
        refuse_unsupported(hf, "gemma3 config", final_logit_softcapping=None, attn_logit_softcapping=None,
                           hidden_activation="gelu_pytorch_tanh")
        rope = hf.rope_parameters
        full, local = rope["full_attention"], rope["sliding_attention"]
        linear = None
        if full.get("rope_type", "default") == "linear":
            linear = float(full["factor"])
        elif full.get("rope_type", "default") != "default":
            raise ValueError(f"Gemma3 global RoPE type {full.get('rope_type')!r} is not supported (default | linear)")
        if local.get("rope_type", "default") != "default":
            raise ValueError("Gemma3 sliding-window RoPE must be the default type")
        unknown = sorted(set(hf.layer_types) - {"sliding_attention", "full_attention"})
        if unknown:
            raise ValueError(f"Gemma3 layer_types {unknown} are not supported (sliding_attention | full_attention)")
        return cls(**cls._dims_from_hf(hf, tp), rotary_base=float(full["rope_theta"]), qk_layernorm=True,
                   sliding_window=hf.sliding_window,
                   sliding_layers=[int(t == "sliding_attention") for t in hf.layer_types],
                   local_rotary_base=float(local["rope_theta"]), rope_linear_factor=linear,
                   query_pre_attn_scalar=float(hf.query_pre_attn_scalar))

    def to_hf(self):
        from transformers import Gemma3TextConfig

        full = ({"rope_type": "linear", "rope_theta": self.rotary_base, "factor": self.rope_linear_factor}
                if self.rope_linear_factor else {"rope_type": "default", "rope_theta": self.rotary_base})
        cfg = Gemma3TextConfig(
            **self._hf_dims(), sliding_window=self.sliding_window,
            layer_types=["sliding_attention" if s else "full_attention" for s in self.layer_pattern],
            rope_parameters={"full_attention": full,
                             "sliding_attention": {"rope_type": "default", "rope_theta": self.local_rotary_base}},
            query_pre_attn_scalar=int(self.query_pre_attn_scalar), hidden_activation="gelu_pytorch_tanh")
        cfg.architectures = [self.hf_architecture]
        return cfg
