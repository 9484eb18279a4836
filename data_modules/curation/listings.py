"""Ingest: raw listings (JSONL, a JSON list, or parquet; files or folders of them) -> one normalised shape.

A raw listing has an id, a title, a category, item aspects and images; sellers' exports and scrapes spell these in
many ways, so each field is looked up under several names (``FIELD_ALIASES``, extended by ``--field NAME=COLUMN``)
and aspects are accepted as

- an object ``{"Colour": "Red", "Material": ["Cotton", "Linen"]}``,
- a list of ``{"name": ..., "value"|"values": ...}`` objects or ``[name, value]`` pairs,
- a string ``"Colour: Red; Size: M"`` (``;``, ``|`` or new lines between aspects) or a JSON string of the above;

images as a list of paths/URLs (or of ``{"url"|"path": ...}`` objects), one string, or a ``|``-separated string.

Every row gets exactly one fate: ``written`` (normalised into ``ingest/listings.jsonl``) or ``dropped:`` with a
reason: ``broken_json`` / ``broken_row`` (unparseable), ``not_an_object``, ``no_id``, ``duplicate_id`` (an id seen
before: the first row wins).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("id", "item_id", "itemId", "listing_id", "listingId", "sku"),
    "title": ("title", "name", "item_title", "listing_title"),
    "category": ("category", "category_path", "categoryPath", "category_name", "leaf_category"),
    "aspects": ("aspects", "item_aspects", "item_specifics", "itemSpecifics", "localizedAspects", "attributes"),
    "images": ("images", "image_urls", "image_paths", "imageUrls", "pictures", "picture_urls", "image"),
    "main_image": ("main_image", "primary_image", "image_url", "gallery_url", "galleryURL"),
    "split": ("split",),
}
RAW_SUFFIXES = (".jsonl", ".json", ".parquet", ".ndjson")


def input_files(paths: list[str | Path]) -> list[Path]:
    """The raw files named (folders: every file with a raw suffix below them, sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in RAW_SUFFIXES and q.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"raw listings {p}: no such file or folder")
    if not out:
        raise FileNotFoundError(f"no raw listing files ({', '.join(RAW_SUFFIXES)}) under {[str(p) for p in paths]}")
    return out


def iter_rows(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    """(where, row or None, problem) of every row of one file, in file order."""
    if path.suffix.lower() == ".parquet":
        yield from _parquet_rows(path)
        return
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        head = f.read(1)
        while head and head.isspace():
            head = f.read(1)
        f.seek(0)
        if head == "[":
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                yield f"{path.name}", None, f"broken JSON list at line {e.lineno}: {e.msg}"
                return
            for i, row in enumerate(data if isinstance(data, list) else [data]):
                yield f"{path.name}:{i}", row, None
            return
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path.name}:{lineno}", json.loads(line), None
            except json.JSONDecodeError as e:
                yield f"{path.name}:{lineno}", None, f"broken JSON: {e.msg}"


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - any reader error is one counted bad file
        yield f"{path.name}", None, f"unreadable parquet: {type(e).__name__}: {e}"[:200]
        return
    n = 0
    for g in range(pf.num_row_groups):
        try:
            rows = pf.read_row_group(g).to_pylist()
        except Exception as e:  # noqa: BLE001
            yield f"{path.name}:rowgroup{g}", None, f"unreadable row group: {type(e).__name__}: {e}"[:200]
            continue
        for row in rows:
            yield f"{path.name}:{n}", row, None
            n += 1


def _field(row: dict[str, Any], name: str, mapping: dict[str, str]) -> Any:
    if name in mapping:
        return row.get(mapping[name])
    for alias in FIELD_ALIASES[name]:
        if alias in row and row[alias] not in (None, ""):
            return row[alias]
    return None


