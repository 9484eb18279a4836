"""`ecomvlm data curate STAGE ...`: visual-verification curation (data_modules/curation/pipeline.py).

Every stage takes the same options (so one command line, with the stage name changed, runs any of them); a stage
skips its finished partitions, and under a SLURM array (SLURM_ARRAY_TASK_ID/COUNT set) runs only its share.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

EXAMPLES = """examples:
  # everything on one machine (the captioner and verifier served by `vllm serve`, any OpenAI-compatible API works)
  ecomvlm data curate run raw/listings.jsonl --work work/cur \\
      --captioner-url http://gpu1:8000/v1 --captioner-model OpenGVLab/InternVL2_5-26B \\
      --verifier-url http://gpu2:8000/v1 --verifier-model mistralai/Mistral-Small-3.1-24B-Instruct-2503
  # no server: offline vLLM engines inside the worker (one per process; on a GPU node, one worker per engine)
  ecomvlm data curate run raw/listings.jsonl --work work/cur --concurrency 256 \
      --captioner-engine vllm --captioner-model /models/InternVL2_5-26B \
      --verifier-engine vllm --verifier-model /models/Mistral-Small-3.1-24B-Instruct-2503 \
      --vllm-engine-arg tensor_parallel_size=2
  # one stage, other shares, 2 worker processes
  ecomvlm data curate generate --work work/cur --shares vqa=40,dae=35,pif=12.5,listing=12.5 --workers 2
  # a stage as a SLURM array of 32 tasks (each takes partitions i % 32 == task id), then the next one after it
  sbatch --array=0-31 --wrap 'ecomvlm data curate caption --work work/cur --captioner-url ... --captioner-model ...'
