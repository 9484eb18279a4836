"""Any vision encoder x any LLM decoder as one megatron-core model (LLaVA architecture).

    image(s) -> encoder -> mlp2x_gelu projector -> image embeddings
    input_ids (with one <image> token per image embedding, expanded by the data pipeline)
             -> decoder embedding; image embeddings are scattered into the <image> positions
             -> megatron GPT decoder (TP / PP / CP) -> logits or per-token loss

Why not megatron's LLaVAModel: it expands image tokens inside the model and pads to a fixed language length,
which makes sequence packing and per-sample boundaries awkward. Expanding in the data pipeline (like HF's
LLaVA processors) keeps the sequence length identical on every pipeline stage, so packing, PP and CP need no
special cases. The encoder and projector live on the first pipeline stage only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ecomvlm.recipes.models.decoder import DecoderConfig, build_gpt, te_available
from ecomvlm.recipes.models.encoder import EncoderConfig, build_encoder
from ecomvlm.recipes.models.parallel import ParallelConfig, validate_parallel

PROJECTOR_TYPES = ("mlp2x_gelu",)


@dataclass
class ProjectorConfig:
    type: str = "mlp2x_gelu"

    def __post_init__(self) -> None:
        if self.type not in PROJECTOR_TYPES:
            raise ValueError(f"unknown projector type {self.type!r}; choose one of {PROJECTOR_TYPES}")


@dataclass
class VLMConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    image_token_id: int = -1  # id of "<image>" in the decoder's tokenizer; set when the tokenizer is known
    name: str = "vlm"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VLMConfig":
        return cls(encoder=EncoderConfig(**d.get("encoder", {})), decoder=DecoderConfig(**d.get("decoder", {})),
                   projector=ProjectorConfig(**d.get("projector", {})),
                   image_token_id=int(d.get("image_token_id", -1)), name=d.get("name", "vlm"))


def build_projector(cfg: VLMConfig, parallel: ParallelConfig, params_dtype=torch.float32):
    """LLaVA's mlp2x_gelu: Linear(enc -> llm) + GELU(erf) + Linear(llm -> llm), both with bias, TP-sharded."""
    import torch.nn.functional as F
    from megatron.core.models.vision.multimodal_projector import MultimodalProjector
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.mlp import MLPSubmodules

    from ecomvlm.recipes.models.decoder import transformer_config

    config = transformer_config(
        cfg.decoder, parallel, params_dtype=params_dtype, num_layers=1, ffn_hidden_size=cfg.decoder.hidden_size,
        add_bias_linear=True, gated_linear_unit=False, activation_func=F.gelu, bias_activation_fusion=False,
        normalization="LayerNorm", qk_layernorm=False, pipeline_model_parallel_size=1,
    )
    if te_available():
        from megatron.core.extensions.transformer_engine import TEColumnParallelLinear, TERowParallelLinear

        sub = MLPSubmodules(linear_fc1=TEColumnParallelLinear, linear_fc2=TERowParallelLinear)
    else:
        sub = MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear)
    return MultimodalProjector(config, sub, "mlp", input_size=cfg.encoder.output_size)


def _megatron_module():
    from megatron.core.transformer.module import MegatronModule

    return MegatronModule


