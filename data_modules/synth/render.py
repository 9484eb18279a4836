"""Drawing an item's views. Coordinates are computed on a unit square and scaled, so every image size shows the
same scene; Pillow's bundled font keeps pictures identical on every machine.

These options leave the default pictures untouched (byte-identical) and exist for the item-intelligence pipeline:
- ``regions``: a list that receives the true pixel box of every printed text region drawn (brand, size, EAN digits,
  barcode bars, country, model number, certification marks, warning label), with the fact it shows;
- ``small_print``: draw the back and label prints small (text of ``small_print * side`` pixels) on compact stickers
  at item-specific places, so that a view downscaled to an encoder's input cannot be read while a crop can;
- ``print_codes`` (with ``small_print``): the stickers show only the country of origin, as a colour swatch no
  taller than the small print's letters (one colour per country). A view downscaled to a 64 px encoder input
  keeps the swatch as a speck of about 2 px inside one patch; the crop of the sticker shows it filling a third of
  the encoder's input. A tiny encoder learns to name colours where it cannot learn to read letters of a few
  pixels, so the CPU demo can show what crops add.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ecomvlm.data_modules.synth.items import APPAREL, COLOURS, COUNTRIES, Item


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


def _text_center(d: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, px: int, fill
                 ) -> tuple[float, float, float, float]:
    """Draw `text` centred on `xy`; returns the box of its inked pixels (x0, y0, x1, y1)."""
    font = _font(px)
    left, top, right, bottom = d.textbbox((0, 0), text, font=font)
    at = (xy[0] - (right - left) / 2, xy[1] - (bottom - top) / 2)
    d.text(at, text, font=font, fill=fill)
    return tuple(d.textbbox(at, text, font=font))  # type: ignore[return-value]


def _draw_barcode(d: ImageDraw.ImageDraw, ean: str, x0: float, y0: float, w: float, h: float
                  ) -> tuple[tuple[float, float, float, float], tuple]:
    """Bars + digits; returns (bars box, digits box)."""
    # Not a scannable EAN symbology, but one bar pattern per digit so the digits are also "in the bars".
    unit = w / (13 * 7)
    x = x0
    for digit in ean:
        bits = format((int(digit) * 37 + 11) % 128, "07b")
        for bit in bits:
            if bit == "1":
                d.rectangle([x, y0, x + unit, y0 + h * 0.75], fill=(0, 0, 0))
            x += unit
    digits = _text_center(d, (x0 + w / 2, y0 + h * 0.88), ean, int(h * 0.25), (0, 0, 0))
    return (x0, y0, x0 + w, y0 + h * 0.75), digits


def _bars(d: ImageDraw.ImageDraw, ean: str, x0: float, y0: float, w: float, h: float) -> tuple:
    """The bars of `_draw_barcode` alone, `h` tall; returns their box."""
    unit = w / (13 * 7)
    x = x0
    for digit in ean:
        for bit in format((int(digit) * 37 + 11) % 128, "07b"):
            if bit == "1":
                d.rectangle([x, y0, x + unit, y0 + h], fill=(0, 0, 0))
            x += unit
    return x0, y0, x0 + w, y0 + h


# the fact of the item-intelligence schema each printed region shows (None: informative, no fact of its own)
REGION_FACTS = {"brand": "attributes.brand_name", "size": "attributes.size", "ean": "identifiers.barcodes",
                "barcode": None, "country": "origin_production.country_of_origin",
                "model": "identifiers.model_number", "certifications": "regulatory_safety.certification_marks",
                "warning": "regulatory_safety.hazard_statements"}


def _region(regions: list | None, kind: str, text: str, box, s: int) -> None:
    if regions is None:
        return
    import math

    x0, y0, x1, y1 = box
    b = [max(0, math.floor(x0)), max(0, math.floor(y0)), min(s, math.ceil(x1)), min(s, math.ceil(y1))]
    regions.append({"kind": kind, "fact": REGION_FACTS[kind], "text": text, "box": b})


def _wrap2(text: str, limit: int = 20) -> list[str]:
    """A long line as two lines split at the space nearest its middle (small warning labels)."""
    if len(text) <= limit or " " not in text:
        return [text]
    mid = len(text) / 2
    cut = min((i for i, c in enumerate(text) if c == " "), key=lambda i: abs(i - mid))
    return [text[:cut], text[cut + 1:]]


# `print_codes`: one swatch colour per country of origin
COUNTRY_COLOURS = ((215, 40, 40), (40, 165, 60), (40, 70, 220), (240, 210, 40), (200, 50, 200), (40, 200, 210))


def _coded_sticker(d: ImageDraw.ImageDraw, item: Item, view: str, s: int, px: int, regions: list | None) -> None:
    """`print_codes` stickers: the country's colour swatch, `px` - 1 square (no taller than the small print's
    letters), on a small white sticker at an item- and view-specific place."""
    place = random.Random(f"ecomvlm-synth-small:{item.item_id}:{view}")
    h, pad = max(2, px - 1), max(2, round(px * 0.45))
    side = h + 2 * pad
    x0 = round(place.uniform(0.04 * s, max(0.04 * s, 0.96 * s - side)))
    y0 = round(place.uniform(0.04 * s, max(0.04 * s, 0.96 * s - side)))
    d.rectangle([x0, y0, x0 + side, y0 + side], fill=(255, 255, 255), outline=(90, 90, 90))
    x, top = x0 + pad, y0 + pad
    d.rectangle([x, top, x + h - 1, top + h - 1], fill=COUNTRY_COLOURS[COUNTRIES.index(item.country)])
    _region(regions, "country", f"MADE IN {item.country.upper()}", (x, top, x + h, top + h), s)


def _small_sticker(d: ImageDraw.ImageDraw, item: Item, view: str, s: int, frac: float, regions: list | None) -> None:
    """The prints of a back/label view, small, on a white sticker at an item- and view-specific place."""
    px = max(6, round(s * frac))
    if item.printed is not None:
        return _coded_sticker(d, item, view, s, px, regions)
    place = random.Random(f"ecomvlm-synth-small:{item.item_id}:{view}")
    font = _font(px)
    lh = px * 1.35  # line pitch
    if view == "label":
        lines = [("brand", item.brand.upper()), ("model", f"MODEL {item.model_number}"),
                 ("size", f"SIZE {item.size}"), ("ean", item.ean)]
        if item.certifications:
            lines.append(("certifications", " ".join(item.certifications)))
        warn = _wrap2(item.warning) if item.warning else []
    else:
        lines = [("size", f"SIZE {item.size}"), ("barcode", item.ean), ("country", f"MADE IN {item.country.upper()}")]
        warn = []
    widths = [d.textbbox((0, 0), t, font=font)[2] for _, t in lines] + \
        [d.textbbox((0, 0), t, font=font)[2] for t in warn]
    bar_h = 2.2 * px if view != "label" else 0.0
    sw = max(widths) + 2 * px
    sh = lh * len(lines) + bar_h + (lh * len(warn) + px * 0.6 if warn else 0) + px
    x0 = place.uniform(0.04 * s, max(0.04 * s, 0.96 * s - sw))
    y0 = place.uniform(0.04 * s, max(0.04 * s, 0.96 * s - sh))
    d.rectangle([x0, y0, x0 + sw, y0 + sh], fill=(255, 255, 255), outline=(90, 90, 90))
    cx, y = x0 + sw / 2, y0 + px * 0.5 + lh / 2
    for kind, text in lines:
        if kind == "barcode":  # bars, then the EAN digits under them
            bw = d.textbbox((0, 0), text, font=font)[2]
            bars = _bars(d, item.ean, cx - bw / 2, y - lh / 2 + px * 0.2, bw, bar_h)
            _region(regions, "barcode", item.ean, bars, s)
            digits = _text_center(d, (cx, y + bar_h + px * 0.2), item.ean, px, (0, 0, 0))
            _region(regions, "ean", item.ean, digits, s)
            y += bar_h + lh
            continue
        box = _text_center(d, (cx, y), text, px, (0, 0, 0))
        _region(regions, kind, text, box, s)
        y += lh
    if warn:
        top = y - lh / 2 + px * 0.2
        d.rectangle([x0 + px * 0.4, top, x0 + sw - px * 0.4, top + lh * len(warn) + px * 0.2], fill=(250, 220, 40))
        boxes = []
        for t in warn:
            boxes.append(_text_center(d, (cx, top + px * 0.1 + lh / 2 + lh * len(boxes)), t, px, (0, 0, 0)))
        _region(regions, "warning", item.warning, (min(b[0] for b in boxes), min(b[1] for b in boxes),
                                                   max(b[2] for b in boxes), max(b[3] for b in boxes)), s)


def render_view(item: Item, view: str, s: int, rng: random.Random, *, small_print: float = 0.0,
                regions: list | None = None) -> Image.Image:
    """One view of `item`, `s` pixels square. `regions` (a list) receives the true boxes of the printed regions;
    `small_print` > 0 draws the back/label prints small (module docstring). Neither changes the default picture."""
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
            box = _text_center(d, (s * 0.5, s * 0.9), item.brand.upper(), s // 9, (0, 0, 0))
            _region(regions, "brand", item.brand.upper(), box, s)
        elif small_print > 0:
            _small_sticker(d, item, view, s, small_print, regions)
        else:
            y = s * 0.78
            d.rectangle([s * 0.12, y - s * 0.02, s * 0.88, s * 0.99], fill=(255, 255, 255))
            box = _text_center(d, (s * 0.5, y + s * 0.02), f"SIZE {item.size}", s // 14, (0, 0, 0))
            _region(regions, "size", f"SIZE {item.size}", box, s)
            bars, digits = _draw_barcode(d, item.ean, s * 0.18, y + s * 0.075, s * 0.64, s * 0.11)
            _region(regions, "barcode", item.ean, bars, s)
            _region(regions, "ean", item.ean, digits, s)
            box = _text_center(d, (s * 0.5, s * 0.12), f"MADE IN {item.country.upper()}", s // 14, (0, 0, 0))
            _region(regions, "country", f"MADE IN {item.country.upper()}", box, s)
    elif view == "label" and small_print > 0:
        _small_sticker(d, item, view, s, small_print, regions)
    elif view == "label":
        d.rectangle([s * 0.05, s * 0.05, s * 0.95, s * 0.95], fill=(255, 255, 255), outline=colour,
                    width=max(2, s // 40))
        lines = [("brand", item.brand.upper()), ("model", f"MODEL {item.model_number}"),
                 ("size", f"SIZE {item.size}"), ("ean", item.ean)]
        if item.certifications:
            lines.append(("certifications", " ".join(item.certifications)))
        for i, (kind, line) in enumerate(lines):
            box = _text_center(d, (s * 0.5, s * (0.14 + 0.13 * i)), line, s // 13, (0, 0, 0))
            _region(regions, kind, line, box, s)
        if item.warning:
            d.rectangle([s * 0.08, s * 0.8, s * 0.92, s * 0.92], fill=(250, 220, 40))
            box = _text_center(d, (s * 0.5, s * 0.86), item.warning, s // 22, (0, 0, 0))
            _region(regions, "warning", item.warning, box, s)
    elif view == "detail":
        # zoomed crop of the patterned body: pattern and colour fill the frame
        big = Image.new("RGB", (s, s), colour)
        _fill_pattern(big, Image.new("L", (s, s), 255), colour, item.pattern, s * 2)
        img = big
    else:  # pragma: no cover - VIEW_ORDER is closed
        raise ValueError(f"unknown view {view!r}")
    return img


