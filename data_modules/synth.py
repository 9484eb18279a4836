"""Deterministic synthetic e-commerce data: product photos with visible attributes + LLaVA JSON + eval sets.

Why synthetic: nothing can be downloaded here, and tests/demos need ground truth that is *exact* so a tiny
model can visibly learn (colour, category) and scorers can be checked against known answers.

Every item is a pure function of ``(seed, split, index)``: item 7 of seed 0 is the same picture and the same
record whether you ask for 10 items or 10,000, and two runs write byte-identical files. The format of every
file written here is documented in ``docs/DATA_FORMAT.md``.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image, ImageDraw, ImageFilter, ImageFont

SYNTH_FORMAT_VERSION = 1

# ---------------------------------------------------------------------------------------------------------
# The attribute universe. Names are the exact strings that appear in answers; aliases feed the eval
# normaliser (case/punctuation/synonyms) so "gray" == "Grey".
# ---------------------------------------------------------------------------------------------------------
COLOURS: dict[str, tuple[int, int, int]] = {
    "Red": (200, 30, 30),
    "Green": (30, 150, 50),
    "Blue": (30, 60, 200),
    "Yellow": (240, 210, 30),
    "Black": (20, 20, 20),
    "White": (250, 250, 250),
    "Orange": (245, 130, 20),
    "Purple": (130, 40, 160),
    "Pink": (240, 130, 180),
    "Grey": (128, 128, 128),
}
ALIASES: dict[str, list[str]] = {
    "Grey": ["gray"],
    "T-Shirt": ["tee", "t shirt", "tshirt", "tee shirt"],
    "Sneakers": ["sneaker", "trainers", "shoes"],
    "Handbag": ["bag", "purse"],
    "Polka Dot": ["dotted", "dots", "polka dots"],
    "Checked": ["plaid", "check", "checkered"],
    "Striped": ["stripes", "stripe"],
    "Short Sleeve": ["short sleeves", "short-sleeve"],
    "Long Sleeve": ["long sleeves", "long-sleeve"],
}
PATTERNS = ["Solid", "Striped", "Polka Dot", "Checked"]
BRANDS = ["Acme", "Nordwind", "Lumio", "Vexa", "Kestrel", "Orbit", "Zenith", "Maple"]
COUNTRIES = ["China", "Vietnam", "Portugal", "Germany", "India", "Mexico"]


@dataclass(frozen=True)
class CategorySpec:
    name: str
    department: str  # the eBay-style top category; fashion ones feed the fashion benchmarks
    fashion: bool
    sizes: tuple[str, ...]
    warnings: tuple[str, ...]  # possible warning-label texts ("" = no label)
    certifications: tuple[str, ...]


CATEGORIES: dict[str, CategorySpec] = {
    c.name: c
    for c in [
        CategorySpec("T-Shirt", "Clothing", True, ("S", "M", "L", "XL"), ("",), ()),
        CategorySpec("Shirt", "Clothing", True, ("S", "M", "L", "XL"), ("",), ()),
        CategorySpec("Sneakers", "Shoes", True, ("EU 38", "EU 40", "EU 42", "EU 44"), ("",), ()),
        CategorySpec("Handbag", "Bags", True, ("Small", "Medium", "Large"), ("",), ()),
        CategorySpec(
            "Bottle", "Health & Beauty", False, ("250 ml", "500 ml", "1 L"),
            ("Keep out of reach of children", "Flammable", ""), (),
        ),
        CategorySpec(
            "Toy Box", "Toys", False, ("Ages 3+", "Ages 8+"),
            ("WARNING: Choking hazard - small parts", "Not for children under 3"), ("CE", "UKCA"),
        ),
        CategorySpec(
            "Headphones", "Electronics", False, ("One Size",),
            ("Do not expose to water", ""), ("CE", "FCC", "RoHS"),
        ),
        CategorySpec("Mug", "Home & Garden", False, ("350 ml", "500 ml"), ("Contents hot", ""), ()),
    ]
}
APPAREL = ("T-Shirt", "Shirt")
SLEEVES = ["Short Sleeve", "Long Sleeve"]
NECKLINES = {"T-Shirt": ["Crew Neck", "V-Neck"], "Shirt": ["Collar"]}
VIEW_ORDER = ["front", "back", "label", "front_alt", "detail", "back_alt"]


def ean13_check_digit(first12: str) -> str:
    """GS1 check digit: weights 1,3,1,3,... over the first 12 digits."""
    if len(first12) != 12 or not first12.isdigit():
        raise ValueError(f"EAN-13 needs exactly 12 leading digits, got {first12!r}")
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(first12))
    return str((10 - total % 10) % 10)


@dataclass
class Item:
    """Ground truth of one synthetic listing. Everything here is drawn somewhere in its images."""

    item_id: str
    category: str
    department: str
    colour: str
    pattern: str
    brand: str
    size: str
    ean: str
    model_number: str
    country: str
    warning: str
    certifications: list[str]
    sleeve: str | None = None
    neckline: str | None = None
    images: list[str] = field(default_factory=list)  # relative paths, VIEW_ORDER order

    @property
    def title(self) -> str:
        pattern = "" if self.pattern == "Solid" else f" {self.pattern}"
        return f"{self.brand} {self.colour}{pattern} {self.category} {self.size}"

    def visible_attributes(self) -> dict[str, str]:
        """Attributes a faithful model can read off the *front/back* pictures (DAE ground truth)."""
        attrs = {
            "Category": self.category,
            "Brand": self.brand,
            "Colour": self.colour,
            "Pattern": self.pattern,
            "Size": self.size,
        }
        if self.sleeve:
            attrs["Sleeve Length"] = self.sleeve
        if self.neckline:
            attrs["Neckline"] = self.neckline
        return attrs

    def item_intelligence_json(self) -> dict[str, Any]:
        """The paper's Figure-6 schema, filled only with fields visible in this item's images."""
        views = {Path(p).stem.split("_", 1)[1] for p in self.images}
        sees_back = bool(views & {"back", "back_alt", "label"})
        sees_label = "label" in views
        out: dict[str, Any] = {
            "attributes": {
                "product_type": self.department,
                "product_category": self.category,
                "brand_name": self.brand,
                "colors": [self.colour],
            }
        }
        ids: dict[str, Any] = {}
        if sees_back:
            ids["barcodes"] = [{"value": self.ean}]
            out["attributes"]["size"] = self.size
            out["origin_production"] = {"country_of_origin": self.country}
        if sees_label:
            ids["model_number"] = self.model_number
            safety: dict[str, Any] = {}
            if self.certifications:
                safety["certification_marks"] = list(self.certifications)
            if self.warning:
                safety["hazard_statements"] = [{"text": self.warning}]
            if safety:
                out["regulatory_safety"] = safety
        if ids:
            out = {"identifiers": ids, **out}
        return out


def make_item(seed: int, split: str, index: int) -> Item:
    """Sample one item's attributes. Pure function of (seed, split, index)."""
    rng = random.Random(f"ecomvlm-synth:{seed}:{split}:{index}")
    category = rng.choice(sorted(CATEGORIES))
    spec = CATEGORIES[category]
    first12 = "".join(str(rng.randrange(10)) for _ in range(12))
    certs = sorted(rng.sample(spec.certifications, k=rng.randint(0, len(spec.certifications))))
    item = Item(
        item_id=f"{split}-{index:06d}",
        category=category,
        department=spec.department,
        colour=rng.choice(list(COLOURS)),
        pattern=rng.choice(PATTERNS),
        brand=rng.choice(BRANDS),
        size=rng.choice(spec.sizes),
        ean=first12 + ean13_check_digit(first12),
        model_number=f"{rng.choice('ABCDEFGHKLMNPRSTVXZ')}{rng.choice('ABCDEFGHKLMNPRSTVXZ')}-{rng.randrange(1000, 9999)}",
        country=rng.choice(COUNTRIES),
        warning=rng.choice(spec.warnings),
        certifications=certs,
    )
    if category in APPAREL:
        item.sleeve = rng.choice(SLEEVES)
        item.neckline = rng.choice(NECKLINES[category])
    return item