class EcomVLM(_megatron_module()):
    """One pipeline stage of the composed VLM. Stage 0 owns encoder + projector + embedding.

    A MegatronModule, so ``sharded_state_dict()`` (megatron distributed checkpoints, any TP/PP on reload) comes
    from the children: megatron modules shard themselves, the HF-wrapped Qwen2.5-ViT is saved as replicated.
    """

    def __init__(self, cfg: VLMConfig, parallel: ParallelConfig, *, pre_process: bool = True,
                 post_process: bool = True, params_dtype=torch.float32,
                 config_overrides: dict[str, Any] | None = None) -> None:
        overrides = dict(config_overrides or {})
        language_model = build_gpt(cfg.decoder, parallel, pre_process=pre_process, post_process=post_process,
                                   params_dtype=params_dtype, scatter_embedding_sequence_parallel=False, **overrides)
        super().__init__(config=language_model.config)
        self.language_model = language_model
        self.cfg = cfg
        self.pre_process, self.post_process = pre_process, post_process
        self.pad_image_tokens_to = 16 if overrides.get("fp8") else 1  # FP8 GEMMs need multiples of 16
        self.model_type = self.language_model.model_type  # read by megatron's schedules
        self.sequence_parallel = parallel.sequence_parallel
        if pre_process:
            self.vision_model = build_encoder(cfg.encoder, parallel, params_dtype)
            self.vision_projection = build_projector(cfg, parallel, params_dtype)
        else:
            self.vision_model = self.vision_projection = None

    # read by megatron's finalize_model_grads (tied-embedding sync across pipeline stages)
    @property
    def share_embeddings_and_output_weights(self) -> bool:
        return self.language_model.share_embeddings_and_output_weights

    def shared_embedding_or_output_weight(self):
        return self.language_model.shared_embedding_or_output_weight()

    # megatron's pipeline schedule hands activations between stages through this
    def set_input_tensor(self, input_tensor) -> None:
        if isinstance(input_tensor, (list, tuple)):
            input_tensor = input_tensor[0]
        self.language_model.set_input_tensor(input_tensor)

    def encode_images(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        """Images -> projected embeddings, flattened to [n_image_tokens_total, llm_hidden]."""
        if self.cfg.encoder.family == "qwen2_5_vit":
            if image_grid_thw is None:
                raise ValueError("qwen2_5_vit needs image_grid_thw with pixel_values")
            feats = self.vision_model(pixel_values, image_grid_thw)  # [tokens, out_hidden]
            return self.vision_projection(feats.unsqueeze(1)).squeeze(1)
        feats = self.vision_model(pixel_values)  # [n_images, tokens, enc_hidden]
        n_tok = feats.shape[1]
        pad = -n_tok % self.pad_image_tokens_to
        if pad:  # e.g. SigLIP's 729 tokens -> 736 under FP8; the padding is dropped after the projector
            feats = torch.nn.functional.pad(feats, (0, 0, 0, pad))
        proj = self.vision_projection(feats.transpose(0, 1).contiguous())  # projector works on [s, b, h]
        return proj[:n_tok].transpose(0, 1).reshape(-1, proj.shape[-1])

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor, pixel_values: torch.Tensor | None,
              image_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        """Text embeddings with image embeddings scattered into the <image> positions -> [s, b, h]."""
        emb = self.language_model.embedding(input_ids=input_ids, position_ids=position_ids)  # [s, b, h]
        if self.cfg.decoder.embedding_scale:  # Gemma: text embeddings x sqrt(hidden), images unscaled
            emb = emb * torch.tensor(self.cfg.decoder.hidden_size ** 0.5, dtype=emb.dtype)
        is_image = input_ids == self.cfg.image_token_id
        n_slots = int(is_image.sum())
        if pixel_values is not None:
            img = self.encode_images(pixel_values, image_grid_thw).to(emb.dtype)
            if img.shape[0] != n_slots:
                raise ValueError(
                    f"mismatched image tokens: the batch has {n_slots} <image> tokens (id {self.cfg.image_token_id}) "
                    f"but its images give {img.shape[0]} embeddings; expand each <image> placeholder to the "
                    f"encoder's tokens per image in the data pipeline")
            emb = emb.transpose(0, 1).clone()  # [b, s, h]: boolean indexing then follows image order
            emb[is_image] = img
            emb = emb.transpose(0, 1).contiguous()
        elif n_slots:
            raise ValueError(f"the batch has {n_slots} <image> tokens but no pixel_values")
        if self.sequence_parallel:
            from megatron.core import tensor_parallel

            emb = tensor_parallel.scatter_to_sequence_parallel_region(emb)
        return emb

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, image_grid_thw: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, packed_seq_params=None, attention_mask=None,
                runtime_gather_output: bool | None = None) -> torch.Tensor:
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand_as(input_ids)
        decoder_input = self.embed(input_ids, position_ids, pixel_values, image_grid_thw) if self.pre_process else None
        return self.language_model(input_ids, position_ids, attention_mask=attention_mask, decoder_input=decoder_input,
                                   labels=labels, packed_seq_params=packed_seq_params,
                                   runtime_gather_output=runtime_gather_output)


def build_vlm(cfg: VLMConfig, parallel: ParallelConfig, *, params_dtype=torch.float32, world_size: int | None = None,
              pre_process: bool | None = None, post_process: bool | None = None, precision=None,
              config_overrides: dict[str, Any] | None = None) -> EcomVLM:
    """Build this rank's stage of the VLM. Validates the parallel layout against both towers first."""
    from megatron.core import parallel_state

    if world_size is None:
        world_size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    validate_parallel(parallel, world_size, num_attention_heads=cfg.decoder.num_attention_heads,
                      num_query_groups=cfg.decoder.num_query_groups, num_layers=cfg.decoder.num_layers,
                      vocab_size=cfg.decoder.vocab_size, te_available=te_available())
    tp = parallel.tensor_model_parallel_size
    if cfg.encoder.family == "siglip" and cfg.encoder.num_attention_heads % tp:
        from ecomvlm.recipes.models.parallel import ParallelConfigError

        raise ParallelConfigError(f"encoder num_attention_heads={cfg.encoder.num_attention_heads} is not divisible "
                                  f"by TP={tp}")
    if cfg.image_token_id < 0:
        raise ValueError("VLMConfig.image_token_id is unset: set it to the tokenizer's id of '<image>'")
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage()
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage()
    overrides = dict(config_overrides or {})
    if precision is not None:  # a registry.PrecisionConfig: dtype + FP8 settings (validated there)
        params_dtype = precision.dtype
        overrides.update(precision.transformer_overrides())
    return EcomVLM(cfg, parallel, pre_process=pre_process, post_process=post_process, params_dtype=params_dtype,
                   config_overrides=overrides)
