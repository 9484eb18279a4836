"""Benchmark (not a test): our shard loader vs a LLaVA-NeXT-style lazy JSON + PIL dataset, same data, same run.

    .venv/bin/python benchmarks/loader_throughput.py [--items 400] [--max-len 512] [--batch 4]

Prints samples/s of both, their ratio, and packing efficiency (real tokens / tokens in the batch tensors) of
packed vs padded batches. Both pipelines do the same per-sample work (decode image, resize/normalise, chat
template, placeholder expansion, loss mask); the baseline reads the JSON list + one image file per sample
like LLaVA-NeXT's LazySupervisedDataset and pads every batch to its longest sample.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=400)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()

    from ecomvlm.data_modules.chat_templates import get_chat_format
    from ecomvlm.data_modules.config import DataConfig
    from ecomvlm.data_modules.loader import VLMDataModule
    from ecomvlm.data_modules.packing import collate_rows, first_fit
    from ecomvlm.data_modules.preprocess import ImageSpec, SampleTooLong, build_sample
    from ecomvlm.data_modules.shards import ShardConfig, make_shards
    from ecomvlm.data_modules.synth import SynthConfig, synthesize
    from ecomvlm.data_modules.tiny_tokenizer import build_tiny_tokenizer

    work = Path(tempfile.mkdtemp(prefix="ecomvlm-bench-"))
    synthesize(SynthConfig(out=work / "data", n=args.items, n_eval=0, image_size=192))
    sources = [work / "data" / "train" / n for n in ("stage3_instruct.json", "item_intel_train.json")]
    make_shards(ShardConfig(sources, work / "shards", image_root=work / "data", samples_per_shard=200, workers=2))
    texts = [t["value"] for f in sources for r in json.loads(f.read_text()) for t in r["conversations"]]
    tok = build_tiny_tokenizer("chatml", corpus=texts[:2000], vocab_size=800)
    img_id = tok.convert_tokens_to_ids("<image>")
    spec = ImageSpec(mode="fixed", image_size=64, patch_size=8, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)
    fmt = get_chat_format("chatml")
    scfg = DataConfig(max_seq_length=args.max_len)

    # --- baseline: LLaVA-NeXT-style lazy dataset over the JSON files, padded batches
    records = [r for f in sources for r in json.loads(f.read_text())]

    class LazyJsonDataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(records)

        def __getitem__(self, i):
            rec = records[i]
            imgs = rec.get("image") or []
            imgs = [imgs] if isinstance(imgs, str) else imgs
            blobs = [(work / "data" / p).read_bytes() for p in imgs]
            meta = {"conversations": rec["conversations"], "images": imgs}
            try:
                return build_sample(meta, blobs, tok, fmt, spec, scfg, img_id)
            except SampleTooLong:
                return None

    def pad_collate(batch):
        batch = [b for b in batch if b is not None]
        return collate_rows([first_fit([s], args.max_len)[0] for s in batch], tok.pad_token_id)

    def run_baseline():
        loader = torch.utils.data.DataLoader(LazyJsonDataset(), batch_size=args.batch, shuffle=True,
                                             collate_fn=pad_collate, num_workers=0,
                                             generator=torch.Generator().manual_seed(0))
        n = real = total = rows = 0
        t = time.perf_counter()
        for b in loader:
            n += b["n_samples"]
            real += b["n_tokens"]
            total += b["input_ids"].numel()
            rows += b["input_ids"].shape[0]
        return n / (time.perf_counter() - t), real / total, n, real / (rows * args.max_len)

    def run_ours(pack: bool):
        cfg = DataConfig(shards=str(work / "shards"), micro_batch_size=args.batch if not pack else 1,
                         max_seq_length=args.max_len, pack=pack, pack_window=64, shuffle_buffer=256, num_workers=0)
        dm = VLMDataModule(cfg, tok, "chatml", spec, img_id)
        n = real = total = rows = 0
        t = time.perf_counter()
        for b in dm.train_dataloader():
            n += b["n_samples"]
            real += b["n_tokens"]
            total += b["input_ids"].numel()
            rows += b["input_ids"].shape[0]
        return n / (time.perf_counter() - t), real / total, n, real / (rows * args.max_len)

    base = run_baseline()
    ours_pad = run_ours(False)
    ours_pack = run_ours(True)
    print(f"data: {len(records)} records ({args.items} items), max_len {args.max_len}, 64 image tokens per image")
    print("| pipeline | samples | samples/s | non-pad / batch tokens | non-pad / (rows x max_len) |")
    print("|---|---|---|---|---|")
    for name, (sps, eff, n, fill) in (("LLaVA-NeXT-style lazy JSON + PIL, padded", base),
                                      ("ecomvlm shards, padded", ours_pad), ("ecomvlm shards, packed", ours_pack)):
        print(f"| {name} | {n} | {sps:.1f} | {eff:.3f} | {fill:.3f} |")
    print(f"ratio samples/s shards(padded) / lazy-JSON: {ours_pad[0] / base[0]:.2f}x")
    print(f"ratio samples/s shards(packed) / lazy-JSON: {ours_pack[0] / base[0]:.2f}x")
    print(f"packing efficiency packed / padded (non-pad share of batch tensors): {ours_pack[1] / base[1]:.2f}x")
    print(f"tokens per row of max_len, packed / padded: {ours_pack[3] / base[3]:.2f}x")


if __name__ == "__main__":
    main()
