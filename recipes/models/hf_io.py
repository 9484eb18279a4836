"""HF directories in and out of the megatron VLM.

Import (:func:`load_hf_into`): from a LLaVA-format directory (what :func:`export_llava_hf` writes, or any
``LlavaForConditionalGeneration`` checkpoint of a supported combo), or from separate backbone directories (a
vision checkpoint + an LLM checkpoint; the projector then keeps its random init) - the paper's starting point.
Works at any TP/PP: each rank loads only its slice. Names and layouts come from each family's declarative
mapping (recipes/models/mapping.py); where the towers sit in a checkpoint is found from anchor tensors.

Export (:func:`export_llava_hf`): a full megatron state -> an HF ``LlavaForConditionalGeneration`` directory
(safetensors, config, tokenizer with chat template, SigLIP image processor, LlavaProcessor) that
``transformers`` loads and ``vllm serve`` accepts.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ecomvlm.data_modules.chat_templates import IMAGE_TOKEN
from ecomvlm.recipes.models.mapping import Rule, Tensors, find_prefix, prefixed, to_hf, to_megatron
from ecomvlm.recipes.models.registry import (
    VLMConfig,
    decoder_config_from_hf,
    encoder_config_from_hf,
    read_hf_config,
)
from ecomvlm.recipes.models.sharding import LM, PROJ, VIS, shard_into

MAX_SHARD_BYTES = 4 * 1024**3
LLAVA_PREFIXES = {"text": "model.language_model.", "head": "", "vision": "model.vision_tower.",
                  "projector": "model.multi_modal_projector."}


# ---------------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------------
def read_hf_state_dict(path: str | Path) -> Tensors:
    """All tensors of an HF checkpoint directory (model.safetensors or a sharded index)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"HF checkpoint directory {path} does not exist")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        found = sorted(p.name for p in path.iterdir())
        hint = " (.bin pickles are not loaded for safety: convert them with `transformers` to safetensors)" if any(
            f.endswith(".bin") for f in found) else ""
        raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}{hint}; found {found}")
    out: Tensors = {}
    for f in files:
        out.update(load_file(str(path / f)))
    return out


# ---------------------------------------------------------------------------------------------------------
# the VLM's mapping: the families' rules under their prefixes
# ---------------------------------------------------------------------------------------------------------
def decoder_rules(cfg: VLMConfig, body: str, head: str) -> list[Rule]:
    return prefixed(cfg.decoder.mapping(), megatron=LM, body=body, root=head)


def encoder_rules(cfg: VLMConfig, body: str) -> list[Rule]:
    return prefixed(cfg.encoder.mapping(), megatron=VIS, body=body)


def projector_rules(cfg: VLMConfig, body: str) -> list[Rule]:
    return prefixed(cfg.projector.mapping(), megatron=PROJ, body=body)


def _found_prefixes(cfg: VLMConfig, decoder_sd: Tensors | None, encoder_sd: Tensors | None,
                    projector_sd: Tensors | None) -> list[Rule]:
    rules: list[Rule] = []
    if decoder_sd is not None:
        head = "" if cfg.decoder.tie_word_embeddings else find_prefix(decoder_sd, "lm_head.weight", "LM head")
        rules += decoder_rules(cfg, find_prefix(decoder_sd, "embed_tokens.weight", "decoder embeddings"), head)
    if encoder_sd is not None:
        rules += encoder_rules(cfg, find_prefix(encoder_sd, cfg.encoder.hf_anchor, f"{cfg.encoder.family} tower"))
    if projector_sd is not None:
        body = find_prefix(projector_sd, "multi_modal_projector.linear_1.weight", "LLaVA projector")
        rules += projector_rules(cfg, body + "multi_modal_projector.")
    return rules


