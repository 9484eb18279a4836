"""Training throughput of a composed VLM with the training engine (megatron DDP + optimizer), side by side.

    python benchmarks/train_throughput.py --model siglip2_lilium_1b --steps 8 --seq 4096 --precision bf16
    python benchmarks/train_throughput.py --model tiny_siglip_qwen3 --precision fp32 --compare zero1
    torchrun --nproc-per-node 2 benchmarks/train_throughput.py --model siglip2_qwen3_4b --parallel tp2

Random weights, random token/image batches shaped like training (one image per sample, its tokens in the
sequence), the engine's own train_step. Prints tokens/s and model TFLOP/s per GPU (6 x params x tokens + attention
12 x layers x hidden x seq x tokens; the encoder counted per image) for each variant of ``--compare`` measured in one
run. The first 2 steps are warm-up and not timed.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny_siglip_qwen3")
    ap.add_argument("--parallel", default="single")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--mbs", type=int, default=1)
    ap.add_argument("--micro-batches", type=int, default=2)
    ap.add_argument("--compare", default="none", choices=["none", "zero1"],
                    help="zero1: the plain optimizer and ZeRO-1 one after the other in this run")
    args = ap.parse_args()

    import torch
    from omegaconf import OmegaConf

    from ecomvlm.recipes.config import OptimConfig, compose
    from ecomvlm.recipes.engine import build_optimizer, train_step, wrap
    from ecomvlm.recipes.models.decoders.gpt import te_available
    from ecomvlm.recipes.models.parallel import init_distributed
    from ecomvlm.recipes.models.registry import resolve
    from ecomvlm.recipes.models.vlm import build_vlm

    cfg = OmegaConf.to_object(compose("train", [f"model={args.model}", f"parallel={args.parallel}"]).model)
    parallel = OmegaConf.to_object(compose("train", [f"parallel={args.parallel}"]).parallel)
    info = init_distributed(parallel, seed=0)
    vlm = resolve(cfg, tp=parallel.tensor_model_parallel_size, image_token_id=7)
    dev, enc = info["device"], vlm.encoder
    n_img_tok = enc.image_spec().fixed_tokens or 256
    vocab = vlm.decoder.hf_vocab_size or vlm.decoder.vocab_size
    bf16 = args.precision == "bf16"

    def batch():
        ids = torch.randint(10, vocab, (args.mbs, args.seq), device=dev)
        ids[:, 1:1 + n_img_tok] = 7
        return {"input_ids": ids, "labels": torch.roll(ids, -1, 1),
                "pix": torch.randn(args.mbs, 3, enc.image_size, enc.image_size, device=dev)}

    data = [batch() for _ in range(args.micro_batches)]

    def measure(zero1: bool) -> float:
        """Seconds per step (2 warm-up steps, then args.steps timed)."""
        torch.manual_seed(0)
        model = build_vlm(vlm, parallel, params_dtype=torch.bfloat16 if bf16 else torch.float32,
                          config_overrides={"calculate_per_token_loss": True}).to(dev)
        ddp = wrap(model, distributed_optimizer=zero1, bf16=bf16)
        opt, sched = build_optimizer(ddp, OptimConfig(lr=1e-5), bf16=bf16, distributed_optimizer=zero1,
                                     max_steps=10_000)

        def fwd(it, m):
            b = next(it)
            pix = b["pix"].to(torch.bfloat16 if bf16 else torch.float32) if model.pre_process else None
            out = m(b["input_ids"], pixel_values=pix, labels=b["labels"])
            return out, lambda t: (t.float().sum(), torch.tensor(t.numel(), device=dev, dtype=torch.int), {})

        n_tok = torch.tensor(float(args.seq * args.mbs * len(data)), device=dev)
        for _ in range(2):
            train_step(ddp, opt, sched, fwd, data, n_tok)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            train_step(ddp, opt, sched, fwd, data, n_tok)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps

    variants = {"plain": False, "ZeRO-1": True} if args.compare == "zero1" else {"plain": False}
    times = {name: measure(z) for name, z in variants.items()}
    tokens = args.seq * args.mbs * len(data) * info["dp_size"]
    d = vlm.decoder
    flops = 6 * d.param_count() * tokens + 12 * d.num_layers * d.hidden_size * args.seq * tokens
    flops += 6 * enc.param_count() * n_img_tok * args.mbs * len(data) * info["dp_size"]
    world = info["world_size"]
    if info["rank"] == 0:
        dev_name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
        print("| model | layout | precision | optimizer | device | tokens/s/GPU | model TFLOP/s/GPU | step s |")
        print("|---|---|---|---|---|---|---|---|")
        for name, dt in times.items():
            print(f"| {args.model} | {args.parallel} x{world} | {args.precision} | {name} | {dev_name} | "
                  f"{tokens / dt / world:,.0f} | {flops / dt / world / 1e12:.2f} | {dt:.3f} |")
        if len(times) == 2:
            print(f"ZeRO-1 / plain step-time ratio: {times['ZeRO-1'] / times['plain']:.2f}")
        print("Transformer Engine:", "used (TE layer specs)" if te_available() else
              "not installed: megatron local layer specs (FP8 not measured)")


if __name__ == "__main__":
    main()
