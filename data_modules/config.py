"""The data settings of a training run (the ``data:`` group of recipes/config.py's schema)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

TRUNCATION = ("skip", "truncate")
OVER_BUDGET = ("auto", "drop_images", "downscale", "single_view")


@dataclass
class DataConfig:
    shards: str = MISSING  # folder made by `ecomvlm data shards` (read through megatron-energon)
    micro_batch_size: int = 1
    global_batch_size: int = 8  # = micro_batch_size x micro-batches x data-parallel size
    max_seq_length: int = 4096  # tokens per row (image tokens included)
    pack: bool = True  # several samples per row (first-fit), each with its own positions and attention span
    pack_window: int = 256  # samples first-fit considers together (held as tokens + image bytes, decoded after)
    shuffle_buffer: int = 512  # samples (after energon's shuffle of shard slices)
    shuffle_slice: int = 100  # samples read in sequence from one shard before the reader jumps (energon slices)
    num_workers: int = 2  # loader worker processes per rank (resume needs the same number)
    loader_watchdog_s: float | None = 600.0  # print the loader's stacks when one batch takes longer than this
    truncation: str = "skip"  # too-long samples: skip (counted) | truncate (text only, never inside images)
    max_images: int = 12  # per sample; extra images are dropped with their placeholders (counted)
    max_image_tokens: int | None = None  # image tokens per sample (10+ image items must not blow up a step)
    # past max_image_tokens: drop_images (the last ones, with their placeholders) | downscale (native resolution:
    # shrink every image's pixel budget) | single_view (AnyRes: one base view instead of the grid) | auto: downscale
    # for native resolution, single_view then drop_images for AnyRes, drop_images for fixed views; each one counted
    over_budget: str = "auto"

    def __post_init__(self) -> None:
        if self.truncation not in TRUNCATION:
            raise ValueError(f"data.truncation={self.truncation!r}: choose one of {TRUNCATION}")
        if self.over_budget not in OVER_BUDGET:
            raise ValueError(f"data.over_budget={self.over_budget!r}: choose one of {OVER_BUDGET}")
        if self.max_images < 0:
            raise ValueError(f"data.max_images={self.max_images} must be >= 0")
        for name in ("micro_batch_size", "global_batch_size", "max_seq_length", "pack_window", "shuffle_buffer",
                     "shuffle_slice"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name}={getattr(self, name)} must be >= 1")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers={self.num_workers} must be >= 0")
