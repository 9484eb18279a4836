"""What every vision-encoder family shares: its config fields and the hooks the VLM calls.

A family (siglip.py, qwen2_5_vit.py) subclasses :class:`EncoderConfig` and fills the hooks: how to build the tower
for this rank, how images become features, what the data pipeline must do to images (:meth:`image_spec`), the HF
config in both directions and the weight mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from omegaconf import MISSING

from ecomvlm.data_modules.preprocess import ImageSpec
from ecomvlm.recipes.models.mapping import Rule
from ecomvlm.recipes.models.parallel import ParallelConfig


@dataclass
class EncoderConfig:
    family: str = MISSING
    hf_path: str | None = None  # HF vision checkpoint to import weights from (dims checked against config.json)
    num_layers: int = 2  # layers in the checkpoint
    hidden_size: int = 64
    ffn_hidden_size: int = 128
    num_attention_heads: int = 4
    patch_size: int = 14
    norm_epsilon: float = 1e-6
    feature_layer: int = -1  # hidden_states index the LLM reads (-1: last layer, -2: drop the last layer)
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # views (SigLIP) or images (Qwen2.5-ViT) per tower forward; 0: all at once. Bounds the tower's activation memory
    # for items with many images (with data.max_image_tokens bounding the sample itself)
    views_per_forward: int = 0

    hf_model_types: ClassVar[tuple[str, ...]] = ()
    hf_anchor: ClassVar[str] = ""  # a tensor name that marks where the tower sits in an HF checkpoint
    # exported LLaVA checkpoints put the tower under model.vision_tower.<this> (the hub layout vLLM loads)
    hf_export_subprefix: ClassVar[str] = ""
    llava_vision_tower: ClassVar[bool] = False  # HF LLaVA can hold this tower (export as LlavaForConditionalGeneration)

    def __post_init__(self) -> None:
        if not -self.num_layers <= self.feature_layer <= -1:
            raise ValueError(f"model.encoder.feature_layer={self.feature_layer} must be in -{self.num_layers}..-1")

    @property
    def layers_used(self) -> int:
        """Encoder layers that feed the LLM (hidden_states[0] is the embedding output)."""
        return self.num_layers + 1 + self.feature_layer

    @property
    def output_size(self) -> int:
        """Width of the features the projector receives."""
        return self.hidden_size

    def check_parallel(self, tp: int) -> list[str]:
        """Problems of this tower at tensor-parallel size `tp` (empty: fine)."""
        return []

    def image_spec(self) -> ImageSpec:
        raise NotImplementedError

    def build(self, parallel: ParallelConfig, params_dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        raise NotImplementedError

    def features(self, tower: torch.nn.Module, pixel_values: torch.Tensor,
                 image_grid_thw: torch.Tensor | None) -> torch.Tensor:
        """Images -> [n_groups, tokens, output_size] (a group: one view of an image, or all images of a packed
        sequence)."""
        raise NotImplementedError

    @property
    def uses_image_newline(self) -> bool:
        """The model learns an image-newline embedding that :meth:`pack` places between rows of image features."""
        return False

    def pack(self, projected: torch.Tensor, image_sizes: torch.Tensor | None, image_tiles: torch.Tensor | None,
             newline: torch.Tensor | None) -> torch.Tensor:
        """Projected features of every view [n_groups, tokens, llm_hidden] -> the LLM tokens of all images in
        order [n_image_tokens, llm_hidden] (what the data pipeline made room for)."""
        return projected.reshape(-1, projected.shape[-1])

    def mapping(self) -> list[Rule]:
        """Tower module names <-> HF names below the vision model prefix."""
        raise NotImplementedError

    def param_count(self) -> int:
        raise NotImplementedError

    @classmethod
    def from_hf(cls, hf, feature_layer: int = -1) -> "EncoderConfig":
        raise NotImplementedError

    def to_hf(self) -> Any:
        raise NotImplementedError
