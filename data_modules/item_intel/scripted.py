"""Scripted stand-ins for the teacher (GPT-4.1) and the grounding VLM (Qwen2.5-VL-32B), for tests and the CPU demo
where no hosted model exists. They are NOT models: they answer from the synthetic data's ground truth.

- :class:`SyntheticTruthTeacher` recognises each photo it is sent by its bytes (a synthetic ``items.jsonl`` written
  with ``regions``), and each crop by the caption the pipeline sends with it ("a zoomed crop of image N, box
  [...]"); it reports the item's true values restricted to what is *legible* in the images as it sees them: every
  image is viewed at ``view_px`` pixels on its longer side, and a printed region is legible when it lies inside
  the image and its text is at least ``min_text_px`` tall there. The shape and colour of the product are always
  visible. So full photos with small print give first labels without the small-print facts, and crops of those
  regions give better labels with them: the mechanism of the paper, with a deterministic reader.
- :class:`SyntheticNoisyGrounder` answers like Qwen2.5-VL (```json [{"bbox_2d": [...], "label": ...}]```) with the
  true boxes of the printed regions, jittered, in any of the coordinate conventions (boxes.py), optionally with
  dropped, spurious, outside and degenerate boxes.

Both are ``respond(body) -> (status, content[, delay_s])`` functions of an OpenAI chat request: serve them with
:func:`serve` (a loopback HTTP server) or the tests' ``function_endpoint`` fixture, so the code under test is the
real client over real HTTP.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image

from ecomvlm.data_modules.curation.scripted import send_chat_completion
from ecomvlm.data_modules.item_intel.media import decode_data_url

CROP_RE = re.compile(r"crop of image (\d+), box \[(-?\d+), (-?\d+), (-?\d+), (-?\d+)\]")
# region kind -> (item field, schema path); brand/size etc. only count when legible
LEGIBLE_FACTS = {"brand": "brand", "size": "size", "ean": "ean", "country": "country", "model": "model_number",
                 "certifications": "certifications", "warning": "warning"}


@dataclass
class SyntheticWorld:
    """The synthetic dataset as the stand-ins know it: photos by sha256 (of the file and of the decoded pixels)."""

    root: Path
    by_sha: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)

    @classmethod
    def load(cls, root: str | Path) -> "SyntheticWorld":
        root = Path(root)
        w = cls(root)
        for line in (root / "items.jsonl").read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if "regions" not in row:
                raise ValueError(f"{root}/items.jsonl has no `regions`: synthesise it with regions=True "
                                 f"(`ecomvlm data item-intel synth`)")
            for rel in row["images"]:
                data = (root / rel).read_bytes()
                w.by_sha[hashlib.sha256(data).hexdigest()] = (row, rel)
                w.by_sha[_pixel_sha(data)] = (row, rel)
        return w

    def add(self, path: str | Path, row: dict[str, Any], rel: str) -> None:
        """Register another file showing `rel` of `row` (e.g. a planted duplicate in a test)."""
        data = Path(path).read_bytes()
        self.by_sha[hashlib.sha256(data).hexdigest()] = (row, rel)
        self.by_sha[_pixel_sha(data)] = (row, rel)

    def find(self, data: bytes) -> tuple[dict[str, Any], str] | None:
        return self.by_sha.get(hashlib.sha256(data).hexdigest()) or self.by_sha.get(_pixel_sha(data))


def _pixel_sha(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as im:
        return "px:" + hashlib.sha256(im.convert("RGB").tobytes() + repr(im.size).encode()).hexdigest()


def _images_of(body: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(caption, image bytes) of every image of the first user turn with images, captions being the text part
    just before each image."""
    for msg in body.get("messages", []):
        if msg.get("role") == "user" and isinstance(msg.get("content"), list):
            out, caption = [], ""
            for part in msg["content"]:
                if part.get("type") == "text":
                    caption = part.get("text", "")
                elif part.get("type") == "image_url":
                    out.append((caption, decode_data_url(part["image_url"]["url"])))
                    caption = ""
            if out:
                return out
    return []


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def _empty_answer() -> dict[str, Any]:
    return {"identifiers": {"barcodes": [], "model_number": ""},
            "attributes": {"product_type": "", "product_category": "", "brand_name": "", "colors": [], "size": ""},
            "origin_production": {"country_of_origin": ""},
            "regulatory_safety": {"certification_marks": [], "hazard_statements": []}}


