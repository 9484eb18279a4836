"""Single-image public benchmarks: MME, MMStar, CV-Bench, TextVQA, AI2D (lmms-eval 0.7.3 prompts and scoring)."""

from __future__ import annotations

import re
import string
from collections import defaultdict
from typing import Any

from ecomvlm.eval.public.mmbench import MC_POST, SHORT_POST, mcq_extract
from ecomvlm.eval.vqa_normalize import vqa_accuracy

MME_PERCEPTION = ["existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
                  "OCR"]
MME_COGNITION = ["commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"]


def mme_prompt(doc: dict[str, Any]) -> str:
    return doc["question"].strip().replace(" Please answer yes or no.", "") + SHORT_POST


def mme_parse(pred: str) -> str:
    p = pred.lower().strip().replace(".", "")
    if p in ("yes", "no"):
        return p
    if len(p) == 1:
        return {"y": "yes", "n": "no"}.get(p, "other")
    head = p[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def score_mme(records: list[dict[str, Any]], preds: list[str]) -> dict[str, Any]:
    """Per category: mean over images of (accuracy + accuracy+) x 100, accuracy+ = both questions right."""
    per: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    other = 0
    for r, p in zip(records, preds):
        got = mme_parse(p)
        other += got == "other"
        gt = r["answer"].lower().strip().replace(".", "")
        per[r["doc"]["category"]][r["doc"]["question_id"]].append(float(got == gt))
    cats = {}
    for c, qs in per.items():
        bad = [q for q, s in qs.items() if len(s) != 2]
        if bad:
            raise ValueError(f"MME scores image pairs: {c}/{bad[0]} has {len(qs[bad[0]])} questions, not 2 "
                             f"(a --limit that cuts a pair does this; use the whole category)")
        cats[c] = sum(100 * sum(s) / 2 + 100 * (sum(s) == 2) for s in qs.values()) / len(qs)
    perception = sum(v for c, v in cats.items() if c in MME_PERCEPTION)
    cognition = sum(v for c, v in cats.items() if c not in MME_PERCEPTION)
    return {"perception": perception, "cognition": cognition, "n": len(records), "unparsed": other,
            "per_category": dict(sorted(cats.items()))}


# ---- MMStar


def mmstar_prompt(doc: dict[str, Any]) -> str:
    return doc["question"].strip().replace(" Please answer yes or no.", "") + \
        "\nAnswer with the option's letter from the given choices directly"


def score_mmstar(records: list[dict[str, Any]], preds: list[str]) -> dict[str, Any]:
    """Average = mean over l2 categories of accuracy; each category the same over its own l2 categories."""
    rows = []
    for r, p in zip(records, preds):
        got = mcq_extract(p, ["A", "B", "C", "D"])
        rows.append((r["doc"]["category"], r["doc"]["l2_category"], float(got == r["answer"].strip().upper()), got))

    def l2_mean(sel):
        by: dict[str, list[float]] = defaultdict(list)
        for _, l2, s, _ in sel:
            by[l2].append(s)
        return 100 * sum(sum(v) / len(v) for v in by.values()) / max(1, len(by))

    cats = sorted({c for c, *_ in rows})
    return {"average": l2_mean(rows), "n": len(rows), "unparsed": sum(1 for *_, g in rows if not g),
            "per_category": {c: l2_mean([x for x in rows if x[0] == c]) for c in cats}}


# ---- CV-Bench


def cv_bench_prompt(doc: dict[str, Any]) -> str:
    letters = ", ".join(chr(65 + i) for i in range(len(doc["choices"])))
    return (f"Note: You only need to respond with {letters} without providing any additional information.\n"
            + "\n" + doc["prompt"])


def cv_bench_letter(text: str) -> str:
    m = re.match(r"[\(\s]*([A-Z])[\)\.\s]*", text.strip(), flags=re.IGNORECASE)
    return m.group(1).upper() if m else ""


def score_cv_bench(records: list[dict[str, Any]], preds: list[str]) -> dict[str, Any]:
    """CV-Bench's official formula: ((ADE20K + COCO) / 2 + Omni3D) / 2 over per-source accuracies."""
    by: dict[str, list[bool]] = defaultdict(list)
    unparsed = 0
    for r, p in zip(records, preds):
        got = cv_bench_letter(p)
        unparsed += not got
        by[r["doc"]["source"]].append(got == r["answer"].strip("()"))
    acc = {s: 100 * sum(v) / len(v) for s, v in sorted(by.items())}
    missing = [s for s in ("ADE20K", "COCO", "Omni3D") if s not in acc]
    overall = None if missing else ((acc["ADE20K"] + acc["COCO"]) / 2 + acc["Omni3D"]) / 2
    flat = 100 * sum(sum(v) for v in by.values()) / max(1, len(records))
    return {"accuracy": overall if overall is not None else flat, "accuracy_2d": None if missing else
            (acc["ADE20K"] + acc["COCO"]) / 2, "accuracy_3d": acc.get("Omni3D"), "flat_accuracy": flat,
            "formula": "official" if overall is not None else f"flat (sources missing: {missing})",
            "per_source": acc, "n": len(records), "unparsed": unparsed}


# ---- TextVQA / AI2D


def textvqa_prompt(doc: dict[str, Any]) -> str:
    return doc["question"].capitalize() + SHORT_POST


def score_textvqa(records: list[dict[str, Any]], preds: list[str]) -> dict[str, Any]:
    accs = [vqa_accuracy(p, list(r["doc"]["answers"])) for r, p in zip(records, preds)]
    return {"accuracy": 100 * sum(accs) / max(1, len(accs)), "n": len(accs),
            "unparsed": sum(1 for p in preds if not p.strip())}


def ai2d_prompt(doc: dict[str, Any]) -> str:
    opts = "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(doc["options"]))
    return f"{doc['question']}\n{opts}{MC_POST}"


def ai2d_extract(pred: str) -> str:
    """lmms-eval's AI2D filter + exact match: a leading "X." gives X, else the whole answer; case and
    punctuation are ignored."""
    m = re.match(r"^\s*([A-Z])\.", pred)
    s = m.group(1) if m else pred
    return s.lower().translate(str.maketrans("", "", string.punctuation))


def score_ai2d(records: list[dict[str, Any]], preds: list[str]) -> dict[str, Any]:
    hits = [ai2d_extract(p) == r["answer"].lower() for r, p in zip(records, preds)]
    unparsed = sum(1 for p in preds if len(ai2d_extract(p)) != 1)
    return {"accuracy": 100 * sum(hits) / max(1, len(hits)), "n": len(hits), "unparsed": unparsed}
