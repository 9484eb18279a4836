"""`ecomvlm launch`: a recipe -> an sbatch job (launcher/slurm.py does the work)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def _launch(args: argparse.Namespace) -> int:
    import time

    from ecomvlm.launcher.slurm import job_state, load_cluster, parse_sweep, render, submit, validate

    cluster = load_cluster(args.cluster, nodes=args.nodes)
    sweep = parse_sweep(args.sweep)
    for combo in sweep:  # every array task's config must compose and fit the allocation
        validate(args.recipe, [*args.overrides, *combo], cluster.world_size)
    script = render(args.recipe, args.overrides, cluster, job_name=args.job_name, sweep=sweep,
                    dependency=f"afterok:{args.after}" if args.after else None, workdir=os.getcwd())
    if args.dry_run:
        print(script, end="")
        return 0
    job = submit(script, Path(cluster.log_dir) / "scripts")
    print(f"submitted job {job.job_id} ({len(sweep)} task{'s' if len(sweep) > 1 else ''}); log {job.log_pattern}; "
          f"script {job.script_path}")
    if not args.wait:
        return 0
    while True:
        st = job_state(job.job_id)
        if st["state"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"):
            print(f"job {job.job_id}: {st['state']} (exit code {st['exit_code']})")
            return 0 if st["state"] == "COMPLETED" else 1
        time.sleep(2)


def register(sub) -> None:
    la = sub.add_parser("launch", help="submit a recipe to SLURM: ecomvlm launch RECIPE --cluster NAME -- key=value",
                        epilog="example:\n  ecomvlm launch siglip2_qwen3_8b_stage3_sft --cluster h100_8x --nodes 4 -- "
                               "tokenizer.path=TOKENIZER_DIR data.shards=SHARDS_DIR",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    la.add_argument("recipe")
    la.add_argument("overrides", nargs="*", help="Hydra overrides passed to the recipe")
    la.add_argument("--cluster", default="local", help="conf/cluster/<name>.yaml or a path (default: local)")
    la.add_argument("--nodes", type=int, default=None, help="override the cluster's node count")
    la.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                    help="job array over values (repeat for a grid), e.g. --sweep "
                         "model=siglip2_qwen3_4b,siglip2_qwen3_8b")
    la.add_argument("--after", default=None, metavar="JOBID", help="start after this job succeeded (afterok)")
    la.add_argument("--job-name", default=None)
    la.add_argument("--dry-run", action="store_true", help="print the sbatch script, submit nothing")
    la.add_argument("--wait", action="store_true", help="wait for the job; exit non-zero if it failed")
    la.set_defaults(func=_launch)