@dataclass
class SyntheticTruthTeacher:
    """The scripted teacher (module docstring). ``fault(body, item_id, n_call) -> (status, content[, delay]) | None``
    can replace an answer (tests: 5xx, timeouts, malformed JSON); ``calls`` counts requests per item."""

    world: SyntheticWorld
    view_px: int = 96
    min_text_px: float = 4.0
    fault: Callable[[dict[str, Any], str, int], tuple | None] | None = None
    calls: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def legible(self, body: dict[str, Any]) -> tuple[dict[str, Any] | None, set[str], set[str]]:
        """(item row, legible region kinds, views seen) of a request."""
        row, kinds, views = None, set(), set()
        images = _images_of(body)
        originals: dict[int, tuple[dict[str, Any], str, tuple[int, int]]] = {}
        for n, (caption, data) in enumerate(images, 1):
            m = CROP_RE.search(caption)
            if m:
                continue
            found = self.world.find(data)
            if found:
                originals[n] = (*found, _size(data))
        for n, (caption, data) in enumerate(images, 1):
            w, h = _size(data)
            scale = min(1.0, self.view_px / max(w, h))
            m = CROP_RE.search(caption)
            if m:
                src = originals.get(int(m.group(1)))
                if src is None:
                    continue  # a crop of a photo it does not know: nothing to read
                r_row, rel, _ = src
                x0, y0, x1, y1 = (int(v) for v in m.groups()[1:])  # in the photo file's pixels
                sx, sy = w / max(1, x1 - x0), h / max(1, y1 - y0)
                fw, fh = r_row.get("image_size", [w, h])
                boxes = [(r, ((r["box"][0] - x0) * sx, (r["box"][1] - y0) * sy, (r["box"][2] - x0) * sx,
                              (r["box"][3] - y0) * sy)) for r in _regions_at(r_row, rel, fw, fh)]
            elif n in originals:
                r_row, rel, _ = originals[n]
                views.add(Path(rel).stem.split("_", 1)[1])
                boxes = [(r, tuple(r["box"])) for r in _regions_at(r_row, rel, w, h)]
            else:
                continue
            row = row or r_row
            for r, (bx0, by0, bx1, by1) in boxes:
                inside = _inside_share((bx0, by0, bx1, by1), w, h)
                if inside >= 0.9 and (by1 - by0) * scale >= self.min_text_px:
                    kinds.add(r["kind"])
        return row, kinds, views

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        row, kinds, views = self.legible(body)
        out = _empty_answer()
        if row is None:
            return out
        a, ids = out["attributes"], out["identifiers"]
        if views & {"front", "back", "front_alt", "back_alt"}:
            a["product_type"], a["product_category"] = row["department"], row["category"]
        if views - {"label"}:
            a["colors"] = [row["colour"]]
        if "brand" in kinds:
            a["brand_name"] = row["brand"]
        if "size" in kinds:
            a["size"] = row["size"]
        if "ean" in kinds:
            ids["barcodes"] = [{"value": row["ean"]}]
        if "model" in kinds:
            ids["model_number"] = row["model_number"]
        if "country" in kinds:
            out["origin_production"]["country_of_origin"] = row["country"]
        if "certifications" in kinds and row["certifications"]:
            out["regulatory_safety"]["certification_marks"] = list(row["certifications"])
        if "warning" in kinds and row["warning"]:
            out["regulatory_safety"]["hazard_statements"] = [{"text": row["warning"]}]
        return out

    def __call__(self, body: dict[str, Any]):
        row, _, _ = self.legible(body)
        item = row["item_id"] if row else "?"
        with self.lock:
            self.calls[item] = self.calls.get(item, 0) + 1
            n = self.calls[item]
        if self.fault:
            got = self.fault(body, item, n)
            if got is not None:
                return got
        return 200, json.dumps(self.answer(body))


def _regions_at(row: dict[str, Any], rel: str, w: int, h: int) -> list[dict[str, Any]]:
    """The true regions of `rel`, in the pixels of a w x h rendition of it."""
    ow, oh = row.get("image_size", [w, h])
    sx, sy = w / ow, h / oh
    return [{**r, "box": [r["box"][0] * sx, r["box"][1] * sy, r["box"][2] * sx, r["box"][3] * sy]}
            for r in row["regions"].get(rel, [])]


def _inside_share(b: tuple[float, float, float, float], w: int, h: int) -> float:
    a = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    if a <= 0:
        return 0.0
    ix = max(0.0, min(b[2], w) - max(b[0], 0.0))
    iy = max(0.0, min(b[3], h) - max(b[1], 0.0))
    return ix * iy / a


