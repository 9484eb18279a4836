"""Vision encoders -> megatron modules.

- ``siglip`` (SigLIP-SO400M, SigLIP2-SO400M-patch14-384: the fixed-resolution SigLIP2 checkpoints use the same
  architecture as SigLIP): megatron-core's CLIPViTModel (siglip subtype), tensor-parallel sharded.
  LLaVA reads ``hidden_states[feature_layer]`` *before* the post-LayerNorm, so the post-LN is not built and only
  the layers up to ``feature_layer`` are (LLaVA-OneVision drops SigLIP's last layer: feature_layer=-2).
- ``qwen2_5_vit``: the HF Qwen2.5-VL vision tower (window attention, 2D RoPE, patch merger) wrapped as a
  megatron module, replicated across TP ranks (its grads are averaged over TP like megatron's HF wrappers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from ecomvlm.recipes.models.parallel import ParallelConfig

ENCODER_FAMILIES = ("siglip", "qwen2_5_vit")


@dataclass
class EncoderConfig:
    family: str = "siglip"
    num_layers: int = 27  # layers in the checkpoint
    hidden_size: int = 1152
    ffn_hidden_size: int = 4304
    num_attention_heads: int = 16
    image_size: int = 384
    patch_size: int = 14
    norm_epsilon: float = 1e-6
    feature_layer: int = -1  # hidden_states index LLaVA reads (-1: last layer, -2: drop the last layer)
    # qwen2_5_vit only
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: list[int] = field(default_factory=lambda: [7, 15, 23, 31])
    out_hidden_size: int = 3584  # merger output (Qwen2.5-VL projects to its LLM width)
    min_pixels: int = 3136
    max_pixels: int = 12845056
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if self.family not in ENCODER_FAMILIES:
            raise ValueError(f"unknown encoder family {self.family!r}; choose one of {ENCODER_FAMILIES}")
        if not -self.num_layers <= self.feature_layer <= -1:
            raise ValueError(f"feature_layer={self.feature_layer} must be in -{self.num_layers}..-1")

    @property
    def layers_used(self) -> int:
        """Encoder layers that feed LLaVA (hidden_states[0] is the embedding output)."""
        return self.num_layers + 1 + self.feature_layer

    @property
    def tokens_per_image(self) -> int:
        """Fixed-resolution encoders only (SigLIP): image tokens per image fed to the LLM."""
        if self.family != "siglip":
            raise ValueError("tokens per image depends on the image size for native-resolution encoders")
        return (self.image_size // self.patch_size) ** 2

    @property
    def output_size(self) -> int:
        return self.out_hidden_size if self.family == "qwen2_5_vit" else self.hidden_size


def vit_transformer_config(enc: EncoderConfig, parallel: ParallelConfig, params_dtype=torch.float32, **overrides):
    from megatron.core.transformer.transformer_config import TransformerConfig

    from ecomvlm.recipes.models.decoder import runtime_config_kwargs

    kw: dict[str, Any] = dict(
        num_layers=enc.layers_used,
        hidden_size=enc.hidden_size,
        ffn_hidden_size=enc.ffn_hidden_size,
        num_attention_heads=enc.num_attention_heads,
        normalization="LayerNorm",
        layernorm_epsilon=enc.norm_epsilon,
        add_bias_linear=True,
        add_qkv_bias=True,
        gated_linear_unit=False,
        activation_func=partial(F.gelu, approximate="tanh"),  # SigLIP's gelu_pytorch_tanh
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        # the encoder lives on the first pipeline stage only; it is never pipeline-split
        pipeline_model_parallel_size=1,
        sequence_parallel=parallel.sequence_parallel,
        persist_layer_norm=False,
        **runtime_config_kwargs(params_dtype),  # bias_activation_fusion stays off: megatron's fused gelu is tanh
    )
    kw.update(overrides)
    return TransformerConfig(**kw)


def build_encoder(enc: EncoderConfig, parallel: ParallelConfig, params_dtype=torch.float32) -> torch.nn.Module:
    if enc.family == "siglip":
        return _build_siglip(enc, parallel, params_dtype)
    return Qwen25VisionTower(enc, parallel, params_dtype)


def _build_siglip(enc: EncoderConfig, parallel: ParallelConfig, params_dtype) -> torch.nn.Module:
    from megatron.core.models.vision.clip_vit_model import CLIPViTModel
    from megatron.core.models.vision.vit_layer_specs import (
        get_vit_layer_with_local_spec,
        get_vit_layer_with_transformer_engine_spec,
    )
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    from ecomvlm.recipes.models.decoder import te_available

    config = vit_transformer_config(enc, parallel, params_dtype)
    if te_available():
        from megatron.core.extensions.transformer_engine import TENorm

        spec, norm = get_vit_layer_with_transformer_engine_spec(), TENorm
    else:
        # without TE, CLIPViTModel's default norm is torch.nn.LayerNorm, which rejects `config=`
        spec, norm = get_vit_layer_with_local_spec(), WrappedTorchNorm
    model = CLIPViTModel(config, spec, ln_pre_impl=norm, ln_post_impl=norm, add_class_token=False, class_token_len=0,
                         patch_dim=enc.patch_size, img_h=enc.image_size, img_w=enc.image_size, model_subtype="siglip")
    model.ln_post = None  # LLaVA reads the last used layer's output before SigLIP's post-LayerNorm
    return model


class Qwen25VisionTower(torch.nn.Module):
    """HF Qwen2.5-VL vision tower (incl. its patch merger), replicated across tensor-parallel ranks.

    Input: ``pixel_values`` [n_patches_total, 3 * temporal * patch * patch] and ``image_grid_thw`` [n_images, 3],
    exactly as Qwen2.5-VL's image processor makes them. Output: [n_tokens_total, out_hidden_size].
    """

    def __init__(self, enc: EncoderConfig, parallel: ParallelConfig, params_dtype=torch.float32) -> None:
        super().__init__()
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

        if enc.feature_layer != -1:
            raise ValueError("qwen2_5_vit uses its patch merger output; feature_layer must be -1")
        self.hf_config = Qwen2_5_VLVisionConfig(
            depth=enc.num_layers, hidden_size=enc.hidden_size, intermediate_size=enc.ffn_hidden_size,
            num_heads=enc.num_attention_heads, out_hidden_size=enc.out_hidden_size, patch_size=enc.patch_size,
            spatial_merge_size=enc.spatial_merge_size, temporal_patch_size=enc.temporal_patch_size,
            window_size=enc.window_size, fullatt_block_indexes=list(enc.fullatt_block_indexes),
        )
        self.hf_config._attn_implementation = "sdpa"
        self.model = Qwen2_5_VisionTransformerPretrainedModel._from_config(self.hf_config, torch_dtype=params_dtype)
        for p in self.model.parameters():
            # replicated weights: megatron's finalize_model_grads all-reduces these over TP (keeps replicas equal)
            p.average_gradients_across_tp_domain = True

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values, grid_thw=image_grid_thw)
        return out.pooler_output if hasattr(out, "pooler_output") else out
