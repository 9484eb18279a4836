"""Tiny random complete VLMs (Gemma3, Qwen2.5-VL, Qwen3-VL) written as HF checkpoint folders: model, processor,
tokenizer, chat template. Nothing is downloaded: the tokenizer is our offline byte-level BPE
(data_modules/tiny_tokenizer.py) with the model family's special tokens, and the weights are random.

They keep what the real processors and models do with images - Gemma3's pooled image tokens between
``<start_of_image>``/``<end_of_image>`` (and pan & scan crops), Qwen's native-resolution patches with
``image_grid_thw`` and mRoPE - at toy sizes, so the AutoModel backend, the eval backend and the demo run on CPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable

FAMILIES = ("gemma3", "qwen2_5_vl", "qwen3_vl")
GEMMA3_TOKENS = {"boi_token": "<start_of_image>", "image_token": "<image_soft_token>", "eoi_token": "<end_of_image>"}
QWEN_TOKENS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "vision_start_token": "<|vision_start|>",
               "vision_end_token": "<|vision_end|>"}
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"  # what Qwen's chat templates write for an image part


def _corpus(extra: Iterable[str] | None) -> list[str]:
    from ecomvlm.data_modules.synth import BRANDS, CATEGORIES, COLOURS, PATTERNS
    from ecomvlm.data_modules.tiny_tokenizer import DEFAULT_CORPUS

    return DEFAULT_CORPUS + list(COLOURS) + list(PATTERNS) + list(BRANDS) + list(CATEGORIES) + list(extra or [])


def _tokenizer(chat_format: str, specials: dict[str, str], image_text: str, corpus: Iterable[str] | None,
               vocab_size: int, tokenizer_dir: str | Path | None = None):
    """Our tiny tokenizer of `chat_format` (or the one saved at `tokenizer_dir`, with its own chat template) + the
    family's named special tokens; its chat template writes `image_text` for an image part (what the real template
    writes)."""
    from transformers import AutoTokenizer

    from ecomvlm.data_modules.chat_templates import IMAGE_TOKEN, get_chat_format
    from ecomvlm.data_modules.tiny_tokenizer import build_tiny_tokenizer

    if tokenizer_dir is not None:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        template = tok.chat_template
        if not template or IMAGE_TOKEN not in template:
            raise ValueError(f"tokenizer {tokenizer_dir}: its chat template writes no {IMAGE_TOKEN} for image parts "
                             f"(build it with data_modules/tiny_tokenizer.py)")
    else:
        tok = build_tiny_tokenizer(chat_format, corpus=_corpus(corpus), vocab_size=vocab_size)
        template = get_chat_format(chat_format).jinja()
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        tok = AutoTokenizer.from_pretrained(tmp, extra_special_tokens=specials)
    tok.chat_template = template.replace(IMAGE_TOKEN, image_text)
    return tok


def tiny_gemma3(out: str | Path, *, corpus: Iterable[str] | None = None, image_size: int = 32, patch_size: int = 8,
                tokens_per_image: int = 4, vocab_size: int = 512, seed: int = 0, hidden_size: int = 64,
                num_layers: int = 2, vision_hidden_size: int = 32, vision_layers: int = 2,
                tokenizer_dir: str | Path | None = None, heads: int | None = None) -> Path:
    """Gemma3ForConditionalGeneration + Gemma3Processor (SigLIP tower, pooled image tokens, local and global
    attention layers). ``tokenizer_dir``: start from that saved tiny tokenizer and its chat template (the demo's)
    instead of a Gemma3-format one. ``heads``: decoder attention heads (default hidden_size / 16; vLLM's CPU
    attention needs a head size of 32 or more)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_gemma3 import Gemma3ImageProcessor

    tok = _tokenizer("gemma3", GEMMA3_TOKENS, GEMMA3_TOKENS["boi_token"], corpus, vocab_size, tokenizer_dir)
    heads = heads or max(2, hidden_size // 16)
    image_processor = Gemma3ImageProcessor(size={"height": image_size, "width": image_size},
                                           image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, chat_template=tok.chat_template,
                                image_seq_length=tokens_per_image)
    config = Gemma3Config(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                         head_dim=hidden_size // heads, max_position_embeddings=4096, sliding_window=16,
                         query_pre_attn_scalar=hidden_size // heads, rms_norm_eps=1e-6,
                         # local layers with a global one last (the real 5:1 pattern would leave a 2-layer model
                         # with local layers only, and answers 16 tokens past the images could not see them)
                         layer_types=["sliding_attention"] * (num_layers - 1) + ["full_attention"]),
        vision_config=dict(hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
                           num_hidden_layers=vision_layers, num_attention_heads=4, image_size=image_size,
                           patch_size=patch_size),
        mm_tokens_per_image=tokens_per_image, image_token_index=tok.image_token_id,
        boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id)
    return _save(Gemma3ForConditionalGeneration, config, processor, out, seed, tok, init=_gemma3_projector)


def _gemma3_projector(model) -> None:
    """transformers initialises Gemma3's projection matrix to zeros, which would cut the vision tower off from the
    loss until the projector has taken a step; a released checkpoint's is trained, so the stand-in's is random."""
    import torch

    with torch.no_grad():
        w = model.model.multi_modal_projector.mm_input_projection_weight
        w.normal_(0.0, w.shape[0] ** -0.5)


def _qwen_image_processor(kind: str, patch_size: int, max_pixels: int, min_pixels: int):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
                                 patch_size=patch_size, temporal_patch_size=2, merge_size=2,
                                 image_mean=[0.5] * 3, image_std=[0.5] * 3)


