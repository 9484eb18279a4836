"""EcomVLM for transformers (remote code): LLaVA's layout - ``model.vision_tower`` (here Qwen2.5-VL's vision tower
with its patch merger, native resolution), ``model.multi_modal_projector`` (mlp2x_gelu), ``model.language_model``
(any HF decoder) and ``lm_head`` - with image embeddings scattered into the ``<image>`` token positions."""

import dataclasses

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration, LlavaModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import LlavaCausalLMOutputWithPast, LlavaModelOutputWithPast

from .configuration_ecomvlm import EcomVLMConfig


def _output(cls, source, **fields):
    """`cls` filled from `source`'s fields that `cls` has (their names move between transformers releases)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in {**dict(source), **fields}.items() if k in names})


class EcomVLMModel(LlavaModel):
    config_class = EcomVLMConfig

    def __init__(self, config: EcomVLMConfig):
        super().__init__(config)
        # the projector reads the patch merger's output, not the tower's hidden size
        h = config.text_config.hidden_size
        self.multi_modal_projector.linear_1 = nn.Linear(config.vision_config.out_hidden_size, h,
                                                        bias=config.multimodal_projector_bias)
        self.post_init()

    def get_image_features(self, pixel_values, image_grid_thw=None, return_dict=False, **kwargs):
        """Images (Qwen2-VL patches + grid) -> projected embeddings, one tensor per image (as ``pooler_output``, a
        tuple, with ``return_dict=True``: what vLLM's Transformers backend asks for)."""
        if image_grid_thw is None:
            raise ValueError("EcomVLM needs image_grid_thw with pixel_values (the Qwen2-VL image processor makes both)")
        out = self.vision_tower(pixel_values, grid_thw=image_grid_thw, return_dict=True)
        feats = self.multi_modal_projector(out.pooler_output)
        merge = self.config.vision_config.spatial_merge_size
        per_image = tuple(torch.split(feats, (image_grid_thw.prod(-1) // merge ** 2).tolist()))
        if return_dict:
            return BaseModelOutputWithPooling(last_hidden_state=feats, pooler_output=per_image)
        return list(per_image)

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                image_grid_thw=None, mm_token_type_ids=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            feats = torch.cat(self.get_image_features(pixel_values, image_grid_thw)).to(inputs_embeds)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds, image_features=feats)
            inputs_embeds = inputs_embeds.masked_scatter(mask, feats)
        kwargs.pop("return_dict", None)
        out = self.language_model(attention_mask=attention_mask, position_ids=position_ids,
                                  inputs_embeds=inputs_embeds, return_dict=True, **kwargs)
        return _output(LlavaModelOutputWithPast, out)


class EcomVLMForConditionalGeneration(LlavaForConditionalGeneration):
    config_class = EcomVLMConfig

    def __init__(self, config: EcomVLMConfig):
        super().__init__(config)
        self.model = EcomVLMModel(config)
        self.post_init()

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                labels=None, logits_to_keep=0, image_grid_thw=None, mm_token_type_ids=None, **kwargs):
        out = self.model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                         position_ids=position_ids, inputs_embeds=inputs_embeds, image_grid_thw=image_grid_thw,
                         **kwargs)
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size,
                                      **kwargs)
        return _output(LlavaCausalLMOutputWithPast, out, loss=loss, logits=logits)
