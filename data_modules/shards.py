"""`ecomvlm data shards`: LLaVA JSON/JSONL, LLaVA-OneVision parquet or a mixture YAML + images -> an energon-ready
WebDataset folder + manifest. (This is the writer; reading, verifying and upgrading folders: shard_folder.py.)

- Deterministic: the same inputs and settings give byte-identical tars (fixed member order, mtime 0, no user names).
- Parallel: shards are written by a process pool, one shard per task.
- Resumable: a shard is finished when its sidecar ``shard-NNNNNN.json`` exists (written after the tar and its index
  are in place); re-running skips finished shards and only writes the rest.
- Fingerprinted: ``build.json`` holds a hash of the inputs' content and every setting that changes the tars (seed,
  shard size, image resizing). Re-running with other inputs or settings refuses with the differences, or with
  ``--rebuild`` starts over; it never mixes old tars with a new manifest.
- Verifiable: ``--verify`` re-reads every tar against the sha256 and sample count its sidecar recorded, and with
  ``--rebuild`` re-writes the bad ones from the recorded inputs.
- Nothing is dropped silently: broken JSON, bad structure, wrong role order, no or empty answers, ``<image>`` count
  != image count, missing or undecodable images are skipped and counted per source and reason in ``manifest.json``
  (with examples); per source, selected = written + skipped.
- Images at training resolution (``--resize-for MODEL``, ``--max-side``, ``--max-pixels``): photos larger than the
  encoder uses are shrunk once here and re-encoded as JPEG (quality 95), so training never decodes full-size photos;
  images already small enough keep their original bytes. Non-RGB images (16-bit, palette, CMYK, alpha) are stored as
  RGB as :func:`~ecomvlm.data_modules.preprocess.to_rgb` sees them.

Folder layout (megatron-energon's ``CrudeWebdataset``; the training loader reads it through energon)::

    shard-000000.tar        <key>.json {"id", "source", "conversations", "images": ["img0.jpg", ...]},
                            <key>.img0.jpg, ... (one member per image, in placeholder order)
    shard-000000.tar.idx    energon's sample index: byte offset of each sample, then the end offset
    shard-000000.json       sidecar: samples, bytes, sha256, skips of this shard
    .nv-meta/               .info.json (samples per shard), split.yaml (train: every shard), dataset.yaml
    build.json, manifest.json

One module on purpose (~450 lines): writing, fingerprinting and the manifest's accounting (selected =
written + skipped, per source) must change together; reading and verifying folders is shard_folder.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import tarfile
from dataclasses import asdict, dataclass, field
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
from ecomvlm.data_modules.mixture import MixtureEntry, counts_table, load_mixture, resolve, source_names

MANIFEST_VERSION = 2
ENERGON_VERSION = "7.4.1"
IMAGE_EXTS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp", ".gif": "gif", ".bmp": "bmp",
              ".tif": "tif", ".tiff": "tif"}
PIL_EXTS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}
NV_META = ".nv-meta"
DATASET_CLASS = ("ecomvlm.data_modules.energon_dataset", "EcomCrudeWebdataset")  # energon's crude type, rank-balanced
READ_SKIPS = ("broken_json", "broken_row")  # counted while reading a source, before sampling selects records
RESIZE_QUALITY = 95


class ShardFolderError(ValueError):
    """A shard folder that cannot be used as it is; the message says how to fix it."""


@dataclass(frozen=True)
class ResizeRule:
    """How large a stored image may be (None: no limit). An image over any limit is shrunk (aspect kept) until it
    meets all of them."""

    short_side: int | None = None  # fixed-size encoders resize to a square: each side needs no more than this
    max_side: int | None = None  # AnyRes: the largest grid pinpoint
    max_pixels: int | None = None  # native resolution: the encoder's pixel cap
    # native resolution: store exactly the size the encoder's smart resize picks (a multiple of patch x merge), so the
    # stored image gives the same tokens and is not resampled again
    snap_factor: int | None = None
    min_pixels: int = 0
    quality: int = RESIZE_QUALITY
    encoder: str | None = None  # the model config the limits came from (recorded in the manifest)

    def target(self, w: int, h: int) -> tuple[int, int] | None:
        """The stored size for a w x h image, or None when it is small enough already."""
        if self.snap_factor and self.max_pixels:
            from ecomvlm.data_modules.preprocess import smart_resize

            hh, ww = smart_resize(h, w, self.snap_factor, self.min_pixels, self.max_pixels)
            return (ww, hh) if ww * hh < w * h else None
        scale = 1.0
        if self.short_side and min(w, h) > self.short_side:
            scale = min(scale, self.short_side / min(w, h))
        if self.max_side and max(w, h) > self.max_side:
            scale = min(scale, self.max_side / max(w, h))
        if self.max_pixels and w * h > self.max_pixels:
            scale = min(scale, (self.max_pixels / (w * h)) ** 0.5)
        if scale >= 1.0:
            return None
        return max(1, int(w * scale)), max(1, int(h * scale))


def resize_rule_for(model: str) -> ResizeRule:
    """The limits that lose nothing for a model config's encoder (conf/model/<model>.yaml)."""
    from ecomvlm.recipes.config import model_config

    spec = model_config([f"model={model}"]).encoder.image_spec()
    if spec.mode == "fixed":
        return ResizeRule(short_side=spec.image_size, encoder=model)
    if spec.mode == "anyres":
        return ResizeRule(max_side=max(max(p) for p in spec.grid_pinpoints), encoder=model)
    return ResizeRule(max_pixels=spec.max_pixels, snap_factor=spec.factor, min_pixels=spec.min_pixels, encoder=model)


