"""HF-generate latency of an export: a random-weights model of a config (real width, `--layers` decoder layers) ->
`ecomvlm export`'s HF directory -> transformers generate on items of `--images` product photos.

    python benchmarks/generate_latency.py --model siglip2_qwen3_4b --layers 8 --images 5 --new-tokens 64

Prints sec/example warm (model loaded, one example run first and not timed) beside the export's load time, and the
image tokens per example. Random weights generate arbitrary tokens: generation runs to --new-tokens (no early EOS).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny_siglip_qwen3")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers (real width, random weights)")
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--examples", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()

    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ecomvlm.data_modules.tiny_tokenizer import build_tiny_tokenizer
    from ecomvlm.recipes.config import model_config
    from ecomvlm.recipes.models.hf_export import export_hf
    from ecomvlm.recipes.models.parallel import ParallelConfig, init_distributed
    from ecomvlm.recipes.models.registry import resolve
    from ecomvlm.recipes.models.sharding import gather_full_state
    from ecomvlm.recipes.models.vlm import build_vlm

    init_distributed(ParallelConfig())
    cfg = model_config([f"model={args.model}"])
    tok = build_tiny_tokenizer(cfg.decoder.chat_format, vocab_size=512)
    dec = cfg.decoder
    extra = {"sliding_layers": dec.layer_pattern[: args.layers]} if hasattr(dec, "layer_pattern") else {}
    cfg = resolve(dataclasses.replace(cfg, decoder=dataclasses.replace(dec, num_layers=args.layers, **extra)),
                  image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    out = Path(tempfile.mkdtemp(prefix="ecomvlm-gen-")) / "hf"
    export_hf(gather_full_state(build_vlm(cfg, ParallelConfig())), cfg, tok, out, dtype=torch.bfloat16)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(
        out, trust_remote_code=True, dtype=torch.bfloat16 if dev == "cuda" else torch.float32).to(dev).eval()
    proc = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    load_s = time.perf_counter() - t0
    text = tok.apply_chat_template([{"role": "user", "content": "<image>\n" * args.images + "Describe the item."}],
                                   tokenize=False, add_generation_prompt=True)
    g = torch.Generator().manual_seed(0)
    photos = [[Image.fromarray((torch.rand(150, 200, 3, generator=g) * 255).byte().numpy()).resize((1600, 1200))
               for _ in range(args.images)] for _ in range(args.examples + 1)]

    def one(images) -> tuple[float, int]:
        inputs = proc(images=[images], text=[text], return_tensors="pt").to(dev)
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
        if dev == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t, int((inputs["input_ids"] == cfg.image_token_id).sum())

    one(photos[0])  # warm-up
    runs = [one(p) for p in photos[1:]]
    sec = sum(t for t, _ in runs) / len(runs)
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    print("| model | export | images | image tokens | new tokens | sec/example (warm) | load s | device |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.model} ({args.layers} layers) | {type(model).__name__} | {args.images} | {runs[0][1]} | "
          f"{args.new_tokens} | {sec:.3f} | {load_s:.1f} | {name} |")


if __name__ == "__main__":
    main()
