"""The published geometry of a conf/hf_model/<name>.yaml (its ``geometry``: the released config.json's architecture)
as a transformers config, the model built from it on the meta device, and the image tokens its processor settings
give. Nothing is downloaded: the dry-run plan and the tests check a recipe's layout and sizes against these numbers
before anyone fetches 50 GB of weights, and a run compares them with the checkpoint folder it reads.
"""

from __future__ import annotations

from typing import Any

# transformers' config class per family (Nemotron-Nano-VL's own class ships as remote code: its decoder is a Llama)
CONFIG_CLASSES = {"gemma3": "Gemma3Config", "qwen2_5_vl": "Qwen2_5_VLConfig", "qwen3_vl": "Qwen3VLConfig"}
MODEL_CLASSES = {"gemma3": "Gemma3ForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                 "qwen3_vl": "Qwen3VLForConditionalGeneration"}


def published_config(model) -> Any:
    """The transformers config of the published model (``model`` an HFVLMConfig); Nemotron-Nano-VL: its LlamaConfig
    decoder (the vision encoder and projector are counted by :func:`param_count`)."""
    import transformers

    g = _plain(model.geometry)
    if not g:
        raise ValueError(f"conf/hf_model/{model.name}.yaml has no geometry (the published config.json's architecture)")
    if model.family == "nemotron_nano_vl":
        return transformers.LlamaConfig(**g["llm_config"])
    return getattr(transformers, CONFIG_CLASSES[model.family])(**g)


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return dict(value) if isinstance(value, dict) else value


def _vit_params(hidden: int, intermediate: int, layers: int, patch: int, channels: int = 3) -> int:
    """A pre-norm ViT: patch embedding + per layer (qkv/out with biases, 2-layer MLP with biases, 2 LayerNorms)."""
    per_layer = 4 * (hidden * hidden + hidden) + 2 * hidden * intermediate + intermediate + hidden + 4 * hidden
    return channels * patch * patch * hidden + hidden + layers * per_layer


def param_count(model) -> int:
    """Parameters of the published model: built on the meta device from its geometry (Nemotron-Nano-VL: its Llama
    decoder on the meta device + the ViT-H encoder and MLP projector counted analytically)."""
    import torch
    import transformers

    config = published_config(model)
    with torch.device("meta"):
        if model.family == "nemotron_nano_vl":
            built = transformers.AutoModelForCausalLM.from_config(config)
        else:
            built = getattr(transformers, MODEL_CLASSES[model.family])(config)
    n = sum(p.numel() for p in built.parameters())
    if model.family == "nemotron_nano_vl":
        g, v = _plain(model.geometry), _plain(model.geometry)["vision_config"]
        n += _vit_params(v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"], v["patch_size"])
        shuffled = g["vit_hidden_size"] * int(round(1 / g["downsample_ratio"] ** 2))  # pixel shuffle: 4x channels
        proj, llm = g["projector_hidden_size"], g["llm_config"]["hidden_size"]
        n += 2 * shuffled + shuffled * proj + proj + proj * llm + llm  # LayerNorm, Linear, GELU, Linear
    return n


def image_tokens(model) -> int:
    """Tokens one image costs at most with the recipe's processor settings (Gemma3: per view, before pan & scan
    crops; Qwen: the ``longest_edge`` pixel cap over (patch x merge)^2; Nemotron: per 512 px tile)."""
    g = _plain(model.geometry)
    p = model.processor
    if model.family == "gemma3":
        return int(g["mm_tokens_per_image"])
    if model.family in ("qwen2_5_vl", "qwen3_vl"):
        v = g["vision_config"]
        size = _plain(p.kwargs).get("size") or _plain(p.published).get("size") or {}
        max_pixels = size.get("longest_edge") or _plain(p.published).get("max_pixels")
        return int(max_pixels) // (v["patch_size"] * v["spatial_merge_size"]) ** 2
    if model.family == "nemotron_nano_vl":
        return int((g["force_image_size"] // g["patch_size"]) ** 2 * g["downsample_ratio"] ** 2)
    raise ValueError(f"model.family={model.family}: no image token rule")


def checkpoint_differences(model, config) -> dict[str, tuple[Any, Any]]:
    """Published geometry vs a checkpoint folder's config (``AutoConfig``): ``{key: (published, folder)}`` of the
    architecture keys that differ (a tiny test model differs everywhere; a download of the release nowhere)."""
    g = _plain(model.geometry)
    out: dict[str, tuple[Any, Any]] = {}
    for section, values in g.items():
        if isinstance(values, dict):
            sub = getattr(config, section, None)
            if section == "llm_config" and sub is None:
                sub = getattr(config, "text_config", None)
            for k, v in values.items():
                got = getattr(sub, k, None) if sub is not None and not isinstance(sub, dict) else (sub or {}).get(k)
                if got != v:
                    out[f"{section}.{k}"] = (v, got)
        elif getattr(config, section, None) != values:
            out[section] = (values, getattr(config, section, None))
    return out
