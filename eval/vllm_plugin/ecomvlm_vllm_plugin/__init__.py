"""vLLM plugin: LLaVA-OneVision prompts with several images, processed the way transformers processes them.

transformers (LlavaOnevisionProcessor + get_image_features with ``batch_num_images``) gives each image of a
multi-image prompt its base view only (no AnyRes grid): base features + one newline, as the LLaVA-OneVision paper
trains multi-image data. vLLM 0.32 hands the HF processor a prompt's images as a flat list, which transformers
reads as one sample per image, so every image gets its AnyRes grid; the answers then differ from transformers' on
the same checkpoint. This plugin re-registers vLLM's own LlavaOneVision model class with a processor that, when a
prompt has more than one image:

- processes the prompt's images together (never per image from the processor cache, whose entries are per image);
- keeps each image's base view only (``pixel_values[:1]``): vLLM's model then merges it as base + newline, which is
  transformers' multi-image path;
- writes base + 1 placeholder tokens per image (transformers' count);
- gives those images their own encoder-cache identity, so a single-image prompt with the same picture never
  reuses a base-only embedding.

Single-image prompts are untouched. Loaded by vLLM in every process through the ``vllm.general_plugins`` entry
point; standard library + vLLM only (this runs in vLLM's environment, without ecomvlm).
"""

from __future__ import annotations

import hashlib

_REGISTERED = False


def _image_count(mm_items) -> int:
    try:
        return mm_items.get_count("image", strict=False)
    except (KeyError, TypeError):
        return 0


def register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from vllm.model_executor.models import llava_onevision as ov
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.processing import PromptReplacement

    class MultiImageBaseViewProcessor(ov.LlavaOnevisionMultiModalProcessor):
        def _cached_apply_hf_processor(self, inputs, timing_ctx):
            if _image_count(inputs.mm_data_items) > 1:  # the images are one sample: process them together
                return self._apply_hf_processor(inputs, timing_ctx)
            return super()._cached_apply_hf_processor(inputs, timing_ctx)

        def _apply_hf_processor_main(self, mm_items, hf_kwargs):
            out = super()._apply_hf_processor_main(mm_items, hf_kwargs)
            if _image_count(mm_items) > 1 and out.get("pixel_values") is not None:
                pv = out["pixel_values"]
                out["pixel_values"] = pv[:, :1] if hasattr(pv, "dim") and pv.dim() == 5 else [p[:1] for p in pv]
            return out

        def _get_mm_hashes(self, inputs):
            hashes = super()._get_mm_hashes(inputs)
            if _image_count(inputs.mm_data_items) > 1 and hashes.get("image"):
                hashes = dict(hashes)
                hashes["image"] = [hashlib.sha256(f"{h}:base-view".encode()).hexdigest() for h in hashes["image"]]
            return hashes

        def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
            updates = list(super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs))
            if _image_count(mm_items) <= 1:
                return updates
            from vllm.model_executor.models.vision import get_num_selected_vision_tokens

            hf_config = self.info.get_hf_config()
            encoder = self.info.get_vision_encoder_info()
            size = encoder.get_image_size()
            base = get_num_selected_vision_tokens(
                encoder.get_num_image_tokens(image_width=size, image_height=size),
                hf_config.vision_feature_select_strategy)
            image_token_id = hf_config.image_token_index
            return [PromptReplacement(modality="image", target=[image_token_id],
                                      replacement=[image_token_id] * (base + 1))
                    if getattr(u, "modality", None) == "image" else u for u in updates]

    MULTIMODAL_REGISTRY.register_processor(
        MultiImageBaseViewProcessor, info=ov.LlavaOnevisionProcessingInfo,
        dummy_inputs=ov.LlavaOnevisionDummyInputsBuilder)(ov.LlavaOnevisionForConditionalGeneration)
    _REGISTERED = True
