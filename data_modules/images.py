"""Decoded images of any PIL mode as the 8-bit RGB a viewer shows (numpy + PIL only: the data tools that never
touch torch import it too)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB as a viewer shows it: transparency composited on white (product photos are cut out
    on white; PIL's plain convert puts them on black), 16/32-bit integer images scaled to 8 bits by their bit depth
    (PIL's convert clips them, turning most of a 16-bit photo white), palette and CMYK converted."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0 if a.max(initial=0) <= 65535 else a * (255.0 / a.max())
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a * 255.0 if a.max(initial=0) <= 1.0 else a
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im.convert("RGB")
