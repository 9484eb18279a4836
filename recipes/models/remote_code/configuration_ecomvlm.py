"""EcomVLM: a vision encoder transformers has no VLM class for (Qwen2.5-VL's vision tower), the mlp2x_gelu projector
and any HF text decoder. Shipped inside `ecomvlm export` directories as transformers remote code; it imports only
transformers (load with trust_remote_code=True)."""

from transformers import AutoConfig, LlavaConfig
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig


class EcomVLMConfig(LlavaConfig):
    model_type = "ecomvlm"
    sub_configs = {"text_config": AutoConfig, "vision_config": Qwen2_5_VLVisionConfig}

    def __init__(self, vision_config=None, **kwargs):
        if isinstance(vision_config, dict):
            vision_config = Qwen2_5_VLVisionConfig(**{k: v for k, v in vision_config.items() if k != "model_type"})
        super().__init__(vision_config=vision_config or Qwen2_5_VLVisionConfig(), **kwargs)
