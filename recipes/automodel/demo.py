"""The demo's full-VLM row: a tiny Gemma3-style complete VLM (random weights, the demo's tokenizer) fine-tuned on the
synthetic item-intelligence shards through the automodel backend - the same recipe (gemma3_4b_item_intel_ft), the
same engine and run directory as the paper-scale runs, at a size 2 CPU cores train in about a minute."""

from __future__ import annotations

from pathlib import Path

# sized for 64 px images on 2 cores: 8x8 patches pooled to 16 tokens per image, a 4-layer 128-wide decoder
DEMO_MODEL = {"image_size": 64, "patch_size": 8, "tokens_per_image": 16, "hidden_size": 128, "num_layers": 4,
              "vision_hidden_size": 64, "vision_layers": 2}
DEMO_TRAIN = ["precision=fp32", "data.micro_batch_size=4", "data.global_batch_size=8", "data.num_workers=0",
              "data.max_seq_length=1536", "optim.lr=3e-3", "optim.min_lr=3e-4", "optim.vision_lr_mult=1.0",
              "model.attn_implementation=sdpa"]


def finetune_tiny_gemma3(shards_dir: Path, tokenizer_dir: Path, workdir: Path, steps: int,
                         callbacks: list | None = None) -> Path:
    """Build the tiny Gemma3 under ``workdir/tiny_gemma3`` and fine-tune it ``steps`` steps on ``shards_dir`` (run
    directory ``workdir/run``); returns the consolidated HF folder (transformers / ``ecomvlm eval --backend hf``)."""
    from ecomvlm.recipes.automodel.recipe import run
    from ecomvlm.recipes.automodel.tiny import tiny_gemma3
    from ecomvlm.recipes.config import load

    workdir = Path(workdir)
    model_dir = workdir / "tiny_gemma3"
    if not (model_dir / "config.json").is_file():
        tiny_gemma3(model_dir, tokenizer_dir=tokenizer_dir, **DEMO_MODEL)
    cfg = load("gemma3_4b_item_intel_ft", [
        f"model.hf_path={model_dir}", f"data.shards={shards_dir}", f"run.dir={workdir / 'run'}",
        f"trainer.max_steps={steps}", f"trainer.save_every={steps}", f"trainer.log_every={max(1, steps // 10)}",
        f"optim.warmup_steps={max(1, steps // 10)}", *DEMO_TRAIN])
    summary = run(cfg, callbacks)
    if not summary["hf_dir"]:
        raise RuntimeError(f"the tiny Gemma3 run in {workdir / 'run'} ended without a result (preempted: "
                           f"{summary['preempted']})")
    return Path(summary["hf_dir"]).resolve()
