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

from typing import Any

import torch
from megatron.core.transformer.module import MegatronModule

from ecomvlm.recipes.models.decoders.gpt import te_available
from ecomvlm.recipes.models.parallel import ParallelConfig, ParallelConfigError, validate_parallel
from ecomvlm.recipes.models.registry import VLMConfig


class EcomVLM(MegatronModule):
    """One pipeline stage of the composed VLM. Stage 0 owns encoder + projector + embedding.

    A MegatronModule, so ``sharded_state_dict()`` (megatron distributed checkpoints, any
    TP/PP on reload) comes from the children: megatron modules shard themselves, an HF-wrapped tower is saved as
    replicated.
    """

    def __init__(self, cfg: VLMConfig, parallel: ParallelConfig, *, pre_process: bool = True,
                 post_process: bool = True, params_dtype=torch.float32,
                 config_overrides: dict[str, Any] | None = None) -> None:
        overrides = dict(config_overrides or {})
        language_model = cfg.decoder.build(parallel, pre_process=pre_process, post_process=post_process,
                                           params_dtype=params_dtype, scatter_embedding_sequence_parallel=False,
                                           **overrides)
        super().__init__(config=language_model.config)
        self.language_model = language_model
        self.cfg = cfg
        self.pre_process, self.post_process = pre_process, post_process
        self.model_type = self.language_model.model_type  # read by megatron's schedules
        self.sequence_parallel = parallel.sequence_parallel
        if pre_process:
            self.vision_model = cfg.encoder.build(parallel, params_dtype)
            self.vision_projection = cfg.projector.build(cfg.decoder, cfg.encoder.output_size, parallel, params_dtype)
            if cfg.encoder.uses_image_newline:  # LLaVA-OneVision's learned row separator, replicated over TP
                h = cfg.decoder.hidden_size
                self.image_newline = torch.nn.Parameter(torch.randn(h, dtype=params_dtype) / h ** 0.5)
                self.image_newline.average_gradients_across_tp_domain = True
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

    def encode_images(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None,
                      image_sizes: torch.Tensor | None = None, image_tiles: torch.Tensor | None = None) -> torch.Tensor:
        """Images -> projected embeddings in token order, [n_image_tokens_total, llm_hidden]."""
        feats = self.cfg.encoder.features(self.vision_model, pixel_values, image_grid_thw)  # [groups, tokens, h]
        proj = self.vision_projection(feats.transpose(0, 1).contiguous()).transpose(0, 1)  # projector: [s, b, h]
        return self.cfg.encoder.pack(proj, image_sizes, image_tiles, getattr(self, "image_newline", None))

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor, pixel_values: torch.Tensor | None,
              image_grid_thw: torch.Tensor | None = None, image_sizes: torch.Tensor | None = None,
              image_tiles: torch.Tensor | None = None) -> torch.Tensor:
        """Text embeddings with image embeddings scattered into the <image> positions -> [s, b, h]."""
        emb = self.language_model.embedding(input_ids=input_ids, position_ids=position_ids)  # [s, b, h]
        scale = self.cfg.decoder.embedding_multiplier()
        if scale is not None:  # e.g. Gemma: text embeddings x sqrt(hidden), images unscaled
            emb = emb * torch.tensor(scale, dtype=emb.dtype)
        is_image = input_ids == self.cfg.image_token_id
        n_slots = int(is_image.sum())
        if pixel_values is not None:
            img = self.encode_images(pixel_values, image_grid_thw, image_sizes, image_tiles).to(emb.dtype)
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
                runtime_gather_output: bool | None = None, image_sizes: torch.Tensor | None = None,
                image_tiles: torch.Tensor | None = None) -> torch.Tensor:
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand_as(input_ids)
        decoder_input = (self.embed(input_ids, position_ids, pixel_values, image_grid_thw, image_sizes, image_tiles)
                         if self.pre_process else None)
        return self.language_model(input_ids, position_ids, attention_mask=attention_mask, decoder_input=decoder_input,
                                   labels=labels, packed_seq_params=packed_seq_params,
                                   runtime_gather_output=runtime_gather_output)


def build_vlm(cfg: VLMConfig, parallel: ParallelConfig, *, params_dtype=torch.float32, world_size: int | None = None,
              pre_process: bool | None = None, post_process: bool | None = None,
              config_overrides: dict[str, Any] | None = None) -> EcomVLM:
    """Build this rank's stage of the VLM. Validates the parallel layout against both towers first."""
    from megatron.core import parallel_state

    if world_size is None:
        world_size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    dec = cfg.decoder
    validate_parallel(parallel, world_size, num_attention_heads=dec.num_attention_heads,
                      num_query_groups=dec.num_query_groups, num_layers=dec.num_layers, vocab_size=dec.vocab_size,
                      te_available=te_available())
    problems = cfg.encoder.check_parallel(parallel.tensor_model_parallel_size)
    if problems:
        raise ParallelConfigError("; ".join(problems))
    if cfg.image_token_id < 0:
        raise ValueError("VLMConfig.image_token_id is unset: set it to the tokenizer's id of '<image>'")
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage()
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage()
    return EcomVLM(cfg, parallel, pre_process=pre_process, post_process=post_process, params_dtype=params_dtype,
                   config_overrides=config_overrides)