def describe_rule(rule: ResizeRule) -> str:
    parts = [f"shorter side <= {rule.short_side}" if rule.short_side else "",
             f"longer side <= {rule.max_side}" if rule.max_side else "",
             f"<= {rule.max_pixels} pixels" if rule.max_pixels else ""]
    where = f", for {rule.encoder}" if rule.encoder else ""
    return ", ".join(p for p in parts if p) + f", JPEG q{rule.quality}" + where


@dataclass
class ShardConfig:
    inputs: list[Path]  # mixture .yaml files, LLaVA .json/.jsonl files, LLaVA-OneVision parquet files or folders
    out: Path
    image_root: Path | None = None  # default: each JSON file's folder (or the mixture entry's image_root)
    samples_per_shard: int = 1000
    workers: int = 2
    seed: int = 0
    data_root: Path | None = None  # mixture json_paths are relative to this (default: the YAML's folder)
    resize: ResizeRule | None = None
    rebuild: bool = False  # start over when the folder holds shards of other inputs or settings
    settings_extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- inputs
def _entries(cfg: ShardConfig) -> list[MixtureEntry]:
    entries: list[MixtureEntry] = []
    for p in cfg.inputs:
        p = Path(p)
        if p.suffix in (".yaml", ".yml"):
            entries += load_mixture(p, root=cfg.data_root)
        else:
            entries.append(MixtureEntry(json_path=p))
    if not entries:
        raise ValueError("no inputs: give a mixture YAML, LLaVA JSON/JSONL files or LLaVA-OneVision parquet")
    return entries


def read_source(path: Path, skips: SkipCounter, source: str) -> list[Any]:
    """All records of one source (LLaVA JSON/JSONL, or a published LLaVA-OneVision layout: data_modules/llava_ov.py)."""
    from ecomvlm.data_modules.llava_ov import read_source as read_any

    return read_any(path, skips, source)


