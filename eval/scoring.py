"""Scorers of the paper's e-commerce benchmarks (pure functions over prediction strings; no model code).

- Aspect Prediction: string match after normalisation (case, punctuation, whitespace, units, synonyms).
- Deep Fashion Understanding: per-attribute classification accuracy; the prediction is mapped to one of the
  offered classes (exact after normalisation, else the single class it mentions) before comparing.
- Dynamic Attribute Extraction: schema-free key-value extraction; predictions are parsed as a JSON object (or a
  list of them) or ``key: value`` lines (markdown list markers and bold allowed); null and empty values state no
  attribute, keys equal after normalisation are one attribute with all their values; precision = faithful
  predicted attributes / predicted, recall = faithful / reference.
Unparseable outputs are counted (``unparsed``), never dropped.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

UNIT_SYNONYMS = {
    "millilitres": "ml", "milliliters": "ml", "milliliter": "ml", "millilitre": "ml", "litres": "l", "liters": "l",
    "litre": "l", "liter": "l", "grams": "g", "gram": "g", "kilograms": "kg", "kilogram": "kg", "inches": "in",
    "inch": "in", "centimetres": "cm", "centimeters": "cm",
}


def normalize(text: Any, synonyms: dict[str, str] | None = None) -> str:
    """Lower-case, strip accents/punctuation, unify units ("500 Milliliters" == "500ml"), apply synonyms."""
    s = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode().lower().strip()
    s = re.sub(r"[\"'`.,;:!?()\[\]{}*#]", " ", s)  # markdown emphasis and headings are not words
    s = re.sub(r"[-_/]", " ", s)
    words = [UNIT_SYNONYMS.get(w, w) for w in s.split()]
    s = " ".join(words)
    s = re.sub(r"(\d) (ml|l|g|kg|cm|in)\b", r"\1\2", s)  # "500 ml" -> "500ml"
    s = re.sub(r"\s+", " ", s).strip()
    if synonyms:
        s = synonyms.get(s, s)
    return s


def aspect_match(prediction: str, answer: str, aliases: list[str] | None = None) -> bool:
    """Exact after normalisation; a short prediction that *starts* with the answer ("Red." / "red colour") counts."""
    pred = normalize(prediction)
    targets = {normalize(a) for a in [answer, *(aliases or [])]}
    if pred in targets:
        return True
    return any(pred.startswith(t + " ") and len(pred.split()) <= len(t.split()) + 2 for t in targets)


def classify(prediction: str, classes: list[str]) -> str | None:
    """Map a free-form answer to one of `classes` (None if it names none or several)."""
    pred = normalize(prediction)
    norm = {normalize(c): c for c in classes}
    if pred in norm:
        return norm[pred]
    hits = [c for n, c in norm.items() if re.search(rf"\b{re.escape(n)}\b", pred)]
    hits = [h for h in hits if not any(h != o and normalize(h) in normalize(o) for o in hits)]  # longest mention
    return hits[0] if len(hits) == 1 else None


def _unfenced(text: str) -> str:
    """The content of a ```json fence if the answer has one, else the answer."""
    t = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", t, re.S)
    return fence.group(1).strip() if fence else t


def parse_model_json(text: str) -> dict[str, Any] | None:
    """The first JSON object in a model answer (```json fences and text around it allowed); None if there is none."""
    t = _unfenced(text)
    start = t.find("{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(t[start:])
            if isinstance(obj, dict):
                return obj
        except json.JSONDecodeError:
            pass
        start = t.find("{", start + 1)
    return None


def _stated(v: Any) -> list[str]:
    """The values an attribute states: list elements (nested lists flattened); null, empty strings and empty lists
    state nothing."""
    if isinstance(v, (list, tuple)):
        return [x for it in v for x in _stated(it)]
    if v is None or isinstance(v, dict):
        return [] if v is None else [json.dumps(v, sort_keys=True, ensure_ascii=False)]
    s = str(v).strip()
    return [s] if s else []


def _merge(pairs: list[tuple[str, Any]]) -> dict[str, str | list[str]]:
    """{key: value(s)}: keys given twice keep every value; keys that state nothing are left out."""
    out: dict[str, list[str]] = {}
    listed: set[str] = set()
    for k, v in pairs:
        vals = _stated(v)
        if vals:
            out.setdefault(str(k).strip(), []).extend(vals)
            if isinstance(v, (list, tuple)):
                listed.add(str(k).strip())
    return {k: v if len(v) > 1 or k in listed else v[0] for k, v in out.items()}


# a `key: value` line as models write it: list markers (-, *, +, 1., 1)), **bold** or __bold__ keys and values
_LIST_MARKER = re.compile(r"^\s*(?:[-*+\u2022]|\d{1,3}[.)])\s+")
_BOLD = re.compile(r"(?<![\w*])\*\*(?!\s)(.+?)(?<!\s)\*\*(?![\w*])|(?<!\w)__(?!\s)(.+?)(?<!\s)__(?!\w)")
_KEY_VALUE = re.compile(r"^\s*([^:]{1,60}?)\s*:\s*(.+?)\s*$")


def _json_objects(text: str) -> list[dict[str, Any]] | None:
    """A top-level JSON list of objects ([{"Colour": "Red"}, {"Brand": "Acme"}]); None otherwise."""
    t = _unfenced(text)
    start = t.find("[")
    if start == -1 or "{" in t[:start]:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(t[start:])
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, list) and obj and all(isinstance(o, dict) for o in obj) else None


def parse_attributes(text: str) -> dict[str, str | list[str]] | None:
    """A JSON object (possibly inside ```json fences), a JSON list of objects, or `key: value` lines -> {key:
    value}; list values stay lists (several values of one attribute), a key given twice keeps both values, null and
    empty values are no attribute. None if nothing parses."""
    objs = _json_objects(text)
    if objs is None:
        obj = parse_model_json(text)
        objs = [obj] if obj is not None else None
    if objs is not None:
        return _merge([(k, v) for o in objs for k, v in o.items()])
    pairs = []
    for line in _unfenced(text).splitlines():
        line = _BOLD.sub(lambda m: m.group(1) or m.group(2), _LIST_MARKER.sub("", line))
        m = _KEY_VALUE.match(line)
        if m:
            pairs.append((m.group(1).strip(" *_`#"), m.group(2).strip(" *_`")))
    return _merge(pairs) or None


def _value_set(v: str | list[str]) -> set[str]:
    """Normalised values an attribute states: each list element, and a comma-separated string both whole and per
    part ("Nike, Adidas" states Nike and Adidas). Splitting happens before normalisation removes the commas."""
    items = v if isinstance(v, list) else [v]
    out = set()
    for it in items:
        out.add(normalize(it))
        if isinstance(it, str) and "," in it:
            out |= {normalize(p) for p in it.split(",") if p.strip()}
    return out - {""}


def _by_key(attrs: dict[str, str | list[str]]) -> dict[str, set[str]]:
    """Normalised key -> normalised values; keys equal after normalisation ("Colour", "colour") are one attribute."""
    out: dict[str, set[str]] = {}
    for k, v in attrs.items():
        vals = _value_set(v)
        if vals:
            out.setdefault(normalize(k), set()).update(vals)
    return out


def reference_attributes(reference: Any) -> dict[str, str | list[str]]:
    """A DAE reference as {key: value(s)}: an object, or the same written as a JSON / `key: value` string."""
    if isinstance(reference, dict):
        return _merge(list(reference.items()))
    if isinstance(reference, str):
        parsed = parse_attributes(reference)
        if parsed is not None:
            return parsed
    raise ValueError(f"DAE reference {reference!r:.120} is not an attribute object; write it as "
                     f'{{"Brand": "Nike", ...}} (a JSON object, or its JSON string)')


def dae_scores(prediction: str, reference: dict[str, str | list[str]]) -> dict[str, float] | None:
    """Precision/recall/F1 of attribute extraction for one item (keys and values normalised). A predicted attribute
    is faithful when its key is a reference key and one of the values it states is a reference value."""
    pred = parse_attributes(prediction)
    if pred is None:
        return None
    ref = _by_key(reference_attributes(reference))
    got = _by_key(pred)
    correct = sum(1 for k, vals in got.items() if k in ref and vals & ref[k])
    p = correct / len(got) if got else 0.0
    r = correct / len(ref) if ref else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def score_records(task: str, records: list[dict[str, Any]], predictions: list[str]) -> dict[str, Any]:
    """Aggregate metrics of one benchmark. Metrics are in [0, 100] like the paper's tables."""
    if len(records) != len(predictions):
        raise ValueError(f"{task}: {len(records)} records but {len(predictions)} predictions")
    n = len(records)
    if task.startswith("aspect"):
        hits = [aspect_match(p, r["answer"], r.get("aliases")) for r, p in zip(records, predictions)]
        per_aspect: dict[str, list[bool]] = {}
        for r, h in zip(records, hits):
            per_aspect.setdefault(r.get("aspect", "all"), []).append(h)
        return {"accuracy": 100 * sum(hits) / max(1, n), "n": n,
                "per_aspect": {k: 100 * sum(v) / len(v) for k, v in sorted(per_aspect.items())}}
    if task.startswith("fashion"):
        mapped = [classify(p, r["classes"]) for r, p in zip(records, predictions)]
        per_attr: dict[str, list[bool]] = {}
        for r, m in zip(records, mapped):
            per_attr.setdefault(r.get("attribute", "all"), []).append(m == r["answer"])
        correct = sum(m == r["answer"] for r, m in zip(records, mapped))
        return {"accuracy": 100 * correct / max(1, n), "n": n, "unmapped": sum(m is None for m in mapped),
                "per_attribute": {k: 100 * sum(v) / len(v) for k, v in sorted(per_attr.items())}}
    if task == "dae":
        scores = []
        for i, (r, p) in enumerate(zip(records, predictions)):
            try:
                scores.append(dae_scores(p, r["answer"]))
            except ValueError as e:  # a bad reference: name its record
                raise ValueError(f"dae record {r.get('id', i)!r}: {e}") from None
        ok = [s for s in scores if s is not None]
        mean = {k: 100 * sum(s[k] for s in ok) / max(1, n) for k in ("precision", "recall", "f1")}
        return {**mean, "n": n, "unparsed": n - len(ok)}
    raise ValueError(f"no scorer for task {task!r}")
