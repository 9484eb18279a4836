"""Benchmark (not a test): our energon loader vs LLaVA-NeXT's LazySupervisedDataset, same items, same run.

    .venv/bin/python benchmarks/loader_throughput.py [--items 240] [--workers 2] [--max-len 4096] [--passes cold,warm]

The data are written here: listing-like items of 1-4 JPEG photos of 1200-1600 px (quality 90), with an instruction
and an answer each, as a LLaVA JSON list + image files.

- **baseline**: LLaVA-NeXT's ``LazySupervisedDataset`` logic transcribed (llava/train/train.py): the JSON list in
  memory, per item ``Image.open(...).convert("RGB")`` from disk, ``expand2square`` with the processor's mean colour
  (``image_aspect_ratio: pad``), transformers' SiglipImageProcessor (384 px), the chat template tokenized with the
  image placeholder expanded, and its ``DataCollatorForSupervisedDataset`` (pad to the longest, stack images), in a
  torch DataLoader with the same workers and batch size, shuffled.
- **ecomvlm**: ``ecomvlm data shards --resize-for`` a SigLIP 384 model (photos stored once at 384 on the short side),
  read through the energon loader with first-fit packing at ``--max-len``.

Both produce 729 image tokens per image. "cold" evicts every file of the run from the page cache first
(posix_fadvise DONTNEED, no root needed); "warm" reads them again. Rates are measured from the first batch on (the
time to it, worker start-up and energon filling its packing window, is printed apart: it is paid once per run, not
per sample). Printed: samples/s and tokens/s of both, the ratio,
and the packing fill (real tokens / row capacity, rows x max_len). Shard writing time is reported separately (it is
paid once per dataset, not per epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIGLIP_MEAN = (0.5, 0.5, 0.5)


def write_items(root: Path, n: int, seed: int = 0) -> Path:
    """n listing-like items: 1-4 JPEG photos of 1200-1600 px each, a question and an answer."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        k = int(rng.integers(1, 5))
        files = []
        for j in range(k):
            w, h = int(rng.integers(1200, 1601)), int(rng.integers(1200, 1601))
            base = (rng.random((h // 40, w // 40, 3)) * 255).astype(np.uint8)
            im = Image.fromarray(base).resize((w, h), Image.BICUBIC)
            name = f"images/item{i:05d}_{j}.jpg"
            im.save(root / name, format="JPEG", quality=90)
            files.append(name)
        n_words = int(rng.integers(15, 250))  # answers from a short title to a full aspect list
        words = " ".join(rng.choice(["red", "leather", "vintage", "size", "brand", "new", "boxed", "cotton"], n_words))
        records.append({"id": f"item{i}", "image": files if k > 1 else files[0], "conversations": [
            {"from": "human", "value": "<image>\n" * k + "List the aspects of this item."},
            {"from": "gpt", "value": words}]})
    path = root / "items.json"
    path.write_text(json.dumps(records))
    return path


def evict(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class LazySupervisedDataset(torch.utils.data.Dataset):
    """LLaVA-NeXT's lazy dataset (image_aspect_ratio=pad), transcribed for this tokenizer and chat format."""

    def __init__(self, data_path: Path, image_folder: Path, tokenizer, fmt, image_token_id: int, tokens_per_image: int):
        from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

        self.list_data_dict = json.load(open(data_path))
        self.image_folder, self.tok, self.fmt = image_folder, tokenizer, fmt
        self.processor = SiglipImageProcessorPil(size={"height": 384, "width": 384}, image_mean=list(SIGLIP_MEAN),
                                                 image_std=[0.5, 0.5, 0.5])
        self.image_token_id, self.tokens_per_image = image_token_id, tokens_per_image

    def __len__(self):
        return len(self.list_data_dict)

    def process_image(self, image_file):
        image = Image.open(os.path.join(self.image_folder, image_file)).convert("RGB")
        image_size = image.size

        def expand2square(pil_img, background_color):
            width, height = pil_img.size
            if width == height:
                return pil_img
            side = max(width, height)
            result = Image.new(pil_img.mode, (side, side), background_color)
            result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
            return result

        image = expand2square(image, tuple(int(x * 255) for x in SIGLIP_MEAN))
        return self.processor(image, return_tensors="pt")["pixel_values"][0], image_size

    def __getitem__(self, i):
        from ecomvlm.data_modules.chat_templates import IMAGE_TOKEN, llava_to_messages, render

        rec = self.list_data_dict[i]
        files = rec["image"] if isinstance(rec["image"], list) else [rec["image"]]
        image = [self.process_image(f) for f in files]
        ids, labels = [], []
        for text, trainable in render(llava_to_messages(rec["conversations"]), self.fmt):
            for j, piece in enumerate(text.split(IMAGE_TOKEN)):
                if j:
                    ids += [self.image_token_id] * self.tokens_per_image
                    labels += [-100] * self.tokens_per_image
                if piece:
                    seg = self.tok(piece, add_special_tokens=False)["input_ids"]
                    ids += seg
                    labels += seg if trainable else [-100] * len(seg)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "image": image}


def collate(instances, pad_id):
    """LLaVA-NeXT's DataCollatorForSupervisedDataset."""
    input_ids = torch.nn.utils.rnn.pad_sequence([x["input_ids"] for x in instances], batch_first=True,
                                                padding_value=pad_id)
    labels = torch.nn.utils.rnn.pad_sequence([x["labels"] for x in instances], batch_first=True, padding_value=-100)
    images = [im[0] for x in instances for im in x["image"]]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": input_ids.ne(pad_id),
            "images": torch.stack(images), "n_samples": len(instances),
            "n_tokens": sum(len(x["input_ids"]) for x in instances)}


def run_baseline(ds, workers: int, batch: int, pad_id: int) -> dict[str, float]:
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         collate_fn=lambda b: collate(b, pad_id),
                                         generator=torch.Generator().manual_seed(0))
    n = real = cells = 0
    t0 = time.perf_counter()
    it = iter(loader)
    first = next(it)
    t_first = time.perf_counter()
    for b in it:  # steady state: from the first batch on (worker start-up is reported apart)
        n += b["n_samples"]
        real += b["n_tokens"]
        cells += b["input_ids"].numel()
    dt = time.perf_counter() - t_first
    fill = (real + first["n_tokens"]) / (cells + first["input_ids"].numel())
    return {"samples": n, "s": dt, "first_s": t_first - t0, "samples_s": n / dt, "tokens_s": real / dt, "fill": fill}


def run_ours(shards: Path, items: int, workers: int, max_len: int, tok, spec, img_id: int) -> dict[str, float]:
    from ecomvlm.data_modules.config import DataConfig
    from ecomvlm.data_modules.loader import VLMDataModule

    cfg = DataConfig(shards=str(shards), micro_batch_size=1, max_seq_length=max_len, pack=True,
                     shuffle_buffer=64, num_workers=workers)
    dm = VLMDataModule(cfg, tok, "chatml", spec, img_id)
    n = real = rows = 0
    t0 = time.perf_counter()
    it = dm.batches()
    first = next(it)
    t_first = time.perf_counter()
    while n + first["n_samples"] < items:  # one epoch's worth of samples (the loader repeats)
        b = next(it)
        n += b["n_samples"]
        real += b["n_tokens"]
        rows += b["input_ids"].shape[0]
    dt = time.perf_counter() - t_first
    fill = (real + first["n_tokens"]) / ((rows + first["input_ids"].shape[0]) * max_len)
    return {"samples": n, "s": dt, "first_s": t_first - t0, "samples_s": n / dt, "tokens_s": real / dt, "fill": fill}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=600)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="baseline micro-batch (ours packs rows of --max-len)")
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--passes", default="cold,warm")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

    from ecomvlm.data_modules.chat_templates import get_chat_format
    from ecomvlm.data_modules.preprocess import ImageSpec
    from ecomvlm.data_modules.shards import ResizeRule, ShardConfig, make_shards
    from ecomvlm.data_modules.tiny_tokenizer import build_tiny_tokenizer

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ecomvlm-loader-bench-"))
    t = time.perf_counter()
    data = write_items(work / "data", args.items)
    t_items = time.perf_counter() - t
    records = json.loads(data.read_text())
    texts = [t["value"] for r in records for t in r["conversations"]]
    tok = build_tiny_tokenizer("chatml", corpus=texts, vocab_size=600)
    img_id = tok.convert_tokens_to_ids("<image>")
    spec = ImageSpec(mode="fixed", image_size=384, patch_size=14, image_mean=SIGLIP_MEAN, image_std=(0.5,) * 3)
    t = time.perf_counter()
    make_shards(ShardConfig([data], work / "shards", image_root=work / "data", samples_per_shard=100,
                            workers=args.workers, resize=ResizeRule(short_side=384, encoder="SigLIP 384"),
                            rebuild=True))
    t_shards = time.perf_counter() - t
    ds = LazySupervisedDataset(data, work / "data", tok, get_chat_format("chatml"), img_id, (384 // 14) ** 2)
    images = sorted((work / "data" / "images").glob("*.jpg"))
    n_images = len(images)
    src_mb = sum(p.stat().st_size for p in images) / 1e6
    shard_files = sorted((work / "shards").glob("shard-*.tar"))
    shard_mb = sum(p.stat().st_size for p in shard_files) / 1e6

    rows = []
    for cache in args.passes.split(","):
        if cache == "cold":
            evict([*images, data])
        base = run_baseline(ds, args.workers, args.batch, tok.pad_token_id)
        if cache == "cold":
            evict(shard_files)
        ours = run_ours(work / "shards", args.items, args.workers, args.max_len, tok, spec, img_id)
        rows.append((cache, base, ours))

    print(f"\n{args.items} items, {n_images} JPEG photos of 1200-1600 px ({src_mb:.0f} MB; shards at 384: "
          f"{shard_mb:.0f} MB), {args.workers} loader workers, SigLIP 384 (729 tokens/image), "
          f"{os.cpu_count()} CPUs")
    print(f"one-off: writing the items {t_items:.1f} s, writing the shards (resize once) {t_shards:.1f} s\n")
    print("| page cache | pipeline | first batch s | samples | seconds | samples/s | tokens/s | fill |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for cache, base, ours in rows:
        print(f"| {cache} | LLaVA-NeXT LazySupervisedDataset (pad, batch {args.batch}) | {base['first_s']:.1f} | "
              f"{base['samples']} | {base['s']:.1f} | {base['samples_s']:.1f} | {base['tokens_s']:,.0f} | "
              f"{base['fill']:.3f} |")
        print(f"| {cache} | ecomvlm energon, shards at 384, packed {args.max_len} | {ours['first_s']:.1f} | "
              f"{ours['samples']} | {ours['s']:.1f} | {ours['samples_s']:.1f} | {ours['tokens_s']:,.0f} | "
              f"{ours['fill']:.3f} |")
    print()
    for cache, base, ours in rows:
        print(f"{cache}: ecomvlm / LLaVA-NeXT samples/s = {ours['samples_s'] / base['samples_s']:.2f}x, tokens/s = "
              f"{ours['tokens_s'] / base['tokens_s']:.2f}x; packing fill {ours['fill']:.3f} (baseline padded "
              f"batches: {base['fill']:.3f} of their cells are real tokens)")
    print(f"(fill = real tokens / capacity: rows x max_len {args.max_len} for packed rows; for the baseline, real "
          f"tokens / padded batch cells)")


if __name__ == "__main__":
    main()