def _selected_records(entry: MixtureEntry, name: str, seed: int, skips: SkipCounter) -> tuple[int, list[Any], Path]:
    """(records in the source, the selected ones, the source's resolved path). Parquet sources are counted first and
    only the row groups holding selected rows are read (a tenth of a subset reads a tenth of its images)."""
    from ecomvlm.data_modules.llava_ov import count_source, iter_selected, resolve_source, source_kind

    path = resolve_source(entry.json_path)
    if source_kind(path) == "parquet":
        total = count_source(path, SkipCounter(), name)  # its broken rows are counted once, by iter_selected
        order = entry.select(total, seed, name)
        by_index = dict(iter_selected(path, skips, order, name))
        return total, [by_index[i] for i in order if i in by_index], path
    records = read_records(path, skips, name)
    return len(records), [records[i] for i in entry.select(len(records), seed, name)], path


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _input_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def build_settings(cfg: ShardConfig, entries: list[MixtureEntry]) -> dict[str, Any]:
    """Everything the tars depend on. Image files are taken as immutable (listing photos are content-addressed by
    path); an image edited in place needs ``--rebuild``."""
    from ecomvlm.data_modules.llava_ov import resolve_source

    inputs = {}
    for p in [*(Path(x) for x in cfg.inputs if Path(x).suffix in (".yaml", ".yml")),
              *(resolve_source(e.json_path) for e in entries)]:
        for f in _input_files(Path(p)):
            if not f.exists():
                raise FileNotFoundError(f"input {f} does not exist")
            inputs[str(f.resolve())] = _sha256_file(f)
    return {"format_version": MANIFEST_VERSION, "seed": cfg.seed, "samples_per_shard": cfg.samples_per_shard,
            "image_root": str(Path(cfg.image_root).resolve()) if cfg.image_root else None,
            "data_root": str(Path(cfg.data_root).resolve()) if cfg.data_root else None,
            "resize": asdict(cfg.resize) if cfg.resize else None,
            "entries": [{"json_path": str(e.json_path.resolve()), "sampling_strategy": e.sampling_strategy,
                         "image_root": str(e.image_root.resolve()) if e.image_root else None} for e in entries],
            "input_sha256": inputs, **cfg.settings_extra}


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        if k == "input_sha256":
            a, b = old.get(k, {}), new.get(k, {})
            out += [f"input {p} changed" for p in sorted(set(a) & set(b)) if a[p] != b[p]]
            out += [f"input {p} added" for p in sorted(set(b) - set(a))]
            out += [f"input {p} removed" for p in sorted(set(a) - set(b))]
        elif old.get(k) != new.get(k):
            out.append(f"{k}: {old.get(k)!r} -> {new.get(k)!r}")
    return out


# ---------------------------------------------------------------- writing
def _image_problem(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decodes fully: catches truncated files that verify() lets through
        return None
    except Exception as e:  # noqa: BLE001 - any decoder error means "corrupt"
        return f"{type(e).__name__}: {e}"


def _stored_image(data: bytes, ext: str, rule: ResizeRule | None) -> tuple[bytes, str, bool]:
    """(bytes, extension, resized) of an image as stored: shrunk + re-encoded when over the rule's limits."""
    from ecomvlm.data_modules.preprocess import to_rgb

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        ext = PIL_EXTS.get(im.format or "", ext)
        size = rule.target(*im.size) if rule else None
        if size is None:
            return data, ext, False
        small = to_rgb(im).resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=rule.quality)
    return buf.getvalue(), "jpg", True


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _load_image(ref: Any, root: Path) -> tuple[bytes | None, str, str]:
    """(bytes or None, extension, description) of one image reference of a record."""
    if isinstance(ref, dict):
        name = str(ref.get("name") or "inline")
        return bytes(ref["bytes"]), IMAGE_EXTS.get(Path(name).suffix.lower(), "img"), name
    path = root / ref
    if not path.is_file():
        return None, "", str(path)
    return path.read_bytes(), IMAGE_EXTS.get(path.suffix.lower(), "img"), str(path)


