"""Sequence packing: several samples per row, each keeping its own positions and attention span.

Each sample is shifted *before* packing (inputs = ids[:-1], labels = ids[1:]), so no position predicts the first
token of the next sample. A packed row carries ``cu_seqlens`` (sample boundaries in the row, counted after the
image placeholders were expanded to encoder tokens, so they are exact) and per-sample ``position_ids``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ecomvlm.data_modules.preprocess import Sample


@dataclass
class PackedRow:
    samples: list[Sample]

    @property
    def length(self) -> int:  # tokens after the shift
        return sum(len(s) - 1 for s in self.samples)


def first_fit(samples: list[Sample], max_len: int) -> list[PackedRow]:
    """Greedy first-fit in arrival order (deterministic): each sample goes to the first row with room."""
    rows: list[PackedRow] = []
    for s in samples:
        need = len(s) - 1
        if need > max_len:
            raise ValueError(f"sample of {need} tokens does not fit max_len {max_len}; filter before packing")
        for r in rows:
            if r.length + need <= max_len:
                r.samples.append(s)
                break
        else:
            rows.append(PackedRow([s]))
    return rows


def first_fit_decreasing(samples: list[Sample], max_len: int) -> list[PackedRow]:
    """First-fit over the samples longest first (ties in arrival order): fuller rows than arrival order when sizes
    vary (multi-image items are long), still deterministic. Rows come out in the order they were opened."""
    order = sorted(range(len(samples)), key=lambda i: (-len(samples[i]), i))
    return first_fit([samples[i] for i in order], max_len)


def collate_rows(rows: list[PackedRow], pad_id: int, multiple_of: int = 1) -> dict:
    """Packed rows -> a batch dict for the model (all rows padded to one length)."""
    L = -(-max(r.length for r in rows) // multiple_of) * multiple_of
    B = len(rows)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    labels = torch.full((B, L), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((B, L), dtype=torch.float)
    position_ids = torch.zeros((B, L), dtype=torch.long)
    cu_seqlens: list[list[int]] = []
    pixels, grids, sizes, tiles = [], [], [], []
    n_real = 0
    for b, row in enumerate(rows):
        off = 0
        bounds = [0]
        for s in row.samples:
            n = len(s) - 1
            ids = torch.tensor(s.input_ids)
            input_ids[b, off:off + n] = ids[:-1]
            labels[b, off:off + n] = ids[1:]
            loss_mask[b, off:off + n] = torch.tensor(s.loss_mask[1:], dtype=torch.float)
            position_ids[b, off:off + n] = torch.arange(n)
            off += n
            bounds.append(off)
            if s.pixel_values is not None:
                pixels.append(s.pixel_values)
                if s.image_grid_thw is not None:
                    grids.append(s.image_grid_thw)
                if s.image_tiles is not None:
                    sizes.append(s.image_sizes)
                    tiles.append(s.image_tiles)
        if off < L:  # the padding tail is its own (masked-out) segment
            position_ids[b, off:] = torch.arange(L - off)
            bounds.append(L)
        cu_seqlens.append(bounds)
        n_real += off
    return {
        "input_ids": input_ids, "labels": labels, "loss_mask": loss_mask, "position_ids": position_ids,
        "pixel_values": torch.cat(pixels) if pixels else None,
        "image_grid_thw": torch.cat(grids) if grids else None,
        "image_sizes": torch.cat(sizes) if sizes else None,  # anyres: per image (height, width) and views
        "image_tiles": torch.cat(tiles) if tiles else None,
        "cu_seqlens": cu_seqlens,
        "n_samples": sum(len(r.samples) for r in rows),
        "n_tokens": n_real,
    }


def block_causal_mask(cu_seqlens: list[list[int]], length: int) -> torch.Tensor:
    """[B, 1, S, S] boolean mask (True = masked) for megatron's local attention: causal within each sample."""
    B = len(cu_seqlens)
    seg = torch.zeros(B, length, dtype=torch.long)
    for b, bounds in enumerate(cu_seqlens):
        for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            seg[b, s:e] = i
    same = seg[:, :, None] == seg[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return ~(same & causal).unsqueeze(1)


def packed_seq_params(cu_seqlens: list[int], device: Any = None):
    """megatron PackedSeqParams (THD) for one packed row (micro batch 1); used with Transformer Engine, whose
    causal attention takes sample boundaries from cu_seqlens (it ignores a dense mask)."""
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = torch.tensor(cu_seqlens, dtype=torch.int32, device=device)
    max_len = int((cu[1:] - cu[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max_len,
                           max_seqlen_kv=max_len)