def parse_aspects(value: Any) -> list[tuple[str, Any]]:
    """Seller aspects in any accepted shape -> [(name, value)] in the given order (values may be lists)."""
    if value is None:
        return []
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return []
        if s[0] in "[{":
            try:
                return parse_aspects(json.loads(s))
            except json.JSONDecodeError:
                pass
        out = []
        for part in re.split(r"[;|\n]+", s):
            if ":" in part:
                k, v = part.split(":", 1)
                out.append((k.strip(), v.strip()))
            elif part.strip():
                out.append(("", part.strip()))  # a value without a name: cleaning drops it as unnamed
        return out
    if isinstance(value, dict):
        if "name" in value and ("value" in value or "values" in value):
            return [(value["name"], value.get("value", value.get("values")))]
        return [(str(k), v) for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        out = []
        for x in value:
            if isinstance(x, dict):
                name = x.get("name", x.get("key", x.get("localizedName", "")))
                out.append((str(name or ""), x.get("value", x.get("values", x.get("localizedValues")))))
            elif isinstance(x, (list, tuple)) and len(x) == 2:
                out.append((str(x[0]), x[1]))
            else:
                out.append(("", x))
        return out
    return [("", value)]


def parse_images(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [p.strip() for p in value.split("|") if p.strip()]
    if isinstance(value, dict):
        value = [value]
    out = []
    for x in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(x, dict):
            x = x.get("url") or x.get("path") or x.get("imageUrl") or ""
        if isinstance(x, str) and x.strip():
            out.append(x.strip())
    return out


def normalise_row(row: dict[str, Any], mapping: dict[str, str] | None = None) -> dict[str, Any]:
    """A raw row -> {id, title, category, aspects: [[name, value], ...], images: [...], split} (text not cleaned
    yet: cleaning counts what it changes). The main image, when named separately, goes first."""
    mapping = mapping or {}
    images = parse_images(_field(row, "images", mapping))
    main = _field(row, "main_image", mapping)
    if isinstance(main, str) and main.strip():
        images = [main.strip(), *[p for p in images if p != main.strip()]]

    def text(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, (list, tuple)):  # a category path given as a list
            return " > ".join(str(x) for x in v)
        return str(v)

    split = _field(row, "split", mapping)
    return {"id": str(_field(row, "id", mapping)).strip(), "title": text(_field(row, "title", mapping)),
            "category": text(_field(row, "category", mapping)),
            "aspects": [[str(k), v] for k, v in parse_aspects(_field(row, "aspects", mapping))],
            "images": images, "split": str(split) if split not in (None, "") else "train"}


def ingest(paths: list[str | Path], out_file: Path, mapping: dict[str, str] | None = None) -> dict[str, Any]:
    """Read every raw file, write normalised listings (JSONL, temp + rename) and return the fate counts."""
    fates: Counter = Counter()
    examples: dict[str, list[str]] = {}
    seen: set[str] = set()
    files = input_files(paths)
    tmp = out_file.with_name(out_file.name + ".tmp")
    out_file.parent.mkdir(parents=True, exist_ok=True)

    def drop(reason: str, where: str, detail: str) -> None:
        fates[f"dropped:{reason}"] += 1
        ex = examples.setdefault(f"dropped:{reason}", [])
        if len(ex) < 3:
            ex.append(f"{where}: {detail}"[:300])

    with open(tmp, "w", encoding="utf-8") as f:
        for path in files:
            for where, row, problem in iter_rows(path):
                if problem is not None:
                    drop("broken_json" if "JSON" in problem else "broken_row", where, problem)
                    continue
                if not isinstance(row, dict):
                    drop("not_an_object", where, f"{row!r:.80}")
                    continue
                rec = normalise_row(row, mapping)
                if rec["id"] in ("", "None"):
                    drop("no_id", where, "no id field (aliases: " + ", ".join(FIELD_ALIASES["id"]) + ")")
                    continue
                if rec["id"] in seen:
                    drop("duplicate_id", where, f"id {rec['id']} seen before")
                    continue
                seen.add(rec["id"])
                f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
                fates["written"] += 1
    tmp.replace(out_file)
    return {"files": [str(p) for p in files], "rows": sum(fates.values()), "fates": dict(sorted(fates.items())),
            "examples": examples}


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
