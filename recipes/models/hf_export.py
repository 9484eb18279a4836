"""A full (gathered) megatron state -> an HF directory that transformers and vLLM load: the right class per model.

- SigLIP tower, ``image_mode: fixed``: ``LlavaForConditionalGeneration`` (+ LlavaProcessor, SigLIP image processor);
- SigLIP tower, ``image_mode: anyres``: ``LlavaOnevisionForConditionalGeneration`` (+ its processor, AnyRes grids);
- every other encoder x decoder (Qwen2.5-ViT x Llama/Qwen3/Gemma3): transformers has no class, so the export ships
  its model as remote code (recipes/models/remote_code/, copied into the directory; ``auto_map`` in config.json,
  loaded with ``trust_remote_code=True``), built from transformers' own Qwen2.5-VL vision tower and the decoder's
  HF class, with HF's tensor names so vLLM's Transformers backend serves it too.
Every directory carries the tokenizer (chat template), a processor, a generation config and ``ecomvlm_export.json``
(the model config it came from).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch

from ecomvlm.data_modules.chat_templates import IMAGE_TOKEN
from ecomvlm.recipes.models.hf_io import megatron_to_llava
from ecomvlm.recipes.models.mapping import Tensors
from ecomvlm.recipes.models.registry import VLMConfig

MAX_SHARD_BYTES = 4 * 1024**3
REMOTE_CODE = Path(__file__).parent / "remote_code"


def hf_kind(cfg: VLMConfig) -> str:
    """Which HF form a model is exported as: llava | llava_onevision | remote_code."""
    if cfg.encoder.llava_vision_tower:
        return "llava_onevision" if cfg.encoder.uses_image_newline else "llava"
    return "remote_code"


def save_safetensors(tensors: Tensors, out: Path) -> None:
    """model.safetensors, or shards of at most MAX_SHARD_BYTES with the HF index file."""
    from safetensors.torch import save_file

    shards: list[Tensors] = [{}]
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



def export_hf(full: Tensors, cfg: VLMConfig, tokenizer, out_dir: str | Path,
              dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write the HF directory of `cfg` (see the module docstring for which class) from a full megatron state."""
    from transformers import GenerationConfig

    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != cfg.image_token_id:
        raise ValueError(f"tokenizer maps {IMAGE_TOKEN!r} to {tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)}, but the "
                         f"model was trained with image_token_id={cfg.image_token_id}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kind = hf_kind(cfg)
    writer = {"llava": _llava, "llava_onevision": _llava_onevision, "remote_code": _remote_code}[kind]
    config, processor = writer(cfg, tokenizer)
    config.torch_dtype = dtype
    save_safetensors({k: v.to(dtype) for k, v in megatron_to_llava(full, cfg).items()}, out)
    config.save_pretrained(out)
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token) if tokenizer.eos_token else None
    GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, do_sample=False).save_pretrained(out)
    processor.save_pretrained(out)
    if kind == "remote_code":
        for f in REMOTE_CODE.glob("*_ecomvlm.py"):
            shutil.copy(f, out / f.name)
    (out / "ecomvlm_export.json").write_text(json.dumps({"hf_kind": kind, **dataclasses.asdict(cfg)}, indent=2,
                                                        default=str))
    return out


def _llava(cfg: VLMConfig, tokenizer):
    from transformers import LlavaConfig, LlavaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    enc = cfg.encoder
    config = LlavaConfig(vision_config=enc.to_hf(), text_config=cfg.decoder.to_hf(),
                         image_token_index=cfg.image_token_id, projector_hidden_act="gelu", vision_feature_layer=-1,
                         vision_feature_select_strategy="full", image_seq_length=enc.tokens_per_image,
                         tie_word_embeddings=cfg.decoder.tie_word_embeddings)
    config.architectures = ["LlavaForConditionalGeneration"]
    image_processor = SiglipImageProcessorPil(size={"height": enc.image_size, "width": enc.image_size},
                                              image_mean=list(enc.image_mean), image_std=list(enc.image_std))
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=enc.patch_size,
                               vision_feature_select_strategy="full", image_token=IMAGE_TOKEN,
                               num_additional_image_tokens=0, chat_template=tokenizer.chat_template)
    return config, processor


