"""Loading public benchmarks from local copies (`save_to_disk` folders, Hub-layout parquet/json folders) or the HF
cache, offline unless ECOMVLM_ALLOW_DOWNLOAD=1; images to RGB."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def load_hf_split(path: str | Path, split: str, *, limit: int | None = None):
    """A `datasets.Dataset` for `split` from a local folder/file or the local HF cache (no download)."""
    import datasets

    p = Path(str(path)).expanduser()
    if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file()):
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{p} has splits {sorted(ds)}, not {split!r}; pick one with --split")
            ds = ds[split]
    elif p.exists():
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.suffix in (".parquet", ".json", ".jsonl"))
        if not files:
            raise FileNotFoundError(f"{p} holds no parquet/json files and is not a `save_to_disk` folder")
        split_files = [f for f in files if re.search(rf"(^|[/_\-.]){re.escape(split)}([_\-.]|$)", f.name)]
        files = split_files or files
        kind = "parquet" if files[0].suffix == ".parquet" else "json"
        ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
    else:  # an HF id: the local cache only, unless ECOMVLM_ALLOW_DOWNLOAD=1
        import os

        import datasets.config as dcfg

        saved = dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE
        if os.environ.get("ECOMVLM_ALLOW_DOWNLOAD") != "1":
            dcfg.HF_HUB_OFFLINE = dcfg.HF_DATASETS_OFFLINE = True
        try:
            ds = datasets.load_dataset(str(path), split=split)
        except Exception as e:  # noqa: BLE001 - re-raised with the fix
            raise FileNotFoundError(f"benchmark data {path!r} is neither a local path nor in the HF cache ({e}). "
                                    f"Download it once on a machine with internet (datasets.load_dataset(...)."
                                    f"save_to_disk(DIR)) and pass DIR, or set ECOMVLM_ALLOW_DOWNLOAD=1") from None
        finally:
            dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE = saved
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def _rgb(img: Any):
    from PIL import Image

    if img is None:
        return None
    if isinstance(img, str) and img.startswith(("http://", "https://")):
        raise ValueError(f"image {img!r} is a URL and nothing is downloaded at eval time: mirror the images "
                         f"locally and put their paths (or the images) in the dataset")
    if isinstance(img, (str, Path)):
        return Image.open(img).convert("RGB")
    if isinstance(img, dict) and img.get("bytes"):
        import io

        return Image.open(io.BytesIO(img["bytes"])).convert("RGB")
    return img.convert("RGB")


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or v == "nan"
