"""Reading LLaVA-format records, with every problem counted by reason (never a crash, never a silent drop)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ecomvlm.data_modules.chat_templates import IMAGE_TOKEN

# skip reasons (the manifest and logs use these exact names)
BROKEN_JSON = "broken_json"
BAD_RECORD = "bad_record"
IMAGE_TOKEN_MISMATCH = "image_token_mismatch"
MISSING_IMAGE = "missing_image"
CORRUPT_IMAGE = "corrupt_image"


@dataclass
class SkipCounter:
    """Counts skipped records per (source, reason) and keeps a few examples of each for the report."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 3

    def skip(self, source: str, reason: str, detail: str) -> None:
        self.counts[(source, reason)] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(f"{source}: {detail}")

    def by_reason(self) -> dict[str, int]:
        out: Counter = Counter()
        for (_, reason), n in self.counts.items():
            out[reason] += n
        return dict(sorted(out.items()))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def read_records(path: str | Path, skips: SkipCounter, source: str | None = None) -> list[dict[str, Any]]:
    """A JSON list or JSONL file -> records. A broken JSONL line is skipped and counted; a broken JSON list
    file is one error naming the file and position (nothing in it can be trusted)."""
    path = Path(path)
    source = source or path.name
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: broken JSON at line {e.lineno} column {e.colno}: {e.msg}. Fix the file, or "
                             f"convert it to JSONL so that bad lines can be skipped one by one") from None
        return [r for i, r in enumerate(data) if _is_record(r, skips, source, f"item {i}")]
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            skips.skip(source, BROKEN_JSON, f"line {lineno}: {e.msg}")
            continue
        if _is_record(rec, skips, source, f"line {lineno}"):
            out.append(rec)
    return out


def _is_record(rec: Any, skips: SkipCounter, source: str, where: str) -> bool:
    if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list) or not rec["conversations"]:
        skips.skip(source, BAD_RECORD, f"{where}: not a record with a non-empty 'conversations' list")
        return False
    for t in rec["conversations"]:
        if not isinstance(t, dict) or t.get("from") not in ("human", "gpt", "system", "user", "assistant") \
                or not isinstance(t.get("value"), str):
            skips.skip(source, BAD_RECORD, f"{where}: turn {t!r:.80} needs 'from' (human/gpt/system) and 'value'")
            return False
    return True


def record_images(rec: dict[str, Any]) -> list[str]:
    img = rec.get("image")
    if img is None:
        return []
    return [img] if isinstance(img, str) else list(img)


def check_image_tokens(rec: dict[str, Any]) -> str | None:
    """None if the record has one <image> per image, else a message."""
    n_img = len(record_images(rec))
    n_tok = sum(t["value"].count(IMAGE_TOKEN) for t in rec["conversations"])
    if n_img != n_tok:
        return f"{n_tok} {IMAGE_TOKEN} placeholders but {n_img} images"
    return None


def iter_checked(records: list[dict[str, Any]], skips: SkipCounter, source: str) -> Iterator[dict[str, Any]]:
    for rec in records:
        problem = check_image_tokens(rec)
        if problem:
            skips.skip(source, IMAGE_TOKEN_MISMATCH, f"id {rec.get('id', '?')}: {problem}")
            continue
        yield rec