def _llava_onevision(cfg: VLMConfig, tokenizer):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    enc = cfg.encoder
    aspect = f"anyres_max_{enc.anyres_max_tiles}"
    tokenizer, video_id = _with_video_token(tokenizer, cfg.decoder.hf_vocab_size or cfg.decoder.vocab_size)
    config = LlavaOnevisionConfig(
        vision_config=enc.to_hf(), text_config=cfg.decoder.to_hf(), image_token_index=cfg.image_token_id,
        video_token_index=video_id,
        projector_hidden_act="gelu", vision_feature_layer=-1, vision_feature_select_strategy="full",
        image_grid_pinpoints=enc.pinpoints, vision_aspect_ratio=aspect, multimodal_projector_bias=True,
        tie_word_embeddings=cfg.decoder.tie_word_embeddings)
    config.architectures = ["LlavaOnevisionForConditionalGeneration"]
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": enc.image_size, "width": enc.image_size}, image_grid_pinpoints=enc.pinpoints,
        image_mean=list(enc.image_mean), image_std=list(enc.image_std))
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=LlavaOnevisionVideoProcessor(),
        num_image_tokens=enc.tokens_per_image, vision_feature_select_strategy="full", image_token=IMAGE_TOKEN,
        vision_aspect_ratio=aspect, chat_template=tokenizer.chat_template)
    return config, processor


def _with_video_token(tokenizer, vocab_rows: int):
    """(tokenizer, id) of a real ``<video>`` token for LLaVA-OneVision's config: vLLM profiles video inputs by
    replacing that token. Added (in a copy) when the tokenizer has none and the embedding has a spare row; otherwise
    the id past the vocabulary (no video: serve with ``--limit-mm-per-prompt '{"video": 0}'``)."""
    import tempfile

    from transformers import AutoTokenizer

    vid = tokenizer.convert_tokens_to_ids("<video>")
    if isinstance(vid, int) and vid != tokenizer.unk_token_id and vid is not None and vid < vocab_rows:
        return tokenizer, vid
    if len(tokenizer) >= vocab_rows:
        return tokenizer, vocab_rows
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        copy = AutoTokenizer.from_pretrained(tmp)
    copy.add_tokens(["<video>"], special_tokens=True)
    return copy, copy.convert_tokens_to_ids("<video>")


def _remote_code(cfg: VLMConfig, tokenizer):
    import tempfile

    from transformers import AutoTokenizer, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from ecomvlm.recipes.models.remote_code.configuration_ecomvlm import EcomVLMConfig

    enc = cfg.encoder
    config = EcomVLMConfig(vision_config=enc.to_hf(), text_config=cfg.decoder.to_hf(),
                           image_token_index=cfg.image_token_id, projector_hidden_act="gelu", vision_feature_layer=-1,
                           vision_feature_select_strategy="full", multimodal_projector_bias=True,
                           tie_word_embeddings=cfg.decoder.tie_word_embeddings)
    config.architectures = ["EcomVLMForConditionalGeneration"]
    config.auto_map = {"AutoConfig": "configuration_ecomvlm.EcomVLMConfig",
                       "AutoModel": "modeling_ecomvlm.EcomVLMModel",
                       "AutoModelForImageTextToText": "modeling_ecomvlm.EcomVLMForConditionalGeneration"}
    with tempfile.TemporaryDirectory() as tmp:  # Qwen2-VL's processor finds its placeholder as tokenizer.image_token
        tokenizer.save_pretrained(tmp)
        tokenizer = AutoTokenizer.from_pretrained(tmp, extra_special_tokens={"image_token": IMAGE_TOKEN})
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=enc.min_pixels, max_pixels=enc.max_pixels, patch_size=enc.patch_size,
        temporal_patch_size=enc.temporal_patch_size, merge_size=enc.spatial_merge_size,
        image_mean=list(enc.image_mean), image_std=list(enc.image_std))
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=tokenizer.chat_template)
    return config, processor
