"""HF checkpoints <-> megatron-core VLM state, at any TP/PP.

Three layers, each testable alone:
1. name/layout maps between HF tensors and the *full* (unsharded) megatron state of :class:`EcomVLM`
   (decoders: llama, qwen3; encoders: siglip; projector: LLaVA mlp2x_gelu; qwen2_5_vit is an HF module inside
   the model, so its names pass through unchanged);
2. :func:`shard_into` slices a full state into this rank's TP shard / PP stage and loads it;
   :func:`gather_full_state` does the inverse (all-gather over TP, object-gather over PP);
3. readers/writers for HF directories (safetensors only; ``.bin`` pickles are refused).

Megatron layouts handled here: fused QKV is grouped per KV head ``[q_g0.., k_g0, v_g0, q_g1.., ...]``;
gated MLP fc1 is ``[gate; up]`` *per TP shard*; vocab rows may be padded to a multiple of TP.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ecomvlm.recipes.models.decoder import DecoderConfig
from ecomvlm.recipes.models.encoder import EncoderConfig

SUPPORTED_DECODERS = ("llama", "qwen3", "gemma3")
LM = "language_model."
VIS = "vision_model."
PROJ = "vision_projection.encoder."


# ---------------------------------------------------------------------------------------------------------
# HF directories
# ---------------------------------------------------------------------------------------------------------
def read_hf_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
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
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(path / f)))
    return out


def read_hf_config(path: str | Path):
    from transformers import AutoConfig

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path / 'config.json'} not found: is {path} an HF checkpoint directory?")
    return AutoConfig.from_pretrained(path)


# ---------------------------------------------------------------------------------------------------------
# HF configs -> our configs
# ---------------------------------------------------------------------------------------------------------
def decoder_config_from_hf(hf, tp: int = 1) -> DecoderConfig:
    """A text config (LlamaConfig, Qwen3Config, or the text_config of a VLM) -> DecoderConfig."""
    hf = getattr(hf, "text_config", hf)
    family = {"llama": "llama", "qwen3": "qwen3", "gemma3_text": "gemma3"}.get(hf.model_type)
    if family is None:
        raise ValueError(f"decoder model_type {hf.model_type!r} is not supported for import yet; supported: "
                         f"{SUPPORTED_DECODERS}")
    if family == "gemma3":
        return _gemma3_config_from_hf(hf, tp)
    rope = getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {}
    theta = rope.get("rope_theta", getattr(hf, "rope_theta", 10000.0))
    factor = None
    if rope.get("rope_type", rope.get("type", "default")) == "llama3":
        # megatron-core implements Llama-3.1 scaling with these constants only
        expect = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        bad = {k: rope.get(k) for k, v in expect.items() if float(rope.get(k, v)) != v}
        if bad:
            raise ValueError(f"llama3 RoPE scaling with {bad} is not supported by megatron-core (expects {expect})")
        factor = float(rope["factor"])
    elif rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise ValueError(f"RoPE type {rope.get('rope_type')!r} is not supported")
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    vocab = hf.vocab_size
    padded = -(-vocab // tp) * tp
    return DecoderConfig(
        family=family, num_layers=hf.num_hidden_layers, hidden_size=hf.hidden_size,
        ffn_hidden_size=hf.intermediate_size, num_attention_heads=hf.num_attention_heads,
        num_query_groups=hf.num_key_value_heads or hf.num_attention_heads,
        kv_channels=head_dim, vocab_size=padded, hf_vocab_size=vocab,
        max_position_embeddings=hf.max_position_embeddings, rotary_base=float(theta), norm_epsilon=hf.rms_norm_eps,
        qk_layernorm=family == "qwen3", tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        rope_scaling_factor=factor,
    )


def _gemma3_config_from_hf(hf, tp: int) -> DecoderConfig:
    rope = hf.rope_parameters
    full, local = rope["full_attention"], rope["sliding_attention"]
    linear = None
    if full.get("rope_type", "default") == "linear":
        linear = float(full["factor"])
    elif full.get("rope_type", "default") != "default":
        raise ValueError(f"Gemma3 global RoPE type {full.get('rope_type')!r} is not supported (default | linear)")
    if local.get("rope_type", "default") != "default":
        raise ValueError("Gemma3 sliding-window RoPE must be the default type")
    for cap in ("final_logit_softcapping", "attn_logit_softcapping"):
        if getattr(hf, cap, None):
            raise ValueError(f"Gemma3 {cap}={getattr(hf, cap)} is not supported (Gemma3 checkpoints set None)")
    if getattr(hf, "hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise ValueError(f"Gemma3 hidden_activation {hf.hidden_activation!r} is not supported")
    vocab = hf.vocab_size
    return DecoderConfig(
        family="gemma3", num_layers=hf.num_hidden_layers, hidden_size=hf.hidden_size,
        ffn_hidden_size=hf.intermediate_size, num_attention_heads=hf.num_attention_heads,
        num_query_groups=hf.num_key_value_heads, kv_channels=hf.head_dim, vocab_size=-(-vocab // tp) * tp,
        hf_vocab_size=vocab, max_position_embeddings=hf.max_position_embeddings, rotary_base=float(full["rope_theta"]),
        norm_epsilon=hf.rms_norm_eps, qk_layernorm=True, tie_word_embeddings=bool(hf.tie_word_embeddings),
        activation="geglu_tanh", sliding_window=hf.sliding_window,
        sliding_layers=[int(t == "sliding_attention") for t in hf.layer_types],
        local_rotary_base=float(local["rope_theta"]), rope_linear_factor=linear,
        query_pre_attn_scalar=float(hf.query_pre_attn_scalar), embedding_scale=True,
    )


def encoder_config_from_hf(hf, feature_layer: int = -1) -> EncoderConfig:
    hf = getattr(hf, "vision_config", hf)
    if hf.model_type in ("siglip_vision_model", "siglip"):
        return EncoderConfig(family="siglip", num_layers=hf.num_hidden_layers, hidden_size=hf.hidden_size,
                             ffn_hidden_size=hf.intermediate_size, num_attention_heads=hf.num_attention_heads,
                             image_size=hf.image_size, patch_size=hf.patch_size, norm_epsilon=hf.layer_norm_eps,
                             feature_layer=feature_layer)
    if hf.model_type in ("qwen2_5_vl_vision",):
        return EncoderConfig(family="qwen2_5_vit", num_layers=hf.depth, hidden_size=hf.hidden_size,
                             ffn_hidden_size=hf.intermediate_size, num_attention_heads=hf.num_heads,
                             patch_size=hf.patch_size, spatial_merge_size=hf.spatial_merge_size,
                             temporal_patch_size=hf.temporal_patch_size, window_size=hf.window_size,
                             fullatt_block_indexes=list(hf.fullatt_block_indexes), out_hidden_size=hf.out_hidden_size)
    raise ValueError(f"vision model_type {hf.model_type!r} is not supported; use a SigLIP/SigLIP2 (fixed resolution) "
                     f"or Qwen2.5-VL vision checkpoint")


# ---------------------------------------------------------------------------------------------------------
# layout helpers
# ---------------------------------------------------------------------------------------------------------
def pack_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, groups: int) -> torch.Tensor:
    hd = k.shape[0] // groups
    rest = q.shape[1:]
    per = heads // groups
    return torch.cat([q.reshape(groups, per * hd, *rest), k.reshape(groups, hd, *rest), v.reshape(groups, hd, *rest)],
                     dim=1).reshape(-1, *rest)


def unpack_qkv(qkv: torch.Tensor, heads: int, groups: int, hd: int) -> tuple[torch.Tensor, ...]:
    per = heads // groups
    rest = qkv.shape[1:]
    x = qkv.reshape(groups, (per + 2) * hd, *rest)
    q, k, v = x[:, : per * hd], x[:, per * hd: (per + 1) * hd], x[:, (per + 1) * hd:]
    return tuple(t.reshape(-1, *rest) for t in (q, k, v))


def _find_prefix(sd: dict[str, torch.Tensor], suffix: str, what: str) -> str:
    hits = sorted({k[: -len(suffix)] for k in sd if k.endswith(suffix)}, key=len)
    if not hits:
        raise KeyError(f"no '*{suffix}' tensor found: this checkpoint has no {what}")
    return hits[0]


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return t if t.shape[0] == rows else torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


# ---------------------------------------------------------------------------------------------------------
# decoder maps (names relative to GPTModel, i.e. without the "language_model." prefix)
# ---------------------------------------------------------------------------------------------------------
def _norm_names(dec: DecoderConfig) -> list[tuple[str, str]]:
    """(megatron, HF) names of a layer's norms. Gemma3's sandwich norms ride on the output projections."""
    if dec.family == "gemma3":
        return [("input_layernorm.weight", "input_layernorm.weight"),
                ("self_attention.linear_proj.post_layernorm.weight", "post_attention_layernorm.weight"),
                ("pre_mlp_layernorm.weight", "pre_feedforward_layernorm.weight"),
                ("mlp.linear_fc2.post_layernorm.weight", "post_feedforward_layernorm.weight")]
    return [("input_layernorm.weight", "input_layernorm.weight"),
            ("pre_mlp_layernorm.weight", "post_attention_layernorm.weight")]


def hf_decoder_to_mcore(sd: dict[str, torch.Tensor], dec: DecoderConfig) -> dict[str, torch.Tensor]:
    if dec.family not in SUPPORTED_DECODERS:
        raise ValueError(f"decoder family {dec.family!r} import is not supported yet ({SUPPORTED_DECODERS})")
    p = _find_prefix(sd, "embed_tokens.weight", "decoder embeddings")
    heads, groups = dec.num_attention_heads, dec.num_query_groups
    out = {"embedding.word_embeddings.weight": _pad_rows(sd[p + "embed_tokens.weight"], dec.vocab_size),
           "decoder.final_layernorm.weight": sd[p + "norm.weight"]}
    if not dec.tie_word_embeddings:
        head = sd.get("lm_head.weight", sd.get(p.replace("model.", "", 1) + "lm_head.weight"))
        if head is None:
            head = next((v for k, v in sd.items() if k.endswith("lm_head.weight")), None)
        if head is None:
            raise KeyError("untied decoder but no lm_head.weight in the checkpoint")
        out["output_layer.weight"] = _pad_rows(head, dec.vocab_size)
    for i in range(dec.num_layers):
        h, m = f"{p}layers.{i}.", f"decoder.layers.{i}."
        a = h + "self_attn."
        out[m + "self_attention.linear_qkv.weight"] = pack_qkv(sd[a + "q_proj.weight"], sd[a + "k_proj.weight"],
                                                               sd[a + "v_proj.weight"], heads, groups)
        out[m + "self_attention.linear_proj.weight"] = sd[a + "o_proj.weight"]
        if dec.qk_layernorm:
            out[m + "self_attention.q_layernorm.weight"] = sd[a + "q_norm.weight"]
            out[m + "self_attention.k_layernorm.weight"] = sd[a + "k_norm.weight"]
        for mname, hname in _norm_names(dec):
            out[m + mname] = sd[h + hname]
        out[m + "mlp.linear_fc1.weight"] = torch.cat([sd[h + "mlp.gate_proj.weight"], sd[h + "mlp.up_proj.weight"]])
        out[m + "mlp.linear_fc2.weight"] = sd[h + "mlp.down_proj.weight"]
    return out


def mcore_decoder_to_hf(sd: dict[str, torch.Tensor], dec: DecoderConfig, prefix: str = "model.",
                        lm_head: str = "lm_head.weight") -> dict[str, torch.Tensor]:
    heads, groups = dec.num_attention_heads, dec.num_query_groups
    hd = dec.kv_channels or dec.hidden_size // heads
    vocab = dec.hf_vocab_size or dec.vocab_size
    out = {prefix + "embed_tokens.weight": sd["embedding.word_embeddings.weight"][:vocab],
           prefix + "norm.weight": sd["decoder.final_layernorm.weight"]}
    if not dec.tie_word_embeddings:
        out[lm_head] = sd["output_layer.weight"][:vocab]
    for i in range(dec.num_layers):
        h, m = f"{prefix}layers.{i}.", f"decoder.layers.{i}."
        q, k, v = unpack_qkv(sd[m + "self_attention.linear_qkv.weight"], heads, groups, hd)
        out.update({h + "self_attn.q_proj.weight": q, h + "self_attn.k_proj.weight": k, h + "self_attn.v_proj.weight": v,
                    h + "self_attn.o_proj.weight": sd[m + "self_attention.linear_proj.weight"],
                    h + "mlp.down_proj.weight": sd[m + "mlp.linear_fc2.weight"]})
        out.update({h + hname: sd[m + mname] for mname, hname in _norm_names(dec)})
        gate, up = sd[m + "mlp.linear_fc1.weight"].chunk(2)
        out[h + "mlp.gate_proj.weight"], out[h + "mlp.up_proj.weight"] = gate, up
        if dec.qk_layernorm:
            out[h + "self_attn.q_norm.weight"] = sd[m + "self_attention.q_layernorm.weight"]
            out[h + "self_attn.k_norm.weight"] = sd[m + "self_attention.k_layernorm.weight"]
    return {k: v.contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------------
# encoder maps (names relative to the vision module)
# ---------------------------------------------------------------------------------------------------------
_SIGLIP_LAYER = {  # megatron suffix -> HF suffix (qkv handled separately)
    "input_layernorm.weight": "layer_norm1.weight", "input_layernorm.bias": "layer_norm1.bias",
    "pre_mlp_layernorm.weight": "layer_norm2.weight", "pre_mlp_layernorm.bias": "layer_norm2.bias",
    "self_attention.linear_proj.weight": "self_attn.out_proj.weight",
    "self_attention.linear_proj.bias": "self_attn.out_proj.bias",
    "mlp.linear_fc1.weight": "mlp.fc1.weight", "mlp.linear_fc1.bias": "mlp.fc1.bias",
    "mlp.linear_fc2.weight": "mlp.fc2.weight", "mlp.linear_fc2.bias": "mlp.fc2.bias",
}


def hf_encoder_to_mcore(sd: dict[str, torch.Tensor], enc: EncoderConfig) -> dict[str, torch.Tensor]:
    if enc.family == "qwen2_5_vit":
        p = _find_prefix(sd, "patch_embed.proj.weight", "Qwen2.5-VL vision tower")
        return {"model." + k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    p = _find_prefix(sd, "embeddings.patch_embedding.weight", "SigLIP vision tower")
    heads = enc.num_attention_heads
    out = {"conv1.weight": sd[p + "embeddings.patch_embedding.weight"],
           "conv1.bias": sd[p + "embeddings.patch_embedding.bias"],
           "position_embeddings.weight": sd[p + "embeddings.position_embedding.weight"]}
    for i in range(enc.layers_used):
        h, m = f"{p}encoder.layers.{i}.", f"decoder.layers.{i}."
        for ms, hs in _SIGLIP_LAYER.items():
            out[m + ms] = sd[h + hs]
        for kind in ("weight", "bias"):
            out[m + f"self_attention.linear_qkv.{kind}"] = pack_qkv(
                sd[h + f"self_attn.q_proj.{kind}"], sd[h + f"self_attn.k_proj.{kind}"],
                sd[h + f"self_attn.v_proj.{kind}"], heads, heads)
    return out


def mcore_encoder_to_hf(sd: dict[str, torch.Tensor], enc: EncoderConfig, prefix: str) -> dict[str, torch.Tensor]:
    if enc.family == "qwen2_5_vit":
        return {prefix + k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    heads, hd = enc.num_attention_heads, enc.hidden_size // enc.num_attention_heads
    out = {prefix + "embeddings.patch_embedding.weight": sd["conv1.weight"],
           prefix + "embeddings.patch_embedding.bias": sd["conv1.bias"],
           prefix + "embeddings.position_embedding.weight": sd["position_embeddings.weight"],
           # LLaVA reads hidden states before the post-LN; HF still has the module, so export it as identity
           prefix + "post_layernorm.weight": torch.ones(enc.hidden_size),
           prefix + "post_layernorm.bias": torch.zeros(enc.hidden_size)}
    for i in range(enc.layers_used):
        h, m = f"{prefix}encoder.layers.{i}.", f"decoder.layers.{i}."
        for ms, hs in _SIGLIP_LAYER.items():
            out[h + hs] = sd[m + ms]
        for kind in ("weight", "bias"):
            q, k, v = unpack_qkv(sd[m + f"self_attention.linear_qkv.{kind}"], heads, heads, hd)
            out[h + f"self_attn.q_proj.{kind}"], out[h + f"self_attn.k_proj.{kind}"] = q, k
            out[h + f"self_attn.v_proj.{kind}"] = v
    return {k: v.contiguous() for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------------
# whole VLM
# ---------------------------------------------------------------------------------------------------------
def hf_projector_to_mcore(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    p = _find_prefix(sd, "multi_modal_projector.linear_1.weight", "LLaVA projector") + "multi_modal_projector."
    return {PROJ + f"linear_fc{n}.{kind}": sd[p + f"linear_{n}.{kind}"] for n in (1, 2) for kind in ("weight", "bias")}


def hf_to_mcore_vlm(cfg, decoder_sd: dict[str, torch.Tensor], encoder_sd: dict[str, torch.Tensor] | None = None,
                    projector_sd: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Full megatron state of an EcomVLM from HF tensors. A LLaVA checkpoint passes the same dict three times;
    starting from backbones, pass the LLM's and the encoder's tensors and no projector (it stays random)."""
    out = {LM + k: v for k, v in hf_decoder_to_mcore(decoder_sd, cfg.decoder).items()}
    if encoder_sd is not None:
        out.update({VIS + k: v for k, v in hf_encoder_to_mcore(encoder_sd, cfg.encoder).items()})
    if projector_sd is not None:
        out.update(hf_projector_to_mcore(projector_sd))
    return out


