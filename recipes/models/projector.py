"""LLaVA's mlp2x_gelu projector: Linear(encoder -> LLM) + GELU(erf) + Linear(LLM -> LLM), both with bias, TP-sharded."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ecomvlm.recipes.models.mapping import Direct, Rule
from ecomvlm.recipes.models.parallel import ParallelConfig

PROJECTOR_TYPES = ("mlp2x_gelu",)


@dataclass
class ProjectorConfig:
    type: str = "mlp2x_gelu"

    def __post_init__(self) -> None:
        if self.type not in PROJECTOR_TYPES:
            raise ValueError(f"unknown projector type {self.type!r}; choose one of {PROJECTOR_TYPES}")

    def build(self, decoder, input_size: int, parallel: ParallelConfig, params_dtype=torch.float32):
        import torch.nn.functional as F
        from megatron.core.models.vision.multimodal_projector import MultimodalProjector
        from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
        from megatron.core.transformer.mlp import MLPSubmodules

        config = decoder.transformer_config(
            parallel, params_dtype=params_dtype, num_layers=1, ffn_hidden_size=decoder.hidden_size,
            add_bias_linear=True, gated_linear_unit=False, activation_func=F.gelu, bias_activation_fusion=False,
            normalization="LayerNorm", qk_layernorm=False, pipeline_model_parallel_size=1,
            window_size=None, window_attn_skip_freq=None, softmax_scale=None)
        if decoder.uses_te:
            from megatron.core.extensions.transformer_engine import TEColumnParallelLinear, TERowParallelLinear

            sub = MLPSubmodules(linear_fc1=TEColumnParallelLinear, linear_fc2=TERowParallelLinear)
        else:
            sub = MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear)
        return MultimodalProjector(config, sub, "mlp", input_size=input_size)

    def mapping(self) -> list[Rule]:
        """Projector module names (below ``encoder.``) <-> LLaVA's ``multi_modal_projector.linear_{1,2}``."""
        return [Direct(f"encoder.linear_fc{n}.{kind}", hf=f"linear_{n}.{kind}") for n in (1, 2)
                for kind in ("weight", "bias")]
