"""Gemma3's decoder layers from megatron-core parts (megatron-core 0.19 has no Gemma3 spec). Kept apart from
the family module (gemma3.py) so configs import without megatron-core.

What differs from a Llama layer, and where it is handled:
- RMSNorm scales by (1 + w), computed in fp32 -> :class:`Gemma3RMSNorm` for every norm (incl. QK-norm, final).
- "sandwich" norms: post-attention and post-feed-forward RMSNorms before each residual add -> the row-parallel
  output projections carry them (:class:`RowParallelLinearWithPostNorm`); the output is the full hidden state
  after the TP all-reduce, so normalising there is exact.
- 5 sliding-window layers : 1 global layer, with RoPE base 10k on sliding layers and 1M (+ linear scaling) on
  global ones -> megatron's window_size/window_attn_skip_freq picks the layers; :class:`Gemma3SelfAttention`
  swaps in the local RoPE there and builds the window mask itself, OR-ed with any given mask (megatron's softmax
  would *replace* a packing mask by the window mask, letting packed samples see each other).
- GeGLU with tanh-GELU, attention scale query_pre_attn_scalar^-0.5 and embeddings x sqrt(hidden) are config
  settings (Gemma3Config); EcomVLM.embed scales the text embeddings before image embeddings are scattered in.
Local (non-TE) layers only, on GPUs too.
"""

from __future__ import annotations

import torch
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules
from megatron.core.transformer.utils import get_sliding_window_causal_mask, is_layer_window_attention

from ecomvlm.recipes.models.sdpa_attention import SDPADotProductAttention


class Gemma3RMSNorm(torch.nn.Module):
    """x * rsqrt(mean(x^2) + eps) * (1 + w), in fp32 (HF Gemma3RMSNorm). Weight is stored zero-centred."""

    def __init__(self, config=None, hidden_size: int = 0, eps: float = 1e-6, **_):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.zeros(hidden_size, dtype=getattr(config, "params_dtype", torch.float32)))
        if config is not None and getattr(config, "sequence_parallel", False):
            self.weight.sequence_parallel = True  # replicated; grads are all-reduced over TP like megatron's norms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * (1.0 + self.weight.float())).type_as(x)


class RowParallelLinearWithPostNorm(RowParallelLinear):
    """Row-parallel projection followed by a Gemma3 RMSNorm of its (reduced) output."""

    def __init__(self, input_size: int, output_size: int, *, config, **kwargs):
        super().__init__(input_size, output_size, config=config, **kwargs)
        self.post_layernorm = Gemma3RMSNorm(config, output_size, eps=config.layernorm_epsilon)

    def forward(self, input_, *args, **kwargs):
        out, bias = super().forward(input_, *args, **kwargs)
        if bias is not None:
            out, bias = out + bias, None
        return self.post_layernorm(out), bias


class Gemma3SelfAttention(SelfAttention):
    """Self-attention that uses the local RoPE base on sliding-window layers."""

    def __init__(self, config, submodules, layer_number, attn_mask_type, *args, local_rotary_base: float = 10000.0,
                 **kwargs):
        super().__init__(config, submodules, layer_number, attn_mask_type, *args, **kwargs)
        self.is_sliding = is_layer_window_attention(config.window_size, config.window_attn_skip_freq, layer_number)
        self.local_rope = None
        if self.is_sliding:
            self.local_rope = RotaryEmbedding(kv_channels=config.kv_channels, rotary_percent=1.0,
                                              rotary_base=int(local_rotary_base),
                                              use_cpu_initialization=config.use_cpu_initialization)
            softmax = self.core_attention.scale_mask_softmax
            softmax.window_size = None  # the window comes in through the mask (see forward)
            softmax.attn_mask_type = AttnMaskType.arbitrary  # so a fused kernel honours the mask too

    def forward(self, hidden_states, attention_mask, *args, rotary_pos_emb=None, **kwargs):
        if self.is_sliding:
            seq = hidden_states.shape[0] * (self.config.tensor_model_parallel_size
                                            if self.config.sequence_parallel else 1)
            if rotary_pos_emb is not None:
                rotary_pos_emb = self.local_rope(seq)
            window = get_sliding_window_causal_mask(seq, seq, (self.config.window_size[0], 0))
            window = window.to(hidden_states.device)  # True = masked, like megatron's attention masks
            attention_mask = window if attention_mask is None else (attention_mask | window)
        return super().forward(hidden_states, attention_mask, *args, rotary_pos_emb=rotary_pos_emb, **kwargs)


def gemma3_layer_spec(local_rotary_base: float) -> ModuleSpec:
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=Gemma3RMSNorm,
            self_attention=ModuleSpec(
                module=Gemma3SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal, "local_rotary_base": local_rotary_base},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear,
                    core_attention=SDPADotProductAttention,
                    linear_proj=RowParallelLinearWithPostNorm,
                    q_layernorm=Gemma3RMSNorm,
                    k_layernorm=Gemma3RMSNorm,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=Gemma3RMSNorm,
            mlp=ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear,
                                                                 linear_fc2=RowParallelLinearWithPostNorm)),
            mlp_bda=get_bias_dropout_add,
        ),
    )


def gemma3_block_spec(config, local_rotary_base: float) -> TransformerBlockSubmodules:
    """Per-pipeline-stage block spec (the final norm is a Gemma3 norm too)."""
    n = get_num_layers_to_build(config)
    return TransformerBlockSubmodules(layer_specs=[gemma3_layer_spec(local_rotary_base)] * n,
                                      layer_norm=Gemma3RMSNorm)
