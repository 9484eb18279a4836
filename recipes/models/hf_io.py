"""HF directories in and out of the megatron VLM.

Import (:func:`load_hf_into`): from a LLaVA-format directory (what :func:`export_llava_hf` writes, or any
``LlavaForConditionalGeneration`` checkpoint of a supported combo), or from separate backbone directories (a
SigLIP/SigLIP2 vision checkpoint + an LLM checkpoint; the projector then keeps its random init) - the paper's
starting point. Works at any TP/PP: each rank loads only its slice.

Export (:func:`export_llava_hf`): a full megatron state -> an HF ``LlavaForConditionalGeneration`` directory
(safetensors, config, tokenizer with chat template, SigLIP image processor, LlavaProcessor) that
``transformers`` loads and ``vllm serve`` accepts (vLLM's Llava implementation takes SigLIP towers and any
registered text architecture). Qwen2.5-ViT combinations have no HF/vLLM class (HF's Qwen2.5-VL pairs that ViT
only with Qwen2 decoders), so exporting them raises with that explanation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ecomvlm.recipes.models.convert import (
    decoder_config_from_hf,
    encoder_config_from_hf,
    hf_to_mcore_vlm,
    mcore_vlm_to_hf_llava,
    read_hf_config,
    read_hf_state_dict,
    shard_into,
)
from ecomvlm.recipes.models.decoder import DecoderConfig
from ecomvlm.recipes.models.encoder import EncoderConfig

MAX_SHARD_BYTES = 4 * 1024**3


def vlm_config_from_hf(llava_path=None, decoder_path=None, encoder_path=None, *, image_token_id: int,
                       feature_layer: int = -1, tp: int = 1):
    """Build a VLMConfig whose dimensions come from HF config.json files (no weights read)."""
    from ecomvlm.recipes.models.vlm import VLMConfig

    if llava_path is not None:
        hf = read_hf_config(llava_path)
        return VLMConfig(encoder=encoder_config_from_hf(hf, feature_layer=getattr(hf, "vision_feature_layer", -1)),
                         decoder=decoder_config_from_hf(hf, tp=tp), image_token_id=image_token_id)
    if decoder_path is None or encoder_path is None:
        raise ValueError("give either llava_path, or both decoder_path and encoder_path")
    return VLMConfig(encoder=encoder_config_from_hf(read_hf_config(encoder_path), feature_layer=feature_layer),
                     decoder=decoder_config_from_hf(read_hf_config(decoder_path), tp=tp), image_token_id=image_token_id)


def load_hf_into(model, *, llava_path=None, decoder_path=None, encoder_path=None) -> list[str]:
    """Load HF weights into this rank's model stage. Returns the tensors left at their init (the projector when
    starting from backbones). Raises if the checkpoint does not fit the model's config."""
    cfg = model.cfg
    if llava_path is not None:
        sd = read_hf_state_dict(llava_path)
        full = hf_to_mcore_vlm(cfg, sd, sd, sd)
    else:
        if decoder_path is None:
            raise ValueError("load_hf_into needs llava_path, or decoder_path (+ encoder_path)")
        enc_sd = read_hf_state_dict(encoder_path) if encoder_path is not None else None
        full = hf_to_mcore_vlm(cfg, read_hf_state_dict(decoder_path), enc_sd, None)
    return shard_into(model, full)


