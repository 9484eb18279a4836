"""Multi-image item intelligence: LLM-as-a-judge scoring of JSON product records (the paper's Table 3).

Facts. Model output and reference are JSON objects in the item-intelligence schema (docs/DATA_FORMAT.md); both
are flattened into atomic facts ``field.path = value`` (one per list element; ``{"value": x}`` / ``{"text": x}``
leaves collapse to x).

Verdicts. For each item the judge labels every predicted fact ``correct`` / ``incorrect`` / ``unverifiable``
(the reference lacks that information) and lists the reference facts the prediction states correctly.

Metrics (in [0, 100], as in Table 3):
- precision = correct / predicted facts, recall = reference facts found / reference facts, F1 of the two,
  each computed per item and averaged over items (an item whose output is not JSON scores 0 on all three);
- verifiable-correct / verifiable-incorrect / unverifiable = shares of all predicted facts (they sum to 100).

Judges. ``LLMJudge`` talks to any OpenAI-compatible chat endpoint (vLLM, OpenAI, ...) with a versioned prompt
from eval/judge_prompts/ and JSON-schema-constrained output where the server supports it; malformed verdicts are
counted and retried (the error is fed back) up to ``max_attempts``; an item that never gets a valid verdict is
counted in ``judge_failed`` and left out of the averages, never crashing the run. ``RuleJudge`` compares
normalised values exactly (no model; right for the synthetic set, whose values are canonical).
The API key is read from the environment variable named by ``api_key_env`` and never logged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from ecomvlm.eval.openai_client import OpenAIChatClient
from ecomvlm.eval.scoring import normalize, parse_model_json

PROMPTS_DIR = Path(__file__).parent / "judge_prompts"
VERDICTS = ("correct", "incorrect", "unverifiable")


# ----------------------------------------------------------------------------------------------- facts


def flatten_facts(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """{"attributes": {"colors": ["Red", "Blue"]}} -> [("attributes.colors", "Red"), ("attributes.colors", "Blue")]."""
    if isinstance(obj, dict):
        if set(obj) <= {"value", "text", "type"} and ("value" in obj or "text" in obj):
            return flatten_facts(obj.get("value", obj.get("text")), prefix)
        out: list[tuple[str, str]] = []
        for k, v in obj.items():
            out += flatten_facts(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, list):  # a value repeated in a list (a generation loop) is one fact
        seen, out = set(), []
        for f in (f for v in obj for f in flatten_facts(v, prefix)):
            key = (f[0], " ".join(f[1].lower().split()))
            if key not in seen:
                seen.add(key)
                out.append(f)
        return out
    if obj is None or (isinstance(obj, str) and not obj.strip()):
        return []
    return [(prefix or "value", str(obj))]


@dataclass
class ItemVerdict:
    predicted: list[str]  # one verdict per predicted fact
    reference_found: set[int]  # 1-based ids of reference facts stated correctly
    attempts: int = 1
    raw: str = ""


class JudgeError(RuntimeError):
    """The judge never produced a valid verdict within its attempts."""


class Judge(Protocol):
    name: str

    def judge(self, predicted: list[tuple[str, str]], reference: list[tuple[str, str]],
              reference_json: dict[str, Any]) -> ItemVerdict: ...


# ----------------------------------------------------------------------------------------------- rule judge


class RuleJudge:
    """Exact match after normalisation: same field (last path component) and same normalised value."""

    name = "rules-v1"

    def judge(self, predicted, reference, reference_json):
        by_field: dict[str, set[str]] = {}
        for path, v in reference:
            by_field.setdefault(path.split(".")[-1], set()).add(normalize(v))
        verdicts, found = [], set()
        for path, v in predicted:
            key, val = path.split(".")[-1], normalize(v)
            if key not in by_field:
                verdicts.append("unverifiable")
                continue
            ok = val in by_field[key]
            verdicts.append("correct" if ok else "incorrect")
            if ok:
                found |= {i + 1 for i, (p, rv) in enumerate(reference)
                          if p.split(".")[-1] == key and normalize(rv) == val}
        return ItemVerdict(verdicts, found)


# ----------------------------------------------------------------------------------------------- LLM judge


@dataclass
class JudgePrompt:
    version: str
    system: str
    user: str
    sha256: str

    @classmethod
    def load(cls, name_or_path: str) -> "JudgePrompt":
        import yaml

        p = Path(name_or_path)
        if not p.is_file():
            p = PROMPTS_DIR / f"{name_or_path}.yaml"
        if not p.is_file():
            known = sorted(f.stem for f in PROMPTS_DIR.glob("*.yaml"))
            raise FileNotFoundError(f"judge prompt {name_or_path!r} not found; versions here: {known} (or a path)")
        raw = p.read_bytes()
        d = yaml.safe_load(raw)
        missing = {"version", "system", "user"} - set(d or {})
        if missing:
            raise ValueError(f"judge prompt {p} lacks {sorted(missing)}")
        return cls(d["version"], d["system"], d["user"], hashlib.sha256(raw).hexdigest())


def verdict_schema(n_pred: int, n_ref: int) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": ["predicted", "reference_found"],
            "properties": {
                "predicted": {"type": "array", "minItems": n_pred, "maxItems": n_pred, "items": {
                    "type": "object", "additionalProperties": False, "required": ["id", "verdict"],
                    "properties": {"id": {"type": "integer", "minimum": 1, "maximum": max(1, n_pred)},
                                   "verdict": {"type": "string", "enum": list(VERDICTS)}}}},
                "reference_found": {"type": "array", "maxItems": n_ref, "items": {
                    "type": "integer", "minimum": 1, "maximum": max(1, n_ref)}}}}


def validate_verdict(text: str, n_pred: int, n_ref: int) -> ItemVerdict:
    """Parse and check a judge answer; ValueError says exactly what is wrong (fed back on retry)."""
    obj = parse_model_json(text)
    if obj is None:
        raise ValueError("the answer is not a JSON object")
    preds = obj.get("predicted")
    if not isinstance(preds, list):
        raise ValueError('"predicted" must be a list of {"id", "verdict"} objects')
    verdicts: dict[int, str] = {}
    for e in preds:
        if not isinstance(e, dict) or not _is_id(e.get("id")) or e.get("verdict") not in VERDICTS:
            raise ValueError(f"bad entry {json.dumps(e)[:80]}: need an integer id and a verdict in {list(VERDICTS)}")
        if not 1 <= e["id"] <= n_pred:
            raise ValueError(f"id {e['id']} is outside 1..{n_pred}")
        if e["id"] in verdicts:
            raise ValueError(f"id {e['id']} is judged twice")
        verdicts[e["id"]] = e["verdict"]
    missing = [i for i in range(1, n_pred + 1) if i not in verdicts]
    if missing:
        raise ValueError(f"no verdict for predicted facts {missing}")
    found = obj.get("reference_found", [])
    if not isinstance(found, list) or not all(_is_id(i) and 1 <= i <= n_ref for i in found):
        raise ValueError(f'"reference_found" must list reference fact ids in 1..{n_ref}')
    if len(set(found)) != len(found):
        raise ValueError(f'"reference_found" lists a reference fact twice ({sorted(found)})')
    n_correct = sum(v == "correct" for v in verdicts.values())
    if len(found) > n_correct:
        # a reference fact is found only when a predicted fact states it correctly
        raise ValueError(f'"reference_found" lists {len(found)} reference facts but only {n_correct} predicted facts '
                         f'are judged correct; list only reference facts that a correct predicted fact states')
    return ItemVerdict([verdicts[i] for i in range(1, n_pred + 1)], set(found), raw=text)


def _is_id(v: Any) -> bool:
    """An integer id; JSON true/false are not ids (bool is an int subclass in Python)."""
    return isinstance(v, int) and not isinstance(v, bool)


def parse_reference(record: dict[str, Any]) -> dict[str, Any]:
    """The reference JSON object of an item_intel record; a malformed one is an error naming the record."""
    ref = record.get("answer")
    if isinstance(ref, dict):
        return ref
    try:
        obj = json.loads(ref) if isinstance(ref, str) else None
    except json.JSONDecodeError as e:
        raise ValueError(f"item_intel record {record.get('id')!r}: the reference answer is not valid JSON ({e.msg} "
                         f"at character {e.pos}); fix the record (docs/DATA_FORMAT.md)") from None
    if not isinstance(obj, dict):
        kind = type(obj if obj is not None else ref).__name__
        raise ValueError(f"item_intel record {record.get('id')!r}: the reference answer must be a JSON object in the "
                         f"item-intelligence schema, not {kind}; fix the record (docs/DATA_FORMAT.md)")
    return obj


@dataclass
class LLMJudge:
    client: OpenAIChatClient
    prompt: JudgePrompt
    max_attempts: int = 3
    constrained: bool = True  # send the JSON schema (vLLM, OpenAI); off for servers without structured output
    max_tokens: int = 1024
    stats: dict[str, int] = field(default_factory=lambda: {"calls": 0, "malformed": 0, "http_errors": 0})

    @property
    def name(self) -> str:
        return f"llm:{self.client.model}@{self.prompt.version}"

    def messages(self, predicted, reference, reference_json) -> list[dict[str, str]]:
        def numbered(facts):
            return "\n".join(f"{i}. {p} = {v}" for i, (p, v) in enumerate(facts, 1)) or "(none)"

        user = self.prompt.user.format(reference=json.dumps(reference_json, ensure_ascii=False),
                                       reference_facts=numbered(reference), predicted_facts=numbered(predicted),
                                       n_predicted=len(predicted), n_reference=len(reference))
        return [{"role": "system", "content": self.prompt.system}, {"role": "user", "content": user}]

    def judge(self, predicted, reference, reference_json) -> ItemVerdict:
        if not predicted:
            return ItemVerdict([], set(), attempts=0)
        msgs = self.messages(predicted, reference, reference_json)
        schema = verdict_schema(len(predicted), len(reference)) if self.constrained else None
        errors = []
        for attempt in range(1, self.max_attempts + 1):
            self.stats["calls"] += 1
            try:
                text = self.client.chat(msgs, max_tokens=self.max_tokens, json_schema=schema)
            except ConnectionError as e:
                self.stats["http_errors"] += 1
                errors.append(str(e))
                continue
            try:
                v = validate_verdict(text, len(predicted), len(reference))
                v.attempts = attempt
                return v
            except ValueError as e:
                self.stats["malformed"] += 1
                errors.append(f"{e} (answer: {text[:120]!r})")
                msgs = msgs[:2] + [{"role": "assistant", "content": text},
                                   {"role": "user", "content": f"That answer is invalid: {e}. Answer again with "
                                                               f"the JSON only."}]
        raise JudgeError("; ".join(errors[-2:]))


# ----------------------------------------------------------------------------------------------- scoring


def score_item_intel(records: list[dict[str, Any]], predictions: list[str], judge: Judge, *,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Table-3 metrics of one model's answers; per-item verdicts come back under ``items``."""
    if len(records) != len(predictions):
        raise ValueError(f"item_intel: {len(records)} records but {len(predictions)} predictions")
    per_item, counts = [], {v: 0 for v in VERDICTS}
    model_unparsed = judge_failed = 0
    for i, (rec, pred) in enumerate(zip(records, predictions)):
        ref_json = parse_reference(rec)
        reference = flatten_facts(ref_json)
        obj = parse_model_json(pred)
        item: dict[str, Any] = {"id": rec.get("id", i)}
        if obj is None:
            model_unparsed += 1
            item.update(status="model_output_not_json", precision=0.0, recall=0.0, f1=0.0)
        else:
            predicted = flatten_facts(obj)
            try:
                v = judge.judge(predicted, reference, ref_json)
            except JudgeError as e:
                judge_failed += 1
                item.update(status="judge_failed", error=str(e)[:300])
                per_item.append(item)
                if progress:
                    progress(i + 1, len(records))
                continue
            for verdict in v.predicted:
                counts[verdict] += 1
            c = v.predicted.count("correct")
            p = c / len(predicted) if predicted else float(not reference)
            r = len(v.reference_found) / len(reference) if reference else 1.0
            item.update(status="ok", precision=p, recall=r, f1=2 * p * r / (p + r) if p + r else 0.0,
                        attempts=v.attempts, facts=[[f"{a} = {b}", vd] for (a, b), vd in zip(predicted, v.predicted)],
                        reference_found=sorted(v.reference_found))
        per_item.append(item)
        if progress:
            progress(i + 1, len(records))
    scored = [it for it in per_item if it["status"] != "judge_failed"]
    n_facts = sum(counts.values())

    def mean(k):
        return 100 * sum(it[k] for it in scored) / max(1, len(scored))

    return {"f1": mean("f1"), "precision": mean("precision"), "recall": mean("recall"),
            "verifiable_correct": 100 * counts["correct"] / max(1, n_facts),
            "verifiable_incorrect": 100 * counts["incorrect"] / max(1, n_facts),
            "unverifiable": 100 * counts["unverifiable"] / max(1, n_facts),
            "n": len(records), "n_scored": len(scored), "predicted_facts": n_facts, "unparsed": model_unparsed,
            "judge_failed": judge_failed, "judge": judge.name,
            "judge_prompt_sha256": getattr(getattr(judge, "prompt", None), "sha256", None),
            "judge_stats": dict(getattr(judge, "stats", {})), "items": per_item}
