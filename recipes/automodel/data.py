"""Our shard folders as NeMo AutoModel's training dataset: random access, the checkpoint's own processor, our loss
mask rule, counted skips.

AutoModel's VLM recipe wants a map-style (``Sized``) dataset that its ``DistributedSampler`` splits over the
data-parallel ranks, and a collate called as ``collate(items, processor=...)`` that returns batches with labels
already shifted (``labels[:, t]`` is the target of position ``t``). This module gives it both over the folders
``ecomvlm data shards`` writes (single sources or A.6-style mixtures, resolved at shard time):

- :class:`ShardSamples` reads sample ``i`` of a shard folder straight from its tar with energon's ``.tar.idx`` byte
  offsets (the same samples the megatron loader reads through energon; only the order is the sampler's);
- :class:`ShardVLMDataset` turns one into the model's inputs (:mod:`ecomvlm.recipes.automodel.inputs`); a sample
  it cannot use (too long, broken, no assistant turn...) is replaced by the next usable one and counted by reason,
  so every micro-batch stays full and the order stays a pure function of (seed, epoch) - which is what makes a
  resumed run see exactly the batches of an uninterrupted one;
- :func:`collate` pads, shifts and concatenates the per-image tensors, and passes per-batch counts (images, pan &
  scan crops, skips) under ``STATS_KEY``, which the recipe pops before the forward pass.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ecomvlm.recipes.automodel.inputs import SEQUENCE_KEYS, SampleProblem, VLMInputs

STATS_KEY = "_ecomvlm_stats"


class ShardSamples:
    """Random access to the samples of one shard folder: ``(key, meta, image bytes)`` of sample ``i``."""

    def __init__(self, folder: str | Path) -> None:
        from ecomvlm.data_modules.loader import check_shard_folder

        self.folder = Path(folder)
        self.manifest = check_shard_folder(self.folder)
        self.shards: list[tuple[Path, tuple[int, ...]]] = []
        self.starts: list[int] = []
        total = 0
        for name in self.manifest["shards"]:
            tar = self.folder / name
            raw = (tar.parent / f"{tar.name}.idx").read_bytes()
            offsets = struct.unpack(f"<{len(raw) // 8}Q", raw)
            self.shards.append((tar, offsets))
            self.starts.append(total)
            total += len(offsets) - 1
        self.total = total

    def __len__(self) -> int:
        return self.total

    def locate(self, i: int) -> tuple[int, int]:
        import bisect

        if not 0 <= i < self.total:
            raise IndexError(f"sample {i} of {self.total}")
        s = bisect.bisect_right(self.starts, i) - 1
        return s, i - self.starts[s]

    def __getitem__(self, i: int) -> tuple[str, dict[str, Any], list[bytes]]:
        s, j = self.locate(i)
        tar, offsets = self.shards[s]
        with open(tar, "rb") as f:
            f.seek(offsets[j])
            chunk = f.read(offsets[j + 1] - offsets[j])
        files: dict[str, bytes] = {}
        key = None
        with tarfile.open(fileobj=io.BytesIO(chunk), mode="r:") as t:
            for m in t:
                if not m.isfile():
                    continue
                key, _, ext = m.name.partition(".")
                files[ext] = t.extractfile(m).read()
        meta = json.loads(files["json"])
        return key or "", meta, [files[name] for name in meta.get("images", [])]


@dataclass
class DataSpec:
    """What the dataset needs from the run's config (plain values: it is built again on every rank)."""

    shards: str
    model_dir: str
    processor_kwargs: dict[str, Any]
    trust_remote_code: bool = False
    max_seq_length: int | None = None
    truncation: str = "skip"
    max_images: int | None = None
    max_image_tokens: int | None = None


