"""SigLIP / SigLIP2-SO400M (fixed resolution; the fixed-resolution SigLIP2 checkpoints use the SigLIP architecture)
as megatron-core's CLIPViTModel (siglip subtype), tensor-parallel sharded.

The LLM reads ``hidden_states[feature_layer]`` *before* the post-LayerNorm, so the post-LN is not built and only
the layers up to ``feature_layer`` are (LLaVA-OneVision drops SigLIP's last layer: feature_layer=-2).
"""

from __future__ import annotations

import math
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

IMAGE_MODES = ("fixed", "anyres")


@dataclass
class SiglipConfig(EncoderConfig):
    family: str = "siglip"
    image_size: int = 384
    # fixed: one image_size view per image | anyres: LLaVA-OneVision's AnyRes (anyres_max_<anyres_max_tiles>): a lone
    # image is seen as a base view + a grid of tiles (unpadded, newline-separated rows, reduced past the max); each
    # image of a multi-image sample as one padded-square view
    image_mode: str = "fixed"
    anyres_max_tiles: int = 9
    grid_pinpoints: list[list[int]] | None = None  # (height, width) grids; None: 1x1 ... 6x6 tiles of image_size

    hf_model_types: ClassVar[tuple[str, ...]] = ("siglip_vision_model", "siglip")
    hf_anchor: ClassVar[str] = "embeddings.patch_embedding.weight"
    hf_export_subprefix: ClassVar[str] = "vision_model."  # SiglipVisionModel's own module name
    llava_vision_tower: ClassVar[bool] = True

    @property
    def grid_size(self) -> int:
        """Pixels the patches cover: HF's stride-`patch` convolution leaves the last image_size % patch pixels
        unused (so-400m 384/14: a 27 x 27 grid over 378 px)."""
        return self.image_size // self.patch_size * self.patch_size

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_mode not in IMAGE_MODES:
            raise ValueError(f"model.encoder.image_mode={self.image_mode!r}; choose one of {IMAGE_MODES}")
        bad = [p for p in self.pinpoints if len(p) != 2 or p[0] % self.image_size or p[1] % self.image_size]
        if bad:
            raise ValueError(f"model.encoder.grid_pinpoints {bad} must be (height, width) multiples of image_size "
                             f"{self.image_size}")

    @property
    def pinpoints(self) -> list[list[int]]:
        from ecomvlm.data_modules.preprocess import default_pinpoints

        return [list(p) for p in (self.grid_pinpoints or default_pinpoints(self.image_size))]

    @property
    def uses_image_newline(self) -> bool:
        return self.image_mode == "anyres"

    def check_parallel(self, tp: int) -> list[str]:
        if self.num_attention_heads % tp:
            return [f"encoder num_attention_heads={self.num_attention_heads} is not divisible by TP={tp}"]
        return []

    def image_spec(self) -> ImageSpec:
        return ImageSpec(mode=self.image_mode, patch_size=self.patch_size, image_mean=tuple(self.image_mean),
                         image_std=tuple(self.image_std), image_size=self.image_size,
                         grid_pinpoints=tuple(tuple(p) for p in self.pinpoints), max_tiles=self.anyres_max_tiles)

    def transformer_config(self, parallel: ParallelConfig, params_dtype=torch.float32):
        from megatron.core.transformer.transformer_config import TransformerConfig

        return TransformerConfig(
            num_layers=self.layers_used, hidden_size=self.hidden_size, ffn_hidden_size=self.ffn_hidden_size,
            num_attention_heads=self.num_attention_heads, normalization="LayerNorm",
            layernorm_epsilon=self.norm_epsilon, add_bias_linear=True, add_qkv_bias=True, gated_linear_unit=False,
            activation_func=partial(F.gelu, approximate="tanh"),  # SigLIP's gelu_pytorch_tanh
            tensor_model_parallel_size=parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=1,  # the encoder lives on the first pipeline stage only
            # never sequence-parallel: its 729-token sequences do not split over TP ranks; the weights stay TP-sharded
            sequence_parallel=False,
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
            from ecomvlm.recipes.models.sdpa_attention import use_fused_attention

            spec, norm = use_fused_attention(get_vit_layer_with_local_spec()), WrappedTorchNorm
        model = CLIPViTModel(self.transformer_config(parallel, params_dtype), spec, ln_pre_impl=norm,
                             ln_post_impl=norm, add_class_token=False, class_token_len=0, patch_dim=self.patch_size,
                             img_h=self.grid_size, img_w=self.grid_size, model_subtype="siglip")
        model.ln_post = None  # the LLM reads the last used layer's output before SigLIP's post-LayerNorm
        return model

    def features(self, tower, pixel_values, image_grid_thw=None):
        g = self.grid_size  # the same computation as HF's convolution over the full image_size input
        pixels = pixel_values[..., :g, :g]
        chunk = self.views_per_forward or pixels.shape[0]
        return torch.cat([tower(p) for p in pixels.split(chunk)])  # [n_views, tokens, hidden]

    def pack(self, projected, image_sizes, image_tiles, newline):
        """anyres: transformers' LlavaOnevision packing, view by view (base view first, then the unpadded grid with a
        newline after each row, bilinearly reduced past anyres_max_tiles; a single view gets one newline)."""
        if self.image_mode != "anyres":
            return super().pack(projected, image_sizes, image_tiles, newline)
        from transformers.models.llava_onevision.modeling_llava_onevision import (
            get_anyres_image_grid_shape,
            unpad_image,
        )

        side, out = self.image_size // self.patch_size, []
        for views, size in zip(projected.split(image_tiles.tolist()), image_sizes.tolist()):
            if views.shape[0] == 1:
                out += [views[0], newline[None].to(views.dtype)]
                continue
            rows, cols = get_anyres_image_grid_shape(size, self.pinpoints, self.image_size)
            grid = views[1:].view(rows, cols, side, side, -1).permute(4, 0, 2, 1, 3).contiguous()
            grid = unpad_image(grid.flatten(1, 2).flatten(2, 3), size)  # [hidden, h, w]
            _, h, w = grid.shape
            ratio = math.sqrt(h * w / (self.anyres_max_tiles * side ** 2))
            if ratio > 1.1:
                grid = F.interpolate(grid[None], [int(h // ratio), int(w // ratio)], mode="bilinear")[0]
            grid = torch.cat([grid, newline[:, None, None].expand(*grid.shape[:-1], 1).to(grid.dtype)], dim=-1)
            out += [views[0], grid.flatten(1, 2).transpose(0, 1)]
        return torch.cat(out)

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
