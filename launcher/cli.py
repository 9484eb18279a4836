"""`ecomvlm launch`: a recipe -> a checked plan (launcher/plan.py) -> a SLURM job by sbatch (launcher/slurm.py) or
NeMo-Run (launcher/nemorun.py)."""

from __future__ import annotations

import argparse
import sys

EXECUTORS = ("sbatch", "nemo-run", "nemo-run-local")

EXAMPLES = """examples:
  ecomvlm launch siglip2_qwen3_8b_stage3_sft --cluster h100_8x --nodes 4 -- tokenizer.path=TOKENIZER_DIR \\
      data.shards=SHARDS_DIR init.from_checkpoint=PREVIOUS_STAGE_RUN
  # a job array, one task per combination (Hydra's sweep syntax: a=1,2 range(1,3) choice(x,y) glob(p*) [list])
  ecomvlm launch tiny_siglip_qwen3_stage3_sft --cluster local -m -- tokenizer.path=TOKENIZER_DIR \\
      data.shards=SHARDS_DIR 'optim.lr=1e-4,3e-4' 'optim.betas=[0.9,0.95],[0.9,0.999]'
  # the data pipelines as SLURM arrays (docs/LAUNCHING_DATA.md): 32 tasks per model-calling stage, chained
  ecomvlm launch data curate --cluster h100_8x --array 32 -- run LISTINGS_PATH --work WORK_DIR \\
      --captioner-url http://vlm:8000/v1 --captioner-model M1 --verifier-url http://llm:8000/v1 --verifier-model M2
  ecomvlm launch data item-intel --cluster h100_8x --array 32 -- all --items ITEMS_PATH --work WORK_DIR \\
      --teacher-url http://teacher:8000/v1 --teacher-model M3 --grounder-url http://vlm:8000/v1 \\
      --grounder-model M4 --box-coords resized_pixels --crop-size-for gemma3_4b
  # --executor nemo-run submits the same checked job through NeMo-Run's SlurmExecutor (its own venv:
  # make nemo-run-env); --executor nemo-run-local runs it here with NeMo-Run's LocalExecutor
"""


def _note(msg: str) -> None:
    print(f"ecomvlm launch: {msg}", file=sys.stderr)


def _launch(args: argparse.Namespace) -> int:
    from ecomvlm.launcher.cluster import load_cluster
    from ecomvlm.launcher.plan import make_plan

    if args.recipe == "data":
        return _launch_data(args)
    if args.array is not None:
        raise ValueError(f"--array {args.array}: for data stages (ecomvlm launch data ...); a training job array is "
                         f"--sweep KEY=VALUES or -m")
    if args.nodes is not None and args.nodes < 1:
        raise ValueError(f"--nodes {args.nodes}: a job needs at least 1 node")
    cluster = load_cluster(args.cluster, nodes=args.nodes)
    plan = make_plan(args.recipe, args.overrides, cluster, job_name=args.job_name, sweeps=args.sweep,
                     multirun=args.multirun, after=args.after, resume=args.resume,
                     check_paths=not args.skip_path_check)
    for t in plan.tasks:
        for n in t.notes:
            _note(f"{'task ' + str(t.index) + ': ' if plan.is_array else ''}{n}")
    tasks = f"{len(plan.tasks)} task{'s' if plan.is_array else ''}"
    if args.executor != "sbatch":
        return _nemo_run(plan, args, tasks)
    from ecomvlm.launcher.slurm import render, submit

    script = render(plan)
    if args.dry_run:
        print(script, end="")
        return 0
    job = submit(plan, script)
    logs = job.log_paths if len(job.log_paths) <= 3 else [job.log_paths[0], "...", job.log_paths[-1]]
    print(f"submitted job {job.job_id} ({tasks}); log{'s' if plan.is_array else ''} {' '.join(logs)}; "
          f"script {job.script_path}", flush=True)
    return _wait(job.job_id, plan) if args.wait else 0


def _wait(job_id: str, plan) -> int:
    from ecomvlm.launcher.slurm import describe, succeeded, wait

    final = wait(job_id, [str(t.index) for t in plan.tasks] if plan.is_array else [""],
                 report=lambda line: print(line, flush=True))
    ok = succeeded(final)
    if plan.is_array:
        bad = [t for t, r in final.items() if not succeeded({t: r})]
        print(f"job {job_id}: {len(final) - len(bad)} of {len(final)} tasks completed"
              + (f"; not: {', '.join(describe(job_id, t, final[t]) for t in bad)}" if bad else ""))
    return 0 if ok else 1


def _nemo_run(plan, args: argparse.Namespace, tasks: str) -> int:
    from ecomvlm.launcher import nemorun

    kind = "local" if args.executor == "nemo-run-local" else "slurm"
    result = nemorun.submit(plan, kind, dry_run=args.dry_run)
    if args.dry_run:
        print("\n".join(result["sbatch"]) if kind == "slurm" and result.get("sbatch") else
              "".join(f"# NeMo-Run {kind} task script\n{s}" for s in result["scripts"]), end="")
        return 0
    if kind == "local":
        job = result["jobs"][0]
        print(f"NeMo-Run local job {job['name']}: {job['state']}; log {job['log']}; experiment {result['exp_dir']}")
        return 0 if job["state"] == "SUCCEEDED" else 1
    job = result["jobs"][0]
    jid = job["job_id"] if not plan.is_array else "<task job id>"
    print(f"submitted job {job['job_id']} ({tasks}) through NeMo-Run, experiment {result['exp_id']}; logs "
          f"{job['log_dir']}/log-{plan.name}_{jid}_<restart>.out (one per start)", flush=True)
    return _wait(job["job_id"], plan) if args.wait else 0


