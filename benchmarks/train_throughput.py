"""Training throughput of a composed VLM with the training engine (megatron DDP + optimizer), variants side by side.

    python benchmarks/train_throughput.py --model siglip2_qwen3_4b --layers 36 --seq 4096 --precision bf16 \
        --compare recompute
    python benchmarks/train_throughput.py --model tiny_siglip_qwen3 --precision fp32 --steps 2 --compare zero1
    torchrun --nproc-per-node 2 benchmarks/train_throughput.py --model siglip2_qwen3_4b --parallel tp2

Random weights; each step is ``--micro-batches`` packed rows of ``--seq`` tokens, every row holding
``--samples-per-row`` samples (block-causal attention, as data.pack=true makes them) with ``--images-per-row``
fixed-view images (their tokens in the sequence). Prints tokens/s, model TFLOP/s and MFU per GPU for each variant
of ``--compare`` measured in this one run (FLOPs: 6 x params x tokens for the decoder + 12 x layers x hidden x
attended tokens for attention, and the vision tower's 6 x params x image tokens; the first 2 steps are warm-up).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 per GPU (vendor figures)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny_siglip_qwen3")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: the config's)")
    ap.add_argument("--parallel", default="single")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--micro-batches", type=int, default=2)
    ap.add_argument("--samples-per-row", type=int, default=4)
    ap.add_argument("--images-per-row", type=int, default=2)
    ap.add_argument("--compare", default="none", choices=["none", "zero1", "recompute"],
                    help="zero1: plain vs ZeRO-1 optimizer; recompute: without vs with full activation recomputation")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak per GPU for MFU (default: by name)")
    args = ap.parse_args()

    import torch
    from omegaconf import OmegaConf

    from ecomvlm.data_modules.packing import block_causal_mask
    from ecomvlm.recipes.config import OptimConfig, compose
    from ecomvlm.recipes.engine import build_optimizer, train_step, wrap
    from ecomvlm.recipes.models.decoders.gpt import te_available
    from ecomvlm.recipes.models.parallel import init_distributed
    from ecomvlm.recipes.models.registry import resolve
    from ecomvlm.recipes.models.vlm import build_vlm

    composed = compose("train", [f"model={args.model}", f"parallel={args.parallel}", "model.encoder.image_mode=fixed"])
    cfg, parallel = OmegaConf.to_object(composed.model), OmegaConf.to_object(composed.parallel)
    info = init_distributed(parallel, seed=0)
    vlm = resolve(cfg, tp=parallel.tensor_model_parallel_size, image_token_id=7)
    if args.layers:
        dec = vlm.decoder
        extra = {"sliding_layers": dec.layer_pattern[: args.layers]} if hasattr(dec, "layer_pattern") else {}
        vlm = dataclasses.replace(vlm, decoder=dataclasses.replace(dec, num_layers=args.layers, **extra))
    dev, enc, d = info["device"], vlm.encoder, vlm.decoder
    n_img_tok = enc.image_spec().fixed_tokens or 256
    vocab = d.hf_vocab_size or d.vocab_size
    bf16 = args.precision == "bf16"
    if args.images_per_row * n_img_tok >= args.seq:
        raise SystemExit(f"--images-per-row {args.images_per_row} x {n_img_tok} tokens do not fit --seq {args.seq}")

    bounds = [round(i * args.seq / args.samples_per_row) for i in range(args.samples_per_row + 1)]

    def row():
        ids = torch.randint(10, vocab, (1, args.seq), device=dev)
        for i in range(args.images_per_row):
            ids[:, 1 + i * (n_img_tok + 8): 1 + i * (n_img_tok + 8) + n_img_tok] = 7
        pos = torch.cat([torch.arange(b - a) for a, b in zip(bounds[:-1], bounds[1:])]).unsqueeze(0).to(dev)
        return {"input_ids": ids, "labels": torch.roll(ids, -1, 1), "position_ids": pos,
                "mask": block_causal_mask([bounds], args.seq).to(dev),
                "pix": torch.randn(args.images_per_row, 3, enc.image_size, enc.image_size, device=dev)}

    data = [row() for _ in range(args.micro_batches)]

    def measure(zero1: bool, recompute: bool) -> float:
        """Seconds per step (2 warm-up steps, then args.steps timed)."""
        torch.manual_seed(0)
        overrides = {"calculate_per_token_loss": True}
        if recompute:
            overrides.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
        model = build_vlm(vlm, parallel, params_dtype=torch.bfloat16 if bf16 else torch.float32,
                          config_overrides=overrides).to(dev)
        ddp = wrap(model, distributed_optimizer=zero1, bf16=bf16)
        opt, sched = build_optimizer(ddp, OptimConfig(lr=1e-5), bf16=bf16, distributed_optimizer=zero1,
                                     max_steps=10_000)

        first_stage = model.pre_process

        def fwd(it, m):
            b = next(it)
            pix = b["pix"].to(torch.bfloat16 if bf16 else torch.float32) if first_stage else None
            out = m(b["input_ids"], b["position_ids"], pixel_values=pix, labels=b["labels"], attention_mask=b["mask"])
            return out, lambda t: (t.float().sum(), torch.tensor(t.numel(), device=dev, dtype=torch.int), {})

        n_tok = torch.tensor(float(args.seq * len(data)), device=dev)
        for _ in range(2):
            train_step(ddp, opt, sched, fwd, data, n_tok)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            train_step(ddp, opt, sched, fwd, data, n_tok)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / args.steps
        del model, ddp, opt
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        return dt

    variants = {"zero1": {"plain": (False, False), "ZeRO-1": (True, False)},
                "recompute": {"no recompute": (False, False), "full recompute": (False, True)},
                "none": {"plain": (False, False)}}[args.compare]
    times = {name: measure(*v) for name, v in variants.items()}
    tokens = args.seq * len(data) * info["dp_size"]
    attended = sum((b - a) ** 2 / 2 for a, b in zip(bounds[:-1], bounds[1:]))  # causal within each packed sample
    flops = 6 * d.param_count() * tokens + 12 * d.num_layers * d.hidden_size * attended * len(data) * info["dp_size"]
    flops += 6 * enc.param_count() * n_img_tok * args.images_per_row * len(data) * info["dp_size"]
    world = info["world_size"]
    if info["rank"] == 0:
        dev_name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
        peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in dev_name), None)
        print(f"model {args.model} ({d.num_layers} decoder layers, {vlm.encoder.num_layers}-layer {enc.family} "
              f"tower), rows of {args.seq} tokens x {len(data)} micro-batches, {args.samples_per_row} samples and "
              f"{args.images_per_row} images per row, {args.precision}, {args.parallel} x{world}, {dev_name}")
        print("| variant | tokens/s/GPU | model TFLOP/s/GPU | MFU | step s |")
        print("|---|---|---|---|---|")
        for name, dt in times.items():
            tflops = flops / dt / world / 1e12
            mfu = f"{100 * tflops / peak:.1f}%" if peak and bf16 else "-"
            print(f"| {name} | {tokens / dt / world:,.0f} | {tflops:.2f} | {mfu} | {dt:.3f} |")
        if len(times) == 2:
            (a, ta), (b, tb) = times.items()
            print(f"{b} / {a} step-time ratio: {tb / ta:.2f}")
        print("Transformer Engine:", "used (TE layer specs)" if te_available() else
              "not installed: megatron local layer specs (FP8 not measured)")


if __name__ == "__main__":
    main()
