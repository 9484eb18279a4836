"""Qwen2.5-VL's vision tower (native resolution, window attention, 2D RoPE, 2x2 patch merger): the HF module
wrapped as is and replicated across TP ranks (its grads are averaged over TP, like megatron's HF wrappers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ecomvlm.data_modules.preprocess import ImageSpec
from ecomvlm.recipes.models.encoders.base import EncoderConfig
from ecomvlm.recipes.models.mapping import Rule, Subtree
from ecomvlm.recipes.models.parallel import ParallelConfig


@dataclass
class Qwen25ViTConfig(EncoderConfig):
    family: str = "qwen2_5_vit"
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: list[int] = field(default_factory=lambda: [7, 15, 23, 31])
    out_hidden_size: int = 3584  # merger output (Qwen2.5-VL projects to its LLM width)
    min_pixels: int = 56 * 56
    max_pixels: int = 1280 * 28 * 28  # Qwen2.5-VL's default cap, the paper's low/mid-resolution setting
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    hf_model_types: ClassVar[tuple[str, ...]] = ("qwen2_5_vl_vision",)
    hf_anchor: ClassVar[str] = "patch_embed.proj.weight"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.feature_layer != -1:
            raise ValueError("qwen2_5_vit feeds its patch merger output to the LLM: model.encoder.feature_layer "
                             "must be -1")

    @property
    def output_size(self) -> int:
        return self.out_hidden_size

    def image_spec(self) -> ImageSpec:
        return ImageSpec(mode="native", patch_size=self.patch_size, image_mean=tuple(self.image_mean),
                         image_std=tuple(self.image_std), spatial_merge_size=self.spatial_merge_size,
                         temporal_patch_size=self.temporal_patch_size, min_pixels=self.min_pixels,
                         max_pixels=self.max_pixels)

    def hf_vision_config(self):
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

        return Qwen2_5_VLVisionConfig(
            depth=self.num_layers, hidden_size=self.hidden_size, intermediate_size=self.ffn_hidden_size,
            num_heads=self.num_attention_heads, out_hidden_size=self.out_hidden_size, patch_size=self.patch_size,
            spatial_merge_size=self.spatial_merge_size, temporal_patch_size=self.temporal_patch_size,
            window_size=self.window_size, fullatt_block_indexes=list(self.fullatt_block_indexes))

    def build(self, parallel: ParallelConfig, params_dtype=torch.float32) -> torch.nn.Module:
        return Qwen25VisionTower(self.hf_vision_config(), params_dtype)

    def features(self, tower, pixel_values, image_grid_thw=None):
        if image_grid_thw is None:
            raise ValueError("qwen2_5_vit needs image_grid_thw with pixel_values")
        chunk = self.views_per_forward or len(image_grid_thw)
        grids = image_grid_thw.split(chunk)
        pixels = pixel_values.split([int(g.prod(-1).sum()) for g in grids])
        return torch.cat([tower(p, g) for p, g in zip(pixels, grids)]).unsqueeze(0)  # [1, tokens of all images, h]

    def mapping(self) -> list[Rule]:
        return [Subtree("model.", hf="")]

    def param_count(self) -> int:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

        with torch.device("meta"):
            return sum(p.numel() for p in Qwen2_5_VisionTransformerPretrainedModel._from_config(
                self.hf_vision_config()).parameters())

    @classmethod
    def from_hf(cls, hf, feature_layer: int = -1) -> "Qwen25ViTConfig":
        from ecomvlm.recipes.models.decoders.gpt import refuse_unsupported

        hf = getattr(hf, "vision_config", hf)
        # the tower is HF's own module, rebuilt from the fields below: anything else must be the published value
        refuse_unsupported(hf, "qwen2_5_vl vision config", hidden_act="silu", in_channels=3, in_chans=3)
        return cls(num_layers=hf.depth, hidden_size=hf.hidden_size, ffn_hidden_size=hf.intermediate_size,
                   num_attention_heads=hf.num_heads, patch_size=hf.patch_size,
                   spatial_merge_size=hf.spatial_merge_size, temporal_patch_size=hf.temporal_patch_size,
                   window_size=hf.window_size, fullatt_block_indexes=list(hf.fullatt_block_indexes),
                   out_hidden_size=hf.out_hidden_size, feature_layer=feature_layer)

    def to_hf(self) -> Any:
        return self.hf_vision_config()


class Qwen25VisionTower(torch.nn.Module):
    """HF Qwen2.5-VL vision tower (incl. its patch merger), replicated across tensor-parallel ranks.

    Input: ``pixel_values`` [n_patches_total, 3 * temporal * patch * patch] and ``image_grid_thw`` [n_images, 3],
    exactly as Qwen2.5-VL's image processor makes them. Output: [n_tokens_total, out_hidden_size].
    """

    def __init__(self, hf_config, params_dtype=torch.float32) -> None:
        super().__init__()
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

        hf_config._attn_implementation = "sdpa"
        self.model = Qwen2_5_VisionTransformerPretrainedModel._from_config(hf_config, torch_dtype=params_dtype)
        for p in self.model.parameters():
            # replicated weights: megatron's finalize_model_grads all-reduces these over TP (keeps replicas equal)
            p.average_gradients_across_tp_domain = True

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values, grid_thw=image_grid_thw)
        return out.pooler_output if hasattr(out, "pooler_output") else out
