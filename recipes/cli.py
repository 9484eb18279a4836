"""`ecomvlm train` and `ecomvlm export`. Handlers import torch/megatron only when they run."""

from __future__ import annotations

import argparse
import os
import sys

TRAIN_EXAMPLES = """examples:
  ecomvlm train tiny_siglip_qwen3_stage3_sft tokenizer.path=TOKENIZER_DIR data.shards=SHARDS_DIR trainer.max_steps=20
  ecomvlm train siglip2_qwen3_8b_stage3_sft --nproc 8 tokenizer.path=TOKENIZER_DIR data.shards=SHARDS_DIR \\
      init.from_checkpoint=PREVIOUS_STAGE_RUN
  ecomvlm train siglip2_qwen3_4b_stage1_alignment --dry-run model/decoder=tiny_qwen3 parallel=single \\
      precision=fp32 tokenizer.path=TOKENIZER_DIR data.shards=SHARDS_DIR
"""


def _train(args: argparse.Namespace) -> int:
    from ecomvlm.recipes.config import compose, to_config

    cfg = to_config(compose(args.recipe, args.overrides))  # fails here, before any process starts
    if args.dry_run:
        return _print_plan(cfg, args.nproc)
    if args.nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
               "-m", "ecomvlm.recipes.vlm_train", "--config-name", args.recipe, *args.overrides]
        os.execv(sys.executable, cmd)
    from ecomvlm.recipes.checkpointing import PREEMPTED_EXIT_CODE
    from ecomvlm.recipes.vlm_train import run

    summary = run(cfg)
    losses = summary["losses"]
    if losses:
        print(f"trained steps {summary['start_step'] + 1}-{summary['start_step'] + len(losses)}: loss "
              f"{losses[0]:.3f} -> {losses[-1]:.3f}; checkpoint {summary['final_checkpoint']}")
    return PREEMPTED_EXIT_CODE if summary["preempted"] else 0


def _print_plan(cfg, nproc: int) -> int:
    """--dry-run: the resolved config and the layout checks, nothing trained."""
    from omegaconf import OmegaConf

    from ecomvlm.recipes.models.parallel import validate_parallel

    d = cfg.model.decoder
    dp = validate_parallel(cfg.parallel, nproc, num_attention_heads=d.num_attention_heads,
                           num_query_groups=d.num_query_groups, num_layers=d.num_layers)
    if cfg.data.global_batch_size % (cfg.data.micro_batch_size * dp):
        raise ValueError(f"data.global_batch_size={cfg.data.global_batch_size} is not a multiple of micro_batch_size "
                         f"x data-parallel size = {cfg.data.micro_batch_size} x {dp}")
    print(OmegaConf.to_yaml(OmegaConf.structured(cfg)), end="")
    print(f"# dry run: {nproc} process(es), data-parallel size {dp}, "
          f"{cfg.data.global_batch_size // (cfg.data.micro_batch_size * dp)} micro-batches per step; nothing trained")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ecomvlm.recipes.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, dtype=args.dtype)
    print(f"exported {args.checkpoint} -> {out} (LlavaForConditionalGeneration, {args.dtype})")
    return 0


def register(sub) -> None:
    tr = sub.add_parser("train", help="run a training recipe: ecomvlm train RECIPE key=value ...",
                        epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("recipe", help="a recipe config in conf/ (`ecomvlm recipes` lists them)")
    tr.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.shards=DIR trainer.max_steps=100")
    tr.add_argument("--nproc", type=int, default=1, help="processes on this node (torchrun); 1 = run in this process")
    tr.add_argument("--dry-run", action="store_true", help="compose and check the config, print it, train nothing")
    tr.set_defaults(func=_train)

    ex = sub.add_parser("export", help="export an ecomvlm megatron checkpoint (any TP/PP) to an HF LLaVA directory",
                        epilog="example:\n  ecomvlm export --checkpoint runs/demo/checkpoints/step_00000200 "
                               "--out exports/demo_hf --dtype bf16",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("--checkpoint", required=True, help="checkpoint directory (meta.json, model/, tokenizer/) or a "
                                                        "run directory (its latest checkpoint)")
    ex.add_argument("--out", required=True, help="output HF directory (transformers / vLLM loadable)")
    ex.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ex.set_defaults(func=_export)
