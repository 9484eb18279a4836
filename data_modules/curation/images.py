"""The main image of a listing (paper 3.2.1: "select only the primary (main) image for each listing"): resolved,
fetched when it is a URL, decoded and checked.

Fates: ``dropped:no_image`` (the listing names none), ``dropped:image_missing`` (a local file that is not there,
or a URL that answers 404/410), ``dropped:image_undecodable`` (not an image PIL can decode to the end),
``dropped:image_too_small`` (shorter side < ``min_side``), ``dropped:image_too_large`` (over PIL's decompression
bomb limit), ``dropped:image_bad_shape`` (aspect ratio over ``max_aspect``), ``failed:image_fetch_<kind>`` (a URL
that timed out / answered 5xx after retries: a re-run with ``--retry-failed`` tries it again).

Fetched images are stored content-addressed under ``<out>/images/<sha[:2]>/<sha>.<ext>`` (written once, temp +
rename), so every later stage and the stage-3 JSON read local files.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif", "MPO": "jpg"}
MIME = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif", "bmp": "image/bmp",
        "tif": "image/tiff"}


@dataclass(frozen=True)
class ImageRules:
    min_side: int = 64
    max_aspect: float = 6.0

    def asdict(self) -> dict[str, Any]:
        return {"min_side": self.min_side, "max_aspect": self.max_aspect}


def is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def resolve_local(ref: str, image_root: Path | None) -> Path:
    if ref.startswith("file://"):
        ref = ref[len("file://"):]
    p = Path(ref)
    return p if p.is_absolute() or image_root is None else Path(image_root) / p


def inspect_image(data: bytes, rules: ImageRules) -> tuple[dict[str, Any] | None, str, str]:
    """({sha256, width, height, format, ext} or None, drop reason, detail) of image bytes."""
    from PIL import Image

    if not data:
        return None, "image_undecodable", "0 bytes"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
            im.load()
            w, h = im.size
    except Image.DecompressionBombError as e:
        return None, "image_too_large", str(e)[:200]
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for broken files
        return None, "image_undecodable", f"{type(e).__name__}: {e}"[:200]
    if min(w, h) < rules.min_side:
        return None, "image_too_small", f"{w}x{h} (shorter side < {rules.min_side})"
    if max(w, h) / max(1, min(w, h)) > rules.max_aspect:
        return None, "image_bad_shape", f"{w}x{h} (aspect ratio > {rules.max_aspect})"
    ext = FORMATS.get(fmt, "img")
    return {"sha256": hashlib.sha256(data).hexdigest(), "width": w, "height": h, "format": fmt, "ext": ext}, "", ""


def store_fetched(data: bytes, info: dict[str, Any], out_dir: Path) -> str:
    """Write fetched bytes content-addressed under <out>/images/; the path relative to <out>."""
    rel = f"images/{info['sha256'][:2]}/{info['sha256']}.{info['ext']}"
    dest = Path(out_dir) / rel
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    return rel


def image_for_request(path: Path, max_side: int | None) -> tuple[bytes, str]:
    """(bytes, mime) sent to the captioner: the file as it is, or shrunk to `max_side` (JPEG q90) when larger."""
    data = path.read_bytes()
    ext = path.suffix.lower().lstrip(".")
    ext = "jpg" if ext == "jpeg" else ext
    if max_side:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            if max(im.size) > max_side:
                im = im.convert("RGB")
                im.thumbnail((max_side, max_side))
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=90)
                return buf.getvalue(), "image/jpeg"
    return data, MIME.get(ext, "image/png")