@dataclass
class SyntheticNoisyGrounder:
    """The scripted grounding model (module docstring). Noise is a pure function of the image and the seed."""

    world: SyntheticWorld
    convention: str = "resized_pixels"
    noise: float = 0.08  # jitter of each edge, as a share of the box's size (gaussian sigma)
    drop: float = 0.0  # probability that a true region is not returned
    spurious: int = 0  # extra boxes at random places
    outside: bool = False  # add one box entirely outside the image
    degenerate: bool = False  # add one zero-height box
    overflow: bool = False  # stretch one box beyond the image's edge (clipped by the pipeline)
    kinds: tuple[str, ...] | None = None  # only these region kinds (None: all)
    seed: int = 0
    factor: int = 28
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 16384 * 28 * 28
    fault: Callable[[dict[str, Any], str, int], tuple | None] | None = None
    calls: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def boxes(self, data: bytes) -> list[tuple[list[float], str]]:
        """Noisy true boxes of one sent image, in the pixels of the image as sent."""
        found = self.world.find(data)
        if found is None:
            return []
        row, rel = found
        w, h = _size(data)
        rng = random.Random(f"{self.seed}:{hashlib.sha256(data).hexdigest()}")
        out = []
        for r in _regions_at(row, rel, w, h):
            if self.kinds and r["kind"] not in self.kinds:
                continue
            if rng.random() < self.drop:
                continue
            x0, y0, x1, y1 = r["box"]
            bw, bh = x1 - x0, y1 - y0
            out.append(([x0 + rng.gauss(0, self.noise) * bw, y0 + rng.gauss(0, self.noise) * bh,
                         x1 + rng.gauss(0, self.noise) * bw, y1 + rng.gauss(0, self.noise) * bh], r["text"]))
        for _ in range(self.spurious):
            cx, cy, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(4, w / 6)
            out.append(([cx - s, cy - s / 3, cx + s, cy + s / 3], "spurious"))
        if self.outside:
            out.append(([w + 10, h + 10, w + 40, h + 30], "outside"))
        if self.degenerate:
            out.append(([w * 0.3, h * 0.5, w * 0.6, h * 0.5], "degenerate"))
        if self.overflow and out:
            b = out[0][0]
            out[0] = ([b[0], b[1], w + 25, b[3]], out[0][1])
        return out

    def encode(self, box: list[float], w: int, h: int) -> list[int]:
        if self.convention == "original_pixels":
            fw, fh = w, h
        elif self.convention == "norm1000":
            fw, fh = 1000, 1000
        elif self.convention == "resized_pixels":
            from ecomvlm.data_modules.preprocess import smart_resize

            fh, fw = smart_resize(h, w, self.factor, self.min_pixels, self.max_pixels)
        else:
            raise ValueError(f"unknown convention {self.convention!r}")
        return [round(box[0] * fw / w), round(box[1] * fh / h), round(box[2] * fw / w), round(box[3] * fh / h)]

    def __call__(self, body: dict[str, Any]):
        images = _images_of(body)
        if not images:
            return 400, "no image in the request"
        data = images[0][1]
        key = hashlib.sha256(data).hexdigest()[:12]
        with self.lock:
            self.calls[key] = self.calls.get(key, 0) + 1
            n = self.calls[key]
        if self.fault:
            got = self.fault(body, key, n)
            if got is not None:
                return got
        w, h = _size(data)
        answer = [{"bbox_2d": self.encode(b, w, h), "label": label} for b, label in self.boxes(data)]
        return 200, "```json\n" + json.dumps(answer) + "\n```"


# ------------------------------------------------------------------------------------------------ loopback server
@contextmanager
def serve(respond: Callable[[dict[str, Any]], tuple]) -> Iterator[str]:
    """A loopback OpenAI-compatible endpoint (/v1/chat/completions) answering with `respond`; yields its base URL.
    Token usage is reported as characters / 4 (the stand-ins have no tokenizer)."""
    import time

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            out = respond(body)
            status, content, delay = (*out, 0.0) if len(out) == 2 else out
            if delay:
                time.sleep(delay)
            prompt_chars = sum(len(json.dumps(m.get("content"))) for m in body.get("messages", []))
            send_chat_completion(self, status, content, {"prompt_tokens": prompt_chars // 4,
                                                         "completion_tokens": len(content or "") // 4})

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        srv.server_close()
