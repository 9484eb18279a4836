"""Every sample accounted: per data-parallel rank and epoch, trained + skipped (by reason) = input.

A rank owns a contiguous range of the dataset's sample indices (energon's split over ranks x workers). The loader
runs forever (energon ``repeat=True``: training counts steps, so ranks never stop at different batches), and its
workers may be in different epochs at once, so an epoch is counted per sample: the k-th time a sample is trained or
skipped, that counts for epoch k. Epoch k of a rank is complete when every sample of its range has been seen k+1
times; until then its ``pending`` = input - trained - skipped are samples still in shuffle/packing buffers or not read
yet. A partial micro-batch at an epoch's end is never dropped: it fills with the next epoch's samples.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch


class SampleLedger:
    """How often each sample of this rank's range was trained or skipped, and the totals per epoch."""

    def __init__(self, start: int, end: int) -> None:
        if end <= start:
            raise ValueError(f"a rank's sample range [{start}, {end}) is empty")
        self.start, self.end = start, end
        self.seen = np.zeros(end - start, dtype=np.int64)
        self.epochs: dict[int, Counter] = {}

    @property
    def size(self) -> int:
        return self.end - self.start

    def _epoch(self, index: int) -> Counter:
        i = index - self.start
        if not 0 <= i < self.size:
            raise ValueError(f"sample {index} is outside this rank's range [{self.start}, {self.end}): the shards or "
                             f"the loader layout changed under the run")
        epoch = int(self.seen[i])
        self.seen[i] += 1
        return self.epochs.setdefault(epoch, Counter())

    def record_batch(self, trained: list[tuple[int, int, list[str]]], skipped: list[tuple[int, str]]) -> None:
        """trained: (sample index, tokens, notes) of each sample of a batch the training loop took; skipped:
        (sample index, reason) of the samples the loader dropped since its previous batch."""
        for index, tokens, notes in trained:
            c = self._epoch(index)
            c["trained"] += 1
            c["tokens"] += tokens
            for n in notes:
                c[f"note:{n}"] += 1
        for index, reason in skipped:
            self._epoch(index)[f"skipped:{reason}"] += 1

    def totals(self) -> Counter:
        out: Counter = Counter()
        for c in self.epochs.values():
            out.update(c)
        return out

    def report(self) -> list[dict[str, Any]]:
        """One row per epoch begun: input, trained, skipped by reason, pending (0 once complete), notes."""
        done = int(self.seen.min()) if self.size else 0
        rows = []
        for e in sorted(self.epochs):
            c = self.epochs[e]
            skipped = {k.split(":", 1)[1]: v for k, v in sorted(c.items()) if k.startswith("skipped:")}
            notes = {k.split(":", 1)[1]: v for k, v in sorted(c.items()) if k.startswith("note:")}
            trained = c.get("trained", 0)
            rows.append({"epoch": e, "input": self.size, "trained": trained, "skipped": skipped,
                         "pending": self.size - trained - sum(skipped.values()), "complete": e < done,
                         "notes": notes, "tokens": c.get("tokens", 0)})
        return rows

    # ---- checkpoints (tensors only: loaded with torch.load(weights_only=True)) -------------------------------
    def state_dict(self) -> dict[str, Any]:
        base = int(self.seen.min())
        delta = self.seen - base
        if delta.max(initial=0) <= 1:  # the usual case: every sample in epoch e or e+1
            packed = torch.from_numpy(np.packbits(delta.astype(np.uint8)))
            kind = "bits"
        else:
            packed = torch.from_numpy(delta.astype(np.int32))
            kind = "int32"
        return {"start": self.start, "end": self.end, "base": base, "kind": kind, "delta": packed,
                "epochs": {str(e): dict(c) for e, c in self.epochs.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["start"], state["end"]) != (self.start, self.end):
            raise ValueError(f"the checkpoint's data position covers samples [{state['start']}, {state['end']}) of "
                             f"this rank, the loader now [{self.start}, {self.end}): resume with the same shards, "
                             f"data-parallel size and data.num_workers as the save")
        d = state["delta"].numpy()
        delta = np.unpackbits(d)[: self.size] if state["kind"] == "bits" else d
        self.seen = delta.astype(np.int64) + int(state["base"])
        self.epochs = {int(e): Counter(c) for e, c in state["epochs"].items()}
