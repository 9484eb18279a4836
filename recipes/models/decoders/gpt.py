"""What every decoder family shares: the config fields of a GPT-style LLM and how it becomes a megatron GPTModel.

A family (llama.py, qwen3.py, gemma3.py) subclasses :class:`DecoderConfig`: it sets its defaults and fills the
hooks below (extra TransformerConfig/GPTModel arguments, layer spec, HF config in both directions, the weight
mapping). The config object *is* the model provider, as in Megatron-Bridge: ``cfg.build(parallel)`` makes this
rank's pipeline stage. Layer specs: Transformer Engine when importable and a GPU exists, the local (pure
PyTorch) spec otherwise, so one config builds on a laptop and on an H100 node.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import MISSING

from ecomvlm.recipes.models.mapping import QKV, Direct, GatedMLP, Rule
from ecomvlm.recipes.models.parallel import ParallelConfig


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
        hidden_dropout=0.0, attention_dropout=0.0,
        params_dtype=params_dtype, pipeline_dtype=params_dtype,  # pipeline_dtype: activations between PP stages
        bf16=params_dtype == torch.bfloat16, use_cpu_initialization=not on_gpu,
        # fused kernels are CUDA-only; the exact (unfused) gelu is kept where a tower needs it
        gradient_accumulation_fusion=False, bias_activation_fusion=False, apply_rope_fusion=False,
        masked_softmax_fusion=on_gpu, bias_dropout_fusion=on_gpu, persist_layer_norm=on_gpu,
    )


def padded_vocab(vocab: int, tp: int) -> int:
    """Vocabulary rows padded to a multiple of TP (megatron shards the embedding by rows)."""
    return -(-vocab // tp) * tp


@dataclass
class DecoderConfig:
    """Published dimensions of a decoder. ``hf_path`` set: the checkpoint's config.json wins over these fields."""

    family: str = MISSING
    hf_path: str | None = None  # HF checkpoint directory to import weights from (dims checked against config.json)
    chat_format: str = MISSING  # data_modules/chat_templates.py: llama3 | chatml | gemma3
    num_layers: int = 2
    hidden_size: int = 64
    ffn_hidden_size: int = 128
    num_attention_heads: int = 4
    num_query_groups: int = 2
    kv_channels: int | None = None  # head dim; None = hidden / heads
    vocab_size: int = 256
    hf_vocab_size: int | None = None  # the checkpoint's vocab when vocab_size was padded for TP (export trims)
    max_position_embeddings: int = 512
    rotary_base: float = 10000.0
    norm_epsilon: float = 1e-5
    qk_layernorm: bool = False
    tie_word_embeddings: bool = False

    hf_model_types: ClassVar[tuple[str, ...]] = ()  # HF text model_type(s) this family imports
    hf_architecture: ClassVar[str] = ""  # the *ForCausalLM class written on export
    norms_per_layer: ClassVar[int] = 2  # RMSNorms per layer (Gemma3's sandwich norms: 4)
    has_te_spec: ClassVar[bool] = True  # False: local layers even where Transformer Engine exists

    # ---- derived ----------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def uses_te(self) -> bool:
        return self.has_te_spec and te_available()

    def for_tp(self, tp: int) -> "DecoderConfig":
        """This config with the vocabulary padded for TP (the unpadded size kept for export)."""
        if self.vocab_size % tp == 0:
            return self
        return dataclasses.replace(self, hf_vocab_size=self.hf_vocab_size or self.vocab_size,
                                   vocab_size=padded_vocab(self.vocab_size, tp))

    def embedding_multiplier(self) -> float | None:
        """Factor on token embeddings before image embeddings are scattered in (None: none)."""
        return None

    def param_count(self) -> int:
        """Analytic parameter count (embeddings + layers + final norm + head if untied)."""
        h, hd = self.hidden_size, self.head_dim
        q, kv = self.num_attention_heads * hd, self.num_query_groups * hd
        attn = h * q + 2 * h * kv + q * h + (2 * hd if self.qk_layernorm else 0)
        layer = attn + 3 * h * self.ffn_hidden_size + self.norms_per_layer * h
        vocab = self.hf_vocab_size or self.vocab_size
        return vocab * h * (1 if self.tie_word_embeddings else 2) + self.num_layers * layer + h

    # ---- family hooks -----------------------------------------------------------------------------------
    def transformer_kwargs(self) -> dict[str, Any]:
        """Extra TransformerConfig fields of this family."""
        return {}

    def gpt_kwargs(self) -> dict[str, Any]:
        """Extra GPTModel arguments of this family (RoPE variants)."""
        return {}

    def layer_spec(self, config) -> Any:
        if self.uses_te:
            from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

            return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=config.qk_layernorm)
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

        from ecomvlm.recipes.models.sdpa_attention import use_fused_attention

        return use_fused_attention(get_gpt_layer_local_spec(qk_layernorm=config.qk_layernorm,
                                                            normalization=config.normalization))

    def layer_norm_names(self) -> list[tuple[str, str]]:
        """(megatron, HF) names of one layer's norms."""
        return [("input_layernorm.weight", "input_layernorm.weight"),
                ("pre_mlp_layernorm.weight", "post_attention_layernorm.weight")]

    def mapping(self) -> list[Rule]:
        """Megatron GPTModel names <-> HF names (``body``: below the text model prefix; ``root``: lm_head)."""
        m, h = "decoder.layers.*.", "layers.*."
        rules: list[Rule] = [
            Direct("embedding.word_embeddings.weight", hf="embed_tokens.weight", rows=self.vocab_size,
                   hf_rows=self.hf_vocab_size or self.vocab_size),
            Direct("decoder.final_layernorm.weight", hf="norm.weight"),
            QKV(m + "self_attention.linear_qkv.weight", q=h + "self_attn.q_proj.weight",
                k=h + "self_attn.k_proj.weight", v=h + "self_attn.v_proj.weight", heads=self.num_attention_heads,
                groups=self.num_query_groups),
            Direct(m + "self_attention.linear_proj.weight", hf=h + "self_attn.o_proj.weight"),
            GatedMLP(m + "mlp.linear_fc1.weight", gate=h + "mlp.gate_proj.weight", up=h + "mlp.up_proj.weight"),
            Direct(m + "mlp.linear_fc2.weight", hf=h + "mlp.down_proj.weight"),
            *(Direct(m + a, hf=h + b) for a, b in self.layer_norm_names()),
        ]
        if self.qk_layernorm:
            rules += [Direct(m + "self_attention.q_layernorm.weight", hf=h + "self_attn.q_norm.weight"),
                      Direct(m + "self_attention.k_layernorm.weight", hf=h + "self_attn.k_norm.weight")]
        if not self.tie_word_embeddings:
            rules.append(Direct("output_layer.weight", scope="root", hf="lm_head.weight", rows=self.vocab_size,
                                hf_rows=self.hf_vocab_size or self.vocab_size))
        return rules

    @classmethod
    def from_hf(cls, hf, tp: int = 1) -> "DecoderConfig":
        """An HF text config (or a VLM's text_config) -> this family's config."""
        raise NotImplementedError

    def to_hf(self):
        """This config as an HF text config (what an export writes)."""
        raise NotImplementedError

    # ---- shared pieces of from_hf / to_hf ---------------------------------------------------------------
    @classmethod
    def _dims_from_hf(cls, hf, tp: int) -> dict[str, Any]:
        vocab = hf.vocab_size
        return dict(num_layers=hf.num_hidden_layers, hidden_size=hf.hidden_size, ffn_hidden_size=hf.intermediate_size,
                    num_attention_heads=hf.num_attention_heads,
                    num_query_groups=hf.num_key_value_heads or hf.num_attention_heads,
                    kv_channels=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
                    vocab_size=padded_vocab(vocab, tp), hf_vocab_size=vocab,
                    max_position_embeddings=hf.max_position_embeddings, norm_epsilon=hf.rms_norm_eps,
                    tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)))

    def _hf_dims(self) -> dict[str, Any]:
        return dict(vocab_size=self.hf_vocab_size or self.vocab_size, hidden_size=self.hidden_size,
                    intermediate_size=self.ffn_hidden_size, num_hidden_layers=self.num_layers,
                    num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_query_groups,
                    head_dim=self.head_dim, max_position_embeddings=self.max_position_embeddings,
                    rms_norm_eps=self.norm_epsilon, tie_word_embeddings=self.tie_word_embeddings)

    # ---- megatron ---------------------------------------------------------------------------------------
    def transformer_config(self, parallel: ParallelConfig, *, params_dtype: torch.dtype = torch.float32,
                           **overrides: Any):
        from megatron.core.transformer.transformer_config import TransformerConfig

        kw: dict[str, Any] = dict(
            num_layers=self.num_layers, hidden_size=self.hidden_size, ffn_hidden_size=self.ffn_hidden_size,
            num_attention_heads=self.num_attention_heads, num_query_groups=self.num_query_groups,
            kv_channels=self.kv_channels, normalization="RMSNorm", layernorm_epsilon=self.norm_epsilon,
            gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False, add_qkv_bias=False,
            qk_layernorm=self.qk_layernorm, tensor_model_parallel_size=parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
            context_parallel_size=parallel.context_parallel_size, sequence_parallel=parallel.sequence_parallel,
            cross_entropy_loss_fusion=False, **runtime_config_kwargs(params_dtype))
        kw["bias_activation_fusion"] = torch.cuda.is_available()  # fused SwiGLU
        kw.update(self.transformer_kwargs())
        kw.update(overrides)
        return TransformerConfig(**kw)

    def build(self, parallel: ParallelConfig, *, pre_process: bool = True, post_process: bool = True,
              scatter_embedding_sequence_parallel: bool = True, **config_overrides: Any):
        """A megatron-core GPTModel: this rank's pipeline stage of the decoder."""
        from megatron.core.models.gpt import GPTModel

        config = self.transformer_config(parallel, **config_overrides)
        return GPTModel(config=config, transformer_layer_spec=self.layer_spec(config), vocab_size=self.vocab_size,
                        max_sequence_length=self.max_position_embeddings, pre_process=pre_process,
                        post_process=post_process, share_embeddings_and_output_weights=self.tie_word_embeddings,
                        position_embedding_type="rope", rotary_base=int(self.rotary_base),
                        scatter_embedding_sequence_parallel=scatter_embedding_sequence_parallel, **self.gpt_kwargs())


def rope_parameters(hf) -> dict[str, Any]:
    """An HF config's RoPE settings (transformers 5 ``rope_parameters``, or the older ``rope_scaling``)."""
    rope = getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {}
    return {"rope_theta": getattr(hf, "rope_theta", 10000.0), **rope}


def refuse_unsupported(hf, where: str, **expected: Any) -> None:
    """Options of an HF config we do not implement: each must have its expected (or an absent/None) value."""
    bad = {k: getattr(hf, k) for k, v in expected.items() if getattr(hf, k, v) not in (v, None)}
    if bad:
        raise ValueError(f"{where}: {', '.join(f'{k}={v!r}' for k, v in bad.items())} is not supported "
                         f"(expected {', '.join(f'{k}={v!r}' for k, v in expected.items() if k in bad)})")