# ---------------------------------------------------------------------------------------------------------
# Drawing. Coordinates are computed on a unit square and scaled, so every image size shows the same scene.
# ---------------------------------------------------------------------------------------------------------
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
    l, t, r, b = d.textbbox((0, 0), text, font=font)
    d.text((xy[0] - (r - l) / 2, xy[1] - (b - t) / 2), text, font=font, fill=fill)


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
        d.rectangle([s * 0.05, s * 0.05, s * 0.95, s * 0.95], fill=(255, 255, 255), outline=colour, width=max(2, s // 40))
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


# ---------------------------------------------------------------------------------------------------------
# Conversations (LLaVA-OneVision JSON: {"id", "image": str | list[str] (optional), "conversations": [...]})
# ---------------------------------------------------------------------------------------------------------
ASPECT_QUESTIONS = {
    "Colour": "What is the main colour of this item?",
    "Category": "What kind of product is this?",
    "Pattern": "What is the pattern of this item?",
    "Brand": "Which brand is shown on this item?",
    "Size": "What size is this item?",
    "Sleeve Length": "What is the sleeve length?",
    "Neckline": "What is the neckline style?",
}
DAE_PROMPT = (
    "Using the provided product image, list every clearly visible attribute of the item. "
    "Present each as 'Key: Value' on a new line."
)
ITEM_INTEL_PROMPT = (
    "Extract all visible product attributes from the provided product photos and return them as a single JSON "
    "object that contains only non-empty fields. Use only what is clearly visible in the images.\n"
    "Identifiers: barcodes (EAN/UPC/GTIN), model_number\n"
    "Attributes: product_type, product_category, brand_name, colors, size\n"
    "Origin: country_of_origin\n"
    "Regulatory safety: certification_marks, hazard_statements"
)


def _turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for human, gpt in pairs:
        out += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return out


def caption(item: Item) -> str:
    pattern = "" if item.pattern == "Solid" else f"{item.pattern.lower()} "
    return f"A {item.colour.lower()} {pattern}{item.category.lower()} by {item.brand}."


def detailed_caption(item: Item) -> str:
    extra = f" It has {item.sleeve.lower()}s and a {item.neckline.lower()}." if item.sleeve and item.neckline else ""
    return (
        f"The photo shows a {item.colour.lower()} {item.category.lower()} with a {item.pattern.lower()} pattern "
        f"on a plain grey background. The brand name {item.brand.upper()} is printed below it.{extra}"
    )


def training_records(item: Item, rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    front = item.images[0]
    attrs = item.visible_attributes()
    recs: dict[str, list[dict[str, Any]]] = {}
    recs["stage1_captions"] = [
        {"id": f"{item.item_id}-cap", "image": front, "conversations": _turns(("<image>\nDescribe the image briefly.", caption(item)))}
    ]
    stage2 = [
        {"id": f"{item.item_id}-recap", "image": front,
         "conversations": _turns(("<image>\nDescribe the product in detail.", detailed_caption(item)))}
    ]
    if "label" in {Path(p).stem.split("_", 1)[1] for p in item.images}:
        label = next(p for p in item.images if p.endswith("_label.png"))
        text = "\n".join([item.brand.upper(), f"MODEL {item.model_number}", f"SIZE {item.size}", item.ean]
                         + ([" ".join(item.certifications)] if item.certifications else [])
                         + ([item.warning] if item.warning else []))
        stage2.append({"id": f"{item.item_id}-ocr", "image": label,
                       "conversations": _turns(("<image>\nRead all the text on this label.", text))})
    recs["stage2_recap_ocr"] = stage2
    # stage 3: multi-turn aspect VQA (first turn carries the image), yes/no, DAE, listing title
    keys = list(attrs)
    rng.shuffle(keys)
    pairs = [(("<image>\n" if i == 0 else "") + ASPECT_QUESTIONS[k] + " Answer with a short phrase.", attrs[k])
             for i, k in enumerate(keys[:3])]
    probe = rng.choice(list(COLOURS))
    pairs.append((f"Is this item {probe.lower()}? Answer yes or no.", "Yes" if probe == item.colour else "No"))
    stage3 = [
        {"id": f"{item.item_id}-vqa", "image": front, "conversations": _turns(*pairs)},
        {"id": f"{item.item_id}-dae", "image": front,
         "conversations": _turns(("<image>\n" + DAE_PROMPT, "\n".join(f"{k}: {v}" for k, v in attrs.items())))},
        {"id": f"{item.item_id}-listing", "image": front,
         "conversations": _turns(("<image>\nWrite a short listing title for this item.", item.title))},
    ]
    if item.category in APPAREL or item.category in ("Sneakers", "Handbag"):
        # classification-style instructions (the Deep Fashion Understanding prompt format), sometimes with
        # title & category context that does not give the answer away
        if item.category in APPAREL:
            attr = rng.choice(["Sleeve Length", "Neckline", "Pattern", "Colour"])
            classes = {"Sleeve Length": SLEEVES, "Neckline": ["Crew Neck", "V-Neck", "Collar"], "Pattern": PATTERNS,
                       "Colour": list(COLOURS)}[attr]
            q = f"Classify the {attr.lower()} of this garment. Options: {', '.join(classes)}. Answer with one option."
            ans = attrs[attr]
        else:
            q = (f"Which brand is this {item.category.lower()}? Options: {', '.join(BRANDS)}. "
                 "Answer with one option.")
            ans = item.brand
        if rng.random() < 0.5:
            title = " ".join(w for w in item.title.split() if w.lower() not in ans.lower().split())
            q = f"Title: {title}\nCategory: {item.department} > {item.category}\n{q}"
        stage3.append({"id": f"{item.item_id}-cls", "image": front, "conversations": _turns(("<image>\n" + q, ans))})
    if rng.random() < 0.1:  # text-only samples exist in real mixtures; the loader must handle them
        first12 = item.ean[:12]
        stage3.append({"id": f"{item.item_id}-text", "conversations": _turns(
            (f"What is the EAN-13 check digit for {first12}?", ean13_check_digit(first12)))})
    recs["stage3_instruct"] = stage3
    recs["item_intel_train"] = [
        {"id": f"{item.item_id}-ii", "image": list(item.images),
         "conversations": _turns(("<image>\n" * len(item.images) + ITEM_INTEL_PROMPT,
                                  json.dumps(item.item_intelligence_json(), sort_keys=False)))}
    ]
    return recs


def eval_records(item: Item, rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    """Benchmark records (see docs/DATA_FORMAT.md, 'Eval sets'). Every record: id, task, images, prompt, answer."""
    front = item.images[0]
    attrs = item.visible_attributes()
    out: dict[str, list[dict[str, Any]]] = {}

    def rec(task: str, prompt: str, answer: Any, images: list[str] | None = None, **extra: Any) -> dict[str, Any]:
        return {"id": f"{item.item_id}-{task}", "task": task, "images": images or [front],
                "prompt": prompt, "answer": answer, **extra}

    aspect = rng.choice(["Colour", "Category", "Pattern", "Brand"])
    out["aspect_general"] = [rec("aspect_general", ASPECT_QUESTIONS[aspect] + " Answer with a short phrase.",
                                 attrs[aspect], aspect=aspect, aliases=ALIASES.get(attrs[aspect], []))]
    if item.category in CATEGORIES and CATEGORIES[item.category].fashion:
        f_aspect = rng.choice([k for k in ("Colour", "Pattern", "Sleeve Length", "Neckline", "Brand") if k in attrs])
        hidden = attrs[f_aspect]
        # the title/category context must not leak the asked value
        title = " ".join(w for w in item.title.split() if w.lower() not in hidden.lower().split())
        q = ASPECT_QUESTIONS[f_aspect] + " Answer with a short phrase."
        out["aspect_fashion"] = [rec("aspect_fashion", q, hidden, aspect=f_aspect, aliases=ALIASES.get(hidden, []))]
        out["aspect_fashion_tc"] = [rec("aspect_fashion_tc", f"Title: {title}\nCategory: {item.department} > "
                                        f"{item.category}\n{q}", hidden, aspect=f_aspect,
                                        aliases=ALIASES.get(hidden, []), title=title)]
    if item.category in APPAREL:
        attr = rng.choice(["Sleeve Length", "Neckline", "Pattern", "Colour"])
        classes = {"Sleeve Length": SLEEVES, "Neckline": ["Crew Neck", "V-Neck", "Collar"],
                   "Pattern": PATTERNS, "Colour": list(COLOURS)}[attr]
        out["fashion_apparel"] = [rec("fashion_apparel", f"Classify the {attr.lower()} of this garment. Options: "
                                      f"{', '.join(classes)}. Answer with one option.", attrs[attr],
                                      attribute=attr, classes=classes)]
    elif item.category in ("Sneakers", "Handbag"):
        out["fashion_sneakers_handbags"] = [rec(
            "fashion_sneakers_handbags", f"Which brand is this {item.category.lower()}? Options: {', '.join(BRANDS)}. "
            "Answer with one option.", item.brand, attribute="Brand", classes=list(BRANDS))]
    out["dae"] = [rec("dae", DAE_PROMPT, attrs)]
    out["item_intel"] = [rec("item_intel", "<image>\n" * len(item.images) + ITEM_INTEL_PROMPT,
                             item.item_intelligence_json(), images=list(item.images))]
    return out


# ---------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------
@dataclass
class SynthConfig:
    out: Path
    n: int = 200  # training items
    n_eval: int = 50  # held-out items for eval sets (a different split: never the same pictures)
    seed: int = 0
    image_size: int = 192
    max_images: int = 6  # 1..max_images images per item


def synthesize(cfg: SynthConfig, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write images, LLaVA JSON training sets, eval JSONL sets and manifest.json under cfg.out."""
    if cfg.n < 0 or cfg.n_eval < 0:
        raise ValueError(f"--n and --n-eval must be >= 0 (got {cfg.n}, {cfg.n_eval})")
    if not 1 <= cfg.max_images <= len(VIEW_ORDER):
        raise ValueError(f"--max-images must be in 1..{len(VIEW_ORDER)}, got {cfg.max_images}")
    if cfg.image_size < 32:
        raise ValueError(f"--image-size must be >= 32 pixels for legible attributes, got {cfg.image_size}")
    out = Path(cfg.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    train: dict[str, list] = {}
    evals: dict[str, list] = {}
    items: list[dict[str, Any]] = []
    total, done = cfg.n + cfg.n_eval, 0
    for split, count, sink, make in (("train", cfg.n, train, training_records), ("eval", cfg.n_eval, evals, eval_records)):
        for index in range(count):
            item = make_item(cfg.seed, split, index)
            rng = random.Random(f"ecomvlm-synth-render:{cfg.seed}:{split}:{index}")
            n_img = rng.randint(1, cfg.max_images)
            for view in VIEW_ORDER[:n_img]:
                rel = f"images/{item.item_id}_{view}.png"
                render_view(item, view, cfg.image_size, rng).save(out / rel, optimize=False)
                item.images.append(rel)
            for name, recs in make(item, rng).items():
                sink.setdefault(name, []).extend(recs)
            items.append({"split": split, **asdict(item), "title": item.title})
            done += 1
            if progress:
                progress(done, total)
    files: dict[str, int] = {}
    (out / "train").mkdir(exist_ok=True)
    for name, recs in sorted(train.items()):
        (out / "train" / f"{name}.json").write_text(json.dumps(recs, indent=1) + "\n")
        files[f"train/{name}.json"] = len(recs)
    (out / "eval").mkdir(exist_ok=True)
    for name, recs in sorted(evals.items()):
        (out / "eval" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        files[f"eval/{name}.jsonl"] = len(recs)
    (out / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    manifest = {
        "format_version": SYNTH_FORMAT_VERSION,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "out"},
        "items": {"train": cfg.n, "eval": cfg.n_eval},
        "images": sum(len(i["images"]) for i in items),
        "records": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
