"""The model families, and a paper row's model as one object.

A paper table row is one ``model=<encoder>_<decoder>`` choice (e.g. ``model=siglip2_qwen3_8b``,
conf/model/*.yaml); its encoder and decoder groups hold the published dimensions and name their family's schema.
Adding a family: a module under recipes/models/decoders (or encoders) and one line below
(docs/ADDING_A_MODEL_FAMILY.md walks through it).

When a group sets ``hf_path``, the checkpoint's config.json is the truth: :func:`resolve` reads it and reports
every dimension that differs from the YAML.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from ecomvlm.recipes.models.decoders.gemma3 import Gemma3Config
from ecomvlm.recipes.models.decoders.gpt import DecoderConfig
from ecomvlm.recipes.models.decoders.llama import LlamaConfig
from ecomvlm.recipes.models.decoders.qwen3 import Qwen3Config
from ecomvlm.recipes.models.encoders.base import EncoderConfig
from ecomvlm.recipes.models.encoders.qwen2_5_vit import Qwen25ViTConfig
from ecomvlm.recipes.models.encoders.siglip import SiglipConfig
from ecomvlm.recipes.models.projector import ProjectorConfig

log = logging.getLogger(__name__)

DECODERS: dict[str, type[DecoderConfig]] = {
    "llama": LlamaConfig,
    "qwen3": Qwen3Config,
    "gemma3": Gemma3Config,
}
ENCODERS: dict[str, type[EncoderConfig]] = {
    "siglip": SiglipConfig,
    "qwen2_5_vit": Qwen25ViTConfig,
}


def decoder_class(family: str) -> type[DecoderConfig]:
    if family not in DECODERS:
        raise ValueError(f"unknown decoder family {family!r}; known: {sorted(DECODERS)}")
    return DECODERS[family]


def encoder_class(family: str) -> type[EncoderConfig]:
    if family not in ENCODERS:
        raise ValueError(f"unknown encoder family {family!r}; known: {sorted(ENCODERS)}")
    return ENCODERS[family]


@dataclass
class VLMConfig:
    """conf/model/<encoder>_<decoder>.yaml: a paper row's model."""

    name: str = "vlm"
    paper_rows: list[int] = field(default_factory=list)
    encoder: EncoderConfig = MISSING
    decoder: DecoderConfig = MISSING
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    image_token_id: int = -1  # id of "<image>" in the decoder's tokenizer; set when the tokenizer is known

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VLMConfig":
        def make(kind: str, family_class, sub: dict[str, Any]):
            klass = family_class(sub["family"])
            known = {f.name for f in dataclasses.fields(klass)}
            unknown = sorted(set(sub) - known)
            if unknown:
                raise ValueError(f"model.{kind} ({sub['family']}): unknown keys {unknown}; valid: {sorted(known)}")
            return klass(**sub)

        return cls(name=d.get("name", "vlm"), paper_rows=list(d.get("paper_rows", [])),
                   encoder=make("encoder", encoder_class, d["encoder"]),
                   decoder=make("decoder", decoder_class, d["decoder"]),
                   projector=ProjectorConfig(**d.get("projector", {})), image_token_id=int(d.get("image_token_id", -1)))


def _family_of(model_type: str, families: dict[str, type], kind: str):
    for klass in families.values():
        if model_type in klass.hf_model_types:
            return klass
    known = sorted(t for k in families.values() for t in k.hf_model_types)
    raise ValueError(f"{kind} model_type {model_type!r} is not supported; supported: {known}")


def decoder_config_from_hf(hf, tp: int = 1) -> DecoderConfig:
    """An HF LLM config (or a VLM's text_config) -> the matching family's DecoderConfig."""
    hf = getattr(hf, "text_config", hf)
    return _family_of(hf.model_type, DECODERS, "decoder").from_hf(hf, tp)


def encoder_config_from_hf(hf, feature_layer: int = -1) -> EncoderConfig:
    """An HF vision config (or a VLM's vision_config) -> the matching family's EncoderConfig."""
    hf = getattr(hf, "vision_config", hf)
    return _family_of(hf.model_type, ENCODERS, "vision").from_hf(hf, feature_layer)


def read_hf_config(path: str | Path):
    from transformers import AutoConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path / 'config.json'} not found: is {path} an HF checkpoint directory?")
    return AutoConfig.from_pretrained(path)


# settings of ours, not dimensions a checkpoint's config.json has an opinion on
_NOT_DIMS = {"hf_path", "chat_format", "vocab_size", "hf_vocab_size", "image_mean", "image_std", "min_pixels",
             "max_pixels", "image_mode", "anyres_max_tiles", "grid_pinpoints"}


def _from_checkpoint(ours, theirs, where: str):
    """The checkpoint's dims, keeping our non-dimension settings; every difference is reported."""
    keep = {f.name: getattr(ours, f.name) for f in dataclasses.fields(ours)
            if f.name in _NOT_DIMS - {"vocab_size", "hf_vocab_size"}}
    diffs = {f.name: (getattr(ours, f.name), getattr(theirs, f.name)) for f in dataclasses.fields(theirs)
             if f.name not in _NOT_DIMS and hasattr(ours, f.name) and getattr(ours, f.name) != getattr(theirs, f.name)}
    if diffs:
        log.warning("%s: config.json of the checkpoint differs from the YAML (using the checkpoint's): %s", where,
                    ", ".join(f"{k}: yaml={a} checkpoint={b}" for k, (a, b) in diffs.items()))
    return dataclasses.replace(theirs, **keep)


def resolve(model: VLMConfig, *, tp: int = 1, image_token_id: int | None = None) -> VLMConfig:
    """The model as it will be built: dims from ``hf_path`` checkpoints where set, vocabulary padded for TP."""
    enc, dec = model.encoder, model.decoder
    if enc.hf_path:
        enc = _from_checkpoint(enc, encoder_config_from_hf(read_hf_config(enc.hf_path), enc.feature_layer),
                               "model.encoder")
    if dec.hf_path:
        dec = _from_checkpoint(dec, decoder_config_from_hf(read_hf_config(dec.hf_path), tp=tp), "model.decoder")
    return dataclasses.replace(model, encoder=enc, decoder=dec.for_tp(tp),
                               image_token_id=model.image_token_id if image_token_id is None else image_token_id)


def conf_dir() -> Path:
    import importlib.resources as res

    return Path(str(res.files("ecomvlm.conf")))


def list_models() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))
