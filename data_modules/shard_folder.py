"""Shard folders after writing: reading samples, cheap and deep integrity checks, ``--verify`` (with rebuild from the
recorded inputs) and ``--upgrade`` of folders written by an older ecomvlm. The writer is data_modules/shards.py."""

from __future__ import annotations

import json
import os
import struct
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterator

from ecomvlm.data_modules.shards import (
    MANIFEST_VERSION,
    NV_META,
    ResizeRule,
    ShardConfig,
    ShardFolderError,
    _entries,
    _settings_diff,
    _sha256_file,
    build_settings,
    fingerprint,
    make_shards,
    write_energon_meta,
)


def iter_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, Any], list[bytes]]]:
    """(key, json meta, image bytes in order) for each sample of a shard written by `ecomvlm data shards`."""
    with tarfile.open(path, "r:") as tar:
        cur_key, files = None, {}
        for m in tar:
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            if cur_key is not None and key != cur_key:
                yield _sample(cur_key, files)
                files = {}
            cur_key = key
            files[ext] = tar.extractfile(m).read()
        if cur_key is not None:
            yield _sample(cur_key, files)


def _sample(key: str, files: dict[str, bytes]) -> tuple[str, dict[str, Any], list[bytes]]:
    meta = json.loads(files["json"])
    return key, meta, [files[name] for name in meta.get("images", [])]


