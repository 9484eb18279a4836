"""Per-sample preprocessing: images (per encoder image mode), chat template (per decoder), placeholder expansion,
loss mask, image budget and truncation. Knows encoders only through :class:`ImageSpec` and decoders only through the
tokenizer + :class:`ChatFormat` (no megatron import here).
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ecomvlm.data_modules.chat_templates import IMAGE_TOKEN, ChatFormat, llava_to_messages, render
from ecomvlm.data_modules.config import DataConfig
from ecomvlm.data_modules.images import to_rgb  # noqa: F401 - used here, and imported from here

IMAGE_MODES = ("fixed", "native", "anyres")


@dataclass(frozen=True)
class ImageSpec:
    """What the data pipeline needs to know about a vision encoder (its family's ``image_spec()`` makes one).

    Modes:
    - ``fixed``: every image resized to ``image_size`` square (SigLIP at one view per image);
    - ``native``: Qwen2-VL's resize to a multiple of patch x merge within [min_pixels, max_pixels], patches in
      merge-window order (Qwen2.5-ViT);
    - ``anyres``: LLaVA-OneVision's AnyRes (``anyres_max_<max_tiles>``): a single-image sample is seen as a base view
      plus tiles of ``image_size`` on the best of ``grid_pinpoints``; each image of a multi-image sample is one
      padded-square view. Pixels and token counts are transformers' LlavaOnevision processor's.
    """

    mode: str
    patch_size: int
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    image_size: int = 0  # fixed, anyres (the tile)
    spatial_merge_size: int = 1  # native
    temporal_patch_size: int = 1
    min_pixels: int = 0
    max_pixels: int = 0
    grid_pinpoints: tuple[tuple[int, int], ...] = ()  # anyres: (height, width) grid resolutions
    max_tiles: int = 9  # anyres: grids beyond this many tiles are scaled down (anyres_max_9)

    def __post_init__(self) -> None:
        if self.mode not in IMAGE_MODES:
            raise ValueError(f"image mode {self.mode!r}; choose one of {IMAGE_MODES}")
        if self.mode == "anyres" and not self.grid_pinpoints:
            raise ValueError("image mode anyres needs grid_pinpoints")

    @property
    def factor(self) -> int:
        return self.patch_size * self.spatial_merge_size

    @property
    def fixed_tokens(self) -> int | None:
        """Tokens per image when every image gives the same number (fixed mode), else None."""
        return (self.image_size // self.patch_size) ** 2 if self.mode == "fixed" else None

    @property
    def single_view_tokens(self) -> int:
        """anyres: one view + its newline token."""
        return (self.image_size // self.patch_size) ** 2 + 1

    def tokens(self, sizes: list[tuple[int, int]], max_pixels: int | None = None,
               single_views: bool = False) -> list[int]:
        """LLM tokens of each image of one sample, from the (width, height) of its images."""
        if self.mode == "fixed":
            return [self.fixed_tokens] * len(sizes)
        if self.mode == "anyres":
            if len(sizes) != 1 or single_views:
                return [self.single_view_tokens] * len(sizes)
            (w, h), = sizes
            return [anyres_tokens(h, w, self.grid_pinpoints, self.image_size, self.patch_size, self.max_tiles)]
        out = []
        for w, h in sizes:
            hh, ww = smart_resize(h, w, self.factor, self.min_pixels, max_pixels or self.max_pixels)
            out.append((hh // self.patch_size) * (ww // self.patch_size) // self.spatial_merge_size ** 2)
        return out

    def process(self, images: list[Image.Image], max_pixels: int | None = None,
                single_views: bool = False) -> dict[str, Any]:
        """-> pixel_values (+ image_grid_thw for native resolution, image_sizes / image_tiles for anyres) and the LLM
        tokens of each image."""
        images = [to_rgb(im) for im in images]
        out = {"pixel_values": None, "image_grid_thw": None, "image_sizes": None, "image_tiles": None,
               "tokens": self.tokens([im.size for im in images], max_pixels, single_views)}
        if not images:
            return out
        mean = np.array(self.image_mean, dtype=np.float32)[:, None, None]
        std = np.array(self.image_std, dtype=np.float32)[:, None, None]
        if self.mode == "fixed":
            arrs = []
            for im in images:
                a = np.asarray(im.resize((self.image_size, self.image_size), Image.BICUBIC), dtype=np.float32)
                arrs.append((a.transpose(2, 0, 1) / 255.0 - mean) / std)
            out["pixel_values"] = torch.from_numpy(np.stack(arrs))
        elif self.mode == "anyres":
            multi = len(images) > 1 or single_views
            # a nested list is one multi-image sample (one padded-square view each); a lone image asked for as a
            # single view goes in twice (the processor's views do not depend on the other images)
            batch = ([images] if len(images) > 1 else [images * 2]) if multi else images
            proc = _anyres_processor(self)(images=batch, return_tensors="pt")
            tiles = [1 if multi else num_tiles(im.height, im.width, self.grid_pinpoints, self.image_size)
                     for im in images]
            out["pixel_values"] = torch.cat([proc["pixel_values"][i, :t] for i, t in enumerate(tiles)])
            out["image_sizes"] = proc["image_sizes"][: len(images)].to(torch.long)
            out["image_tiles"] = torch.tensor(tiles, dtype=torch.long)
        else:
            patches, grids = [], []
            for im in images:
                h, w = smart_resize(im.height, im.width, self.factor, self.min_pixels, max_pixels or self.max_pixels)
                a = np.asarray(im.resize((w, h), Image.BICUBIC), dtype=np.float32).transpose(2, 0, 1) / 255.0
                flat, gh, gw = qwen_patchify((a - mean) / std, self.patch_size, self.spatial_merge_size,
                                             self.temporal_patch_size)
                patches.append(flat)
                grids.append([1, gh, gw])
            out["pixel_values"] = torch.from_numpy(np.concatenate(patches))
            out["image_grid_thw"] = torch.tensor(grids, dtype=torch.long)
        return out


def default_pinpoints(tile: int, max_side: int = 6) -> tuple[tuple[int, int], ...]:
    """LLaVA-OneVision's grids: 1x1 ... 6x6 tiles of `tile` pixels, as (height, width)."""
    return tuple((h * tile, w * tile) for h in range(1, max_side + 1) for w in range(1, max_side + 1))


def select_best_resolution(orig_hw: tuple[int, int], pinpoints) -> tuple[int, int]:
    """The grid that keeps the most of the image at the least padding (transformers' select_best_resolution)."""
    oh, ow = orig_hw
    best, max_eff, min_waste = None, 0, float("inf")
    for h, w in pinpoints:
        scale = min(w / ow, h / oh)
        eff = min(int(ow * scale) * int(oh * scale), ow * oh)
        waste = h * w - eff
        if eff > max_eff or (eff == max_eff and waste < min_waste):
            best, max_eff, min_waste = (h, w), eff, waste
    return best


def num_tiles(orig_h: int, orig_w: int, pinpoints, tile: int) -> int:
    """Views of a single image under AnyRes: the base view + the grid's tiles."""
    bh, bw = select_best_resolution((orig_h, orig_w), pinpoints)
    return 1 + (bh // tile) * (bw // tile)


def anyres_tokens(orig_h: int, orig_w: int, pinpoints, tile: int, patch: int, max_tiles: int) -> int:
    """LLM tokens of one single-image AnyRes sample: base view + the unpadded (and, past max_tiles, bilinearly
    reduced) grid + one newline per grid row (transformers' LlavaOnevision arithmetic, rounding included)."""
    side = tile // patch
    bh, bw = select_best_resolution((orig_h, orig_w), pinpoints)
    cur_h, cur_w = side * (bh // tile), side * (bw // tile)
    if orig_w / orig_h > cur_w / cur_h:
        new_h = int(round(orig_h * (cur_w / orig_w), 7))
        cur_h -= 2 * ((cur_h - new_h) // 2)
    else:
        new_w = int(round(orig_w * (cur_h / orig_h), 7))
        cur_w -= 2 * ((cur_w - new_w) // 2)
    ratio = math.sqrt(cur_h * cur_w / (max_tiles * side ** 2))
    if ratio > 1.1:
        cur_h, cur_w = int(cur_h // ratio), int(cur_w // ratio)
    return side * side + cur_h * cur_w + cur_h


@functools.lru_cache(maxsize=8)
def _anyres_processor(spec: ImageSpec):
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    return LlavaOnevisionImageProcessorPil(size={"height": spec.image_size, "width": spec.image_size},
                                           image_grid_pinpoints=[list(p) for p in spec.grid_pinpoints],
                                           image_mean=list(spec.image_mean), image_std=list(spec.image_std))


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
    image_sizes: torch.Tensor | None = None  # anyres: [n_images, 2] original (height, width)
    image_tiles: torch.Tensor | None = None  # anyres: [n_images] views per image (1: a single view)
    index: int = -1  # the sample's index in its shard folder (the loader's accounting)
    # images not decoded yet (build_sample(decode_pixels=False)): (bytes, max_pixels, single_views) for finish_pixels
    pending_images: tuple | None = None

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


def over_budget_policy(policy: str, mode: str) -> str:
    """What happens to a sample whose images exceed data.max_image_tokens (images are dropped after it, if needed)."""
    if policy == "auto":
        return {"native": "downscale", "anyres": "single_view"}.get(mode, "drop_images")
    allowed = {"downscale": ("native",), "single_view": ("anyres",)}.get(policy)
    if allowed and mode not in allowed:
        raise ValueError(f"data.over_budget={policy} needs an encoder in image mode {allowed[0]} (this one is {mode})")
    return policy


def build_sample(meta: dict[str, Any], image_bytes: list[bytes], tokenizer, fmt: ChatFormat, spec: ImageSpec,
                 cfg: DataConfig, image_token_id: int, decode_pixels: bool = True) -> Sample:
    """One shard sample -> token ids (image placeholders expanded) + loss mask + pixels. Raises SampleTooLong.

    Token counts need only the images' sizes (read from their headers); with ``decode_pixels=False`` the pixels are
    left for :func:`finish_pixels`, so a packing window can hold many samples without their decoded images."""
    notes = []
    conversations = meta["conversations"]
    if len(image_bytes) > cfg.max_images:
        conversations = _drop_placeholders(conversations, cfg.max_images)
        image_bytes = image_bytes[: cfg.max_images]
        notes.append("images_capped")
    images = [Image.open(io.BytesIO(b)) for b in image_bytes]
    max_pixels, single_views = None, False
    budget = cfg.max_image_tokens
    if budget is not None and images and sum(spec.tokens([im.size for im in images])) > budget:
        policy = over_budget_policy(cfg.over_budget, spec.mode)
        if policy == "downscale":  # shrink every image's pixel budget until the sample fits
            max_pixels = spec.max_pixels
            while max_pixels > spec.min_pixels and sum(spec.tokens([im.size for im in images], max_pixels)) > budget:
                max_pixels = int(max_pixels * 0.8)
            notes.append("downscaled")
        if policy == "single_view":  # AnyRes: the base view instead of the grid
            single_views = True
            notes.append("single_view")
        keep = len(images)
        while keep and sum(spec.tokens([im.size for im in images[:keep]], max_pixels, single_views)) > budget:
            keep -= 1
        if keep < len(images):
            conversations = _drop_placeholders(conversations, keep)
            images = images[:keep]
            notes.append("images_capped")
    tokens_per_image = iter(spec.tokens([im.size for im in images], max_pixels, single_views))
    ids: list[int] = []
    mask: list[int] = []
    image_spans: list[tuple[int, int]] = []
    segments: list[tuple[str | None, bool]] = []  # text pieces and image slots (None), in order
    for text, trainable in render(llava_to_messages(conversations), fmt):
        for j, piece in enumerate(text.split(IMAGE_TOKEN)):
            if j:
                segments.append((None, False))
            if piece:
                segments.append((piece, trainable))
    texts = [piece for piece, _ in segments if piece is not None]
    # one batched call: each piece is still tokenized on its own, at a tenth of the per-call overhead
    encoded = iter(tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else [])
    for piece, trainable in segments:
        if piece is None:
            n = next(tokens_per_image)
            image_spans.append((len(ids), len(ids) + n))
            ids += [image_token_id] * n
            mask += [0] * n
        else:
            seg = next(encoded)
            ids += seg
            mask += [int(trainable)] * len(seg)
    if len(ids) > cfg.max_seq_length:
        last_image_end = image_spans[-1][1] if image_spans else 0
        if cfg.truncation == "skip" or last_image_end > cfg.max_seq_length or not any(mask[:cfg.max_seq_length]):
            raise SampleTooLong(f"{len(ids)} tokens > max_seq_length {cfg.max_seq_length}")
        ids, mask = ids[: cfg.max_seq_length], mask[: cfg.max_seq_length]
        notes.append("truncated")
    kept = image_bytes[: len(images)]
    sample = Sample(ids, mask, None, None, len(images), notes, pending_images=(kept, max_pixels, single_views))
    return finish_pixels(sample, spec) if decode_pixels else sample


def finish_pixels(sample: Sample, spec: ImageSpec) -> Sample:
    """Decode and process the images of a sample built with ``decode_pixels=False`` (in place; returns it)."""
    if sample.pending_images is None:
        return sample
    blobs, max_pixels, single_views = sample.pending_images
    proc = spec.process([Image.open(io.BytesIO(b)) for b in blobs], max_pixels=max_pixels,
                        single_views=single_views)
    sample.pixel_values, sample.image_grid_thw = proc["pixel_values"], proc["image_grid_thw"]
    sample.image_sizes, sample.image_tiles = proc["image_sizes"], proc["image_tiles"]
    sample.pending_images = None
    return sample
