"""`ecomvlm data shards`: LLaVA JSON/JSONL (or a mixture YAML) + images -> WebDataset tar shards + manifest.

- Deterministic: the same inputs, seed and shard size give byte-identical tars (fixed member order, mtime 0,
  no user names), so shards can be diffed, cached and re-made.
- Parallel: shards are written by a process pool, one shard per task.
- Resumable: a shard is finished when its sidecar ``shard-NNNNNN.json`` exists (written after the tar is
  renamed into place); re-running skips finished shards and only writes the rest.
- Nothing is dropped silently: records with broken JSON, bad structure, `<image>` count != image count, missing
  or undecodable images are skipped and counted per source and reason in ``manifest.json`` (with examples).

Sample layout inside a tar (WebDataset convention, one key per sample)::

    <key>.json        {"id", "source", "conversations", "images": ["img0.jpg", ...]}
    <key>.img0.jpg    original image bytes (never re-encoded), one member per image, in placeholder order
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ecomvlm.data_modules.llava_json import (
    CORRUPT_IMAGE,
    MISSING_IMAGE,
    SkipCounter,
    iter_checked,
    read_records,
    record_images,
)
from ecomvlm.data_modules.mixture import MixtureEntry, counts_table, load_mixture, resolve

MANIFEST_VERSION = 1
IMAGE_EXTS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp", ".gif": "gif", ".bmp": "bmp"}


@dataclass
class ShardConfig:
    inputs: list[Path]  # a mixture .yaml, or JSON/JSONL files (each taken with sampling_strategy "all")
    out: Path
    image_root: Path | None = None  # default: each JSON file's folder (or the mixture entry's image_root)
    samples_per_shard: int = 1000
    workers: int = 2
    seed: int = 0


def _entries(inputs: list[Path]) -> list[MixtureEntry]:
    entries: list[MixtureEntry] = []
    for p in inputs:
        p = Path(p)
        if p.suffix in (".yaml", ".yml"):
            entries += load_mixture(p)
        else:
            entries.append(MixtureEntry(json_path=p))
    if not entries:
        raise ValueError("no inputs: give a mixture YAML or LLaVA JSON/JSONL files")
    return entries


def _check_image(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decodes fully: catches truncated files that verify() lets through
        return None
    except Exception as e:  # noqa: BLE001 - any decoder error means "corrupt"
        return f"{type(e).__name__}: {e}"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_shard(task: tuple[int, list[dict[str, Any]], str]) -> dict[str, Any]:
    index, items, out_dir = task
    out = Path(out_dir)
    skips = SkipCounter()
    written: dict[str, int] = {}
    tmp = out / f"shard-{index:06d}.tar.tmp"
    n_bytes = 0
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for it in items:
            rec, source, root = it["record"], it["source"], Path(it["image_root"])
            blobs = []
            problem = None
            for k, rel in enumerate(record_images(rec)):
                path = root / rel
                if not path.is_file():
                    problem = (MISSING_IMAGE, f"id {rec.get('id', '?')}: {path} not found")
                    break
                data = path.read_bytes()
                err = _check_image(data)
                if err:
                    problem = (CORRUPT_IMAGE, f"id {rec.get('id', '?')}: {path}: {err}")
                    break
                blobs.append((f"img{k}.{IMAGE_EXTS.get(path.suffix.lower(), 'img')}", data))
            if problem:
                skips.skip(source, *problem)
                continue
            key = it["key"]
            meta = {"id": rec.get("id", key), "source": source, "conversations": rec["conversations"],
                    "images": [name for name, _ in blobs]}
            payload = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode()
            _add(tar, f"{key}.json", payload)
            n_bytes += len(payload)
            for name, data in blobs:
                _add(tar, f"{key}.{name}", data)
                n_bytes += len(data)
            written[source] = written.get(source, 0) + 1
    final = out / f"shard-{index:06d}.tar"
    os.replace(tmp, final)
    side = {"shard": final.name, "samples": sum(written.values()), "written": written, "bytes": n_bytes,
            "skipped": [[s, r, n] for (s, r), n in sorted(skips.counts.items())], "examples": skips.examples}
    (out / f"shard-{index:06d}.json").write_text(json.dumps(side, indent=1) + "\n")
    return side


def make_shards(cfg: ShardConfig, progress: Callable[[int, int], None] | None = None, console=None) -> dict[str, Any]:
    if cfg.samples_per_shard < 1:
        raise ValueError(f"--samples-per-shard must be >= 1, got {cfg.samples_per_shard}")
    if cfg.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {cfg.workers}")
    entries = _entries(cfg.inputs)
    skips = SkipCounter()
    per_source = [read_records(e.json_path, skips, e.json_path.name) for e in entries]
    resolved = resolve(entries, [len(r) for r in per_source], cfg.seed)
    if console is not None:
        console.print(counts_table(resolved))
    items: list[dict[str, Any]] = []
    selected: dict[str, int] = {}
    for res, records in zip(resolved, per_source):
        root = res.entry.image_root or cfg.image_root or res.entry.json_path.parent
        chosen = [records[i] for i in res.indices]
        selected[res.name] = len(chosen)
        for rec in iter_checked(chosen, skips, res.name):
            items.append({"record": rec, "source": res.name, "image_root": str(root),
                          "key": f"{len(items):09d}"})
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    k = cfg.samples_per_shard
    tasks = [(i, items[i * k:(i + 1) * k], str(out)) for i in range(-(-len(items) // k))]
    todo = [t for t in tasks if not (out / f"shard-{t[0]:06d}.json").is_file()]
    sides: dict[int, dict[str, Any]] = {}
    for t in tasks:
        if t not in todo:
            sides[t[0]] = json.loads((out / f"shard-{t[0]:06d}.json").read_text())
    done = len(tasks) - len(todo)
    if progress:
        progress(done, len(tasks))
    if todo:
        if cfg.workers == 1 or len(todo) == 1:
            results = map(_write_shard, todo)
        else:
            pool = get_context("spawn").Pool(min(cfg.workers, len(todo)))
            results = pool.imap(_write_shard, todo)
        for t, side in zip(todo, results):
            sides[t[0]] = side
            done += 1
            if progress:
                progress(done, len(tasks))
        if cfg.workers > 1 and len(todo) > 1:
            pool.close()
            pool.join()
    written: dict[str, int] = {}
    for side in sides.values():
        for src, n in side["written"].items():
            written[src] = written.get(src, 0) + n
        for src, reason, n in side["skipped"]:
            skips.counts[(src, reason)] += n
        for reason, ex in side.get("examples", {}).items():
            skips.examples.setdefault(reason, []).extend(ex[:3])
    sources = {}
    for res in resolved:
        name = res.name
        sources[name] = {"records": res.total, "selected": selected[name], "written": written.get(name, 0),
                         "strategy": res.entry.sampling_strategy,
                         "skipped": {r: n for (s, r), n in sorted(skips.counts.items()) if s == name}}
    manifest = {
        "format_version": MANIFEST_VERSION,
        "seed": cfg.seed,
        "samples_per_shard": k,
        "shards": [sides[i]["shard"] for i in sorted(sides)],
        "samples": sum(written.values()),
        "bytes": sum(s["bytes"] for s in sides.values()),
        "sources": sources,
        "skipped": skips.by_reason(),
        "skipped_examples": {r: ex[:3] for r, ex in sorted(skips.examples.items())},
        "resumed_shards": len(tasks) - len(todo),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