def mcore_vlm_to_hf_llava(full: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """Full megatron state -> HF LlavaForConditionalGeneration tensors (transformers 5 names)."""
    lm = {k[len(LM):]: v for k, v in full.items() if k.startswith(LM)}
    vis = {k[len(VIS):]: v for k, v in full.items() if k.startswith(VIS)}
    out = mcore_decoder_to_hf(lm, cfg.decoder, prefix="model.language_model.", lm_head="lm_head.weight")
    out.update(mcore_encoder_to_hf(vis, cfg.encoder, prefix="model.vision_tower."))
    for n in (1, 2):
        for kind in ("weight", "bias"):
            out[f"model.multi_modal_projector.linear_{n}.{kind}"] = full[PROJ + f"linear_fc{n}.{kind}"].contiguous()
    return out


# ---------------------------------------------------------------------------------------------------------
# TP / PP sharding
# ---------------------------------------------------------------------------------------------------------
_LAYER_RE = re.compile(r"^(language_model\.decoder\.layers\.)(\d+)(\..*)$")


def _layer_offset(model) -> int:
    layers = model.language_model.decoder.layers
    return layers[0].layer_number - 1 if len(layers) else 0


def _to_global(name: str, offset: int) -> str:
    m = _LAYER_RE.match(name)
    return f"{m.group(1)}{int(m.group(2)) + offset}{m.group(3)}" if m else name


def _is_gated_fc1(name: str, model) -> bool:
    return name.startswith(LM) and name.endswith("mlp.linear_fc1.weight") and model.language_model.config.gated_linear_unit


def _te_names(name: str, local_keys: set[str]) -> str:
    """Local-spec name -> the same tensor's name in a TE-spec model (norms fused into the next linear)."""
    if name in local_keys:
        return name
    for plain, fused in ((".input_layernorm.", ".self_attention.linear_qkv.layer_norm_"),
                         (".pre_mlp_layernorm.", ".mlp.linear_fc1.layer_norm_")):
        if plain in name:
            cand = name.replace(plain + "weight", fused + "weight").replace(plain + "bias", fused + "bias")
            if cand in local_keys:
                return cand
    return name


def _belongs_to_other_stage(name: str, model) -> bool:
    """True when a full-state tensor lives on another pipeline stage than `model`'s."""
    m = _LAYER_RE.match(name)
    if m:
        first, n = _layer_offset(model), len(model.language_model.decoder.layers)
        return not first <= int(m.group(2)) < first + n
    if name.startswith((VIS, PROJ, LM + "embedding.")):
        return not model.pre_process
    if name.startswith((LM + "output_layer.", LM + "decoder.final_layernorm.")):
        return not model.post_process
    return False


def shard_into(model, full: dict[str, torch.Tensor], strict: bool = True) -> list[str]:
    """Load this rank's slice of a full megatron state into `model`. Returns the model's tensors that the state
    did not cover (e.g. the projector when starting from backbones). With strict=True, a tensor that has no
    place on any stage raises (a mapping or config error)."""
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    offset = _layer_offset(model)
    local = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    global_keys = {_to_global(k, offset): k for k in local}
    full = {_te_names(k, set(global_keys)): v for k, v in full.items()}
    tied_head = LM + "output_layer.weight"
    if tied_head in global_keys and tied_head not in full and LM + "embedding.word_embeddings.weight" in full:
        full[tied_head] = full[LM + "embedding.word_embeddings.weight"]  # tied embeddings, last PP stage copy
    untouched = []
    with torch.no_grad():
        for gname, lname in global_keys.items():
            if gname not in full:
                untouched.append(lname)
                continue
            src, dst = full[gname], local[lname]
            if src.shape != dst.shape:
                diff = [d for d in range(src.dim()) if src.shape[d] != dst.shape[d]]
                if len(diff) != 1 or src.shape[diff[0]] != dst.shape[diff[0]] * tp:
                    raise ValueError(f"{gname}: checkpoint shape {tuple(src.shape)} does not fit model shard "
                                     f"{tuple(dst.shape)} at TP={tp}; wrong model config for this checkpoint?")
                if _is_gated_fc1(lname, model):  # [gate; up] is split per shard, not as one block
                    gate, up = src.chunk(2, dim=0)
                    src = torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]])
                else:
                    src = src.chunk(tp, dim=diff[0])[rank]
            dst.copy_(src.to(dst.dtype))
    unused = [n for n in full if n not in global_keys and not _belongs_to_other_stage(n, model)]
    if strict and unused:
        raise KeyError(f"{len(unused)} checkpoint tensors have no place in the model, e.g. {unused[:5]}")
    return untouched


