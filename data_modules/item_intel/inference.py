"""Item-intelligence inference strategies (paper Table 3 rows 28/29, 40, 41), used by ``ecomvlm eval``:

- ``primary``: the listing's first image only (row 28);
- ``all``: every image (row 29, and every other row);
- ``crops``: every image + square crops of its informative regions, made exactly as for training (boxes.py:
  expand, merge, enclosing square, resized to ``crop_size``; dedup.py: pHash over originals + crops), the boxes
  coming from a precomputed boxes file or a grounding endpoint (row 41);
- ``pan_scan``: every image, the model's processor doing Gemma3's pan & scan (row 40; eval/cli.py builds the
  backend with ``processor_kwargs``).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ecomvlm.data_modules.chat_templates import IMAGE_TOKEN

STRATEGIES = ("primary", "all", "crops", "pan_scan")
ROW_NAMES = {"primary": "primary image only", "all": "", "crops": "image crops", "pan_scan": "pan&scan"}
PAN_SCAN_KWARGS = {"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 256, "pan_and_scan_max_num_crops": 4,
                   "pan_and_scan_min_ratio_to_activate": 1.2}  # transformers' Gemma3 defaults, switched on


def benchmark_name(strategy: str) -> str:
    """The results key of a strategy: item_intel (all images) or item_intel:<strategy>."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown item_intel strategy {strategy!r}; choose from {list(STRATEGIES)}")
    return "item_intel" if strategy == "all" else f"item_intel:{strategy}"


def strategy_of(bench: str) -> str:
    return "all" if bench == "item_intel" else bench.split(":", 1)[1]


def with_images(prompt: str, n_images: int) -> str:
    """The prompt with its `<image>` placeholders replaced by `n_images` of them in front (a prompt without
    placeholders is left as it is: backends put the images first)."""
    if IMAGE_TOKEN not in prompt:
        return prompt
    text = re.sub(re.escape(IMAGE_TOKEN) + r"\n?", "", prompt)
    return (IMAGE_TOKEN + "\n") * n_images + text


def load_boxes_file(path: str | Path) -> dict[str, list[list[float]]]:
    """A boxes JSONL (``ecomvlm data item-intel boxes --out FILE`` writes the grounding stage's boxes so) ->
    {image path as the records name it: boxes in original pixels}. Lines: {"id", "images": [{"image", "boxes":
    [[x0, y0, x1, y1], ...]}]}; image paths relative to the eval data folder (or absolute)."""
    out: dict[str, list[list[float]]] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            for im in row["images"]:
                out[str(im["image"])] = [list(map(float, b)) for b in im.get("boxes") or []]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a boxes line ({e}); expected {{\"id\", \"images\": [{{\"image\", "
                             f"\"boxes\"}}]}}") from None
    return out


def write_boxes_file(ground_outputs: dict[str, Any], path: Path, data_root: Path | None = None) -> int:
    """The grounding stage's boxes as the eval's precomputed boxes file: one line per item with its images (paths
    relative to `data_root` when under it) and their boxes in original pixels."""
    n = 0
    with open(path, "w") as f:
        for key, out in sorted(ground_outputs.items()):
            ims = []
            for im in out["images"]:
                p = Path(im["path"])
                if data_root is not None:
                    try:
                        p = p.resolve().relative_to(Path(data_root).resolve())
                    except ValueError:
                        pass
                ims.append({"image": str(p), "boxes": im.get("boxes") or []})
            f.write(json.dumps({"id": key, "images": ims}) + "\n")
            n += 1
    return n


def add_crops(images: list[Any], boxes: list[list[list[float]] | None], crop, dedup_settings
              ) -> tuple[list[Any], dict[str, int]]:
    """Originals + their crops, deduplicated (the pipeline's crop + dedup rules). ``boxes[i]`` are image i's boxes
    in its pixels (None: no boxes known for it). Returns (images, counts)."""
    from ecomvlm.data_modules.item_intel.boxes import crop_squares, cut
    from ecomvlm.data_modules.item_intel.dedup import Candidate, dedup

    cands = [Candidate(f"original:{i}", im, im.width * im.height, True, i) for i, im in enumerate(images)]
    n_crops = 0
    for i, (im, bx) in enumerate(zip(images, boxes)):
        if not bx:
            continue
        squares, _ = crop_squares([tuple(b) for b in bx], im.width, im.height, crop)
        for k, s in enumerate(squares):
            inside = max(0, min(s[2], im.width) - max(0, s[0])) * max(0, min(s[3], im.height) - max(0, s[1]))
            cands.append(Candidate(f"crop:{i}.{k}", cut(im, s, crop.crop_size), inside, False, 1000 + 100 * i + k))
            n_crops += 1
    kept, dropped = dedup(cands, dedup_settings)
    return [c.image for c in kept], {"crops": n_crops, "dropped": len(dropped),
                                     "crops_kept": sum(1 for c in kept if not c.is_original)}


def ground_paths(paths: list[str], images: dict[str, Any], endpoint, prompt_name: str, convention,
                 min_box_px: float = 2.0, cache_dir: str | Path | None = None) -> tuple[dict[str, list], dict]:
    """Boxes of each image from a grounding endpoint (the pipeline's client, prompt, parsing and cache):
    ({path: boxes in original pixels}, counters). An image whose grounding fails gets no boxes (counted)."""
    import hashlib
    import io
    import tempfile
    from collections import Counter

    from ecomvlm.data_modules.item_intel.prompts import load_prompt
    from ecomvlm.data_modules.item_intel.stages import ground_process

    p = load_prompt(prompt_name, "grounding")
    tmp = tempfile.TemporaryDirectory(prefix="ecomvlm-ground-")
    records = []
    for n, path in enumerate(sorted(set(paths))):
        im = images[path]
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        f = Path(tmp.name) / f"{n}.png"
        f.write_bytes(buf.getvalue())
        records.append({"id": path, "images": [{"path": str(f), "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
                                                "w": im.width, "h": im.height}]})
    counters: Counter = Counter()
    settings = {"_counters": counters, "model": endpoint.model, "prompt": {**p.fields, "version": p.version,
                                                                          "sha256": p.sha256},
                "convention": asdict(convention),
                "max_side": None, "max_tokens": 1024, "min_box_px": min_box_px, "max_boxes": 64}
    out: dict[str, list] = {}
    try:
        for fate in ground_process(records, settings, runtime={"endpoint": endpoint, "cache_dir": cache_dir}):
            if fate.output:
                out[fate.key] = fate.output["images"][0].get("boxes") or []
            else:
                counters[f"grounding_failed:{fate.fate}"] += 1
    finally:
        tmp.cleanup()
    return out, dict(counters)