"""


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for it in items:
        for part in it.split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise SystemExit(f"{what}: expected NAME=VALUE, got {part!r}")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _number(s: str, what: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise SystemExit(f"{what}: {s!r} is not a number") from None


def config_from_args(args: argparse.Namespace):
    from ecomvlm.data_modules.curation import generate as gen
    from ecomvlm.data_modules.curation.endpoints import EndpointSpec
    from ecomvlm.data_modules.curation.images import ImageRules
    from ecomvlm.data_modules.curation.pipeline import CurateConfig
    from ecomvlm.eval.engine_client import parse_engine_args

    try:
        engine_kwargs = parse_engine_args(args.vllm_engine_arg)
    except ValueError as e:
        raise SystemExit(f"curate: {e}") from None

    def endpoint(which: str):
        url, model = getattr(args, f"{which}_url"), getattr(args, f"{which}_model")
        kind = getattr(args, f"{which}_engine")
        if kind == "vllm":
            if url:
                raise SystemExit(f"--{which}-engine vllm runs the model in the worker: drop --{which}-url (or use "
                                 f"--{which}-engine openai for a server)")
            if not model:
                raise SystemExit(f"--{which}-engine vllm needs --{which}-model (a model folder or Hub name)")
            try:
                return EndpointSpec(kind="vllm", model=model, concurrency=args.concurrency,
                                    python=args.vllm_python, engine=engine_kwargs,
                                    max_images=1 if which == "captioner" else 0)
            except ValueError as e:
                raise SystemExit(f"--{which}-engine vllm: {e}") from None
        if not url and not model:
            return None
        if not url or not model:
            raise SystemExit(f"--{which}-url and --{which}-model go together")
        return EndpointSpec(base_url=url, model=model, api_key_env=getattr(args, f"{which}_key_env"),
                            concurrency=args.concurrency, timeout_s=args.timeout, http_retries=args.retries)

    shares = dict(gen.FAMILY_SHARES)
    if args.shares:
        shares = {k: _number(v, "--shares") for k, v in _pairs([args.shares], "--shares").items()}
    mixes = {f: dict(m) for f, m in gen.SUBTASK_MIX.items()}
    for key, v in _pairs(args.mix, "--mix").items():
        fam, _, sub = key.partition(".")
        if fam not in mixes or sub not in mixes[fam]:
            raise SystemExit(f"--mix {key}: expected FAMILY.SUBTASK, one of "
                             + ", ".join(f"{f}.{s}" for f, m in gen.SUBTASK_MIX.items() for s in m))
        mixes[fam][sub] = _number(v, "--mix")
    prompts = {"caption": args.caption_prompt, "verify": args.verify_prompt}
    try:
        return CurateConfig(work=Path(args.work), inputs=[Path(p) for p in args.inputs],
                            image_root=Path(args.image_root) if args.image_root else None,
                            captioner=endpoint("captioner"), verifier=endpoint("verifier"), prompts=prompts,
                            shares=shares, mixes=mixes, seed=args.seed, partition_size=args.partition_size,
                            workers=args.workers, keep_non_english=args.keep_non_english,
                            image_rules=ImageRules(min_side=args.min_side),
                            max_image_side=args.max_image_side or None, field_map=_pairs(args.field, "--field"),
                            cache=not args.no_cache, shards=not args.no_shards,
                            samples_per_shard=args.samples_per_shard,
                            verify="trust_seller" if args.trust_seller_aspects else "model")
    except ValueError as e:
        raise SystemExit(f"ecomvlm data curate: {e}") from None


def _print_stage(console, name: str, rep: dict | None) -> None:
    if not rep:
        return
    fates = rep.get("fates", {})
    other = ", ".join(f"{k} {v}" for k, v in fates.items() if k != "written")
    n_in = rep.get("input_records", rep.get("rows"))
    ran = f" [{rep['partitions_run']} of {rep['partitions']} partitions run]" if "partitions_run" in rep else ""
    console.print(f"{name}: {n_in} in, {fates.get('written', 0)} written" + (f"; {other}" if other else "") + ran)


def _curate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from ecomvlm.data_modules.curation import pipeline as pl
    from ecomvlm.eval.engine_client import EngineStartError

    cfg = config_from_args(args)
    console = Console(stderr=True)
    stage = args.stage
    try:
        if stage == "report":
            path = cfg.work / "export" / "report.md"
            if not path.is_file():
                raise SystemExit(f"no report under {cfg.work / 'export'}: run `ecomvlm data curate export` first")
            print(path.read_text(), end="")
            return 0
        with Progress(console=console, transient=True) as progress:
            tasks: dict[str, int] = {}

            def tick(name: str, done: int, total: int) -> None:
                if name not in tasks:
                    tasks[name] = progress.add_task(f"{name} partitions", total=total)
                progress.update(tasks[name], completed=done, total=total)

            if stage == "run":
                reports = pl.run_all(cfg, tick, console=console)
            elif stage == "ingest":
                reports = {"ingest": pl.run_ingest(cfg)}
            elif stage == "export":
                reports = {"export": pl.run_export(cfg, console=console)}
            else:
                reports = {stage: pl.RUNNERS[stage](cfg, tick)}
    except pl.StageNotReady as e:
        console.print(f"[red]{e}[/red]")
        return 2
    except (FileNotFoundError, ValueError, EngineStartError) as e:
        raise SystemExit(f"ecomvlm data curate {stage}: {e}") from None
    for name, rep in reports.items():
        if name != "export":
            _print_stage(console, name, rep)
    if "export" in reports:
        rep = reports["export"]
        ins = rep["instructions"]
        fam = ", ".join(f"{f} {r['n']} ({r['share']:.1f}%)" for f, r in ins["families"].items())
        print(f"{ins['train']} instructions ({fam}), {ins['eval_ifeval']} IFEval-style eval prompts -> "
              f"{cfg.work / 'export'} (report.md, report.png, stage3_curated.json, eval/ifeval.jsonl"
              + (", shards/" if rep.get("shards") else "") + ")")
    return 0


def register(dsub) -> None:
    """Add the `curate` subcommand to `ecomvlm data`."""
    from ecomvlm.data_modules.curation.pipeline import STAGES

    cur = dsub.add_parser("curate", help="visual-verification curation: raw listings -> the four-family "
                                         "e-commerce instruction set", epilog=EXAMPLES,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    cur.add_argument("stage", choices=["run", *STAGES, "report"], help="a stage, `run` (all of them) or `report`")
    cur.add_argument("inputs", nargs="*", help="raw listing files or folders (JSONL, JSON, parquet): ingest / run")
    cur.add_argument("--work", required=True, help="the work folder (stages, cache, export)")
    cur.add_argument("--image-root", default=None, help="relative image paths are relative to this (default: the "
                                                        "first input's folder)")
    cur.add_argument("--field", action="append", default=[], metavar="NAME=COLUMN",
                     help="where a field is in the raw rows (id, title, category, aspects, images, main_image, split)")
    for which, what in (("captioner", "the VLM that captions the main image"),
                        ("verifier", "the LLM that verifies aspects against the caption")):
        cur.add_argument(f"--{which}-url", default=None, help=f"OpenAI-compatible base URL of {what}")
        cur.add_argument(f"--{which}-model", default=None, help=f"served model name of {what} (with --{which}-"
                                                                f"engine vllm: its folder or Hub name)")
        cur.add_argument(f"--{which}-engine", choices=["openai", "vllm"], default="openai",
                         help=f"openai: a server at --{which}-url; vllm: an offline vLLM engine in each worker")
        cur.add_argument(f"--{which}-key-env", default="OPENAI_API_KEY",
                         help="environment variable holding its API key (read in the workers, never logged)")
    cur.add_argument("--concurrency", type=int, default=32, help="requests in flight per worker process (vllm "
                                                                 "engines: conversations per engine call)")
    cur.add_argument("--vllm-python", default=os.environ.get("ECOMVLM_VLLM_PYTHON"),
                     help="engine vllm: run the engine under this Python (an env with vLLM, e.g. .venv-vllm/bin/"
                          "python); default: import vLLM here (env ECOMVLM_VLLM_PYTHON)")
    cur.add_argument("--vllm-engine-arg", action="append", default=[], metavar="KEY=VALUE",
                     help="engine vllm: a vllm.LLM argument, VALUE as JSON (e.g. max_model_len=8192, "
                          "tensor_parallel_size=2)")
    cur.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    cur.add_argument("--retries", type=int, default=4, help="retries of timeouts / 429 / 5xx (with backoff)")
    cur.add_argument("--caption-prompt", default="caption", help="a prompt file or built-in name_version")
    cur.add_argument("--verify-prompt", default="verify", help="a prompt file or built-in name_version")
    cur.add_argument("--shares", default=None, help="family shares, e.g. vqa=45,dae=30,pif=12.5,listing=12.5")
    cur.add_argument("--mix", action="append", default=[], metavar="FAMILY.SUBTASK=W",
                     help="a sub-task weight inside its family, e.g. dae.ocr=0 (repeatable)")
    cur.add_argument("--seed", type=int, default=0)
    cur.add_argument("--partition-size", type=int, default=1000, help="listings per partition (fixed per run)")
    cur.add_argument("--workers", type=int, default=1, help="worker processes (each with its own client)")
    cur.add_argument("--keep-non-english", action="store_true", help="keep listings that look non-English")
    cur.add_argument("--min-side", type=int, default=64, help="drop main images with a shorter side below this")
    cur.add_argument("--max-image-side", type=int, default=1024, help="shrink the image sent to the captioner "
                                                                      "(0: send it as it is)")
    cur.add_argument("--trust-seller-aspects", action="store_true",
                     help="the ablation without visual verification: verify takes every cleaned seller aspect as "
                          "visible and calls no verifier (compare a stage-3 run on it with one on the verified set)")
    cur.add_argument("--no-cache", action="store_true", help="do not keep endpoint answers under <work>/cache")
    cur.add_argument("--no-shards", action="store_true", help="export: LLaVA JSON only")
    cur.add_argument("--samples-per-shard", type=int, default=1000)
    cur.set_defaults(func=_curate)
