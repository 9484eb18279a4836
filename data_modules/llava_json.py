"""Reading LLaVA-format records, with every problem counted by reason (never a crash, never a silent drop).

Accepted files: a JSON list (pretty-printed or not), JSONL, or whitespace-separated JSON objects (pretty-printed
records one after another); a UTF-8 byte-order mark is ignored. A record is trained only if its structure is one a
chat template can render without guessing:

- ``conversations``: optional ``system`` turns first, then ``human``/``gpt`` alternating, starting with ``human``
  and ending with ``gpt``; every ``gpt`` turn has non-empty text (an empty answer trains the model to stop at once);
- ``image``: absent, a non-empty string, or a list of them (a list of ``{"bytes", "name"}`` dicts when a reader of
  a published release already holds the image bytes, see data_modules/llava_ov.py);
- as many ``<image>`` placeholders as images.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ecomvlm.data_modules.chat_templates import IMAGE_TOKEN

# skip reasons (the manifest, the loader's counts and logs use these exact names)
BROKEN_JSON = "broken_json"
BAD_RECORD = "bad_record"
BAD_IMAGE_FIELD = "bad_image_field"
ROLE_ORDER = "role_order"
NO_ASSISTANT = "no_assistant_turn"
EMPTY_ASSISTANT = "empty_assistant_text"
IMAGE_TOKEN_MISMATCH = "image_token_mismatch"
MISSING_IMAGE = "missing_image"
CORRUPT_IMAGE = "corrupt_image"

USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")
SPEAKERS = ("system", *USER_ROLES, *ASSISTANT_ROLES)


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

    def of_source(self, source: str) -> dict[str, int]:
        return {r: n for (s, r), n in sorted(self.counts.items()) if s == source}

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def read_records(path: str | Path, skips: SkipCounter, source: str | None = None) -> list[Any]:
    """A JSON list, JSONL or concatenated-JSON file -> its JSON values, in file order (sampling strategies count
    these, as LLaVA-NeXT does; :func:`iter_checked` then checks the selected ones). A broken JSONL line (or object)
    is skipped and counted; a broken JSON list is one error naming the file and position."""
    path = Path(path)
    source = source or path.name
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: broken JSON at line {e.lineno} column {e.colno}: {e.msg}. Fix the file, or "
                             f"convert it to JSONL so that bad lines can be skipped one by one") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records")
        return data
    return [rec for _, rec in _json_objects(text, skips, source)]


def iter_checked(records: list[Any], skips: SkipCounter, source: str) -> Iterator[dict[str, Any]]:
    """The records that can be trained on; every other one counted by reason."""
    for i, rec in enumerate(records):
        if check_record(rec, skips, source, f"record {i}"):
            yield rec


def _json_objects(text: str, skips: SkipCounter, source: str) -> Iterator[tuple[str, Any]]:
    """JSON values one after another (one per line, or pretty-printed over several lines). After a broken one the
    reader resumes at the next line, so one bad line costs one record."""
    decoder = json.JSONDecoder()
    pos, n = 0, len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        if pos >= n:
            return
        lineno = text.count("\n", 0, pos) + 1
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            skips.skip(source, BROKEN_JSON, f"line {lineno}: {e.msg}")
            nl = text.find("\n", pos)
            if nl < 0:
                return
            pos = nl + 1
            continue
        # a value must end its line (JSONL); `{"a": 1} garbage` is broken, not two records
        rest = text.find("\n", end)
        tail = text[end:rest if rest >= 0 else n]
        if tail.strip():
            skips.skip(source, BROKEN_JSON, f"line {lineno}: unexpected {tail.strip()[:20]!r} after a JSON value")
            if rest < 0:
                return
            pos = rest + 1
            continue
        yield f"line {lineno}", value
        pos = end


def check_record(rec: Any, skips: SkipCounter, source: str, where: str) -> bool:
    """True if `rec` can be trained on as it is; otherwise the reason is counted and False returned."""
    problem = record_problem(rec)
    if problem is None:
        return True
    reason, detail = problem
    rid = rec.get("id") if isinstance(rec, dict) else None
    skips.skip(source, reason, f"{where}{f' (id {rid})' if rid is not None else ''}: {detail}")
    return False


def record_problem(rec: Any) -> tuple[str, str] | None:
    """(reason, detail) for a record that cannot be trained on as it is, else None."""
    if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list) or not rec["conversations"]:
        return BAD_RECORD, "not a record with a non-empty 'conversations' list"
    turns = rec["conversations"]
    for t in turns:
        if not isinstance(t, dict) or t.get("from") not in SPEAKERS or not isinstance(t.get("value"), str):
            return BAD_RECORD, f"turn {t!r:.80} needs 'from' (human/gpt/system) and a string 'value'"
    images = rec.get("image")
    if images is not None:
        items = [images] if not isinstance(images, list) else images
        if not items or not all(_is_image_ref(x) for x in items):
            return BAD_IMAGE_FIELD, (f"'image' must be a path string or a list of them, got {images!r:.60}")
    speakers = [t["from"] for t in turns]
    k = 0
    while k < len(speakers) and speakers[k] == "system":
        k += 1
    dialogue = speakers[k:]
    if not any(s in ASSISTANT_ROLES for s in dialogue):
        return NO_ASSISTANT, "no gpt/assistant turn (nothing to learn from)"
    for i, s in enumerate(dialogue):
        want = USER_ROLES if i % 2 == 0 else ASSISTANT_ROLES
        if s not in want:
            return ROLE_ORDER, (f"turn {k + i} is {s!r} where a {'human' if i % 2 == 0 else 'gpt'} turn belongs "
                                f"(turns go [system...] human, gpt, human, gpt, ...)")
    if dialogue[-1] not in ASSISTANT_ROLES:
        return ROLE_ORDER, "the last turn is a human turn with no answer"
    for i, t in enumerate(turns):
        if t["from"] in ASSISTANT_ROLES and not t["value"].strip():
            return EMPTY_ASSISTANT, f"turn {i} (gpt) has empty text"
    problem = check_image_tokens(rec)
    if problem:
        return IMAGE_TOKEN_MISMATCH, problem
    return None


def _is_image_ref(x: Any) -> bool:
    if isinstance(x, str):
        return bool(x.strip())
    # embedded bytes (empty when the release's image did not decode: counted as corrupt_image when sharding)
    return isinstance(x, dict) and isinstance(x.get("bytes"), (bytes, bytearray))


def record_images(rec: dict[str, Any]) -> list[Any]:
    """The images of a checked record, in placeholder order (paths, or {"bytes", "name"} dicts)."""
    img = rec.get("image")
    if img is None:
        return []
    return list(img) if isinstance(img, list) else [img]


def check_image_tokens(rec: dict[str, Any]) -> str | None:
    """None if the record has one <image> per image, else a message."""
    n_img = len(record_images(rec))
    n_tok = sum(t["value"].count(IMAGE_TOKEN) for t in rec["conversations"])
    if n_img != n_tok:
        return f"{n_tok} {IMAGE_TOKEN} placeholders but {n_img} images"
    return None
