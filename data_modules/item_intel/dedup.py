"""Perceptual-hash deduplication of an item's images, originals and crops together (paper A.5, pHash: Zauner 2010).

Two images are near-duplicates when the Hamming distance of their pHashes (``imagehash.phash``, a 64-bit DCT hash
at ``hash_size=8``) is at most ``threshold``. Of near-duplicates the better one is kept: the one with more
source pixels (an original's width x height; a crop's square area inside its photo: what it really resolves,
not the size it was resized to), and among those of about the same size (within ``size_tolerance``) the sharper
one (variance of the Laplacian of the grey image: recompression and blur lower it). The primary image (the
listing's first photo) is kept whatever its near-duplicates are, when ``keep_primary`` is set.

Candidates are taken best first and each is kept unless it is a near-duplicate of one already kept, so every
dropped image names the kept image it duplicates and their distance.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)  # identity: comparing PIL images pixel by pixel is not what `in` should do
class Candidate:
    key: str  # e.g. "original:2" or "crop:0"
    image: Any  # PIL image (RGB)
    source_pixels: int
    is_original: bool
    order: int  # position in the item's list (originals first)
    phash: Any = None
    sharpness: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


def phash(img, hash_size: int = 8):
    import imagehash

    return imagehash.phash(img.convert("RGB"), hash_size=hash_size)


def sharpness(img) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image (higher: sharper)."""
    import numpy as np

    a = np.asarray(img.convert("L"), dtype=np.float64)
    if a.shape[0] < 3 or a.shape[1] < 3:
        return 0.0
    lap = 4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]
    return float(lap.var())


@dataclass(frozen=True)
class DedupSettings:
    threshold: int = 8  # Hamming distance (of hash_size**2 bits) at or below which two images are near-duplicates
    hash_size: int = 8
    size_tolerance: float = 0.05  # sizes within 5% count as the same; then the sharper one wins
    keep_primary: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= self.hash_size ** 2:
            raise ValueError(f"phash threshold must be in 0..{self.hash_size ** 2}, got {self.threshold}")


def _better(a: Candidate, b: Candidate, tol: float) -> int:
    """-1 if a should be kept over b, 1 if b over a (a total order on these keys, deterministic)."""
    big, small = max(a.source_pixels, b.source_pixels), min(a.source_pixels, b.source_pixels)
    if big > small * (1 + tol):
        return -1 if a.source_pixels > b.source_pixels else 1
    if a.sharpness != b.sharpness:
        return -1 if a.sharpness > b.sharpness else 1
    if a.is_original != b.is_original:
        return -1 if a.is_original else 1
    return -1 if a.order < b.order else 1


def dedup(cands: list[Candidate], ds: DedupSettings) -> tuple[list[Candidate], list[dict[str, Any]]]:
    """(kept candidates in their original order, dropped: [{key, duplicate_of, distance}])."""
    for c in cands:
        if c.phash is None:
            c.phash = phash(c.image, ds.hash_size)
        c.sharpness = sharpness(c.image) if not c.sharpness else c.sharpness
    ranked = sorted(cands, key=functools.cmp_to_key(lambda a, b: _better(a, b, ds.size_tolerance)))
    if ds.keep_primary:
        primary = [c for c in cands if c.is_original and c.order == 0]
        ranked = primary + [c for c in ranked if all(c is not p for p in primary)]
    kept: list[Candidate] = []
    dropped: list[dict[str, Any]] = []
    for c in ranked:
        near = [(int(c.phash - k.phash), k) for k in kept]
        near = [(d, k) for d, k in near if d <= ds.threshold]
        if near:
            d, k = min(near, key=lambda t: t[0])
            dropped.append({"key": c.key, "duplicate_of": k.key, "distance": d})
        else:
            kept.append(c)
    kept.sort(key=lambda c: c.order)
    return kept, dropped