def _launch_data(args: argparse.Namespace) -> int:
    from ecomvlm.launcher import data
    from ecomvlm.launcher.cluster import load_cluster
    from ecomvlm.launcher.slurm import describe, succeeded

    for flag, given in (("--nodes", args.nodes is not None), ("--sweep", bool(args.sweep)),
                        ("-m/--multirun", args.multirun), ("--resume", args.resume),
                        (f"--executor {args.executor}", args.executor != "sbatch")):
        if given:
            raise ValueError(f"{flag}: not for data stages (one CPU task per array task, submitted by sbatch; a "
                             f"re-submitted stage goes on by itself); drop it")
    if not args.overrides:
        raise ValueError("launch data: name the pipeline, e.g. ecomvlm launch data curate --cluster NAME --array 8 "
                         "-- run raw/listings.jsonl --work WORK ...")
    pipeline, stage_args = args.overrides[0], args.overrides[1:]
    cluster = load_cluster(args.cluster)
    plan = data.make_data_plan(pipeline, stage_args, cluster, array=1 if args.array is None else args.array,
                               after=args.after, job_name=args.job_name, check_paths=not args.skip_path_check)
    for n in plan.notes:
        _note(n)
    if args.dry_run:
        print(data.dry_run_text(plan), end="")
        return 0
    submitted = data.submit(plan)
    for s in submitted:
        logs = s.log_paths if len(s.log_paths) <= 3 else [s.log_paths[0], "...", s.log_paths[-1]]
        tasks = f"{s.job.tasks} array tasks" if s.job.is_array else "1 task"
        print(f"submitted job {s.job_id} {s.job.name} ({tasks}: {s.job.what()}); log{'s' if s.job.is_array else ''} "
              f"{' '.join(logs)}; script {s.script_path}", flush=True)
    if not args.wait:
        return 0
    ok = True
    for s, final in data.wait_all(submitted, report=lambda line: print(line, flush=True)):
        bad = [t for t, r in final.items() if not succeeded({t: r})]
        ok = ok and not bad
        print(f"job {s.job_id} {s.job.name}: {len(final) - len(bad)} of {len(final)} task"
              f"{'s' if len(final) > 1 else ''} completed"
              + (f"; not: {', '.join(describe(s.job_id, t, final[t]) for t in bad)}" if bad else ""), flush=True)
    return 0 if ok else 1


def _whole_number(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a whole number") from None


def register(sub) -> None:
    la = sub.add_parser("launch", help="submit a recipe to SLURM: ecomvlm launch RECIPE --cluster NAME -- key=value",
                        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    la.add_argument("recipe")
    la.add_argument("overrides", nargs="*", help="Hydra overrides passed to the recipe (after --)")
    la.add_argument("--cluster", default="local", help="conf/cluster/<name>.yaml or a path (default: local)")
    la.add_argument("--nodes", type=_whole_number, default=None, help="override the cluster's node count")
    la.add_argument("--executor", choices=EXECUTORS, default="sbatch",
                    help="sbatch (default); nemo-run: NeMo-Run's SlurmExecutor; nemo-run-local: its LocalExecutor")
    la.add_argument("--sweep", action="append", default=[], metavar="KEY=VALUES",
                    help="a job array over values (repeat for a grid; Hydra sweep syntax), e.g. --sweep "
                         "model=siglip2_qwen3_4b,siglip2_qwen3_8b")
    la.add_argument("-m", "--multirun", action="store_true",
                    help="sweeps among the overrides (a=1,2 range() choice() glob()) become a job array")
    la.add_argument("--after", default=None, metavar="JOBID", help="start after this job succeeded (afterok); "
                                                                   "cancelled by SLURM if it fails")
    la.add_argument("--job-name", default=None, help="names the run directory <runs_root>/NAME (default: the recipe)")
    la.add_argument("--resume", action="store_true",
                    help="go on with the run already in <runs_root>/NAME (e.g. with a higher trainer.max_steps)")
    la.add_argument("--skip-path-check", action="store_true",
                    help="do not check that the paths in the config exist on this host")
    la.add_argument("--dry-run", action="store_true", help="check everything, print the sbatch script, submit nothing")
    la.add_argument("--wait", action="store_true", help="wait for the job (every array task); exit 1 if one failed")
    la.add_argument("--array", type=_whole_number, default=None, metavar="N",
                    help="data stages: N array tasks per partitioned stage (ecomvlm launch data curate|item-intel "
                         "... -- STAGE ...; docs/LAUNCHING_DATA.md)")
    la.set_defaults(func=_launch)