def hf_text_config(dec: DecoderConfig):
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen3Config

    if dec.family == "gemma3":
        full = ({"rope_type": "linear", "rope_theta": dec.rotary_base, "factor": dec.rope_linear_factor}
                if dec.rope_linear_factor else {"rope_type": "default", "rope_theta": dec.rotary_base})
        cfg = Gemma3TextConfig(
            vocab_size=dec.hf_vocab_size or dec.vocab_size, hidden_size=dec.hidden_size,
            intermediate_size=dec.ffn_hidden_size, num_hidden_layers=dec.num_layers,
            num_attention_heads=dec.num_attention_heads, num_key_value_heads=dec.num_query_groups,
            head_dim=dec.kv_channels, max_position_embeddings=dec.max_position_embeddings,
            rms_norm_eps=dec.norm_epsilon, sliding_window=dec.sliding_window,
            layer_types=["sliding_attention" if s else "full_attention" for s in dec.sliding_layers],
            rope_parameters={"full_attention": full, "sliding_attention": {
                "rope_type": "default", "rope_theta": dec.local_rotary_base}},
            query_pre_attn_scalar=int(dec.query_pre_attn_scalar), tie_word_embeddings=dec.tie_word_embeddings,
            hidden_activation="gelu_pytorch_tanh")
        cfg.architectures = ["Gemma3ForCausalLM"]
        return cfg

    common = dict(vocab_size=dec.hf_vocab_size or dec.vocab_size, hidden_size=dec.hidden_size,
                  intermediate_size=dec.ffn_hidden_size, num_hidden_layers=dec.num_layers,
                  num_attention_heads=dec.num_attention_heads, num_key_value_heads=dec.num_query_groups,
                  head_dim=dec.kv_channels or dec.hidden_size // dec.num_attention_heads,
                  max_position_embeddings=dec.max_position_embeddings, rms_norm_eps=dec.norm_epsilon,
                  tie_word_embeddings=dec.tie_word_embeddings)
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": dec.rotary_base}
    if dec.rope_scaling_factor is not None:
        rope = {"rope_type": "llama3", "rope_theta": dec.rotary_base, "factor": dec.rope_scaling_factor,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    if dec.family == "llama":
        cfg = LlamaConfig(**common, rope_parameters=rope, attention_bias=False, mlp_bias=False)
        cfg.architectures = ["LlamaForCausalLM"]
    elif dec.family == "qwen3":
        cfg = Qwen3Config(**common, rope_parameters=rope, attention_bias=False)
        cfg.architectures = ["Qwen3ForCausalLM"]
    else:
        raise ValueError(f"HF export of decoder family {dec.family!r} is not supported yet")
    return cfg


def hf_vision_config(enc: EncoderConfig):
    from transformers import SiglipVisionConfig

    if enc.family != "siglip":
        raise NotImplementedError(
            "HF/vLLM export of Qwen2.5-ViT combinations is not available: transformers and vLLM only pair the "
            "Qwen2.5-VL vision tower with Qwen2 decoders (Qwen2_5_VLForConditionalGeneration). Keep these models in "
            "megatron format for evaluation with the megatron backend, or use a SigLIP-family encoder.")
    return SiglipVisionConfig(hidden_size=enc.hidden_size, intermediate_size=enc.ffn_hidden_size,
                              num_hidden_layers=enc.layers_used, num_attention_heads=enc.num_attention_heads,
                              image_size=enc.image_size, patch_size=enc.patch_size, layer_norm_eps=enc.norm_epsilon,
                              hidden_act="gelu_pytorch_tanh", vision_use_head=False)


def _save_safetensors(tensors: dict[str, torch.Tensor], out: Path) -> None:
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def export_llava_hf(full: dict[str, torch.Tensor], cfg, tokenizer, out_dir: str | Path,
                    dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write an HF LlavaForConditionalGeneration directory from a full (gathered) megatron state."""
    from transformers import GenerationConfig, LlavaConfig, LlavaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    vision = hf_vision_config(cfg.encoder)
    text = hf_text_config(cfg.decoder)
    image_token = "<image>"
    if tokenizer.convert_tokens_to_ids(image_token) != cfg.image_token_id:
        raise ValueError(f"tokenizer maps {image_token!r} to {tokenizer.convert_tokens_to_ids(image_token)}, but the "
                         f"model was trained with image_token_id={cfg.image_token_id}")
    llava = LlavaConfig(vision_config=vision, text_config=text, image_token_index=cfg.image_token_id,
                        projector_hidden_act="gelu", vision_feature_layer=-1, vision_feature_select_strategy="full",
                        image_seq_length=cfg.encoder.tokens_per_image, tie_word_embeddings=cfg.decoder.tie_word_embeddings)
    llava.architectures = ["LlavaForConditionalGeneration"]
    llava.torch_dtype = dtype
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(dtype) for k, v in mcore_vlm_to_hf_llava(full, cfg).items()}
    _save_safetensors(tensors, out)
    llava.save_pretrained(out)
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token) if tokenizer.eos_token else None
    GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, do_sample=False).save_pretrained(out)
    enc = cfg.encoder
    image_processor = SiglipImageProcessorPil(size={"height": enc.image_size, "width": enc.image_size},
                                              image_mean=list(enc.image_mean), image_std=list(enc.image_std))
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=enc.patch_size,
                               vision_feature_select_strategy="full", image_token=image_token,
                               num_additional_image_tokens=0, chat_template=tokenizer.chat_template)
    processor.save_pretrained(out)
    (out / "ecomvlm_export.json").write_text(json.dumps(
        {"encoder": vars(enc) | {"image_mean": list(enc.image_mean), "image_std": list(enc.image_std)},
         "decoder": vars(cfg.decoder), "image_token_id": cfg.image_token_id}, indent=2, default=str))
    return out
