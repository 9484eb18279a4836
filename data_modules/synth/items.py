"""The synthetic attribute universe and one item's ground truth (a pure function of seed, split and index)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
MODEL_LETTERS = "ABCDEFGHKLMNPRSTVXZ"
# the kinds of printed region a picture can show (render.py records each with its true box)
REGION_KINDS = ("brand", "size", "ean", "barcode", "country", "model", "certifications", "warning")
# `print_codes` pictures: the back/label prints carry the country of origin only, as a colour swatch (render.py)
CODED_KINDS = ("country",)


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
    # the region kinds the back/label prints show (render.py); None: all of them (the default pictures)
    printed: list[str] | None = None

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
        shown = set(REGION_KINDS if self.printed is None else self.printed)
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
            if "ean" in shown:
                ids["barcodes"] = [{"value": self.ean}]
            if "size" in shown:
                out["attributes"]["size"] = self.size
            if "country" in shown:
                out["origin_production"] = {"country_of_origin": self.country}
        if sees_label:
            if "model" in shown:
                ids["model_number"] = self.model_number
            safety: dict[str, Any] = {}
            if self.certifications and "certifications" in shown:
                safety["certification_marks"] = list(self.certifications)
            if self.warning and "warning" in shown:
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
        model_number=f"{rng.choice(MODEL_LETTERS)}{rng.choice(MODEL_LETTERS)}-{rng.randrange(1000, 9999)}",
        country=rng.choice(COUNTRIES),
        warning=rng.choice(spec.warnings),
        certifications=certs,
    )
    if category in APPAREL:
        item.sleeve = rng.choice(SLEEVES)
        item.neckline = rng.choice(NECKLINES[category])
    return item


