"""Per-sample preprocessing: images (per encoder image mode), chat template (per decoder), placeholder expansion,
loss mask, image budget and truncation. Knows encoders only through :class:`ImageSpec` and decoders only through the
tokenizer + :class:`ChatFormat` (no megatron import here).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ecomvlm.data_modules.chat_templates import IMAGE_TOKEN, ChatFormat, llava_to_messages, render
from ecomvlm.data_modules.config import DataConfig

IMAGE_MODES = ("fixed", "native")


@dataclass(frozen=True)
class ImageSpec:
    """What the data pipeline needs to know about a vision encoder (its family's ``image_spec()`` makes one).

    Modes: ``fixed`` - every image resized to ``image_size`` square (SigLIP); ``native`` - Qwen2-VL's resize to a
    multiple of patch x merge within [min_pixels, max_pixels], patches in merge-window order (Qwen2.5-ViT).
    """

    mode: str
    patch_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    image_size: int = 0  # fixed
    spatial_merge_size: int = 1  # native
    temporal_patch_size: int = 1
    min_pixels: int = 0
    max_pixels: int = 0

    def __post_init__(self) -> None:
        if self.mode not in IMAGE_MODES:
            raise ValueError(f"image mode {self.mode!r}; choose one of {IMAGE_MODES}")

    @property
    def factor(self) -> int:
        return self.patch_size * self.spatial_merge_size

    @property
    def fixed_tokens(self) -> int | None:
        """Tokens per image when every image gives the same number (fixed mode), else None."""
        return (self.image_size // self.patch_size) ** 2 if self.mode == "fixed" else None

    def tokens_for_size(self, width: int, height: int, max_pixels: int | None = None) -> int:
        if self.mode == "fixed":
            return self.fixed_tokens
        h, w = smart_resize(height, width, self.factor, self.min_pixels, max_pixels or self.max_pixels)
        return (h // self.patch_size) * (w // self.patch_size) // self.spatial_merge_size ** 2

    def process(self, images: list[Image.Image], max_pixels: int | None = None) -> dict[str, Any]:
        """-> pixel_values (+ image_grid_thw for native resolution) and the LLM tokens of each image."""
        mean = np.array(self.image_mean, dtype=np.float32)[:, None, None]
        std = np.array(self.image_std, dtype=np.float32)[:, None, None]
        if self.mode == "fixed":
            arrs = []
            for im in images:
                im = im.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
                a = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0
                arrs.append((a - mean) / std)
            return {"pixel_values": torch.from_numpy(np.stack(arrs)) if arrs else None, "image_grid_thw": None,
                    "tokens": [self.fixed_tokens] * len(images)}
        patches, grids, tokens = [], [], []
        for im in images:
            im = im.convert("RGB")
            h, w = smart_resize(im.height, im.width, self.factor, self.min_pixels, max_pixels or self.max_pixels)
            a = np.asarray(im.resize((w, h), Image.BICUBIC), dtype=np.float32).transpose(2, 0, 1) / 255.0
            flat, gh, gw = qwen_patchify((a - mean) / std, self.patch_size, self.spatial_merge_size,
                                         self.temporal_patch_size)
            patches.append(flat)
            grids.append([1, gh, gw])
            tokens.append(gh * gw // self.spatial_merge_size ** 2)
        return {"pixel_values": torch.from_numpy(np.concatenate(patches)) if patches else None,
                "image_grid_thw": torch.tensor(grids, dtype=torch.long) if grids else None, "tokens": tokens}


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize rule (same arithmetic as transformers' smart_resize)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image aspect ratio {max(height, width) / min(height, width):.0f} > 200 is not supported")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qwen_patchify(image: np.ndarray, patch: int, merge: int, temporal: int) -> tuple[np.ndarray, int, int]:
    """[C, H, W] -> [grid_h * grid_w, C * temporal * patch * patch] in Qwen2-VL's merge-window order."""
    c, h, w = image.shape
    gh, gw = h // patch, w // patch
    x = image.reshape(c, gh // merge, merge, patch, gw // merge, merge, patch).transpose(1, 4, 2, 5, 0, 3, 6)
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], temporal, *x.shape[5:]))
    return np.ascontiguousarray(x.reshape(gh * gw, c * temporal * patch * patch)), gh, gw