def _write_shard(task: tuple[int, list[dict[str, Any]], str, dict | None]) -> dict[str, Any]:
    index, items, out_dir, rule_d = task
    rule = ResizeRule(**rule_d) if rule_d else None
    out = Path(out_dir)
    skips = SkipCounter()
    written: dict[str, int] = {}
    tmp = out / f"shard-{index:06d}.tar.tmp"
    offsets: list[int] = []
    n_bytes = resized = 0
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for it in items:
            rec, source, root = it["record"], it["source"], Path(it["image_root"])
            blobs, problem = [], None
            for k, ref in enumerate(record_images(rec)):
                data, ext, where = _load_image(ref, root)
                if data is None:
                    problem = (MISSING_IMAGE, f"id {rec.get('id', '?')}: {where} not found")
                    break
                err = _image_problem(data)
                if err:
                    problem = (CORRUPT_IMAGE, f"id {rec.get('id', '?')}: {where}: {err}")
                    break
                data, ext, shrunk = _stored_image(data, ext, rule)
                resized += shrunk
                blobs.append((f"img{k}.{ext}", data))
            if problem:
                skips.skip(source, *problem)
                continue
            key = it["key"]
            meta = {"id": rec.get("id", key), "source": source, "conversations": rec["conversations"],
                    "images": [name for name, _ in blobs]}
            payload = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode()
            offsets.append(tar.offset)
            _add(tar, f"{key}.json", payload)
            n_bytes += len(payload)
            for name, data in blobs:
                _add(tar, f"{key}.{name}", data)
                n_bytes += len(data)
            written[source] = written.get(source, 0) + 1
        offsets.append(tar.offset)  # energon's index ends with the end offset of the last sample
    final = out / f"shard-{index:06d}.tar"
    (out / f"{final.name}.idx").write_bytes(b"".join(struct.pack("<Q", o) for o in offsets))
    os.replace(tmp, final)
    side = {"shard": final.name, "samples": sum(written.values()), "written": written, "bytes": n_bytes,
            "resized_images": resized, "sha256": _sha256_file(final), "size": final.stat().st_size,
            "skipped": [[s, r, n] for (s, r), n in sorted(skips.counts.items())], "examples": skips.examples}
    (out / f"shard-{index:06d}.json").write_text(json.dumps(side, indent=1) + "\n")
    return side


def write_energon_meta(out: Path, shard_counts: dict[str, int]) -> None:
    """.nv-meta for energon's CrudeWebdataset: samples per shard, the train split (non-empty shards), the type."""
    import yaml

    meta = Path(out) / NV_META
    meta.mkdir(exist_ok=True)
    (meta / ".info.json").write_text(json.dumps({"energon_version": ENERGON_VERSION, "shard_counts": shard_counts},
                                                indent=1) + "\n")
    train = [name for name, n in shard_counts.items() if n > 0]
    (meta / "split.yaml").write_text(yaml.safe_dump({"split_parts": {"train": train}}, sort_keys=False))
    (meta / "dataset.yaml").write_text(f"__module__: {DATASET_CLASS[0]}\n__class__: {DATASET_CLASS[1]}\n")


def _clear(out: Path) -> None:
    for pat in ("shard-*.tar", "shard-*.tar.idx", "shard-*.json", "shard-*.tar.tmp", "manifest.json", "build.json"):
        for p in out.glob(pat):
            p.unlink()
    shutil.rmtree(out / NV_META, ignore_errors=True)


def _check_folder(out: Path, settings: dict[str, Any], rebuild: bool) -> None:
    build = out / "build.json"
    if build.is_file():
        old = json.loads(build.read_text())
        if old.get("fingerprint") == fingerprint(settings):
            return
        if not rebuild:
            diff = _settings_diff(old.get("settings", {}), settings)
            raise ShardFolderError(f"{out} holds shards of other inputs or settings ({'; '.join(diff[:5]) or 'format'}"
                                   f"): add --rebuild to replace them, or choose another --out")
    elif any(out.glob("shard-*.tar")) and not rebuild:
        raise ShardFolderError(f"{out} holds shards from an older ecomvlm (no build.json): add --rebuild to write them "
                               f"again from these inputs, or keep them with `ecomvlm data shards --upgrade {out}`")
    _clear(out)


