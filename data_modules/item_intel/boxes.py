"""Grounding boxes: parsing a grounding model's answer, coordinate conventions, and the post-processing that turns
boxes into crops (paper 3.2.3 and A.5).

Coordinate conventions (``--box-coords``), all ``[x0, y0, x1, y1]``:

- ``original_pixels``: absolute pixels of the image as it was sent (the original unless the pipeline shrank it
  before sending; the shrink is undone);
- ``resized_pixels``: absolute pixels of the model's own resized input, as Qwen2.5-VL answers: the image is
  smart-resized to multiples of ``factor`` (28) within ``[min_pixels, max_pixels]``
  (``data_modules/preprocess.py: smart_resize``) and boxes refer to that size;
- ``norm1000``: 0..1000 normalised to the image's width and height (Qwen2-VL, many other grounding models).

Every box is mapped to pixels of the original, its corners put in order, clipped to the image and dropped when
it is malformed (not four finite numbers), entirely outside the image, or degenerate (thinner than
``min_box_px`` after clipping); each drop and each clip is counted by reason.

Post-processing (one crop per image, Gemma3's square input): expand every box by a margin, merge boxes that
overlap or lie within ``merge_gap`` of each other (repeated until stable), then the smallest square that encloses
all of an image's boxes (at least ``min_crop_px``), shifted to lie inside the image; only where the image is
smaller than the square along an axis is it padded (centred). The crop is resized to the target encoder's square
input (``crop_size``). ``crop_mode="regions"`` instead makes one square per merged box group.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

Box = tuple[float, float, float, float]
CONVENTIONS = ("original_pixels", "resized_pixels", "norm1000")
BOX_KEYS = ("bbox_2d", "bbox", "box", "box_2d", "coordinates", "xyxy")
LABEL_KEYS = ("label", "text", "name", "description")
_QUAD = re.compile(r"[\[(]\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*"
                   r"(-?\d+(?:\.\d+)?)\s*[\])]")


# ------------------------------------------------------------------------------------------------ parsing
def parse_answer(text: str) -> tuple[list[tuple[Any, str]] | None, str | None]:
    """A grounding answer -> ([(raw coordinates, label)], None), or (None, what is wrong).

    Accepted: a JSON list of ``{"bbox_2d": [...], "label": ...}`` objects (Qwen2.5-VL; keys bbox/box/box_2d too),
    ``{"boxes"|"regions"|"objects": [...]}``, a list of 4-number lists, any of these inside ```json fences or with
    text around; failing JSON, ``[x0, y0, x1, y1]`` quadruples anywhere in the text. ``[]`` means no region."""
    t = (text or "").strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", t, re.S)
    body = fence.group(1).strip() if fence else t
    value = _first_json(body)
    if value is not None:
        if isinstance(value, dict):
            for k in ("boxes", "regions", "objects", "results", "detections"):
                if isinstance(value.get(k), list):
                    value = value[k]
                    break
            else:
                value = [value] if any(k in value for k in BOX_KEYS) else None
        if isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
            value = None  # a bare box: the quadruples below take it and any others written in the text
        if isinstance(value, list):
            out: list[tuple[Any, str]] = []
            for e in value:
                if isinstance(e, dict):
                    coords = next((e[k] for k in BOX_KEYS if k in e), None)
                    label = next((str(e[k]) for k in LABEL_KEYS if k in e), "")
                    out.append((coords, label))
                else:
                    out.append((e, ""))
            return out, None
    quads = _QUAD.findall(body)
    if quads:
        return [([float(v) for v in q], "") for q in quads], None
    if re.search(r"\bno (such )?regions?\b|\bnone\b", body, re.I) and "[" not in body:
        return [], None
    return None, "no boxes found: answer with a JSON list like [{\"bbox_2d\": [x1, y1, x2, y2], \"label\": \"...\"}]"


def _first_json(text: str) -> Any:
    dec = json.JSONDecoder()
    for start, ch in enumerate(text):
        if ch in "[{":
            try:
                value, _ = dec.raw_decode(text[start:])
                return value
            except json.JSONDecodeError:
                continue
    return None


# ------------------------------------------------------------------------------------------------ conventions
@dataclass(frozen=True)
class Convention:
    """How a grounding model's numbers relate to the image it was sent."""

    name: str = "resized_pixels"
    factor: int = 28  # Qwen2.5-VL: patch 14 x merge 2
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 16384 * 28 * 28  # Qwen2.5-VL's processor default (vLLM serve may be started with less)

    def __post_init__(self) -> None:
        if self.name not in CONVENTIONS:
            raise ValueError(f"unknown box convention {self.name!r}; choose one of {list(CONVENTIONS)}")

    def frame(self, sent_w: int, sent_h: int) -> tuple[float, float]:
        """(width, height) of the coordinate frame the model answers in, for an image sent at sent_w x sent_h."""
        if self.name == "original_pixels":
            return float(sent_w), float(sent_h)
        if self.name == "norm1000":
            return 1000.0, 1000.0
        from ecomvlm.data_modules.preprocess import smart_resize

        h, w = smart_resize(sent_h, sent_w, self.factor, self.min_pixels, self.max_pixels)
        return float(w), float(h)

    def settings(self) -> dict[str, Any]:
        return asdict(self) if self.name == "resized_pixels" else {"name": self.name}


def to_original(raw: Any, convention: Convention, orig_w: int, orig_h: int, sent_w: int | None = None,
                sent_h: int | None = None, min_box_px: float = 2.0) -> tuple[Box | None, list[str]]:
    """One raw box -> (box in original pixels, clipped and ordered, or None; the reasons counted for it)."""
    notes: list[str] = []
    sent_w, sent_h = sent_w or orig_w, sent_h or orig_h
    if isinstance(raw, dict):
        raw = [raw.get(k) for k in ("x1", "y1", "x2", "y2")] if "x1" in raw else None
    if not isinstance(raw, (list, tuple)) or len(raw) != 4:
        return None, ["malformed"]
    try:
        x0, y0, x1, y1 = (float(v) for v in raw)
    except (TypeError, ValueError):
        return None, ["malformed"]
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return None, ["malformed"]
    fw, fh = convention.frame(sent_w, sent_h)
    sx, sy = orig_w / fw, orig_h / fh
    x0, x1, y0, y1 = x0 * sx, x1 * sx, y0 * sy, y1 * sy
    if x1 < x0 or y1 < y0:
        x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        notes.append("reordered")
    if x1 <= 0 or y1 <= 0 or x0 >= orig_w or y0 >= orig_h:
        return None, [*notes, "outside"]
    cx0, cy0, cx1, cy1 = max(0.0, x0), max(0.0, y0), min(float(orig_w), x1), min(float(orig_h), y1)
    if max(abs(cx0 - x0), abs(cy0 - y0), abs(cx1 - x1), abs(cy1 - y1)) > 0.5:
        notes.append("clipped")
    if cx1 - cx0 < min_box_px or cy1 - cy0 < min_box_px:
        return None, [*notes, "degenerate"]
    return (cx0, cy0, cx1, cy1), notes


def parse_boxes(text: str, convention: Convention, orig_w: int, orig_h: int, sent_w: int | None = None,
                sent_h: int | None = None, min_box_px: float = 2.0, max_boxes: int = 64
                ) -> tuple[list[Box] | None, list[str], Counter, str | None]:
    """A whole grounding answer -> (boxes in original pixels or None, their labels, reason counts, problem).
    Past `max_boxes` entries (a model stuck in a loop) the rest are counted as ``boxes_over_cap`` and ignored."""
    entries, problem = parse_answer(text)
    counts: Counter = Counter()
    if entries is None:
        return None, [], counts, problem
    if len(entries) > max_boxes:
        counts["boxes_over_cap"] += len(entries) - max_boxes
        entries = entries[:max_boxes]
    boxes, labels = [], []
    for raw, label in entries:
        box, notes = to_original(raw, convention, orig_w, orig_h, sent_w, sent_h, min_box_px)
        counts["boxes_parsed"] += 1
        for n in notes:
            counts[f"boxes_{n}"] += 1
        if box is not None:
            boxes.append(box)
            labels.append(label)
            counts["boxes_kept"] += 1
    return boxes, labels, counts, None


# ------------------------------------------------------------------------------------------------ post-processing
@dataclass(frozen=True)
class CropSettings:
    margin: float = 0.10  # each side grows by this share of the box's width / height ...
    margin_px: float = 4.0  # ... plus this many pixels
    merge_gap: float = 0.02  # boxes closer than this share of the image's longer side are merged
    min_crop_px: int = 32  # a crop square is never smaller than this (tiny boxes would be magnified absurdly)
    crop_size: int = 896  # the target encoder's square input (Gemma3: 896)
    crop_mode: str = "square"  # "square": one crop per image; "regions": one per merged box group

    def __post_init__(self) -> None:
        if self.crop_mode not in ("square", "regions"):
            raise ValueError(f"crop_mode must be 'square' or 'regions', got {self.crop_mode!r}")
        if self.crop_size < 8 or self.min_crop_px < 1 or self.margin < 0 or self.margin_px < 0 or self.merge_gap < 0:
            raise ValueError(f"crop settings out of range: {self}")


def expand(box: Box, margin: float, margin_px: float, w: int, h: int) -> Box:
    x0, y0, x1, y1 = box
    dx, dy = margin * (x1 - x0) + margin_px, margin * (y1 - y0) + margin_px
    return max(0.0, x0 - dx), max(0.0, y0 - dy), min(float(w), x1 + dx), min(float(h), y1 + dy)


def _gap(a: Box, b: Box) -> float:
    """Chebyshev gap between two boxes (0 when they touch or overlap)."""
    gx = max(0.0, max(a[0], b[0]) - min(a[2], b[2]))
    gy = max(0.0, max(a[1], b[1]) - min(a[3], b[3]))
    return max(gx, gy)


def union(boxes: list[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def merge(boxes: list[Box], gap: float) -> list[Box]:
    """Boxes that overlap or lie within `gap` pixels of each other become their enclosing box, until none do."""
    out = list(boxes)
    changed = True
    while changed and len(out) > 1:
        changed = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                if _gap(out[i], out[j]) <= gap:
                    out[i] = union([out[i], out[j]])
                    del out[j]
                    changed = True
                    break
            if changed:
                break
    return sorted(out, key=lambda b: (b[1], b[0]))


def enclosing_square(boxes: list[Box], w: int, h: int, min_side: float = 1.0) -> tuple[int, int, int, int]:
    """The smallest square (integer pixels) enclosing `boxes`, at least `min_side`, shifted inside the image along
    every axis the image is at least that long; along a shorter axis the square is centred on the image (the
    part outside is padding)."""
    ux0, uy0, ux1, uy1 = union(boxes)
    side = int(math.ceil(max(ux1 - ux0, uy1 - uy0, min_side)))

    def place(lo: float, hi: float, length: int) -> int:
        if side >= length:
            return -((side - length) // 2)  # the image is smaller: centre it, pad both ends
        start = int(math.floor((lo + hi) / 2 - side / 2))
        return min(max(0, start), length - side)

    x0, y0 = place(ux0, ux1, w), place(uy0, uy1, h)
    return x0, y0, x0 + side, y0 + side


def crop_squares(boxes: list[Box], w: int, h: int, cs: CropSettings) -> tuple[list[tuple[int, int, int, int]], int]:
    """(crop squares of one image, number of merged box groups) from its boxes in original pixels."""
    if not boxes:
        return [], 0
    grown = [expand(b, cs.margin, cs.margin_px, w, h) for b in boxes]
    groups = merge(grown, cs.merge_gap * max(w, h))
    if cs.crop_mode == "regions":
        return [enclosing_square([g], w, h, cs.min_crop_px) for g in groups], len(groups)
    return [enclosing_square(groups, w, h, cs.min_crop_px)], len(groups)


def cut(img, square: tuple[int, int, int, int], size: int):
    """The square of `img` (padded with the image's mean border colour where it leaves the image), resized to
    size x size."""
    from PIL import Image

    x0, y0, x1, y1 = square
    w, h = img.size
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        region = img.crop(square)
    else:
        import numpy as np

        a = np.asarray(img.convert("RGB"))
        border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).mean(axis=0)
        region = Image.new("RGB", (x1 - x0, y1 - y0), tuple(int(v) for v in border))
        region.paste(img.convert("RGB"), (-x0, -y0))
    if region.size != (size, size):
        region = region.resize((size, size), Image.LANCZOS)
    return region


# ------------------------------------------------------------------------------------------------ measures
def area(b: Box) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def intersection(a: Box, b: Box) -> float:
    return area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def iou(a: Box, b: Box) -> float:
    i = intersection(a, b)
    u = area(a) + area(b) - i
    return i / u if u > 0 else 0.0


def coverage(outer: Box, inner: Box) -> float:
    """Share of `inner`'s area that lies inside `outer` (1.0: fully contained)."""
    a = area(inner)
    return intersection(outer, inner) / a if a > 0 else 0.0
