"""Streaming shards -> packed training batches, as a Lightning DataModule.

Order of work per rank/worker: shard list (shuffled per epoch with the seed) -> this rank+worker's part
(whole shards when there are enough, else every k-th sample) -> seeded shuffle buffer -> per-sample preprocessing
(bad samples skipped and counted) -> first-fit packing over a window of samples -> batches.

Everything is a function of (seed, epoch, rank, worker), so a resumed run replays the same stream:
:meth:`ShardStream.state_dict` records how many batches were consumed and iteration fast-forwards past them.
"""

from __future__ import annotations

import json
import random
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ecomvlm.data_modules.chat_templates import get_chat_format
from ecomvlm.data_modules.config import DataConfig
from ecomvlm.data_modules.packing import collate_rows, first_fit
from ecomvlm.data_modules.preprocess import ImageSpec, SampleTooLong, build_sample


def iter_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, Any], list[bytes]]]:
    """(key, json meta, image bytes in order) for each sample of a shard written by `ecomvlm data shards`."""
    with tarfile.open(path, "r") as tar:
        cur_key, files = None, {}
        for m in tar:
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            if cur_key is not None and key != cur_key:
                yield _sample(cur_key, files, path)
                files = {}
            cur_key = key
            files[ext] = tar.extractfile(m).read()
        if cur_key is not None:
            yield _sample(cur_key, files, path)


def _sample(key: str, files: dict[str, bytes], path) -> tuple[str, dict[str, Any], list[bytes]]:
    meta = json.loads(files["json"])
    return key, meta, [files[name] for name in meta.get("images", [])]


def shard_paths(shards: str) -> list[Path]:
    """shard-*.tar in a folder, or the files of a glob."""
    import glob

    p = Path(shards)
    paths = sorted(p.glob("shard-*.tar")) if p.is_dir() else sorted(Path(x) for x in glob.glob(shards))
    if not paths:
        raise FileNotFoundError(f"no shard-*.tar found at {shards!r}; make them with `ecomvlm data shards`")
    return paths