def make_shards(cfg: ShardConfig, progress: Callable[[int, int], None] | None = None, console=None) -> dict[str, Any]:
    if cfg.samples_per_shard < 1:
        raise ValueError(f"--samples-per-shard must be >= 1, got {cfg.samples_per_shard}")
    if cfg.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {cfg.workers}")
    entries = _entries(cfg)
    settings = build_settings(cfg, entries)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_folder(out, settings, cfg.rebuild)
    (out / "build.json").write_text(json.dumps({"fingerprint": fingerprint(settings), "settings": settings},
                                               indent=1) + "\n")
    from ecomvlm.data_modules.llava_ov import default_image_root

    skips = SkipCounter()
    names = source_names(entries)
    picked = [_selected_records(e, name, cfg.seed, skips) for e, name in zip(entries, names)]
    resolved = resolve(entries, [total for total, _, _ in picked], cfg.seed)
    if console is not None:
        console.print(counts_table(resolved))
    items: list[dict[str, Any]] = []
    selected: dict[str, int] = {}
    for res, (_, chosen, path) in zip(resolved, picked):
        root = res.entry.image_root or cfg.image_root or default_image_root(path, chosen)
        selected[res.name] = len(chosen)
        for rec in iter_checked(chosen, skips, res.name):
            items.append({"record": rec, "source": res.name, "image_root": str(root), "key": f"{len(items):09d}"})
    k = cfg.samples_per_shard
    rule = asdict(cfg.resize) if cfg.resize else None
    tasks = [(i, items[i * k:(i + 1) * k], str(out), rule) for i in range(-(-len(items) // k))]
    todo = [t for t in tasks if not _shard_done(out, t[0])]
    sides: dict[int, dict[str, Any]] = {t[0]: json.loads((out / f"shard-{t[0]:06d}.json").read_text())
                                        for t in tasks if t not in todo}
    done = len(tasks) - len(todo)
    if progress:
        progress(done, len(tasks))
    if todo:
        parallel = cfg.workers > 1 and len(todo) > 1
        pool = get_context("spawn").Pool(min(cfg.workers, len(todo))) if parallel else None
        results = pool.imap(_write_shard, todo) if pool else map(_write_shard, todo)
        for t, side in zip(todo, results):
            sides[t[0]] = side
            done += 1
            if progress:
                progress(done, len(tasks))
        if pool:
            pool.close()
            pool.join()
    manifest = _manifest(cfg, settings, resolved, selected, sides, skips, resumed=len(tasks) - len(todo))
    write_energon_meta(out, {sides[i]["shard"]: sides[i]["samples"] for i in sorted(sides)})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _shard_done(out: Path, index: int) -> bool:
    name = f"shard-{index:06d}"
    return all((out / f).is_file() for f in (f"{name}.json", f"{name}.tar", f"{name}.tar.idx"))


def _manifest(cfg: ShardConfig, settings, resolved, selected, sides, skips: SkipCounter, resumed: int) -> dict:
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
        mine = skips.of_source(res.name)
        after_selection = {r: n for r, n in mine.items() if r not in READ_SKIPS}
        if selected[res.name] != written.get(res.name, 0) + sum(after_selection.values()):
            raise AssertionError(f"accounting broke for {res.name}: selected {selected[res.name]} != written "
                                 f"{written.get(res.name, 0)} + skipped {after_selection}")
        sources[res.name] = {"path": str(res.entry.json_path), "records": res.total, "selected": selected[res.name],
                             "written": written.get(res.name, 0), "strategy": res.entry.sampling_strategy,
                             "skipped": mine}
    return {
        "format_version": MANIFEST_VERSION,
        "fingerprint": fingerprint(settings),
        "seed": cfg.seed,
        "samples_per_shard": cfg.samples_per_shard,
        "inputs": [str(Path(p).resolve()) for p in cfg.inputs],
        "image_root": settings["image_root"],
        "data_root": settings["data_root"],
        "resize": settings["resize"],
        "resized_images": sum(s.get("resized_images", 0) for s in sides.values()),
        "shards": [sides[i]["shard"] for i in sorted(sides)],
        "samples": sum(written.values()),
        "bytes": sum(s["bytes"] for s in sides.values()),
        "sources": sources,
        "skipped": skips.by_reason(),
        "skipped_examples": {r: ex[:3] for r, ex in sorted(skips.examples.items())},
        "resumed_shards": resumed,
    }
