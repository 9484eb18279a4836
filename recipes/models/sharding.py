"""A full (unsharded) megatron state <-> this rank's TP shard / PP stage of an :class:`EcomVLM`.

:func:`shard_into` slices a full state into this rank's model; :func:`gather_full_state` is the inverse
(all-gather over TP, object-gather over PP). Names are the full model's (``language_model.decoder.layers.<i>``
counts layers globally); megatron layouts handled: gated MLP fc1 is ``[gate; up]`` *per TP shard*; Transformer
Engine specs fuse the pre-attention/pre-MLP norms into the next linear.
"""

from __future__ import annotations

import re
from typing import Any

import torch

LM = "language_model."
VIS = "vision_model."
PROJ = "vision_projection."
# ---------------------------------------------------------------------------------------------------------
_LAYER_RE = re.compile(r"^(language_model\.decoder\.layers\.)(\d+)(\..*)$")


def _layer_offset(model) -> int:
    layers = model.language_model.decoder.layers
    return layers[0].layer_number - 1 if len(layers) else 0


def _to_global(name: str, offset: int) -> str:
    m = _LAYER_RE.match(name)
    return f"{m.group(1)}{int(m.group(2)) + offset}{m.group(3)}" if m else name


def _is_gated_fc1(name: str, model) -> bool:
    gated = model.language_model.config.gated_linear_unit
    return gated and name.startswith(LM) and name.endswith("mlp.linear_fc1.weight")


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
    if name.startswith((VIS, PROJ, LM + "embedding.", "image_newline")):
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
