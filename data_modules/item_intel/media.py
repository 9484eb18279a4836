"""Image files of the item-intelligence pipeline: checking them, hashing them, sending them to an endpoint."""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
MAX_PIXELS = 64_000_000  # larger "photos" are refused as too_large (decompression bombs, scans)


@dataclass
class Checked:
    path: str
    sha256: str
    width: int
    height: int
    format: str


def check_image(path: str | Path) -> tuple[Checked | None, str]:
    """(facts about the image, "") or (None, reason): missing, unreadable, undecodable, too_large, empty."""
    p = Path(path)
    if not p.is_file():
        return None, "missing"
    try:
        data = p.read_bytes()
    except OSError:
        return None, "unreadable"
    if not data:
        return None, "empty"
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                return None, "too_large"
            im.load()  # decodes fully: truncated files fail here, not later
            w, h, fmt = im.width, im.height, im.format or ""
    except Image.DecompressionBombError:
        return None, "too_large"
    except Exception:  # noqa: BLE001 - any decoder error means the image cannot be used
        return None, "undecodable"
    if w < 1 or h < 1:
        return None, "empty"
    return Checked(str(p), hashlib.sha256(data).hexdigest(), w, h, fmt), ""


def load_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return rgb_of(im)


def rgb_of(im: Image.Image) -> Image.Image:
    """8-bit RGB as a viewer shows it (transparency on white, 16-bit scaled): data_modules/images.py."""
    from ecomvlm.data_modules.images import to_rgb

    return to_rgb(im)


def data_url(path: str | Path, max_side: int | None = None) -> tuple[str, int, int, int]:
    """(data URL, sent width, sent height, bytes sent) of an image file. Files in a format endpoints take and no
    larger than `max_side` go as they are; others are re-encoded (PNG, or JPEG q92 when shrunk)."""
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        w, h, fmt = im.width, im.height, im.format or ""
        if fmt in MIME and (not max_side or max(w, h) <= max_side):
            return f"data:{MIME[fmt]};base64," + base64.b64encode(data).decode(), w, h, len(data)
        rgb = rgb_of(im if im.mode in ("RGB", "L") else im.convert("RGBA"))
        if max_side and max(w, h) > max_side:
            s = max_side / max(w, h)
            rgb = rgb.convert("RGB").resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
            buf, mime = io.BytesIO(), "image/jpeg"
            rgb.save(buf, format="JPEG", quality=92)
        else:
            buf, mime = io.BytesIO(), "image/png"
            rgb.save(buf, format="PNG")
    out = buf.getvalue()
    return f"data:{mime};base64," + base64.b64encode(out).decode(), rgb.width, rgb.height, len(out)


def decode_data_url(url: str) -> bytes:
    """The bytes of a data URL (the scripted endpoints read what the pipeline sent)."""
    head, _, b64 = url.partition(",")
    if not head.startswith("data:") or ";base64" not in head:
        raise ValueError("not a base64 data URL")
    return base64.b64decode(b64)


def safe_name(item_id: str) -> str:
    """A file-system-safe, collision-free folder name for an item id."""
    import re

    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", item_id)[:60].strip(".") or "item"
    return f"{clean}-{hashlib.sha1(item_id.encode()).hexdigest()[:8]}"
