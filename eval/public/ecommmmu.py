"""eComMMMU (ninglab/EcomMMMU): the authors' answer extraction and per-task scoring, images capped at 10 and a
sample-weighted average (the paper's two changes)."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from ecomvlm.data_modules.chat_templates import IMAGE_TOKEN

ECOMMMMU_TASKS = {  # task -> (paper abbreviation, valid responses, kind)
    "answerability_prediction": ("AP", ["yes", "no", "Yes", "No", "YES", "NO"], "binary"),
    "binary-question_answering": ("BQA", ["yes", "no", "Yes", "No", "YES", "NO", "cannot answer", "Cannot Answer",
                                          "Cannot answer"], "multiclass"),
    "click-through_predction": ("CP", ["yes", "no", "Yes", "No", "YES", "NO"], "binary"),
    "sequential_recommendation": ("SR", [chr(65 + i) for i in range(20)], "recall@1"),
    "multiclass_product_classification": ("MPC", [chr(65 + i) for i in range(4)], "multiclass"),
    "production_substitute_identification": ("PSI", ["yes", "no", "Yes", "No", "YES", "NO"], "binary"),
    "sentiment_analysis": ("SA", [chr(65 + i) for i in range(5)], "multiclass"),
    "product_relation_prediction": ("PRP", [chr(65 + i) for i in range(3)], "multiclass"),
}
ECOMMMMU_MAX_IMAGES = 10


def ecommmmu_extract(task: str, response: str) -> str:
    """The authors' `get_valid_response`: first option at the start of the answer or before a colon, else ""."""
    if task not in ECOMMMMU_TASKS:
        raise ValueError(f"unknown eComMMMU task {task!r}; known: {sorted(ECOMMMMU_TASKS)}")
    opts = ECOMMMMU_TASKS[task][1]
    alt = "|".join(re.escape(o) for o in opts)
    text = response.replace("\n", " ").split("assistant")[-1]
    m = re.search(rf"^\s*({alt})\b|\b({alt})\s*:\s*", text)
    return (m.group(1) or m.group(2)) if m else ""


ECOMMMMU_SYSTEM = "You are a helpful shopping assistant."  # the authors' system turn (inference.py)
# subsets of the test split: gts = every test sample (the paper's Table 5), vc = the visual-critical ones (is_vc)
ECOMMMMU_SUBSETS = ("gts", "vc")
# images per sample: all = every image of every product in order (the paper's multi-image input), main = each
# product's first image (the authors' single-image-per-product input)
ECOMMMMU_IMAGE_MODES = ("all", "main")
ECOMMMMU_DEFAULTS = {"subset": "gts", "images": "all", "max_images": ECOMMMMU_MAX_IMAGES}


def ecommmmu_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The eComMMMU setting (defaults: the paper's Table 5), checked."""
    opts = {**ECOMMMMU_DEFAULTS, **(options or {})}
    unknown = sorted(set(opts) - set(ECOMMMMU_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown eComMMMU options {unknown}; known: {sorted(ECOMMMMU_DEFAULTS)}")
    if opts["subset"] not in ECOMMMMU_SUBSETS:
        raise ValueError(f"eComMMMU subset {opts['subset']!r}: choose {' or '.join(ECOMMMMU_SUBSETS)}")
    if opts["images"] not in ECOMMMMU_IMAGE_MODES:
        raise ValueError(f"eComMMMU images {opts['images']!r}: choose {' or '.join(ECOMMMMU_IMAGE_MODES)}")
    if not isinstance(opts["max_images"], int) or opts["max_images"] < 0:
        raise ValueError(f"eComMMMU max_images {opts['max_images']!r}: a count >= 0")
    return opts


def ecommmmu_in_subset(doc: dict[str, Any], subset: str) -> bool:
    if subset == "gts":
        return True
    if "is_vc" not in doc:
        raise ValueError("the eComMMMU vc subset needs the authors' `is_vc` column, which this copy lacks; use the "
                         "published file (NingLab/EcomMMMU) or --ecommmmu-subset gts")
    return bool(doc["is_vc"])


def ecommmmu_images(doc: dict[str, Any], mode: str = "all") -> list[Any]:
    """The sample's images in product order. The authors' `images` is one image list per product; a flat list
    (the authors' downstream files, `image`) counts as one image per product."""
    raw = doc.get("images") if doc.get("images") is not None else doc.get("image")
    if raw is None:
        return []
    if not isinstance(raw, (list, tuple)):
        raw = [raw]
    out: list[Any] = []
    for product in raw:
        if isinstance(product, (list, tuple)):
            out += [im for im in (product[:1] if mode == "main" else product) if im is not None]
        elif product is not None:
            out.append(product)
    return out


def ecommmmu_doc(doc: dict[str, Any], options: dict[str, Any] | None = None) -> tuple[str, list[Any], str, int]:
    """(prompt, images, label, images dropped by the cap) from an authors' record.

    The prompt is the authors' text, ``instruction + input`` joined as they do (no separator), or the human turn of
    their downstream `conversations` files with its <image> tokens removed; the images follow the text, as in the
    authors' chat (text part first, then one image part per image), capped at `max_images` (the paper: 10)."""
    opts = ecommmmu_options(options)
    if doc.get("conversations"):
        text = doc["conversations"][0]["value"].replace(IMAGE_TOKEN, "").strip()
    elif "instruction" in doc:
        text = str(doc["instruction"]) + str(doc.get("input") or "")
    else:
        raise ValueError("an eComMMMU record needs `instruction` (+ `input`) or `conversations`; this one has "
                         f"{sorted(doc)}")
    images = ecommmmu_images(doc, opts["images"])
    kept = images[:opts["max_images"]]
    label = doc.get("output", doc.get("answer"))
    if isinstance(label, list):
        label = label[0]
    if label is None and doc.get("conversations") and len(doc["conversations"]) > 1:
        label = doc["conversations"][1]["value"]
    if label is None:
        raise ValueError("an eComMMMU record without a label (`output`); the test rows of the published file have one")
    return text + IMAGE_TOKEN * len(kept), kept, str(label), len(images) - len(kept)


def score_ecommmmu(records: list[dict[str, Any]], preds: list[str]) -> dict[str, Any]:
    """Per task: accuracy (SR: Recall@1) counting unmatched answers as wrong, as evaluate.py does; average =
    sample-weighted over tasks (the paper's change to the authors' average rank)."""
    by: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for r, p in zip(records, preds):
        by[r["doc"]["task"]].append((ecommmmu_extract(r["doc"]["task"], p), r["answer"]))
    per, skipped = {}, {}
    correct = 0
    for task, rows in by.items():
        abbr, _, kind = ECOMMMMU_TASKS[task]
        if kind == "binary":  # evaluate.py compares yes/no case-insensitively
            valid = {lab.lower() for _, lab in rows}
            ok = [g.lower() == lab.lower() for g, lab in rows if g.lower() in valid]
            skipped[abbr] = sum(1 for g, _ in rows if g.lower() not in valid)
        else:
            valid = {lab for _, lab in rows}
            ok = [g == lab for g, lab in rows if g in valid]
            skipped[abbr] = sum(1 for g, _ in rows if g not in valid)
        per[abbr] = 100 * sum(ok) / len(rows)
        correct += sum(ok)
    n = len(records)
    return {"average": 100 * correct / max(1, n), "n": n, "per_task": per, "n_per_task":
            {ECOMMMMU_TASKS[t][0]: len(v) for t, v in by.items()}, "unparsed": sum(skipped.values()),
            "skipped_per_task": skipped}