class ShardVLMDataset(torch.utils.data.Dataset):
    """Sample ``i`` of a shard folder as one HF VLM's training inputs (see the module docstring)."""

    def __init__(self, spec: DataSpec, inputs: VLMInputs | None = None) -> None:
        from ecomvlm.recipes.automodel.inputs import load_inputs

        self.spec = spec
        self.samples = ShardSamples(spec.shards)
        self.inputs = inputs or load_inputs(spec.model_dir, processor_kwargs=spec.processor_kwargs,
                                            trust_remote_code=spec.trust_remote_code)
        self.skipped: Counter = Counter()

    def __len__(self) -> int:
        return len(self.samples)

    def encode(self, i: int):
        from PIL import Image

        _, meta, blobs = self.samples[i]
        try:
            images = [Image.open(io.BytesIO(b)) for b in blobs]
            for im in images:
                im.load()
        except Exception as e:  # noqa: BLE001 - a broken image is a counted skip, never a crash
            raise SampleProblem("corrupt_image", f"{type(e).__name__}: {e}") from None
        s = self.spec
        return self.inputs.encode_conversation(meta["conversations"], images, max_seq_length=s.max_seq_length,
                                               truncation=s.truncation, max_images=s.max_images,
                                               max_image_tokens=s.max_image_tokens)

    def __getitem__(self, i: int) -> dict[str, Any]:
        skipped: list[str] = []
        for k in range(len(self)):
            j = (i + k) % len(self)
            try:
                enc = self.encode(j)
            except SampleProblem as e:
                skipped.append(e.reason)
                self.skipped[e.reason] += 1
                continue
            item = {k: v for k, v in enc.inputs.items()}
            item["labels"] = enc.labels
            item[STATS_KEY] = {"index": j, "images": enc.n_images, "extra_crops": list(enc.extra_crops),
                               "skipped": skipped, "notes": list(enc.notes), "tokens": len(enc)}
            return item
        raise ValueError(f"no sample of {self.spec.shards} can be used ({dict(self.skipped)}): check "
                         f"data.max_seq_length, data.truncation and the data itself")


def _plain(value: Any) -> Any:
    """AutoModel hands nested config values over as its ConfigNode; the dataset keeps plain dicts."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return dict(value) if isinstance(value, dict) else value


def build_dataset(**spec: Any) -> ShardVLMDataset:
    """The dataset factory AutoModel calls (``dataset._target_``, the :class:`DataSpec` fields as plain keys: the
    config AutoModel saves with every checkpoint stays plain YAML)."""
    spec["processor_kwargs"] = _plain(spec.get("processor_kwargs") or {})
    return ShardVLMDataset(DataSpec(**spec))


def collate(items: list[dict[str, Any]], processor=None, pad_token_id: int = 0,
            pixel_dtype: str | None = None) -> dict[str, Any]:
    """Pad (right), shift labels left by one and cut the last position of every sequence tensor, concatenate the
    per-image tensors of the batch; contiguous tensors (CPU runs view labels without copying them)."""
    width = max(int(it["input_ids"].shape[-1]) for it in items)
    pads = {"input_ids": pad_token_id, "attention_mask": 0, "token_type_ids": 0, "mm_token_type_ids": 0}
    out: dict[str, Any] = {}
    for key in SEQUENCE_KEYS:
        if key not in items[0]:
            continue
        rows = []
        for it in items:
            t = it[key].reshape(-1)
            rows.append(torch.cat([t, t.new_full((width - t.numel(),), pads[key])]))
        out[key] = torch.stack(rows)[:, :-1]
    labels = torch.stack([torch.cat([it["labels"], it["labels"].new_full((width - it["labels"].numel(),), -100)])
                          for it in items])
    out["labels"] = labels[:, 1:]
    dtype = getattr(torch, pixel_dtype) if pixel_dtype else None
    for key in items[0]:
        if key in SEQUENCE_KEYS or key in ("labels", STATS_KEY):
            continue
        parts = [it[key] for it in items if it.get(key) is not None]
        if not parts:
            continue
        t = torch.cat(parts)
        out[key] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    stats = [it[STATS_KEY] for it in items]
    out = {k: v.contiguous() for k, v in out.items()}
    out[STATS_KEY] = {"images": sum(s["images"] for s in stats),
                      "extra_crops": [c for s in stats for c in s["extra_crops"]],
                      "skipped": [r for s in stats for r in s["skipped"]],
                      "notes": [n for s in stats for n in s["notes"]], "indices": [s["index"] for s in stats]}
    return out