def index_tar(path: Path) -> tuple[list[int], int]:
    """(sample start offsets + end offset, samples) of a tar, as energon's .tar.idx holds them."""
    offsets, last_key, end = [], None, 0
    with tarfile.open(path, "r:") as tf:
        for m in tf:
            if not m.isfile():
                continue
            key = m.name.split(".", 1)[0]
            if key != last_key:
                offsets.append(m.offset)
                last_key = key
            end = m.offset_data + ((m.size + 511) // 512) * 512
    offsets.append(end)
    return offsets, len(offsets) - 1


def shard_problem(out: Path, side: dict[str, Any], deep: bool = True) -> str | None:
    """Why a finished shard cannot be trusted, or None. Cheap checks (exists, size, index) always; ``deep`` also
    re-reads the tar against its recorded sha256 and sample count."""
    tar = Path(out) / side["shard"]
    idx = tar.parent / f"{tar.name}.idx"
    if not tar.is_file():
        return "missing"
    if not idx.is_file():
        return "no .tar.idx"
    n_off = idx.stat().st_size // 8
    if n_off != side["samples"] + 1:
        return f".tar.idx lists {n_off - 1} samples, the sidecar {side['samples']}"
    with open(idx, "rb") as f:
        f.seek(-8, os.SEEK_END)
        end = struct.unpack("<Q", f.read(8))[0]
    size = tar.stat().st_size
    if size < end or ("size" in side and size != side["size"]):
        return f"truncated ({size} bytes, {side.get('size', end)} written)"
    if not deep:
        return None
    if "sha256" in side and _sha256_file(tar) != side["sha256"]:
        return "content changed (sha256 differs from the one recorded when it was written)"
    try:
        n = sum(1 for _ in iter_tar_samples(tar))
    except (tarfile.TarError, KeyError, ValueError, OSError) as e:
        return f"unreadable: {type(e).__name__}: {e}"
    if n != side["samples"]:
        return f"holds {n} samples, {side['samples']} were written"
    return None


def _sides(out: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    sides = []
    for name in manifest["shards"]:
        p = out / name.replace(".tar", ".json")
        sides.append(json.loads(p.read_text()) if p.is_file() else {"shard": name, "samples": -1})
    return sides


def load_manifest(out: Path) -> dict[str, Any]:
    out = Path(out)
    m = out / "manifest.json"
    if not m.is_file():
        raise ShardFolderError(f"{out} has no manifest.json: it is not a finished `ecomvlm data shards` folder "
                               f"(re-run the command that writes it; it resumes where it stopped)")
    manifest = json.loads(m.read_text())
    if manifest.get("format_version", 1) < MANIFEST_VERSION or not (out / NV_META / ".info.json").is_file():
        raise ShardFolderError(f"{out} was written by an older ecomvlm (manifest format "
                               f"{manifest.get('format_version', 1)}"
                               f", no energon index): run `ecomvlm data shards --upgrade {out}` once")
    return manifest


def verify_shards(out: Path, rebuild: bool = False, workers: int = 2,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Re-read every shard against its sidecar; with ``rebuild``, write the bad ones again from the recorded inputs
    (refused when the inputs changed since: then rebuild everything with ``--rebuild``)."""
    out = Path(out)
    manifest = load_manifest(out)
    bad = {}
    sides = _sides(out, manifest)
    for i, side in enumerate(sides):
        problem = "no sidecar" if side["samples"] < 0 else shard_problem(out, side)
        if problem:
            bad[side["shard"]] = problem
        if progress:
            progress(i + 1, len(sides))
    report = {"shards": len(sides), "bad": bad, "rebuilt": []}
    if bad and rebuild:
        if not (out / "build.json").is_file():
            raise ShardFolderError(f"{out} was upgraded from an older ecomvlm, which did not record its inputs: "
                                   f"write it again with `ecomvlm data shards INPUTS... --out {out} --rebuild`")
        build = json.loads((out / "build.json").read_text())
        s = build["settings"]
        cfg = ShardConfig(inputs=[Path(p) for p in manifest["inputs"]], out=out,
                          image_root=Path(s["image_root"]) if s.get("image_root") else None,
                          samples_per_shard=s["samples_per_shard"], workers=workers, seed=s["seed"],
                          data_root=Path(s["data_root"]) if s.get("data_root") else None,
                          resize=ResizeRule(**s["resize"]) if s.get("resize") else None)
        now = build_settings(cfg, _entries(cfg))
        if fingerprint(now) != build["fingerprint"]:
            raise ShardFolderError(f"cannot rebuild the bad shards of {out}: its inputs changed since they were "
                                   f"written ({'; '.join(_settings_diff(s, now)[:5])}); rebuild all of them: "
                                   f"`ecomvlm data shards ... --out {out} --rebuild`")
        for name in bad:
            for p in (out / name, out / f"{name}.idx", out / name.replace(".tar", ".json")):
                p.unlink(missing_ok=True)
        make_shards(cfg)
        report["rebuilt"] = sorted(bad)
        report["still_bad"] = {s["shard"]: p for s in _sides(out, load_manifest(out))
                               if (p := shard_problem(out, s))}
    return report


def upgrade_shards(out: Path) -> dict[str, Any]:
    """Make a folder of an older ecomvlm (tars + manifest v1, no energon index) loadable, keeping its tars."""
    out = Path(out)
    tars = sorted(out.glob("shard-*.tar"))
    if not tars:
        raise ShardFolderError(f"{out} holds no shard-*.tar to upgrade")
    mpath = out / "manifest.json"
    manifest = json.loads(mpath.read_text()) if mpath.is_file() else {}
    counts = {}
    for tar in tars:
        try:
            offsets, n = index_tar(tar)
        except tarfile.TarError as e:
            raise ShardFolderError(f"{tar} is unreadable ({e}): it cannot be upgraded; write the folder again with "
                                   f"`ecomvlm data shards ... --out {out} --rebuild`") from None
        (out / f"{tar.name}.idx").write_bytes(b"".join(struct.pack("<Q", o) for o in offsets))
        counts[tar.name] = n
        side_path = out / tar.name.replace(".tar", ".json")
        side = json.loads(side_path.read_text()) if side_path.is_file() else {"shard": tar.name, "written": {},
                                                                              "bytes": 0, "skipped": []}
        side.update(samples=n, sha256=_sha256_file(tar), size=tar.stat().st_size)
        side_path.write_text(json.dumps(side, indent=1) + "\n")
    write_energon_meta(out, counts)
    manifest.update(format_version=MANIFEST_VERSION, shards=list(counts), samples=sum(counts.values()),
                    upgraded_from=manifest.get("format_version", 1))
    manifest.setdefault("sources", {})
    manifest.setdefault("skipped", {})
    mpath.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
