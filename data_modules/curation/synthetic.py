"""Synthetic raw listings with known truth, for tests, the demo and the throughput benchmark.

Each listing is a synthetic item (``data_modules/synth``: a pure function of seed, split and index) sold the way
real sellers sell: a noisy title (HTML, casing), aspects that are drawn in the main image (brand plate, colour,
pattern, product type, sleeves, neckline) mixed with aspects that are not visible on it (size, material, country,
MPN, sometimes a wrong colour), placeholders, absurd values and duplicates. ``truth.jsonl`` says, per listing,
which cleaned aspects are visible in the main image and what the pipeline must do with it (``expect``).

With ``bad=True`` the first listings are the bad inputs of the issue, one each (``BAD_CASES``); their ``fault``
also tells the scripted endpoints (``scripted.py``) how to misbehave for them.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from ecomvlm.data_modules.synth import APPAREL, CATEGORIES, COLOURS, make_item, render_view

# (case, expected fate, fault of the scripted endpoints)
BAD_CASES: list[tuple[str, str, str | None]] = [
    ("no_image", "dropped:no_image", None),
    ("image_missing", "dropped:image_missing", None),
    ("image_undecodable", "dropped:image_undecodable", None),
    ("image_too_small", "dropped:image_too_small", None),
    ("placeholder_aspects", "dropped:no_usable_aspects", None),
    ("non_english", "dropped:non_english", None),
    ("no_title", "dropped:no_title", None),
    ("nothing_visible", "dropped:no_visible_aspect", None),
    ("caption_5xx", "failed:http_503", "caption_503"),
    ("caption_refusal", "failed:refused", "caption_refusal"),
    ("caption_timeout", "failed:timeout", "caption_timeout"),
    ("verify_malformed", "failed:malformed", "verify_malformed"),
    ("caption_5xx_once", "written", "caption_503_once"),
    ("duplicate", "dropped:duplicate_listing", None),  # of the listing before it (a good one)
]
MATERIALS = ["Cotton", "Polyester", "Leather", "Canvas", "Plastic", "Ceramic", "Steel"]


def visible_aspects(item) -> dict[str, str]:
    """What the main (front) picture shows: render.py draws the colour, the pattern, the brand plate and the
    silhouette (type, sleeves and neckline of apparel) on it; size, EAN and country are on the back only."""
    out = {"Brand": item.brand, "Colour": item.colour, "Pattern": item.pattern, "Type": item.category}
    if item.category in APPAREL:
        out["Sleeve Length"] = item.sleeve
        out["Neckline"] = item.neckline
    return out


def caption_for(truth: dict[str, Any]) -> str:
    """The caption a faithful captioner writes for a listing's main image (the scripted captioner's answer)."""
    v = truth["item"]
    pattern = v["pattern"].lower()
    parts = [f"A {v['colour'].lower()} {v['category'].lower()} with a {pattern} pattern, photographed on a plain "
             f"studio background."]
    if v.get("sleeve"):
        parts.append(f"It is a {v['sleeve'].lower()} garment with a {v['neckline'].lower()}.")
    parts.append(f"The brand name {v['brand'].upper()} is printed below the product.")
    return " ".join(parts) + f"\nVisible text: {v['brand'].upper()}"


def make_raw_listings(out: str | Path, n: int, n_eval: int = 0, seed: int = 0, image_size: int = 96,
                      bad: bool = True) -> dict[str, Any]:
    """Write ``<out>/raw/listings.jsonl`` (+ ``images/``) and ``<out>/truth.jsonl``; returns a summary."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    truths: list[dict[str, Any]] = []
    cases = BAD_CASES if bad else []
    for split, count in (("train", n), ("eval", n_eval)):
        for index in range(count):
            item = make_item(seed, split, index)
            lid = f"L{split[0]}{index:06d}"
            rng = random.Random(f"ecomvlm-curation-raw:{seed}:{split}:{index}")
            rel = f"images/{lid}.png"
            render_view(item, "front", image_size, rng).save(out / rel, optimize=False)
            visible = visible_aspects(item)
            mpn = f"{item.model_number}-{index:04d}{split[0].upper()}"
            aspects: list[list[Any]] = [[k, v] for k, v in visible.items()]
            aspects += [["Size", item.size], ["Material", rng.choice(MATERIALS)], ["MPN", mpn],
                        ["Country/Region of Manufacture", item.country]]
            seen_visible = dict(visible)
            if index % 7 == 3:  # the seller claims another colour than the photo shows: must not be verified
                wrong = rng.choice([c for c in COLOURS if c != item.colour])
                aspects[1] = ["Color", wrong]
                seen_visible.pop("Colour")
            if index % 5 == 1:
                aspects.append(["Features", "Does not apply"])  # a placeholder
            if index % 6 == 2:
                aspects.append(["Seller Notes", "see https://example.com/shop"])  # absurd: a URL
            if index % 4 == 0:
                aspects.append(["colour", item.colour.upper()])  # a duplicate of the colour, other spelling
            title = f"{item.brand} {item.colour} {item.category} {item.size}"
            if index % 3 == 0:
                title = f"<b>{title.upper()}</b> &amp; free shipping"
            row = {"item_id": lid, "title": title, "category": f"{CATEGORIES[item.category].department} > "
                                                                  f"{item.category}",
                   "item_specifics": aspects, "image_paths": [rel], "split": split}
            truth = {"id": lid, "split": split, "visible": seen_visible, "expect": "written", "fault": None,
                     "mpn": mpn, "item": {"brand": item.brand, "colour": item.colour, "pattern": item.pattern,
                                          "category": item.category, "sleeve": item.sleeve,
                                          "neckline": item.neckline}}
            if split == "train" and index < len(cases):
                case, expect, fault = cases[index]
                truth.update(case=case, expect=expect, fault=fault)
                _spoil(case, row, out, rel, truth, rows)
            truth["image_sha256"] = (hashlib.sha256((out / row["image_paths"][0]).read_bytes()).hexdigest()
                                     if row["image_paths"] and (out / row["image_paths"][0]).is_file() else None)
            rows.append(row)
            truths.append(truth)
    (out / "raw" / "listings.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (out / "truth.jsonl").write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in truths))
    return {"listings": len(rows), "raw": str(out / "raw" / "listings.jsonl"), "truth": str(out / "truth.jsonl"),
            "image_root": str(out)}


def _spoil(case: str, row: dict[str, Any], out: Path, rel: str, truth: dict[str, Any],
           rows: list[dict[str, Any]]) -> None:
    from PIL import Image

    if case == "no_image":
        row["image_paths"] = []
    elif case == "image_missing":
        (out / rel).unlink()
    elif case == "image_undecodable":
        (out / rel).write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    elif case == "image_too_small":
        Image.new("RGB", (16, 16), (200, 30, 30)).save(out / rel)
    elif case == "placeholder_aspects":
        row["item_specifics"] = [["Brand", "Unbranded"], ["Colour", "Does not apply"], ["Material", "N/A"],
                                 ["Type", "see description"]]
    elif case == "non_english":
        row["title"] = "Herren T-Shirt schwarz neu mit Etikett Größe M"
        row["item_specifics"] = [["Farbe", "Schwarz"], ["Marke", "Acme"], ["Material", "Baumwolle"]]
    elif case == "no_title":
        row["title"] = "<br/> &nbsp; "
    elif case == "duplicate":
        # the same listing as the first good one, under another id (listed twice by the seller)
        first_good = rows[-1] if rows else None
        if first_good is not None and first_good["image_paths"]:
            for k in ("title", "category", "item_specifics", "image_paths"):
                row[k] = json.loads(json.dumps(first_good[k]))
    elif case == "nothing_visible":
        row["item_specifics"] = [["Material", "Cotton"], ["Country/Region of Manufacture", "Portugal"],
                                 ["MPN", truth["mpn"]]]
    if case in ("duplicate",):
        truth["duplicate_of"] = rows[-1]["item_id"] if rows else None


def read_truth(path: str | Path) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in map(json.loads, Path(path).read_text().splitlines()) if t}