class ShardStream(IterableDataset):
    """Yields collated batches. Skips are counted in ``self.stats`` (per worker; the DataModule aggregates)."""

    def __init__(self, cfg: DataConfig, tokenizer, chat_format: str, image_spec: ImageSpec, image_token_id: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, pad_to_multiple_of: int = 1) -> None:
        self.cfg, self.tok, self.fmt = cfg, tokenizer, get_chat_format(chat_format)
        self.spec, self.image_token_id = image_spec, image_token_id
        self.rank, self.world, self.seed, self.pad_multiple = rank, world_size, seed, pad_to_multiple_of
        self.paths = shard_paths(cfg.shards)
        self.epoch = 0
        self.skip_batches = 0
        self.stats: Counter = Counter()

    # ---- the sample stream of this rank + worker ----
    def _my_samples(self) -> Iterator[tuple[str, dict[str, Any], list[bytes]]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        slot, n_slots = self.rank * nw + wid, self.world * nw
        paths = list(self.paths)
        random.Random(f"shards:{self.seed}:{self.epoch}").shuffle(paths)
        if len(paths) >= n_slots:  # whole shards per reader (cheap: each tar is read by one reader only)
            for p in paths[slot::n_slots]:
                yield from iter_tar_samples(p)
        else:  # few shards: every reader scans all of them and keeps every n_slots-th sample
            i = 0
            for p in paths:
                for s in iter_tar_samples(p):
                    if i % n_slots == slot:
                        yield s
                    i += 1

    def _shuffled(self) -> Iterator[tuple[str, dict[str, Any], list[bytes]]]:
        rng = random.Random(f"buffer:{self.seed}:{self.epoch}:{self.rank}")
        buf: list = []
        for s in self._my_samples():
            buf.append(s)
            if len(buf) >= self.cfg.shuffle_buffer:
                yield buf.pop(rng.randrange(len(buf)))
        rng.shuffle(buf)
        yield from buf

    def _samples(self):
        for key, meta, images in self._shuffled():
            try:
                s = build_sample(meta, images, self.tok, self.fmt, self.spec, self.cfg, self.image_token_id)
            except SampleTooLong:
                self.stats["skipped:too_long"] += 1
                continue
            except Exception as e:  # noqa: BLE001 - a bad sample must not stop training; it is counted
                self.stats[f"skipped:{type(e).__name__}"] += 1
                continue
            for note in s.notes:
                self.stats[note] += 1
            self.stats["samples"] += 1
            yield s

    def __iter__(self):
        cfg = self.cfg
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        mb = cfg.micro_batch_size
        produced = 0
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        # the DataLoader takes batches from workers round-robin: global batch g comes from worker g % nw
        my_skip = max(0, -(-(self.skip_batches - wid) // nw))

        def emit(rows):
            nonlocal produced
            produced += 1
            if produced <= my_skip:
                return None
            batch = collate_rows(rows, pad, multiple_of=self.pad_multiple)
            # skip/cap counters live in this (worker) process: ship a snapshot with every batch
            batch["worker_stats"] = (wid, dict(self.stats))
            return batch

        if not cfg.pack:
            batch = []
            for s in self._samples():
                batch.append(first_fit([s], cfg.max_seq_length)[0])
                if len(batch) == mb:
                    out = emit(batch)
                    batch = []
                    if out is not None:
                        yield out
            return
        window, rows = [], []
        for s in self._samples():
            window.append(s)
            if len(window) >= cfg.pack_window:
                rows += first_fit(window, cfg.max_seq_length)
                window = []
                while len(rows) >= mb:
                    out = emit(rows[:mb])
                    rows = rows[mb:]
                    if out is not None:
                        yield out
        rows += first_fit(window, cfg.max_seq_length) if window else []
        while len(rows) >= mb:  # a last partial micro-batch is dropped (equal shapes per step)
            out = emit(rows[:mb])
            rows = rows[mb:]
            if out is not None:
                yield out


def _collate_identity(batch):
    return batch[0]


class VLMDataModule(LightningDataModule):
    """Lightning DataModule over :class:`ShardStream` with resumable position.

    ``state_dict()`` = {epoch, batches consumed in that epoch}; after ``load_state_dict`` the next iteration
    replays the same (seeded) stream and fast-forwards past the consumed batches.
    """

    def __init__(self, cfg: DataConfig, tokenizer, chat_format: str, image_spec: ImageSpec, image_token_id: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, pad_to_multiple_of: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.dataset = ShardStream(cfg, tokenizer, chat_format, image_spec, image_token_id, rank, world_size, seed,
                                   pad_to_multiple_of)
        self.epoch = 0
        self.in_epoch = 0
        self._worker_stats: dict[int, dict[str, int]] = {}

    @property
    def stats(self) -> dict[str, int]:
        """Samples built, skipped (by reason) and capped/downscaled/truncated, summed over loader workers."""
        total: Counter = Counter()
        for st in self._worker_stats.values():
            total.update(st)
        return dict(sorted(total.items()))

    def train_dataloader(self) -> DataLoader:
        self.dataset.epoch, self.dataset.skip_batches = self.epoch, self.in_epoch
        return DataLoader(self.dataset, batch_size=1, collate_fn=_collate_identity, num_workers=self.cfg.num_workers)

    def batches(self) -> Iterator[dict[str, Any]]:
        """Endless iterator over epochs, counting consumption for resume."""
        while True:
            n = 0
            for batch in self.train_dataloader():
                n += 1
                self.in_epoch += 1
                wid, st = batch.pop("worker_stats")
                self._worker_stats[(self.epoch, wid)] = st
                yield batch
            if n == 0 and self.in_epoch == 0:
                raise RuntimeError("the data stream produced no batch: every sample was skipped or the shards are "
                                   f"empty (stats: {self.stats or dict(self.dataset.stats)})")
            self.epoch += 1
            self.in_epoch = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batches_in_epoch": self.in_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.in_epoch = int(state["epoch"]), int(state["batches_in_epoch"])