@dataclass
class Sample:
    input_ids: list[int]
    loss_mask: list[int]
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    n_images: int
    notes: list[str] = field(default_factory=list)  # e.g. "images_capped", "downscaled", "truncated"

    def __len__(self) -> int:
        return len(self.input_ids)


class SampleTooLong(Exception):
    pass


def _drop_placeholders(conversations: list[dict[str, str]], keep: int) -> list[dict[str, str]]:
    """Keep the first `keep` <image> placeholders, remove the others (with a following newline)."""
    seen = 0
    out = []
    for turn in conversations:
        parts = turn["value"].split(IMAGE_TOKEN)
        text = parts[0]
        for part in parts[1:]:
            seen += 1
            if seen <= keep:
                text += IMAGE_TOKEN + part
            else:
                text += part[1:] if part.startswith("\n") else part
        out.append({**turn, "value": text})
    return out


def build_sample(meta: dict[str, Any], image_bytes: list[bytes], tokenizer, fmt: ChatFormat, spec: ImageSpec,
                 cfg: DataConfig, image_token_id: int) -> Sample:
    """One shard sample -> token ids (image placeholders expanded) + loss mask + pixels. Raises SampleTooLong."""
    notes = []
    conversations = meta["conversations"]
    if len(image_bytes) > cfg.max_images:
        conversations = _drop_placeholders(conversations, cfg.max_images)
        image_bytes = image_bytes[: cfg.max_images]
        notes.append("images_capped")
    images = [Image.open(io.BytesIO(b)) for b in image_bytes]
    max_pixels = None
    if cfg.max_image_tokens is not None and images:
        total = sum(spec.tokens_for_size(im.width, im.height) for im in images)
        if total > cfg.max_image_tokens:
            if spec.fixed_tokens is not None:
                keep = max(0, cfg.max_image_tokens // spec.fixed_tokens)
                conversations = _drop_placeholders(conversations, keep)
                images = images[:keep]
                notes.append("images_capped")
            else:  # shrink every image's pixel budget until the sample fits
                max_pixels = spec.max_pixels
                while max_pixels > spec.min_pixels and sum(
                        spec.tokens_for_size(im.width, im.height, max_pixels) for im in images) > cfg.max_image_tokens:
                    max_pixels = int(max_pixels * 0.8)
                notes.append("downscaled")
    proc = spec.process(images, max_pixels=max_pixels)
    tokens_per_image = iter(proc["tokens"])
    ids: list[int] = []
    mask: list[int] = []
    image_spans: list[tuple[int, int]] = []
    for text, trainable in render(llava_to_messages(conversations), fmt):
        pieces = text.split(IMAGE_TOKEN)
        for j, piece in enumerate(pieces):
            if j:
                n = next(tokens_per_image)
                image_spans.append((len(ids), len(ids) + n))
                ids += [image_token_id] * n
                mask += [0] * n
            if piece:
                seg = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += seg
                mask += [int(trainable)] * len(seg)
    if len(ids) > cfg.max_seq_length:
        last_image_end = image_spans[-1][1] if image_spans else 0
        if cfg.truncation == "skip" or last_image_end > cfg.max_seq_length or not any(mask[:cfg.max_seq_length]):
            raise SampleTooLong(f"{len(ids)} tokens > max_seq_length {cfg.max_seq_length}")
        ids, mask = ids[: cfg.max_seq_length], mask[: cfg.max_seq_length]
        notes.append("truncated")
    return Sample(ids, mask, proc["pixel_values"], proc["image_grid_thw"], len(images), notes)
