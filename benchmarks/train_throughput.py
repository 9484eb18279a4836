"""Training throughput of a composed VLM (prepared for a GPU session; runs on CPU with --model tiny_siglip_qwen3).

    python benchmarks/train_throughput.py --model siglip2_lilium_1b --steps 8 --seq 4096 --mbs 1 --precision bf16
    torchrun --nproc-per-node 2 benchmarks/train_throughput.py --model siglip2_qwen3_4b --parallel tp2

Random weights, random token/image batches shaped like training (one 384px image per sample, its 729 tokens in
the sequence), the training engine's own pieces (megatron forward_backward, gradient finalisation, clipping, AdamW).
Prints tokens/s and model TFLOP/s per GPU (6 x params x tokens + attention 12 x layers x hidden x seq x tokens;
the encoder counted per image). The first 2 steps are warm-up and not timed.
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
    ap.add_argument("--engine", default="lean", choices=["lean", "megatron", "both"],
                    help="lean: fp32 params + autocast, torch AdamW; megatron: megatron DDP + optimizer (bf16 params, "
                         "fp32 master); both: one after the other in this run, for a side-by-side ratio")
    ap.add_argument("--distributed-optimizer", action="store_true", help="megatron engine: ZeRO-1")
    args = ap.parse_args()

    import torch
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from ecomvlm.config import compose
    from ecomvlm.recipes.models.decoder import te_available
    from ecomvlm.recipes.models.parallel import init_distributed
    from ecomvlm.recipes.models.registry import (
        decoder_param_count, encoder_param_count, parallel_from_cfg, vlm_config_from_cfg,
    )
    from ecomvlm.recipes.models.vlm import build_vlm
    from ecomvlm.recipes.training import OptimConfig, clip_, finalize_grads, param_groups

    cfg = compose("vlm", [f"model={args.model}", f"parallel={args.parallel}"])
    parallel = parallel_from_cfg(cfg.parallel)
    info = init_distributed(parallel, seed=0)
    vlm = vlm_config_from_cfg(cfg.model, tp=parallel.tensor_model_parallel_size, image_token_id=7)
    dev = info["device"]
    enc = vlm.encoder
    n_img_tok = enc.tokens_per_image
    vocab = vlm.decoder.hf_vocab_size or vlm.decoder.vocab_size
    bf16 = args.precision == "bf16"

    def batch():
        ids = torch.randint(10, vocab, (args.mbs, args.seq), device=dev)
        ids[:, 1:1 + n_img_tok] = 7
        return {"ids": ids, "labels": torch.roll(ids, -1, 1),
                "pix": torch.randn(args.mbs, 3, enc.image_size, enc.image_size, device=dev)}

    data = [batch() for _ in range(args.micro_batches)]

    def measure(engine: str) -> float:
        """Seconds per step of `engine` (2 warm-up steps, then args.steps timed)."""
        from types import SimpleNamespace

        from ecomvlm.recipes import megatron_engine

        torch.manual_seed(0)
        megatron = engine == "megatron"
        overrides = {"calculate_per_token_loss": True, **(megatron_engine.model_overrides(bf16) if megatron else {})}
        model = build_vlm(vlm, parallel, params_dtype=torch.bfloat16 if (megatron and bf16) else torch.float32,
                          config_overrides=overrides).to(dev)
        autocast = torch.bfloat16 if (bf16 and not megatron) else None
        pix_dtype = torch.bfloat16 if bf16 else torch.float32
        opt_cfg = OptimConfig(lr=1e-5)
        if megatron:
            ddp = megatron_engine.wrap(model, distributed_optimizer=args.distributed_optimizer, bf16=bf16)
            mopt, sched = megatron_engine.build_optimizer(ddp, opt_cfg, bf16=bf16, max_steps=10_000,
                                                          distributed_optimizer=args.distributed_optimizer)
            holder = SimpleNamespace(ddp=ddp, megatron_optimizer=mopt, megatron_scheduler=sched)
        else:
            opt = torch.optim.AdamW(param_groups(model, opt_cfg), lr=1e-5, fused=dev.type == "cuda")

        def fwd(it, m):
            b = next(it)
            inner = m
            while hasattr(inner, "module"):
                inner = inner.module
            out = m(b["ids"], pixel_values=b["pix"].to(pix_dtype) if inner.pre_process else None, labels=b["labels"])
            return out, lambda t: (t.float().sum(), torch.tensor(t.numel(), device=dev, dtype=torch.int), {})

        n_tok = torch.tensor(float(args.seq * args.mbs * len(data)), device=dev)

        def step():
            if megatron:
                mb = [{"input_ids": b["ids"], **b} for b in data]
                megatron_engine.train_step(holder, mb, fwd, n_tok)
                return
            opt.zero_grad(set_to_none=True)
            ctx = torch.autocast(dev.type, dtype=autocast) if autocast else torch.autocast(dev.type, enabled=False)
            with ctx:
                get_forward_backward_func()(forward_step_func=fwd, data_iterator=iter(data), model=[model],
                                            num_microbatches=len(data), seq_length=args.seq,
                                            micro_batch_size=args.mbs, forward_only=False)
            finalize_grads(model, n_tok * info["dp_size"])
            clip_(model, 1.0)
            opt.step()

        for _ in range(2):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps

    engines = ["lean", "megatron"] if args.engine == "both" else [args.engine]
    times = {e: measure(e) for e in engines}
    tokens = args.seq * args.mbs * len(data) * info["dp_size"]
    d = vlm.decoder
    flops = 6 * decoder_param_count(d) * tokens + 12 * d.num_layers * d.hidden_size * args.seq * tokens
    if enc.family == "siglip":
        flops += 6 * encoder_param_count(enc) * n_img_tok * args.mbs * len(data) * info["dp_size"]
    world = info["world_size"]
    if info["rank"] == 0:
        dev_name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
        print("| model | layout | precision | engine | device | tokens/s/GPU | model TFLOP/s/GPU | step s |")
        print("|---|---|---|---|---|---|---|---|")
        for e, dt in times.items():
            name = e + (" + ZeRO-1" if e == "megatron" and args.distributed_optimizer else "")
            print(f"| {args.model} | {args.parallel} x{world} | {args.precision} | {name} | {dev_name} | "
                  f"{tokens / dt / world:,.0f} | {flops / dt / world / 1e12:.2f} | {dt:.3f} |")
        if len(times) == 2:
            print(f"megatron / lean step-time ratio: {times['megatron'] / times['lean']:.2f}")
        print("Transformer Engine:", "used (TE layer specs)" if te_available() else
              "not installed: megatron local layer specs (FP8 not measured)")


if __name__ == "__main__":
    main()
