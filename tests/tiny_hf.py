"""Tiny HF configs of every family the paper uses, with the *architectural features* of the real ones
(GQA, RMSNorm, SwiGLU, RoPE; Qwen3/Gemma3 QK-norm; Gemma3 sliding window + scaled embeddings; SigLIP ViT, which is
also the architecture of the fixed-resolution SigLIP2 checkpoints; Qwen2.5-ViT window attention + 2D RoPE + patch
merger) but toy dimensions.

Random weights built from these stand in for real checkpoints in tests (nothing is downloaded).
Dimensions are chosen so TP=2 divides heads, KV groups and vocab.
"""

from __future__ import annotations

from typing import Any

TINY_VOCAB = 512


def tiny_hf_configs(vocab_size: int = TINY_VOCAB) -> dict[str, Any]:
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen3Config, SiglipVisionConfig
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    return {
        "llama": LlamaConfig(**common, rms_norm_eps=1e-5, rope_theta=500000.0),
        "qwen3": Qwen3Config(**common, head_dim=16, rms_norm_eps=1e-6, rope_theta=1000000.0),
        "gemma3": Gemma3TextConfig(**{**common, "tie_word_embeddings": True}, head_dim=16, rms_norm_eps=1e-6,
                                   sliding_window=16, query_pre_attn_scalar=16),
        "siglip": SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, image_size=32, patch_size=8),
        "qwen2_5_vit": Qwen2_5_VLVisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=4,
                                              out_hidden_size=64, patch_size=8, spatial_merge_size=2,
                                              temporal_patch_size=2, window_size=32, fullatt_block_indexes=[1]),
    }
