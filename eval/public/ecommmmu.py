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


def ecommmmu_doc(doc: dict[str, Any]) -> tuple[str, list[Any], str]:
    """(prompt, images capped at 10, label) from the HF record (conversations or instruction/input fields)."""
    if doc.get("conversations"):
        prompt = doc["conversations"][0]["value"]
    else:
        prompt = "\n".join(str(doc[k]) for k in ("instruction", "input", "options") if doc.get(k))
    images = doc.get("images") if doc.get("images") is not None else doc.get("image")
    images = [im for im in (images if isinstance(images, list) else [images] if images is not None else [])]
    images = images[:ECOMMMMU_MAX_IMAGES]
    prompt = prompt.replace(IMAGE_TOKEN, "").strip()  # the runner places the kept images itself
    label = doc.get("output", doc.get("answer"))
    if isinstance(label, list):  # conversation datasets keep the label in the second turn
        label = label[0]
    if label is None and doc.get("conversations") and len(doc["conversations"]) > 1:
        label = doc["conversations"][1]["value"]
    return prompt, images, str(label)


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
