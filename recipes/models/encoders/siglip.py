"""SigLIP / SigLIP2-SO400M (fixed resolution; the fixed-resolution SigLIP2 checkpoints use the SigLIP architecture)
as megatron-core's CLIPViTModel (siglip subtype), tensor-parallel sharded.

The LLM reads ``hidden_states[feature_layer]`` *before* the post-LayerNorm, so the post-LN is not built and only
the layers up to ``feature_layer`` are (LLaVA-OneVision drops SigLIP's last layer: feature_layer=-2).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ecomvlm.data_modules.preprocess import ImageSpec
from ecomvlm.recipes.models.decoders.gpt import runtime_config_kwargs, te_available
from ecomvlm.recipes.models.encoders.base import EncoderConfig
from ecomvlm.recipes.models.mapping import QKV, Direct, ExportOnly, Rule
from ecomvlm.recipes.models.parallel import ParallelConfig


@dataclass
class SiglipConfig(EncoderConfig):
    family: str = "siglip"
    image_size: int = 384

    hf_model_types: ClassVar[tuple[str, ...]] = ("siglip_vision_model", "siglip")
    hf_anchor: ClassVar[str] = "embeddings.patch_embedding.weight"
    llava_vision_tower: ClassVar[bool] = True

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def check_parallel(self, tp: int) -> list[str]:
        if self.num_attention_heads % tp:
            return [f"encoder num_attention_heads={self.num_attention_heads} is not divisible by TP={tp}"]
        return []

    def image_spec(self) -> ImageSpec:
        return ImageSpec(mode="fixed", patch_size=self.patch_size, image_mean=tuple(self.image_mean),
                         image_std=tuple(self.image_std), image_size=self.image_size)

    def transformer_config(self, parallel: ParallelConfig, params_dtype=torch.float32):
        from megatron.core.transformer.transformer_config import TransformerConfig

        return TransformerConfig(
            num_layers=self.layers_used, hidden_size=self.hidden_size, ffn_hidden_size=self.ffn_hidden_size,
            num_attention_heads=self.num_attention_heads, normalization="LayerNorm",
            layernorm_epsilon=self.norm_epsilon, add_bias_linear=True, add_qkv_bias=True, gated_linear_unit=False,
            activation_func=partial(F.gelu, approximate="tanh"),  # SigLIP's gelu_pytorch_tanh
            tensor_model_parallel_size=parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=1,  # the encoder lives on the first pipeline stage only
            sequence_parallel=parallel.sequence_parallel,
            **{**runtime_config_kwargs(params_dtype), "persist_layer_norm": False})

    def build(self, parallel: ParallelConfig, params_dtype=torch.float32) -> torch.nn.Module:
        from megatron.core.models.vision.clip_vit_model import CLIPViTModel
        from megatron.core.models.vision.vit_layer_specs import (
            get_vit_layer_with_local_spec,
            get_vit_layer_with_transformer_engine_spec,
        )
        from megatron.core.transformer.torch_norm import WrappedTorchNorm

        if te_available():
            from megatron.core.extensions.transformer_engine import TENorm

            spec, norm = get_vit_layer_with_transformer_engine_spec(), TENorm
        else:
            # without TE, CLIPViTModel's default norm is torch.nn.LayerNorm, which rejects `config=`
            spec, norm = get_vit_layer_with_local_spec(), WrappedTorchNorm
        model = CLIPViTModel(self.transformer_config(parallel, params_dtype), spec, ln_pre_impl=norm,
                             ln_post_impl=norm, add_class_token=False, class_token_len=0, patch_dim=self.patch_size,
                             img_h=self.image_size, img_w=self.image_size, model_subtype="siglip")
        model.ln_post = None  # the LLM reads the last used layer's output before SigLIP's post-LayerNorm
        return model

    def features(self, tower, pixel_values, image_grid_thw=None):
        return tower(pixel_values)  # [n_images, tokens, hidden]

    def mapping(self) -> list[Rule]:
        m, h, n = "decoder.layers.*.", "encoder.layers.*.", self.layers_used
        pairs = {"input_layernorm": "layer_norm1", "pre_mlp_layernorm": "layer_norm2",
                 "self_attention.linear_proj": "self_attn.out_proj", "mlp.linear_fc1": "mlp.fc1",
                 "mlp.linear_fc2": "mlp.fc2"}
        rules: list[Rule] = [Direct("conv1.weight", hf="embeddings.patch_embedding.weight"),
                             Direct("conv1.bias", hf="embeddings.patch_embedding.bias"),
                             Direct("position_embeddings.weight", hf="embeddings.position_embedding.weight")]
        for kind in ("weight", "bias"):
            rules += [Direct(f"{m}{a}.{kind}", limit=n, hf=f"{h}{b}.{kind}") for a, b in pairs.items()]
            rules.append(QKV(f"{m}self_attention.linear_qkv.{kind}", limit=n, q=f"{h}self_attn.q_proj.{kind}",
                             k=f"{h}self_attn.k_proj.{kind}", v=f"{h}self_attn.v_proj.{kind}",
                             heads=self.num_attention_heads, groups=self.num_attention_heads))
        # HF still has the post-LN module; the LLM reads the features before it, so an export makes it identity
        hidden = self.hidden_size
        rules += [ExportOnly("conv1.weight", hf="post_layernorm.weight", value=lambda: torch.ones(hidden)),
                  ExportOnly("conv1.bias", hf="post_layernorm.bias", value=lambda: torch.zeros(hidden))]
        return rules

    def param_count(self) -> int:
        """Parameters actually built (layers up to feature_layer, no post-LN / pooling head)."""
        h, f = self.hidden_size, self.ffn_hidden_size
        layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h
        patches = (self.image_size // self.patch_size) ** 2
        return 3 * self.patch_size ** 2 * h + h + patches * h + self.layers_used * layer

    @classmethod
    def from_hf(cls, hf, feature_layer: int = -1) -> "SiglipConfig":
        hf = getattr(hf, "vision_config", hf)
        if getattr(hf, "hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
            raise ValueError(f"SigLIP hidden_act={hf.hidden_act!r} is not supported (gelu_pytorch_tanh)")
        return cls(num_layers=hf.num_hidden_layers, hidden_size=hf.hidden_size, ffn_hidden_size=hf.intermediate_size,
                   num_attention_heads=hf.num_attention_heads, image_size=hf.image_size, patch_size=hf.patch_size,
                   norm_epsilon=hf.layer_norm_eps, feature_layer=feature_layer)

    def to_hf(self) -> Any:
        from transformers import SiglipVisionConfig

        return SiglipVisionConfig(hidden_size=self.hidden_size, intermediate_size=self.ffn_hidden_size,
                                  num_hidden_layers=self.layers_used, num_attention_heads=self.num_attention_heads,
                                  image_size=self.image_size, patch_size=self.patch_size,
                                  layer_norm_eps=self.norm_epsilon, hidden_act="gelu_pytorch_tanh",
                                  vision_use_head=False)
