"""Deterministic synthetic e-commerce data: product photos with visible attributes + LLaVA JSON + eval sets.

Why synthetic: nothing can be downloaded here, and tests/demos need ground truth that is *exact* so a tiny
model can visibly learn (colour, category) and scorers can be checked against known answers.

Every item is a pure function of ``(seed, split, index)``: item 7 of seed 0 is the same picture and the same
record whether you ask for 10 items or 10,000, and two runs write byte-identical files. The format of every
file written here is documented in ``docs/DATA_FORMAT.md``. Rooms: items.py (attributes, ground truth), render.py
(pictures), records.py (training and benchmark records); this module writes a dataset.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ecomvlm.data_modules.synth.items import (  # noqa: F401 - the universe is part of this module's interface
    ALIASES,
    APPAREL,
    BRANDS,
    CATEGORIES,
    CODED_KINDS,
    COLOURS,
    COUNTRIES,
    NECKLINES,
    PATTERNS,
    SLEEVES,
    VIEW_ORDER,
    CategorySpec,
    Item,
    ean13_check_digit,
    make_item,
)
from ecomvlm.data_modules.synth.records import (  # noqa: F401
    ASPECT_QUESTIONS,
    DAE_PROMPT,
    IMAGE_LINE,
    caption,
    detailed_caption,
    eval_records,
    training_records,
)
from ecomvlm.data_modules.synth.render import render_view

SYNTH_FORMAT_VERSION = 1


@dataclass
class SynthConfig:
    out: Path
    n: int = 200  # training items
    n_eval: int = 50  # held-out items for eval sets (a different split: never the same pictures)
    seed: int = 0
    image_size: int = 192
    max_images: int = 6  # min_images..max_images images per item
    min_images: int = 1
    # item-intelligence options (off by default; the default output does not change):
    small_print: float = 0.0  # > 0: back/label prints drawn small (text height = this * image side), render.py
    regions: bool = False  # items.jsonl gets `regions`: the true boxes of the printed text regions per image
    print_codes: bool = False  # with small_print: the country of origin only, as a colour swatch (render.py)


# options added after format 1: recorded in manifest.json only when set, so default output stays byte-identical
_OPTIONAL = {"small_print": 0.0, "regions": False, "print_codes": False, "min_images": 1}


def synthesize(cfg: SynthConfig, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write images, LLaVA JSON training sets, eval JSONL sets and manifest.json under cfg.out."""
    if cfg.n < 0 or cfg.n_eval < 0:
        raise ValueError(f"--n and --n-eval must be >= 0 (got {cfg.n}, {cfg.n_eval})")
    if not 1 <= cfg.max_images <= len(VIEW_ORDER):
        raise ValueError(f"--max-images must be in 1..{len(VIEW_ORDER)}, got {cfg.max_images}")
    if not 1 <= cfg.min_images <= cfg.max_images:
        raise ValueError(f"--min-images must be in 1..--max-images ({cfg.max_images}), got {cfg.min_images}")
    if cfg.image_size < 32:
        raise ValueError(f"--image-size must be >= 32 pixels for legible attributes, got {cfg.image_size}")
    if not 0.0 <= cfg.small_print <= 0.2:
        raise ValueError(f"--small-print is a text height as a fraction of the image side, in [0, 0.2]; got "
                         f"{cfg.small_print}")
    if cfg.print_codes and not cfg.small_print:
        raise ValueError("--print-codes draws the small print's colour codes: it needs --small-print > 0")
    out = Path(cfg.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    train: dict[str, list] = {}
    evals: dict[str, list] = {}
    items: list[dict[str, Any]] = []
    total, done = cfg.n + cfg.n_eval, 0
    splits = (("train", cfg.n, train, training_records), ("eval", cfg.n_eval, evals, eval_records))
    for split, count, sink, make in splits:
        for index in range(count):
            item = make_item(cfg.seed, split, index)
            if cfg.print_codes:
                item.printed = list(CODED_KINDS)
            rng = random.Random(f"ecomvlm-synth-render:{cfg.seed}:{split}:{index}")
            n_img = rng.randint(cfg.min_images, cfg.max_images)
            regions: dict[str, list] = {}
            for view in VIEW_ORDER[:n_img]:
                rel = f"images/{item.item_id}_{view}.png"
                found: list | None = [] if cfg.regions else None
                render_view(item, view, cfg.image_size, rng, small_print=cfg.small_print,
                            regions=found).save(out / rel, optimize=False)
                item.images.append(rel)
                if found is not None:
                    regions[rel] = found
            for name, recs in make(item, rng).items():
                sink.setdefault(name, []).extend(recs)
            row = {"split": split, **asdict(item), "title": item.title}
            if item.printed is None:  # the default rows stay as they were
                del row["printed"]
            if cfg.regions:
                row["image_size"] = [cfg.image_size, cfg.image_size]
                row["regions"] = regions
            items.append(row)
            done += 1
            if progress:
                progress(done, total)
    files: dict[str, int] = {}
    (out / "train").mkdir(exist_ok=True)
    for name, recs in sorted(train.items()):
        (out / "train" / f"{name}.json").write_text(json.dumps(recs, indent=1) + "\n")
        files[f"train/{name}.json"] = len(recs)
    (out / "eval").mkdir(exist_ok=True)
    for name, recs in sorted(evals.items()):
        (out / "eval" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        files[f"eval/{name}.jsonl"] = len(recs)
    (out / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    manifest = {
        "format_version": SYNTH_FORMAT_VERSION,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()
                   if k != "out" and not (k in _OPTIONAL and v == _OPTIONAL[k])},
        "items": {"train": cfg.n, "eval": cfg.n_eval},
        "images": sum(len(i["images"]) for i in items),
        "records": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
