"""MMMU-val: prompts with interleaved images, MMMU's multiple-choice and open-answer parsers, instance accuracy."""

from __future__ import annotations

import ast
import random
import re
from collections import defaultdict
from typing import Any


def mmmu_options(doc: dict[str, Any]) -> list[str]:
    opts = doc["options"]
    return ast.literal_eval(opts) if isinstance(opts, str) else list(opts)


def mmmu_prompt(doc: dict[str, Any]) -> str:
    if doc["question_type"] == "multiple-choice":
        opts = "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(mmmu_options(doc)))
        return f"{doc['question']}\n{opts}\n\nAnswer with the option's letter from the given choices directly."
    return f"{doc['question']}\n\nAnswer the question using a single word or phrase."


def mmmu_images(doc: dict[str, Any]) -> list[Any]:
    tags = sorted({t.strip("<>").replace(" ", "_") for t in re.findall(r"<image \d+>", mmmu_prompt(doc))})
    return [doc[t] for t in tags if doc.get(t) is not None]


def mmmu_parse_choice(response: str, all_choices: list[str], index2ans: dict[str, str],
                      rng: random.Random) -> tuple[str, bool]:
    """MMMU's multiple-choice parser; (letter, parsed). No candidate -> a random letter, as MMMU does."""
    for ch in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(ch)
    response = " " + response + " "
    index_ans, brack = True, False
    cands = [c for c in all_choices if f"({c})" in response]
    brack = bool(cands)
    if not cands:
        cands = [c for c in all_choices if f"{c} " in response]
    if not cands:
        cands = [c for c in all_choices if f"{c}." in response]
    if not cands and len(response.split()) > 5:
        cands = [k for k, a in index2ans.items() if a.lower() in response.lower()]
        index_ans = False
    if not cands:
        return rng.choice(all_choices), False
    if len(cands) == 1:
        return cands[0], True
    if index_ans:
        pos = [response.rfind(f"({c})") if brack else response.rfind(f" {c} ") for c in cands]
    else:
        pos = [response.lower().rfind(index2ans[c].lower()) for c in cands]
    return cands[pos.index(max(pos))], True


def _mmmu_numbers(s: str) -> list[str]:
    return (re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", s) + re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", s)
            + re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])", s))


def _mmmu_norm(s: str) -> list[Any]:
    s = s.strip()
    try:
        return [round(float(s.replace(",", "")), 2)]
    except ValueError:
        s = s.lower()
        return [" " + s, s + " "] if len(s) == 1 else [s]


def mmmu_parse_open(response: str) -> list[Any]:
    """MMMU's open-answer parser: key sub-responses after indicator words + every number in them."""
    resp = response.strip().strip(".").lower()
    subs = re.split(r"\.\s(?=[A-Z])|\n", resp)
    indicators = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
    keys = []
    for i, sub in enumerate(subs):
        if i == len(subs) - 1:
            indicators = indicators + ["="]
        best = None
        for ind in indicators:
            if ind in sub:
                tail = sub.split(ind)[-1].strip()
                if not best or len(tail) < len(best):  # an empty tail never wins (MMMU's `if not shortest`)
                    best = tail
        if best and best.strip() not in [":", ",", ".", "!", "?", ";", "'"]:
            keys.append(best)
    if not keys:
        keys = [resp]
    preds = list(keys)
    for k in keys:
        preds.extend(_mmmu_numbers(k))
    out: list[Any] = []
    for p in preds:
        out.extend(_mmmu_norm(p))
    return list(set(out))


def mmmu_correct(doc: dict[str, Any], answer: Any, pred: str, rng: random.Random) -> tuple[bool, bool]:
    if doc["question_type"] == "multiple-choice":
        opts = mmmu_options(doc)
        letters = [chr(65 + i) for i in range(len(opts))]
        got, parsed = mmmu_parse_choice(pred, letters, dict(zip(letters, opts)), rng)
        golds = answer if isinstance(answer, list) else [answer]
        return got in golds, parsed
    golds = answer if isinstance(answer, list) else [answer]
    norm: list[Any] = []
    for g in golds:
        norm.extend(_mmmu_norm(str(g)))
    for p in mmmu_parse_open(pred):
        if isinstance(p, str):
            if any(isinstance(g, str) and g in p for g in norm):
                return True, True
        elif p in norm:
            return True, True
    return False, True


def score_mmmu(records: list[dict[str, Any]], preds: list[str], seed: int = 42) -> dict[str, Any]:
    """Instance-level accuracy; unparseable multiple-choice answers get MMMU's random letter (seeded) and are
    counted in `unparsed`."""
    rng = random.Random(seed)
    by_subject: dict[str, list[bool]] = defaultdict(list)
    unparsed = 0
    for r, p in zip(records, preds):
        ok, parsed = mmmu_correct(r["doc"], r["answer"], p, rng)
        unparsed += not parsed
        m = re.match(r"^[^_]+_(.+?)_\d+$", r["id"])
        by_subject[m.group(1) if m else "all"].append(ok)
    n = sum(len(v) for v in by_subject.values())
    return {"accuracy": 100 * sum(sum(v) for v in by_subject.values()) / max(1, n), "n": n, "unparsed": unparsed,
            "per_subject": {k: 100 * sum(v) / len(v) for k, v in sorted(by_subject.items())}}
