"""An item's LLaVA training records (every stage) and benchmark records (docs/DATA_FORMAT.md)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from ecomvlm.data_modules.chat_templates import IMAGE_TOKEN
from ecomvlm.data_modules.item_intel.schema import ITEM_INTEL_PROMPT
from ecomvlm.data_modules.synth.items import (
    ALIASES,
    APPAREL,
    BRANDS,
    CATEGORIES,
    COLOURS,
    PATTERNS,
    SLEEVES,
    Item,
    ean13_check_digit,
)

IMAGE_LINE = IMAGE_TOKEN + "\n"  # one image placeholder on its own line, as LLaVA data writes it

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
        {"id": f"{item.item_id}-cap", "image": front,
         "conversations": _turns((IMAGE_LINE + "Describe the image briefly.", caption(item)))}
    ]
    stage2 = [
        {"id": f"{item.item_id}-recap", "image": front,
         "conversations": _turns((IMAGE_LINE + "Describe the product in detail.", detailed_caption(item)))}
    ]
    if "label" in {Path(p).stem.split("_", 1)[1] for p in item.images}:
        label = next(p for p in item.images if p.endswith("_label.png"))
        text = "\n".join([item.brand.upper(), f"MODEL {item.model_number}", f"SIZE {item.size}", item.ean]
                         + ([" ".join(item.certifications)] if item.certifications else [])
                         + ([item.warning] if item.warning else []))
        stage2.append({"id": f"{item.item_id}-ocr", "image": label,
                       "conversations": _turns((IMAGE_LINE + "Read all the text on this label.", text))})
    recs["stage2_recap_ocr"] = stage2
    # stage 3: multi-turn aspect VQA (first turn carries the image), yes/no, DAE, listing title
    keys = list(attrs)
    rng.shuffle(keys)
    pairs = [((IMAGE_LINE if i == 0 else "") + ASPECT_QUESTIONS[k] + " Answer with a short phrase.", attrs[k])
             for i, k in enumerate(keys[:3])]
    probe = rng.choice(list(COLOURS))
    pairs.append((f"Is this item {probe.lower()}? Answer yes or no.", "Yes" if probe == item.colour else "No"))
    stage3 = [
        {"id": f"{item.item_id}-vqa", "image": front, "conversations": _turns(*pairs)},
        {"id": f"{item.item_id}-dae", "image": front,
         "conversations": _turns((IMAGE_LINE + DAE_PROMPT, "\n".join(f"{k}: {v}" for k, v in attrs.items())))},
        {"id": f"{item.item_id}-listing", "image": front,
         "conversations": _turns((IMAGE_LINE + "Write a short listing title for this item.", item.title))},
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
        stage3.append({"id": f"{item.item_id}-cls", "image": front, "conversations": _turns((IMAGE_LINE + q, ans))})
    if rng.random() < 0.1:  # text-only samples exist in real mixtures; the loader must handle them
        first12 = item.ean[:12]
        stage3.append({"id": f"{item.item_id}-text", "conversations": _turns(
            (f"What is the EAN-13 check digit for {first12}?", ean13_check_digit(first12)))})
    recs["stage3_instruct"] = stage3
    recs["item_intel_train"] = [
        {"id": f"{item.item_id}-ii", "image": list(item.images),
         "conversations": _turns((IMAGE_LINE * len(item.images) + ITEM_INTEL_PROMPT,
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
    for asked in ("Colour", "Category"):  # the same question on every item (the demo's before/after numbers)
        name = f"aspect_{asked.lower()}"
        out[name] = [rec(name, ASPECT_QUESTIONS[asked] + " Answer with a short phrase.", attrs[asked], aspect=asked,
                         aliases=ALIASES.get(attrs[asked], []))]
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
    out["item_intel"] = [rec("item_intel", IMAGE_LINE * len(item.images) + ITEM_INTEL_PROMPT,
                             item.item_intelligence_json(), images=list(item.images))]
    return out


