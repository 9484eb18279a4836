"""Drawing an item's views. Coordinates are computed on a unit square and scaled, so every image size shows the
same scene; Pillow's bundled font keeps pictures identical on every machine."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ecomvlm.data_modules.synth.items import APPAREL, COLOURS, Item


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow's bundled font: identical on every machine (no system font lookup), so images are reproducible.
    return ImageFont.load_default(size=max(6, px))


def _contrast(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return (20, 20, 20) if sum(rgb) > 380 else (245, 245, 245)


def _fill_pattern(img: Image.Image, mask: Image.Image, colour: tuple[int, int, int], pattern: str, s: int) -> None:
    """Paint `colour` + `pattern` inside `mask` (an L-mode silhouette)."""
    layer = Image.new("RGB", img.size, colour)
    d = ImageDraw.Draw(layer)
    ink = _contrast(colour)
    step = max(4, s // 12)
    w, h = img.size
    if pattern == "Striped":
        for y in range(0, h, step * 2):
            d.rectangle([0, y, w, y + step // 2], fill=ink)
    elif pattern == "Polka Dot":
        r = max(1, step // 4)
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                d.ellipse([x - r, y - r, x + r, y + r], fill=ink)
    elif pattern == "Checked":
        # gingham-style grid: bands of step/5 cover ~36%, so the item colour stays the majority
        band = max(1, step // 5)
        for v in range(0, max(w, h), step):
            d.rectangle([v, 0, v + band - 1, h], fill=ink)
            d.rectangle([0, v, w, v + band - 1], fill=ink)
    img.paste(layer, (0, 0), mask)


def _silhouette(item: Item, s: int, box: tuple[float, float, float, float]) -> Image.Image:
    """Category-specific shape as an L mask inside `box` (unit coordinates x0, y0, x1, y1)."""
    m = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(m)
    x0, y0, x1, y1 = (v * s for v in box)
    w, h = x1 - x0, y1 - y0
    P = lambda fx, fy: (x0 + fx * w, y0 + fy * h)  # noqa: E731 - local coordinate helper
    c = item.category
    if c in APPAREL:
        d.rectangle([P(0.3, 0.1), P(0.7, 1.0)], fill=255)
        if item.sleeve == "Short Sleeve":
            d.polygon([P(0.3, 0.1), P(0.05, 0.25), P(0.12, 0.42), P(0.3, 0.35)], fill=255)
            d.polygon([P(0.7, 0.1), P(0.95, 0.25), P(0.88, 0.42), P(0.7, 0.35)], fill=255)
        else:  # long sleeves hang down, with a gap to the torso
            d.polygon([P(0.3, 0.1), P(0.08, 0.3), P(0.02, 0.95), P(0.16, 0.95), P(0.3, 0.45)], fill=255)
            d.polygon([P(0.7, 0.1), P(0.92, 0.3), P(0.98, 0.95), P(0.84, 0.95), P(0.7, 0.45)], fill=255)
        if item.neckline == "V-Neck":
            d.polygon([P(0.4, 0.1), P(0.6, 0.1), P(0.5, 0.3)], fill=0)
        elif item.neckline == "Crew Neck":
            d.ellipse([P(0.42, 0.04), P(0.58, 0.16)], fill=0)
    elif c == "Sneakers":
        d.polygon([P(0.05, 0.45), P(0.45, 0.35), P(0.6, 0.5), P(0.95, 0.65), P(0.95, 0.85), P(0.05, 0.85)], fill=255)
    elif c == "Handbag":
        d.rectangle([P(0.1, 0.35), P(0.9, 0.95)], fill=255)
        d.arc([P(0.25, 0.05), P(0.75, 0.6)], 180, 360, fill=255, width=max(2, s // 24))
    elif c == "Bottle":
        d.rectangle([P(0.3, 0.3), P(0.7, 1.0)], fill=255)
        d.rectangle([P(0.42, 0.05), P(0.58, 0.3)], fill=255)
    elif c == "Toy Box":
        d.rectangle([P(0.1, 0.15), P(0.9, 0.95)], fill=255)
    elif c == "Headphones":
        d.arc([P(0.15, 0.05), P(0.85, 0.8)], 180, 360, fill=255, width=max(2, s // 20))
        d.rectangle([P(0.08, 0.4), P(0.28, 0.8)], fill=255)
        d.rectangle([P(0.72, 0.4), P(0.92, 0.8)], fill=255)
    elif c == "Mug":
        d.rectangle([P(0.15, 0.2), P(0.7, 0.95)], fill=255)
        d.arc([P(0.6, 0.35), P(0.95, 0.8)], 270, 90, fill=255, width=max(2, s // 20))
    return m


def _text_center(d: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, px: int, fill) -> None:
    font = _font(px)
    left, top, right, bottom = d.textbbox((0, 0), text, font=font)
    d.text((xy[0] - (right - left) / 2, xy[1] - (bottom - top) / 2), text, font=font, fill=fill)


def _draw_barcode(d: ImageDraw.ImageDraw, ean: str, x0: float, y0: float, w: float, h: float) -> None:
    # Not a scannable EAN symbology, but one bar pattern per digit so the digits are also "in the bars".
    unit = w / (13 * 7)
    x = x0
    for digit in ean:
        bits = format((int(digit) * 37 + 11) % 128, "07b")
        for bit in bits:
            if bit == "1":
                d.rectangle([x, y0, x + unit, y0 + h * 0.75], fill=(0, 0, 0))
            x += unit
    _text_center(d, (x0 + w / 2, y0 + h * 0.88), ean, int(h * 0.25), (0, 0, 0))


def render_view(item: Item, view: str, s: int, rng: random.Random) -> Image.Image:
    bg = tuple(int(v) for v in (rng.randint(170, 215),) * 3)
    img = Image.new("RGB", (s, s), bg)  # type: ignore[arg-type]
    d = ImageDraw.Draw(img)
    colour = COLOURS[item.colour]
    jx, jy = rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04)
    if view in ("front", "front_alt", "back", "back_alt"):
        scale = 1.0 if view in ("front", "back") else rng.uniform(0.7, 0.85)
        half = 0.38 * scale
        box = (0.5 - half + jx, 0.46 - half + jy, 0.5 + half + jx, 0.46 + half + jy)
        mask = _silhouette(item, s, box)
        _fill_pattern(img, mask, colour, item.pattern if view.startswith("front") else "Solid", s)
        outline = mask.filter(ImageFilter.FIND_EDGES)
        img.paste((0, 0, 0), (0, 0), outline)
        if view.startswith("front"):
            # brand plate on the product
            _text_center(d, (s * 0.5, s * 0.9), item.brand.upper(), s // 9, (0, 0, 0))
        else:
            y = s * 0.78
            d.rectangle([s * 0.12, y - s * 0.02, s * 0.88, s * 0.99], fill=(255, 255, 255))
            _text_center(d, (s * 0.5, y + s * 0.02), f"SIZE {item.size}", s // 14, (0, 0, 0))
            _draw_barcode(d, item.ean, s * 0.18, y + s * 0.075, s * 0.64, s * 0.11)
            _text_center(d, (s * 0.5, s * 0.12), f"MADE IN {item.country.upper()}", s // 14, (0, 0, 0))
    elif view == "label":
        d.rectangle([s * 0.05, s * 0.05, s * 0.95, s * 0.95], fill=(255, 255, 255), outline=colour,
                    width=max(2, s // 40))
        lines = [item.brand.upper(), f"MODEL {item.model_number}", f"SIZE {item.size}", item.ean]
        if item.certifications:
            lines.append(" ".join(item.certifications))
        for i, line in enumerate(lines):
            _text_center(d, (s * 0.5, s * (0.14 + 0.13 * i)), line, s // 13, (0, 0, 0))
        if item.warning:
            d.rectangle([s * 0.08, s * 0.8, s * 0.92, s * 0.92], fill=(250, 220, 40))
            _text_center(d, (s * 0.5, s * 0.86), item.warning, s // 22, (0, 0, 0))
    elif view == "detail":
        # zoomed crop of the patterned body: pattern and colour fill the frame
        big = Image.new("RGB", (s, s), colour)
        _fill_pattern(big, Image.new("L", (s, s), 255), colour, item.pattern, s * 2)
        img = big
    else:  # pragma: no cover - VIEW_ORDER is closed
        raise ValueError(f"unknown view {view!r}")
    return img


