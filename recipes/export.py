"""`ecomvlm export`: an ecomvlm megatron checkpoint (any TP/PP) -> an HF directory for transformers / vLLM (LLaVA,
LLaVA-OneVision, or remote code: recipes/models/hf_export.py).

Runs as one process (CPU is fine): the checkpoint is resharded to TP=PP=1 on load, then converted.

    ecomvlm export --checkpoint runs/demo/checkpoints/step_00000200 --out exports/demo_hf --dtype bf16
"""

from __future__ import annotations

from pathlib import Path


def export_checkpoint(checkpoint: str | Path, out: str | Path, dtype: str = "bf16") -> Path:
    from transformers import AutoTokenizer

    from ecomvlm.recipes.checkpointing import load_checkpoint, read_meta, resolve_checkpoint, vlm_config_from_meta
    from ecomvlm.recipes.models.hf_export import export_hf
    from ecomvlm.recipes.models.parallel import ParallelConfig, init_distributed
    from ecomvlm.recipes.models.precision import dtype_of
    from ecomvlm.recipes.models.sharding import gather_full_state
    from ecomvlm.recipes.models.vlm import build_vlm

    torch_dtype = dtype_of(dtype, "--dtype")
    checkpoint = resolve_checkpoint(checkpoint)
    meta = read_meta(checkpoint)
    tok_dir = checkpoint / "tokenizer"
    if not tok_dir.is_dir():
        raise FileNotFoundError(f"{tok_dir} not found: the checkpoint has no tokenizer to export with")
    cfg = vlm_config_from_meta(meta)
    init_distributed(ParallelConfig())
    model = build_vlm(cfg, ParallelConfig(), world_size=1).eval()
    load_checkpoint(model, checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    return export_hf(gather_full_state(model), cfg, tokenizer, out, dtype=torch_dtype)
