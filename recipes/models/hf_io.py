"""HF checkpoints into the megatron VLM (recipes/models/hf_export.py writes them).

Import (:func:`load_hf_into`): from a LLaVA / LLaVA-OneVision directory (what ``ecomvlm export`` writes, or any
checkpoint of a supported combination), or from separate backbone directories (a vision checkpoint + an LLM
checkpoint; the projector then keeps its random init) - the paper's starting point. Works at any TP/PP: each rank
loads only its slice. Names and layouts come from each family's declarative mapping (recipes/models/mapping.py);
where the towers sit in a checkpoint is found from anchor tensors.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from ecomvlm.recipes.models.mapping import Direct, Rule, Tensors, find_prefix, prefixed, to_hf, to_megatron
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
        if cfg.encoder.uses_image_newline:
            rules.append(Direct("image_newline", hf=find_prefix(projector_sd, "image_newline", "image_newline") +
                                "image_newline"))
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
    """Full megatron state -> HF LlavaForConditionalGeneration / LlavaOnevisionForConditionalGeneration tensors
    (transformers 5 names)."""
    p = LLAVA_PREFIXES
    tower = p["vision"] + cfg.encoder.hf_export_subprefix
    rules = [*decoder_rules(cfg, p["text"], p["head"]), *encoder_rules(cfg, tower),
             *projector_rules(cfg, p["projector"])]
    if cfg.encoder.uses_image_newline:
        rules.append(Direct("image_newline", hf="model.image_newline"))
    return to_hf(rules, full)


LLAVA_TYPES = ("llava", "llava_onevision")


def check_llava_config(hf, where) -> None:
    """Refuse LLaVA options the composed model does not implement (importing them would silently change the model)."""
    if hf.model_type not in LLAVA_TYPES:
        raise ValueError(f"{where}: model_type {hf.model_type!r} is not a LLaVA checkpoint (expected one of "
                         f"{LLAVA_TYPES})")
    expected = {"projector_hidden_act": "gelu", "vision_feature_select_strategy": "full",
                "multimodal_projector_bias": True}
    if hf.model_type == "llava_onevision" and not re.fullmatch(r"anyres_max_\d+", hf.vision_aspect_ratio or ""):
        raise ValueError(f"{where}: vision_aspect_ratio={hf.vision_aspect_ratio!r} is not supported (anyres_max_N)")
    bad = {k: getattr(hf, k) for k, v in expected.items() if getattr(hf, k, v) != v}
    if not isinstance(hf.vision_feature_layer, int):
        bad["vision_feature_layer"] = hf.vision_feature_layer
    if bad:
        raise ValueError(f"{where}: LLaVA options {bad} are not supported (the composed model has an mlp2x_gelu "
                         f"projector with biases and exact GELU, reads every token of one vision layer: "
                         f"{expected}, vision_feature_layer=<one int>)")


def vlm_config_from_hf(llava_path=None, decoder_path=None, encoder_path=None, *, image_token_id: int,
                       feature_layer: int = -1, tp: int = 1) -> VLMConfig:
    """A VLMConfig whose dimensions come from HF config.json files (no weights read)."""
    if llava_path is not None:
        hf = read_hf_config(llava_path)
        check_llava_config(hf, llava_path)
        enc = encoder_config_from_hf(hf, feature_layer=hf.vision_feature_layer)
        if hf.model_type == "llava_onevision":
            enc = dataclasses.replace(enc, image_mode="anyres",
                                      grid_pinpoints=[list(p) for p in hf.image_grid_pinpoints],
                                      anyres_max_tiles=int(hf.vision_aspect_ratio.rsplit("_", 1)[1]))
        return VLMConfig(encoder=enc, decoder=decoder_config_from_hf(hf, tp=tp), image_token_id=image_token_id)
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
