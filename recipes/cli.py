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
  # Hydra multirun: one run after another, each in RUN_DIR/<job number> (full sweep syntax: a=1,2 range(1,3)
  # choice(x,y) glob(tiny_*) [list,values])
  ecomvlm train -m tiny_siglip_qwen3_stage3_sft tokenizer.path=TOKENIZER_DIR data.shards=SHARDS_DIR \\
      'optim.lr=1e-4,3e-4' 'optim.betas=[0.9,0.95],[0.9,0.999]'
"""

MULTIRUN_FLAGS = ("-m", "--multirun")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _hydra_value(s: str) -> str:
    """A string as a Hydra override value: as is when the grammar takes it unquoted, else single-quoted."""
    import re

    if re.fullmatch(r"[\w./:+@%-]+", s):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _config_loader():
    """Hydra's loader over conf/ (what glob() sweeps over config groups need to list the options)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path

    from ecomvlm.recipes.config import CONF_MODULE, register

    register()
    return ConfigLoaderImpl(config_search_path=create_config_search_path(f"pkg://{CONF_MODULE}"))


def expand_multirun(overrides: list[str], *, multirun: bool = True) -> tuple[list[str], list[list[str]]]:
    """Hydra overrides -> (the ones every job shares, as given; one list of swept values per job), with the grammar
    and order of Hydra's basic sweeper (``a=1,2``, ``range(1,3)``, ``choice(x,y)``, ``glob(tiny_*)``; ``[0.9,0.95]``
    is one list value). ``multirun=False`` refuses sweeps, naming the override."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create(config_loader=_config_loader())
    shared: list[str] = []
    axes: list[list[str]] = []
    for raw in overrides:
        try:
            (o,) = parser.parse_overrides([raw])
        except Exception as e:  # the grammar error names the position; keep one line of it
            raise ValueError(f"override {raw!r} is not Hydra override syntax: {_one_line(e).split(' See https')[0]}"
                             ) from None
        if not o.is_sweep_override():
            shared.append(raw)
            continue
        if not multirun:
            raise ValueError(f"override {raw!r} gives several values (a sweep): add -m to run one job per value, or "
                             f"quote the value to keep it one string, e.g. {o.get_key_element()}='...'")
        if not o.is_discrete_sweep():
            raise ValueError(f"override {raw!r}: interval() sweeps need an optimizing sweeper; Hydra's basic sweeper "
                             f"takes lists (a=1,2), range(1,3), choice(x,y) and glob(pattern)")
        key = o.get_key_element()
        try:
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        except Exception as e:
            raise ValueError(f"override {raw!r}: {_one_line(e)}") from None
        if not axes[-1]:
            raise ValueError(f"override {raw!r} sweeps over no values (an empty glob?)")
    return shared, [list(c) for c in itertools.product(*axes)]


def _train(args: argparse.Namespace) -> int:
    from ecomvlm.recipes.config import compose, to_config

    overrides = [o for o in args.overrides if o not in MULTIRUN_FLAGS]
    if args.multirun or len(overrides) < len(args.overrides):
        return _multirun(args, overrides)
    expand_multirun(overrides, multirun=False)  # a sweep without -m: say so instead of Hydra's "ambiguous value"
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


def _multirun(args: argparse.Namespace, overrides: list[str]) -> int:
    """``-m``: Hydra's basic launcher runs the jobs one after another (under torchrun with ``--nproc``), job i in
    <run dir>/<i>; every job's config is composed and checked first, so a bad value in job 3 stops nothing midway."""
    from omegaconf import OmegaConf

    from ecomvlm.recipes.config import compose, to_config

    shared, jobs = expand_multirun(overrides)
    base = OmegaConf.select(compose(args.recipe, shared), "run.dir")  # the user's run.dir=, or the recipe's
    shared = [o for o in shared if o.partition("=")[0].lstrip("+") != "run.dir"]
    cfgs = []
    for i, job in enumerate(jobs):
        try:
            run_dir = _hydra_value(f"{base}/{i}")
            cfgs.append(to_config(compose(args.recipe, [*shared, *job, f"run.dir={run_dir}"])))
        except Exception as e:
            raise ValueError(f"multirun job {i} ({' '.join(job) or 'no sweep'}): {_one_line(e)}") from None
    if args.dry_run:
        for i, (job, cfg) in enumerate(zip(jobs, cfgs)):
            print(f"# multirun job {i}/{len(jobs)}: {' '.join(job)} -> run.dir {base}/{i}")
            _print_plan(cfg, args.nproc)
        return 0
    sweep_args = [o for o in overrides if o not in shared and o.partition("=")[0].lstrip("+") != "run.dir"]
    hydra_args = ["--multirun", *shared, *sweep_args, f"hydra.sweep.dir={_hydra_value(str(base))}",
                  "hydra.sweep.subdir=${hydra.job.num}", "hydra.job.chdir=false", "run.dir=${hydra:runtime.output_dir}"]
    print(f"multirun: {len(jobs)} job(s) one after another in {base}/<job>", flush=True)
    app = ["-m", "ecomvlm.recipes.vlm_train", "--config-name", args.recipe, *hydra_args]
    if args.nproc > 1:
        app = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc), *app]
    os.execv(sys.executable, [sys.executable, *app])


def _print_plan(cfg, nproc: int) -> int:
    """--dry-run: the resolved config and the layout checks, nothing trained."""
    from omegaconf import OmegaConf

    from ecomvlm.recipes.models.parallel import validate_parallel

    if cfg.backend == "automodel":  # FSDP2 x TP x CP, memory estimate, the AutoModel-only refusals
        from ecomvlm.recipes.vlm_train import plan

        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)), end="")
        print(plan(cfg, nproc))
        return 0

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
    tr.add_argument("-m", "--multirun", action="store_true",
                    help="Hydra multirun: one run per combination of swept values (a=1,2 range() choice() glob()), "
                         "one after another")
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
