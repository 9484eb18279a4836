"""LLM decoder configs -> megatron-core TransformerConfig / GPTModel.

A :class:`DecoderConfig` holds the published dimensions of a decoder family (Llama-3.x, Qwen3, Gemma3, ...);
conf/model/decoder/*.yaml fill it. Layer specs: Transformer Engine when importable and CUDA is present, the
local (pure PyTorch) spec otherwise, so the same config builds on a laptop and on an H100 node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from ecomvlm.recipes.models.parallel import ParallelConfig


@dataclass
class DecoderConfig:
    family: str = "llama"  # llama | qwen3 | gemma3
    num_layers: int = 2
    hidden_size: int = 64
    ffn_hidden_size: int = 128
    num_attention_heads: int = 4
    num_query_groups: int = 2
    kv_channels: int | None = None  # head dim; None = hidden/heads
    vocab_size: int = 256
    max_position_embeddings: int = 512
    rotary_base: float = 10000.0
    norm_epsilon: float = 1e-5
    qk_layernorm: bool = False  # Qwen3 / Gemma3
    tie_word_embeddings: bool = False
    rope_scaling_factor: float | None = None  # Llama-3.1 "llama3" RoPE scaling (8.0); None = plain RoPE
    hf_vocab_size: int | None = None  # the checkpoint's vocab before padding to a multiple of TP (export trims)
    # Gemma3-style options (ignored by llama/qwen3)
    activation: str = "swiglu"  # swiglu | geglu_tanh
    sliding_window: int | None = None  # tokens a sliding-window layer sees (incl. itself)
    sliding_layers: list[int] | None = None  # per layer: 1 = sliding window, 0 = global attention
    local_rotary_base: float | None = None  # RoPE base on sliding layers
    rope_linear_factor: float | None = None  # linear RoPE scaling on global layers (Gemma3-4B: 8)
    query_pre_attn_scalar: float | None = None  # attention scale = this^-0.5 (default: head_dim^-0.5)
    embedding_scale: bool = False  # multiply token embeddings by sqrt(hidden_size)
    extra: dict[str, Any] = field(default_factory=dict)


def te_available() -> bool:
    """Transformer Engine is used only when it imports AND a GPU exists (it cannot run on CPU)."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except Exception:
        return False
    return True


def runtime_config_kwargs(params_dtype: torch.dtype) -> dict[str, Any]:
    """TransformerConfig fields shared by every tower: dtype, no dropout, CPU init and fusions by device."""
    on_gpu = torch.cuda.is_available()
    return dict(
        hidden_dropout=0.0,
        attention_dropout=0.0,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,  # activations sent between pipeline stages
        bf16=params_dtype == torch.bfloat16,
        use_cpu_initialization=not on_gpu,
        # fused kernels are CUDA-only; the exact (unfused) gelu is kept where a tower needs it
        gradient_accumulation_fusion=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=on_gpu,
        apply_rope_fusion=False,
        bias_dropout_fusion=on_gpu,
    )


def transformer_config(dec: DecoderConfig, parallel: ParallelConfig, *, params_dtype: torch.dtype = torch.float32,
                       **overrides: Any):
    from megatron.core.transformer.transformer_config import TransformerConfig

    on_gpu = torch.cuda.is_available()
    if dec.activation not in ("swiglu", "geglu_tanh"):
        raise ValueError(f"unknown decoder activation {dec.activation!r} (swiglu | geglu_tanh)")
    act = F.silu if dec.activation == "swiglu" else partial(F.gelu, approximate="tanh")
    kw: dict[str, Any] = dict(
        num_layers=dec.num_layers,
        hidden_size=dec.hidden_size,
        ffn_hidden_size=dec.ffn_hidden_size,
        num_attention_heads=dec.num_attention_heads,
        num_query_groups=dec.num_query_groups,
        kv_channels=dec.kv_channels,
        normalization="RMSNorm",
        layernorm_epsilon=dec.norm_epsilon,
        gated_linear_unit=True,
        activation_func=act,
        add_bias_linear=False,
        add_qkv_bias=False,
        qk_layernorm=dec.qk_layernorm,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        sequence_parallel=parallel.sequence_parallel,
        persist_layer_norm=on_gpu,
        cross_entropy_loss_fusion=False,
        **runtime_config_kwargs(params_dtype),
    )
    kw["bias_activation_fusion"] = on_gpu and dec.activation == "swiglu"
    if dec.query_pre_attn_scalar is not None:
        kw["softmax_scale"] = dec.query_pre_attn_scalar ** -0.5
    if dec.sliding_window is not None:
        kw["window_size"] = (dec.sliding_window - 1, 0)  # HF: a token sees itself + the W-1 before it
        kw["window_attn_skip_freq"] = list(dec.sliding_layers) if dec.sliding_layers is not None else None
    kw.update(overrides)
    return TransformerConfig(**kw)


def gpt_layer_spec(config, dec: DecoderConfig | None = None) -> Any:
    if dec is not None and dec.family == "gemma3":
        from ecomvlm.recipes.models.gemma3 import gemma3_block_spec

        return gemma3_block_spec(config, dec.local_rotary_base or dec.rotary_base)
    if te_available():
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=config.qk_layernorm)
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return get_gpt_layer_local_spec(qk_layernorm=config.qk_layernorm, normalization=config.normalization)


def build_gpt(dec: DecoderConfig, parallel: ParallelConfig, *, pre_process: bool = True, post_process: bool = True,
              scatter_embedding_sequence_parallel: bool = True, **config_overrides: Any):
    """A megatron-core GPTModel (one pipeline stage of it) for a decoder config."""
    from megatron.core.models.gpt import GPTModel

    config = transformer_config(dec, parallel, **config_overrides)
    return GPTModel(
        config=config,
        transformer_layer_spec=gpt_layer_spec(config, dec),
        vocab_size=dec.vocab_size,
        max_sequence_length=dec.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=dec.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=int(dec.rotary_base),
        rope_scaling=dec.rope_scaling_factor is not None,
        rope_scaling_factor=dec.rope_scaling_factor or 8.0,
        seq_len_interpolation_factor=dec.rope_linear_factor,
        scatter_embedding_sequence_parallel=scatter_embedding_sequence_parallel,
    )