def _mrope_section(head_dim: int) -> list[int]:
    """mRoPE's (temporal, height, width) split of the rotary half of a head, in Qwen's proportions (16/24/24 of 64
    at head size 128): the sections must add up to head_dim / 2."""
    half = head_dim // 2
    temporal = half // 4
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]


def tiny_qwen2_5_vl(out: str | Path, *, corpus: Iterable[str] | None = None, patch_size: int = 8,
                    max_pixels: int = 32 * 32, vocab_size: int = 512, seed: int = 0, heads: int = 4) -> Path:
    """Qwen2_5_VLForConditionalGeneration + Qwen2_5_VLProcessor (window-attention ViT, patch merger, mRoPE).
    `heads` sets the LLM's head size (64 / heads; vLLM's CPU attention needs 32 or more)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tok = _tokenizer("chatml", QWEN_TOKENS, QWEN_IMAGE, corpus, vocab_size)
    ip = _qwen_image_processor("qwen2_5_vl", patch_size, max_pixels, (2 * patch_size) ** 2)
    processor = Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                                    chat_template=tok.chat_template)
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in QWEN_TOKENS.items()}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                         max_position_embeddings=2048,
                         rope_scaling={"type": "mrope", "mrope_section": _mrope_section(64 // heads)},
                         tie_word_embeddings=False),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64,
                           patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2, window_size=32,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["image_token"], video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_start_token"], vision_end_token_id=ids["vision_end_token"])
    return _save(Qwen2_5_VLForConditionalGeneration, config, processor, out, seed, tok)


def tiny_qwen3_vl(out: str | Path, *, corpus: Iterable[str] | None = None, patch_size: int = 8,
                  max_pixels: int = 32 * 32, vocab_size: int = 512, seed: int = 0, heads: int = 4) -> Path:
    """Qwen3VLForConditionalGeneration + Qwen3VLProcessor (DeepStack ViT, interleaved mRoPE).
    `heads` sets the LLM's head size (64 / heads; vLLM's CPU attention needs 32 or more)."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tok = _tokenizer("chatml", QWEN_TOKENS, QWEN_IMAGE, corpus, vocab_size)
    ip = _qwen_image_processor("qwen3_vl", patch_size, max_pixels, (2 * patch_size) ** 2)
    processor = Qwen3VLProcessor(image_processor=ip, tokenizer=tok, video_processor=Qwen3VLVideoProcessor(),
                                 chat_template=tok.chat_template)
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in QWEN_TOKENS.items()}
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=64 // heads,
                         max_position_embeddings=2048,
                         rope_scaling={"rope_type": "default", "mrope_section": _mrope_section(64 // heads),
                                       "mrope_interleaved": True},
                         tie_word_embeddings=False),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64,
                           patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2,
                           num_position_embeddings=64, deepstack_visual_indexes=[0]),
        image_token_id=ids["image_token"], video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_start_token"], vision_end_token_id=ids["vision_end_token"])
    return _save(Qwen3VLForConditionalGeneration, config, processor, out, seed, tok)


def _save(model_class, config, processor, out: str | Path, seed: int, tok, init=None) -> Path:
    import torch

    out = Path(out)
    config.pad_token_id = tok.pad_token_id
    for c in (config, getattr(config, "text_config", None)):  # the family defaults name the real vocabulary's ids
        if c is not None:
            c.pad_token_id, c.eos_token_id, c.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    torch.manual_seed(seed)
    model = model_class(config).eval()
    if init is not None:
        init(model)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def tiny_vlm(family: str, out: str | Path, **kw) -> Path:
    makers = {"gemma3": tiny_gemma3, "qwen2_5_vl": tiny_qwen2_5_vl, "qwen3_vl": tiny_qwen3_vl}
    if family not in makers:
        raise ValueError(f"no tiny builder for {family!r}; choose one of {sorted(makers)}")
    return makers[family](out, **kw)