def gather_full_state(model) -> dict[str, torch.Tensor]:
    """Inverse of :func:`shard_into`: every rank returns the full, unsharded state (CPU tensors)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_group = parallel_state.get_tensor_model_parallel_group()
    offset = _layer_offset(model)
    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    tied = model.language_model.share_embeddings_and_output_weights
    for lname, t in model.state_dict().items():
        if lname.endswith("_extra_state") or (tied and lname == LM + "output_layer.weight"):
            continue  # (a tied head on the last PP stage is a copy of the embedding)
        p = params.get(lname)
        if tp > 1 and p is not None and getattr(p, "tensor_model_parallel", False):
            parts = [torch.empty_like(t) for _ in range(tp)]
            dist.all_gather(parts, t.contiguous(), group=tp_group)
            if _is_gated_fc1(lname, model):
                gates, ups = zip(*(x.chunk(2, dim=0) for x in parts))
                t = torch.cat([*gates, *ups])
            else:
                t = torch.cat(parts, dim=p.partition_dim)
        name = lname
        for plain, fused in ((".input_layernorm.", ".self_attention.linear_qkv.layer_norm_"),
                             (".pre_mlp_layernorm.", ".mlp.linear_fc1.layer_norm_")):
            name = name.replace(fused, plain)
        out[_to_global(name, offset)] = t.detach().cpu().clone()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if pp > 1:
        parts: list[Any] = [None] * pp
        dist.all_gather_object(parts, out, group=parallel_state.get_pipeline_model_parallel_group())
        out = {k: v for part in parts for k, v in part.items()}
    return out
