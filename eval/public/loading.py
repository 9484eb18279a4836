"""Loading public benchmarks as they are published: `save_to_disk` folders, Hub snapshots (parquet/jsonl/json/arrow
files, subset subfolders such as MMBench's en/ cn/ cc/, split names in file names, the same data in two file kinds
as in CV-Bench), one undivided file with a `split` column (eComMMMU), or the HF cache by id (offline unless
ECOMVLM_ALLOW_DOWNLOAD=1). Images to RGB from PIL objects, parquet image structs, local paths (relative paths are
resolved against the dataset folder) or URLs (read from a local cache; fetched only with ECOMVLM_ALLOW_DOWNLOAD=1).

What was read is reported (`Loaded.source`: files used, files skipped as duplicates, rows of other splits left
out), never dropped silently.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLIT_NAMES = ("train", "validation", "val", "dev", "test")
# file kinds by preference: parquet and arrow carry the images; the json twins of a Hub snapshot only paths
KINDS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json"}
PREFERENCE = ("parquet", "arrow", "json")
# metadata that sits beside the data in save_to_disk folders, HF caches and Hub snapshots
METADATA_FILES = {"dataset_info.json", "dataset_infos.json", "state.json", "dataset_dict.json"}


@dataclass
class Loaded:
    ds: Any  # datasets.Dataset
    root: Path | None  # where relative image paths resolve
    source: dict[str, Any] = field(default_factory=dict)


def allow_download() -> bool:
    return os.environ.get("ECOMVLM_ALLOW_DOWNLOAD") == "1"


def _split_token(name: str, split: str) -> bool:
    return re.search(rf"(^|[/_\-.]){re.escape(split)}([_\-.]|$)", name) is not None


def _mentions_split(rel: Path, split: str) -> bool:
    return _split_token(rel.name, split) or split in rel.parts[:-1]


def _data_files(root: Path) -> list[Path]:
    """Data files under `root`, relative to it (hidden folders such as .cache/.git and metadata files skipped)."""
    out = []
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if f.is_file() and f.suffix in KINDS and f.name not in METADATA_FILES \
                and not any(p.startswith(".") for p in rel.parts):
            out.append(rel)
    return out


ALL_SUBSETS = "*"  # a benchmark whose subsets are parts of one set (MMMU/MMMU's subject folders)
# the names a split goes by in published copies
SPLIT_ALIASES = {"validation": {"validation", "val"}, "val": {"validation", "val"}, "dev": {"dev"},
                 "test": {"test"}, "train": {"train"}}


def _same_split(a: str, b: str) -> bool:
    return a == b or b in SPLIT_ALIASES.get(a, set())


def _looks_like_path(path: str) -> bool:
    """An HF id is `name` or `owner/name`; anything else (absolute, ./, ~, deeper) is meant as a local path."""
    return os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path


def _pick_subset(root: Path, files: list[Path], subset: str | None) -> list[Path]:
    """MMBench-style snapshots keep one folder per subset (en/, cn/, cc/): take `subset`'s, refuse to guess.
    ALL_SUBSETS takes every subset folder (MMMU's subjects are one benchmark)."""
    tops = sorted({f.parts[0] for f in files if len(f.parts) > 1})
    if subset == ALL_SUBSETS:
        return files
    if subset is not None:
        inside = [f for f in files if subset in f.parts[:-1]]
        if inside or root.name == subset:
            return inside or files
        if len(tops) > 1:
            raise ValueError(f"{root} holds the subsets {tops} but not {subset!r}: pass the folder of the "
                             f"{subset!r} subset (or the snapshot that has it)")
        return files
    if len(tops) > 1 and not any(t in SPLIT_NAMES or t == "data" for t in tops):
        raise ValueError(f"{root} holds several subsets {tops}; pass the folder of the one to evaluate")
    return files


def _pick_kind(root: Path, files: list[Path]) -> tuple[str, list[Path], list[Path]]:
    """One file kind. Twins of the chosen files in another kind (test_2d.jsonl beside test_2d.parquet) are skipped;
    a file with no twin means the kinds hold different data, which is an error rather than a guess."""
    by_kind: dict[str, list[Path]] = {}
    for f in files:
        by_kind.setdefault(KINDS[f.suffix], []).append(f)
    kind = next(k for k in PREFERENCE if k in by_kind)
    chosen, twins, seen = [], [], set()
    for f in sorted(by_kind[kind], key=lambda f: (f.suffix != ".jsonl", str(f))):  # test.json beside test.jsonl
        (twins if (f.parent, f.stem) in seen else chosen).append(f)
        seen.add((f.parent, f.stem))
    chosen.sort()
    stems = {(f.parent, f.stem) for f in chosen}
    skipped = twins + [f for k, fs in by_kind.items() if k != kind for f in fs]
    orphans = [f for f in skipped if (f.parent, f.stem) not in stems]
    if orphans:
        raise ValueError(f"{root} mixes file kinds that hold different data ({[str(f) for f in orphans]} have no "
                         f"{kind} twin); keep one kind per split")
    return kind, chosen, skipped


def _from_files(root: Path, files: list[Path], split: str, subset: str | None) -> Loaded:
    files = _pick_subset(root, files, subset)
    names = SPLIT_ALIASES.get(split, {split})
    matching = [f for f in files if any(_mentions_split(f, n) for n in names)]
    divided = matching or [f for f in files if any(_mentions_split(f, s) for s in SPLIT_NAMES)]
    undivided = False
    if not matching and divided:
        found = sorted({s for f in files for s in SPLIT_NAMES if _mentions_split(f, s)})
        if len(found) != 1:
            raise ValueError(f"{root} has files for the splits {found} but none for {split!r}; pick one of them")
        undivided = True  # the Hub's one split of an undivided file (eComMMMU): usable only with a split column
    kind, chosen, skipped = _pick_kind(root, matching or files)
    ds, chosen, empty = _read_files(root, kind, chosen)
    if undivided and "split" not in ds.column_names:
        raise ValueError(f"{root} has files for the split {found} only and no 'split' column, not {split!r}; pick "
                         f"the folder of the {split!r} split")
    subsets = sorted({f.parts[0] for f in chosen if len(f.parts) > 1}) if subset == ALL_SUBSETS else None
    source = {"kind": kind, "files": [str(f) for f in chosen], "skipped_duplicates": [str(f) for f in skipped],
              "split_in_file_names": bool(matching), **({"subsets": subsets} if subsets else {}),
              **({"skipped_empty": empty} if empty else {})}
    return Loaded(ds, root, source)


def _read_files(root: Path, kind: str, chosen: list[Path]) -> tuple[Any, list[Path], list[str]]:
    """One dataset from the files of one split, the files read and the empty files left out (an empty shard beside
    full ones is reported; a split of only empty files, or files of different columns, is an error naming them)."""
    import datasets

    empty = [str(f) for f in chosen if (root / f).stat().st_size == 0 or kind == "json" and
             (root / f).stat().st_size < 64 and (root / f).read_text(errors="replace").strip() in ("", "[]", "{}")]
    if len(empty) == len(chosen):
        raise ValueError(f"{root}: {empty} hold no rows (empty files); re-download or remove them")
    chosen = [f for f in chosen if str(f) not in empty]
    try:
        ds = datasets.load_dataset(kind, data_files=[str(root / f) for f in chosen], split="train")
    except Exception as e:  # noqa: BLE001 - re-raised naming the files
        raise ValueError(f"{root}: could not read {[str(f) for f in chosen]} as one {kind} dataset ({e}); the files "
                         f"of one split must share their columns") from None
    if len(ds) == 0:
        raise ValueError(f"{root}: {[str(f) for f in chosen]} hold no rows")
    return ds, chosen, empty


def _from_dict(dd, split: str, where: str) -> tuple[Any, bool]:
    """(dataset, split-specific?) from a DatasetDict; one undivided split (the Hub's 'train' for eComMMMU) is
    returned whole so the `split` column can select the rows."""
    for name in dd:
        if _same_split(split, name):
            return dd[name], True
    if len(dd) == 1:
        (name, ds), = dd.items()
        # another split, not undivided data ("train" is what datasets names files loaded without split names)
        if name in SPLIT_NAMES and name != "train" and "split" not in ds.column_names:
            raise ValueError(f"{where} holds only the {name!r} split, not {split!r}; pass the copy of {split!r}")
        return ds, False
    raise ValueError(f"{where} has splits {sorted(dd)}, not {split!r}; pick one of them")


def _by_split_column(loaded: Loaded, split: str, column: str = "split") -> Loaded:
    """Rows of `split` from an undivided dataset that carries a split column (the authors' eComMMMU file)."""
    ds = loaded.ds
    if column not in ds.column_names:
        return loaded
    values = ds[column]
    counts: dict[str, int] = {}
    for v in values:
        counts[str(v)] = counts.get(str(v), 0) + 1
    names = {k for k in counts if _same_split(split, k)}
    if not names:
        raise ValueError(f"the {column!r} column of {loaded.source.get('path')} has {sorted(counts)}, not "
                         f"{split!r}; pick one of them")
    keep = [i for i, v in enumerate(values) if str(v) in names]
    loaded.ds = ds.select(keep)
    loaded.source["split_column"] = {"column": column, "kept": len(keep),
                                     "other_splits": {k: n for k, n in sorted(counts.items()) if k not in names}}
    return loaded


def load_split(path: str | Path, split: str, *, subset: str | None = None) -> Loaded:
    """The rows of `split` (and `subset`, e.g. MMBench's "en") from a local copy or the HF cache (no download)."""
    import datasets

    p = Path(str(path)).expanduser()
    if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file()):
        ds = datasets.load_from_disk(str(p))
        specific = False  # a lone saved split may still be the undivided file with a split column
        if isinstance(ds, datasets.DatasetDict):
            ds, specific = _from_dict(ds, split, str(p))
        if len(ds) == 0:
            raise ValueError(f"{p} (save_to_disk) holds no rows for {split!r}")
        loaded = Loaded(ds, p, {"kind": "save_to_disk"})
    elif p.is_file():  # one file named by the user: read as given
        if p.suffix not in KINDS:
            raise FileNotFoundError(f"{p} is not a parquet/jsonl/json/arrow file; pass the dataset file or folder")
        kind = KINDS[p.suffix]
        loaded = Loaded(_read_files(p.parent, kind, [Path(p.name)])[0], p.parent, {"kind": kind, "files": [p.name]})
        specific = _mentions_split(Path(p.name), split)
    elif p.exists():
        files = _data_files(p)
        if not files:
            raise FileNotFoundError(f"{p} holds no parquet/jsonl/json/arrow files and is not a `save_to_disk` "
                                    f"folder; pass the dataset folder (a Hub snapshot or a save_to_disk copy)")
        loaded = _from_files(p, files, split, subset)
        specific = loaded.source["split_in_file_names"]
    elif _looks_like_path(str(path)):
        raise FileNotFoundError(f"benchmark data {str(path)!r} does not exist; pass the folder of a local copy (a "
                                f"Hub snapshot or a save_to_disk folder) or a Hub id such as lmms-lab/MME")
    else:  # an HF id: the local cache only, unless ECOMVLM_ALLOW_DOWNLOAD=1
        import datasets.config as dcfg

        saved = dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE
        if not allow_download():
            dcfg.HF_HUB_OFFLINE = dcfg.HF_DATASETS_OFFLINE = True
        try:
            dd = datasets.load_dataset(str(path), None if subset == ALL_SUBSETS else subset)
        except Exception as e:  # noqa: BLE001 - re-raised with the fix
            raise FileNotFoundError(f"benchmark data {path!r} is neither a local path nor in the HF cache ({e}). "
                                    f"Download it once on a machine with internet (`huggingface-cli download "
                                    f"--repo-type dataset {path} --local-dir DIR`, or datasets.load_dataset(...)"
                                    f".save_to_disk(DIR)) and pass DIR, or set ECOMVLM_ALLOW_DOWNLOAD=1") from None
        finally:
            dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE = saved
        ds, specific = _from_dict(dd, split, str(path))
        loaded = Loaded(ds, None, {"kind": "hf_cache", "subset": subset})
    loaded.source["path"] = str(path)
    if not specific:
        loaded = _by_split_column(loaded, split)
    loaded.source["rows"] = len(loaded.ds)
    return loaded