def hf_to_megatron(cfg: VLMConfig, decoder_sd: Tensors, encoder_sd: Tensors | None = None,
                   projector_sd: Tensors | None = None) -> Tensors:
    """Full megatron state of an EcomVLM from HF tensors. A LLaVA checkpoint passes the same dict three times;
    starting from backbones, pass the LLM's and the encoder's tensors and no projector (it stays random)."""
    out: Tensors = {}
    for rules, sd in ((_found_prefixes(cfg, decoder_sd, None, None), decoder_sd),
                      (_found_prefixes(cfg, None, encoder_sd, None), encoder_sd),
                      (_found_prefixes(cfg, None, None, projector_sd), projector_sd)):
        if sd is not None:
            out.update(to_megatron(rules, sd))
    return out


def megatron_to_llava(full: Tensors, cfg: VLMConfig) -> Tensors:
    """Full megatron state -> HF LlavaForConditionalGeneration tensors (transformers 5 names)."""
    p = LLAVA_PREFIXES
    rules = [*decoder_rules(cfg, p["text"], p["head"]), *encoder_rules(cfg, p["vision"]),
             *projector_rules(cfg, p["projector"])]
    return to_hf(rules, full)


def vlm_config_from_hf(llava_path=None, decoder_path=None, encoder_path=None, *, image_token_id: int,
                       feature_layer: int = -1, tp: int = 1) -> VLMConfig:
    """A VLMConfig whose dimensions come from HF config.json files (no weights read)."""
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
        full = hf_to_megatron(cfg, sd, sd, sd)
    else:
        if decoder_path is None:
            raise ValueError("load_hf_into needs llava_path, or decoder_path (+ encoder_path)")
        enc_sd = read_hf_state_dict(encoder_path) if encoder_path is not None else None
        full = hf_to_megatron(cfg, read_hf_state_dict(decoder_path), enc_sd, None)
    return shard_into(model, full)


# ---------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------
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


def check_exportable(cfg: VLMConfig) -> None:
    """Fail before any weight is read if this combination has no HF LLaVA form."""
    if not cfg.encoder.llava_vision_tower:
        raise NotImplementedError(
            f"HF export of {cfg.encoder.family} x {cfg.decoder.family} is not available: transformers pairs the "
            f"Qwen2.5-VL vision tower only with Qwen2 decoders (Qwen2_5_VLForConditionalGeneration), and LLaVA "
            f"takes SigLIP/CLIP towers. Use a SigLIP-family encoder for an exportable model.")


def export_llava_hf(full: Tensors, cfg: VLMConfig, tokenizer, out_dir: str | Path,
                    dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write an HF LlavaForConditionalGeneration directory from a full (gathered) megatron state."""
    from transformers import GenerationConfig, LlavaConfig, LlavaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    check_exportable(cfg)
    enc = cfg.encoder
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != cfg.image_token_id:
        raise ValueError(f"tokenizer maps {IMAGE_TOKEN!r} to {tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)}, but the "
                         f"model was trained with image_token_id={cfg.image_token_id}")
    llava = LlavaConfig(vision_config=enc.to_hf(), text_config=cfg.decoder.to_hf(),
                        image_token_index=cfg.image_token_id, projector_hidden_act="gelu", vision_feature_layer=-1,
                        vision_feature_select_strategy="full", image_seq_length=enc.tokens_per_image,
                        tie_word_embeddings=cfg.decoder.tie_word_embeddings)
    llava.architectures = ["LlavaForConditionalGeneration"]
    llava.torch_dtype = dtype
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors({k: v.to(dtype) for k, v in megatron_to_llava(full, cfg).items()}, out)
    llava.save_pretrained(out)
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token) if tokenizer.eos_token else None
    GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, do_sample=False).save_pretrained(out)
    image_processor = SiglipImageProcessorPil(size={"height": enc.image_size, "width": enc.image_size},
                                              image_mean=list(enc.image_mean), image_std=list(enc.image_std))
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=enc.patch_size,
                               vision_feature_select_strategy="full", image_token=IMAGE_TOKEN,
                               num_additional_image_tokens=0, chat_template=tokenizer.chat_template)
    processor.save_pretrained(out)
    (out / "ecomvlm_export.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))
    return out
