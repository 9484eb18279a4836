"""Hydra configs (conf/model, conf/parallel, conf/precision) -> typed model objects, with validation.

A paper table row is one `model=<encoder>_<decoder>` choice (e.g. ``model=siglip2_qwen3_8b``); its encoder and
decoder groups hold the published dimensions. When a group sets ``hf_path``, the checkpoint's config.json is the
truth: :func:`vlm_config_from_cfg` reads it and reports every dimension that differs from the YAML.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from ecomvlm.config import compose  # noqa: F401 - re-exported for recipes and tests
from ecomvlm.recipes.models.decoder import DecoderConfig, te_available
from ecomvlm.recipes.models.encoder import EncoderConfig
from ecomvlm.recipes.models.parallel import ParallelConfig
from ecomvlm.recipes.models.vlm import ProjectorConfig, VLMConfig

log = logging.getLogger(__name__)

CONF_MODULE = "ecomvlm.conf"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
NON_MODEL_KEYS = {"hf_path", "chat_format"}


def _plain(cfg: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def _build(cls, d: dict[str, Any], where: str):
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields - NON_MODEL_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys: {sorted(fields | NON_MODEL_KEYS)}")
    return cls(**{k: (tuple(v) if k in ("image_mean", "image_std") else v) for k, v in d.items() if k in fields})


def _check_against_checkpoint(ours, theirs, where: str) -> None:
    diffs = {f.name: (getattr(ours, f.name), getattr(theirs, f.name)) for f in dataclasses.fields(ours)
             if f.name not in ("extra", "hf_vocab_size", "vocab_size", "image_mean", "image_std", "min_pixels",
                               "max_pixels") and getattr(ours, f.name) != getattr(theirs, f.name)}
    if diffs:
        log.warning("%s: config.json of the checkpoint differs from the YAML (using the checkpoint's): %s", where,
                    ", ".join(f"{k}: yaml={a} checkpoint={b}" for k, (a, b) in diffs.items()))


def vlm_config_from_cfg(model_cfg: Any, *, tp: int = 1, image_token_id: int = -1) -> VLMConfig:
    """conf/model/<combo>.yaml (composed) -> VLMConfig. Checkpoint config.json files win over YAML dims."""
    from ecomvlm.recipes.models.convert import decoder_config_from_hf, encoder_config_from_hf, read_hf_config

    d = _plain(model_cfg)
    for part in ("encoder", "decoder"):
        if part not in d:
            raise ValueError(f"model config {d.get('name', '?')!r} has no '{part}' group; compose it from "
                             f"conf/model/{part}/*.yaml")
    enc = _build(EncoderConfig, d["encoder"], "model.encoder")
    dec = _build(DecoderConfig, d["decoder"], "model.decoder")
    if d["encoder"].get("hf_path"):
        from_ckpt = encoder_config_from_hf(read_hf_config(d["encoder"]["hf_path"]), feature_layer=enc.feature_layer)
        _check_against_checkpoint(enc, from_ckpt, "model.encoder")
        enc = dataclasses.replace(from_ckpt, image_mean=enc.image_mean, image_std=enc.image_std,
                                  min_pixels=enc.min_pixels, max_pixels=enc.max_pixels)
    if d["decoder"].get("hf_path"):
        from_ckpt = decoder_config_from_hf(read_hf_config(d["decoder"]["hf_path"]), tp=tp)
        _check_against_checkpoint(dec, from_ckpt, "model.decoder")
        dec = from_ckpt
    if dec.vocab_size % tp:
        dec = dataclasses.replace(dec, hf_vocab_size=dec.hf_vocab_size or dec.vocab_size,
                                  vocab_size=-(-dec.vocab_size // tp) * tp)
    return VLMConfig(encoder=enc, decoder=dec, projector=_build(ProjectorConfig, d.get("projector", {}), "projector"),
                     image_token_id=image_token_id, name=d.get("name", "vlm"))


def parallel_from_cfg(cfg: Any) -> ParallelConfig:
    return _build(ParallelConfig, _plain(cfg), "parallel")


@dataclasses.dataclass
class PrecisionConfig:
    params_dtype: str = "fp32"
    fp8: str | None = None  # None | hybrid | e4m3
    fp8_recipe: str = "delayed"  # delayed | tensorwise
    fp8_margin: int = 0
    fp8_amax_history_len: int = 1024
    fp8_amax_compute_algo: str = "max"

    @property
    def dtype(self) -> torch.dtype:
        if self.params_dtype not in DTYPES:
            raise ValueError(f"precision.params_dtype={self.params_dtype!r}; choose one of {sorted(DTYPES)}")
        return DTYPES[self.params_dtype]

    def transformer_overrides(self) -> dict[str, Any]:
        """TransformerConfig fields for this precision. FP8 is refused where it cannot run."""
        if self.fp8 is None:
            return {}
        if self.fp8 not in ("hybrid", "e4m3"):
            raise ValueError(f"precision.fp8={self.fp8!r}; choose hybrid, e4m3 or null")
        if self.fp8_recipe not in ("delayed", "tensorwise"):
            raise ValueError(f"precision.fp8_recipe={self.fp8_recipe!r}; choose delayed or tensorwise")
        if not te_available():
            raise ValueError("precision.fp8 needs Transformer Engine and a CUDA GPU (Hopper or newer); use "
                             "precision=bf16 here")
        return dict(fp8=self.fp8, fp8_recipe=self.fp8_recipe, fp8_margin=self.fp8_margin,
                    fp8_amax_history_len=self.fp8_amax_history_len, fp8_amax_compute_algo=self.fp8_amax_compute_algo)

    @property
    def pad_to_multiple(self) -> int:
        """FP8 GEMMs need token counts divisible by 16: the data pipeline pads sequences to this."""
        return 16 if self.fp8 else 1


def precision_from_cfg(cfg: Any) -> PrecisionConfig:
    return _build(PrecisionConfig, _plain(cfg), "precision")


def list_models() -> list[str]:
    conf = Path(__file__).resolve().parents[2] / "conf" / "model"
    try:
        import importlib.resources as res

        conf = Path(str(res.files(CONF_MODULE))) / "model"
    except Exception:  # pragma: no cover - fallback to the source tree
        pass
    return sorted(p.stem for p in conf.glob("*.yaml"))


def decoder_param_count(dec: DecoderConfig) -> int:
    """Analytic parameter count of a decoder (embeddings + layers + final norm + head if untied)."""
    hd = dec.kv_channels or dec.hidden_size // dec.num_attention_heads
    h, q, kv = dec.hidden_size, dec.num_attention_heads * hd, dec.num_query_groups * hd
    attn = h * q + 2 * h * kv + q * h + (2 * hd if dec.qk_layernorm else 0)
    norms = (4 if dec.family == "gemma3" else 2) * h
    layer = attn + 3 * h * dec.ffn_hidden_size + norms
    vocab = dec.hf_vocab_size or dec.vocab_size
    return vocab * h * (1 if dec.tie_word_embeddings else 2) + dec.num_layers * layer + h


def encoder_param_count(enc: EncoderConfig) -> int:
    """SigLIP-family encoder parameters actually built (layers up to feature_layer, no post-LN / pooling head)."""
    h, f = enc.hidden_size, enc.ffn_hidden_size
    layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h
    patches = (enc.image_size // enc.patch_size) ** 2
    return 3 * enc.patch_size ** 2 * h + h + patches * h + enc.layers_used * layer
