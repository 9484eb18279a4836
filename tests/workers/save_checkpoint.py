"""torchrun worker: build the tiny SigLIP x Llama VLM (conf model=tiny_siglip_llama) with a tiny tokenizer,
save an ecomvlm checkpoint at TP = world size, and (rank 0) write the full state for comparison.

argv: OUT_DIR. Writes OUT_DIR/ckpt/ and OUT_DIR/reference.safetensors.
"""
import os
import sys
from pathlib import Path

import torch


def main(out_dir: str) -> None:
    from safetensors.torch import save_file

    from ecomvlm.data_modules.tiny_tokenizer import build_tiny_tokenizer
    from ecomvlm.recipes.checkpointing import finalize_checkpoint, save_checkpoint
    from ecomvlm.recipes.config import model_config
    from ecomvlm.recipes.models.parallel import ParallelConfig, destroy_distributed, init_distributed
    from ecomvlm.recipes.models.registry import resolve
    from ecomvlm.recipes.models.sharding import gather_full_state
    from ecomvlm.recipes.models.vlm import build_vlm

    tp = int(os.environ.get("WORLD_SIZE", "1"))
    parallel = ParallelConfig(tensor_model_parallel_size=tp)
    info = init_distributed(parallel, seed=7)
    tok = build_tiny_tokenizer("llama3", vocab_size=300)
    cfg = resolve(model_config(["model=tiny_siglip_llama"]), tp=tp, image_token_id=tok.convert_tokens_to_ids("<image>"))
    cfg.decoder.vocab_size = -(-len(tok) // 64) * 64
    cfg.decoder.hf_vocab_size = len(tok)
    torch.manual_seed(7)
    model = build_vlm(cfg, parallel)
    tmp = save_checkpoint(model, Path(out_dir) / "ckpt", step=3, tokenizer=tok, parallel=parallel)
    finalize_checkpoint(tmp)
    full = gather_full_state(model)
    if info["rank"] == 0:
        save_file({k: v.contiguous() for k, v in full.items()}, str(Path(out_dir) / "reference.safetensors"))
    destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