def load_hf_split(path: str | Path, split: str, *, subset: str | None = None, limit: int | None = None):
    """The `datasets.Dataset` of :func:`load_split` (first `limit` rows)."""
    ds = load_split(path, split, subset=subset).ds
    return ds.select(range(min(limit, len(ds)))) if limit else ds


# ------------------------------------------------------------------------------------------------------ images


def image_cache_dir() -> Path:
    return Path(os.environ.get("ECOMVLM_IMAGE_CACHE", "~/.cache/ecomvlm/images")).expanduser()


def cached_image_path(url: str) -> Path:
    h = hashlib.sha256(url.encode()).hexdigest()
    return image_cache_dir() / h[:2] / h


def fetch_image_bytes(url: str) -> bytes:
    """An image URL from the cache; fetched (and cached) only with ECOMVLM_ALLOW_DOWNLOAD=1."""
    f = cached_image_path(url)
    if f.is_file():
        return f.read_bytes()
    if not allow_download():
        raise ValueError(f"image {url} is not in the image cache ({image_cache_dir()}) and nothing is downloaded "
                         f"unless ECOMVLM_ALLOW_DOWNLOAD=1: set it once (images are cached there for offline "
                         f"runs; ECOMVLM_IMAGE_CACHE moves the cache), or mirror the images and put local paths in "
                         f"the dataset")
    import httpx

    try:
        r = httpx.get(url, timeout=60, follow_redirects=True)
        r.raise_for_status()
    except httpx.HTTPError as e:
        raise ValueError(f"image {url} could not be fetched ({type(e).__name__}: {e}); mirror it locally and put "
                         f"its path in the dataset") from None
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".part")
    tmp.write_bytes(r.content)
    tmp.replace(f)
    return r.content


def _rgb(img: Any, root: Path | None = None):
    """One image (PIL, parquet struct, path, URL) as RGB."""
    from PIL import Image

    if img is None:
        return None
    if isinstance(img, list):
        raise TypeError("an image list where one image was expected; the benchmark's image function must flatten "
                        "nested lists")
    if isinstance(img, dict):
        if img.get("bytes"):
            return Image.open(io.BytesIO(img["bytes"])).convert("RGB")
        img = img.get("path")
        if not img:
            raise ValueError("an image struct with neither bytes nor path; the dataset row is broken")
    if isinstance(img, str) and img.startswith(("http://", "https://")):
        return Image.open(io.BytesIO(fetch_image_bytes(img))).convert("RGB")
    if isinstance(img, (str, Path)):
        p = Path(img)
        if not p.is_absolute() and root is not None:
            p = root / p
        if not p.is_file():
            raise FileNotFoundError(f"image {img} not found (looked at {p}); Hub snapshots that keep images as "
                                    f"files need them beside the data (e.g. CV-Bench's build_img.py), or use the "
                                    f"parquet files, which embed the images")
        return Image.open(p).convert("RGB")
    return img.convert("RGB")


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or v == "nan"
