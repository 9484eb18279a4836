"""`ecomvlm` — the one door: train, data, eval, export, launch, demo, info.

Subcommands import their heavy dependencies (torch, megatron) lazily, so `ecomvlm --help` and the data tools
start in well under a second. User errors (bad flags, missing files, impossible configs) print one line and
exit 2; ECOMVLM_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path

def _cmd_synth(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from ecomvlm.data_modules.synth import SynthConfig, synthesize

    cfg = SynthConfig(out=Path(args.out), n=args.n, n_eval=args.n_eval, seed=args.seed,
                      image_size=args.image_size, max_images=args.max_images)
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("drawing items", total=cfg.n + cfg.n_eval)
        manifest = synthesize(cfg, progress=lambda done, total: progress.update(task, completed=done))
    from rich.table import Table

    table = Table(title=f"synthetic e-commerce data -> {cfg.out}")
    table.add_column("file")
    table.add_column("records", justify="right")
    for name, count in manifest["records"].items():
        table.add_row(name, str(count))
    table.add_row("images/*.png", str(manifest["images"]))
    Console().print(table)
    return 0


def _cmd_shards(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from ecomvlm.data_modules.shards import ShardConfig, make_shards

    cfg = ShardConfig(inputs=[Path(p) for p in args.inputs], out=Path(args.out),
                      image_root=Path(args.image_root) if args.image_root else None,
                      samples_per_shard=args.samples_per_shard, workers=args.workers, seed=args.seed)
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("writing shards", total=None)
        m = make_shards(cfg, progress=lambda d, t: progress.update(task, completed=d, total=t), console=console)
    print(f"{m['samples']} samples in {len(m['shards'])} shards ({m['bytes'] / 1e6:.1f} MB) -> {cfg.out}"
          f" [{m['resumed_shards']} shards already done]")
    if m["skipped"]:
        print("skipped: " + ", ".join(f"{k}={v}" for k, v in m["skipped"].items()) + f" (see {cfg.out}/manifest.json)")
    return 0


def _cmd_mixture(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ecomvlm.data_modules.llava_json import SkipCounter, read_records
    from ecomvlm.data_modules.mixture import counts_table, load_mixture, resolve

    entries = load_mixture(args.mixture)
    skips = SkipCounter()
    totals = [len(read_records(e.json_path, skips)) for e in entries]
    Console().print(counts_table(resolve(entries, totals, args.seed)))
    if skips.total:
        print("unreadable records: " + ", ".join(f"{k}={v}" for k, v in skips.by_reason().items()))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    if args.nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
               "-m", "ecomvlm.recipes.vlm_train", "--config-name", args.recipe, *args.overrides]
        os.execv(sys.executable, cmd)
    from ecomvlm.recipes.models.registry import compose
    from ecomvlm.recipes.vlm_train import run

    summary = run(compose(args.recipe, args.overrides))
    losses = summary["losses"]
    if losses:
        print(f"trained steps {summary['start_step'] + 1}-{summary['start_step'] + len(losses)}: loss "
              f"{losses[0]:.3f} -> {losses[-1]:.3f}; checkpoint {summary['final_checkpoint']}")
    return 0


def _cmd_launch(args: argparse.Namespace) -> int:
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


def _ask(client, prompt: str) -> str:
    """One user turn to an OpenAI-compatible endpoint (MMBench's answer matcher)."""
    return client.chat([{"role": "user", "content": prompt}], max_tokens=256, temperature=0.0)


def _cmd_eval(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ecomvlm.eval.report import plot, tables_csv, tables_markdown

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    results: dict = {}
    for prev in args.merge or []:  # earlier results.json files: their models join the tables
        p = Path(prev)
        if not p.is_file():
            raise FileNotFoundError(f"--merge {p}: no such results.json")
        results.update(json.loads(p.read_text()))
    if args.model:
        from ecomvlm.eval.backends import make_backend
        from ecomvlm.eval.runner import evaluate, expand_benchmarks

        benches = expand_benchmarks(args.benchmarks)
        public_paths = {}
        for spec in args.public_data or []:
            name, sep, path = spec.partition("=")
            if not sep:
                raise ValueError(f"--public-data {spec!r}: write NAME=PATH (e.g. mmbench=/data/MMBench)")
            public_paths[name] = path
        judge = None
        if "item_intel" in benches and args.judge == "llm":
            from ecomvlm.eval.judge import JudgePrompt, LLMJudge, OpenAIChatClient

            if not (args.judge_url and args.judge_model):
                raise ValueError("--judge llm needs --judge-url and --judge-model (an OpenAI-compatible endpoint)")
            judge = LLMJudge(OpenAIChatClient(args.judge_url, args.judge_model, api_key_env=args.judge_api_key_env),
                             JudgePrompt.load(args.judge_prompt), max_attempts=args.judge_attempts,
                             constrained=not args.judge_unconstrained)
        matcher = None
        if "mmbench" in benches and args.mmbench_matcher != "static":
            if args.judge_url and args.judge_model:
                from ecomvlm.eval.judge import OpenAIChatClient

                client = OpenAIChatClient(args.judge_url, args.judge_model, api_key_env=args.judge_api_key_env)
                matcher = partial(_ask, client)
            elif args.mmbench_matcher == "judge":
                raise ValueError("--mmbench-matcher judge needs --judge-url and --judge-model")
        for spec in args.model:
            label, sep, model = spec.partition("=")
            if not sep:
                label, model = Path(spec).name, spec
            if args.backend != "openai" and not Path(model).exists():
                raise FileNotFoundError(f"--model {model}: no such directory (an HF checkpoint, e.g. from "
                                        f"`ecomvlm export`)")
            console.print(f"[bold]{label}[/bold] ({args.backend})")
            backend = make_backend(args.backend, model, batch_size=args.batch_size, server_url=args.server_url,
                                   served_model=args.served_model)

            def show(b, m):
                head = next((k for k in ("accuracy", "average", "f1", "perception") if k in m), None)
                extra = f", unparsed {m['unparsed']}" if m.get("unparsed") else ""
                console.print(f"  {b}: {head} {m[head]:.1f} ({m['n']} examples, {m['sec_per_example']:.3f} "
                              f"s/example{extra})")

            results[label] = evaluate(backend, label, benches, out, data_dir=args.data, public_paths=public_paths,
                                      limit=args.limit, max_new_tokens=args.max_new_tokens, judge=judge,
                                      item_intel_max_new_tokens=args.item_intel_max_new_tokens,
                                      json_retries=args.json_retries, matcher=matcher, progress=show)
    if not results:
        raise ValueError("nothing to report: pass --model (and/or --merge results.json)")
    md = tables_markdown(results)
    (out / "table.md").write_text(md)
    (out / "table.csv").write_text(tables_csv(results))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_plot:
        png = plot(results, out / "results.png")
        console.print(f"plot: {png}")
    print(md, end="")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ecomvlm.recipes.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, dtype=args.dtype)
    print(f"exported {args.checkpoint} -> {out} (LlavaForConditionalGeneration, {args.dtype})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ecomvlm.demo import run_demo

    return run_demo(Path(args.workdir), quick=args.quick)


def _cmd_info(_args: argparse.Namespace) -> int:
    import platform

    import torch

    from ecomvlm.recipes.models.decoder import te_available

    rows = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda available": torch.cuda.is_available(),
        "gpus": torch.cuda.device_count(),
        "transformer engine usable": te_available(),
    }
    import importlib.metadata as md

    for dist in ("megatron-core", "nemo_toolkit", "lightning", "hydra-core", "transformers", "webdataset"):
        try:
            rows[dist] = md.version(dist)
        except md.PackageNotFoundError:
            rows[dist] = "not installed"
    width = max(map(len, rows))
    for k, v in rows.items():
        print(f"{k:<{width}}  {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ecomvlm", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="synthetic data, shards, mixtures")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    s = dsub.add_parser("synth", help="write a deterministic synthetic e-commerce dataset (docs/DATA_FORMAT.md)")
    s.add_argument("--out", required=True, help="output directory (created)")
    s.add_argument("--n", type=int, default=200, help="training items (default 200)")
    s.add_argument("--n-eval", type=int, default=50, help="held-out eval items (default 50)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--image-size", type=int, default=192, help="square image side in pixels (default 192)")
    s.add_argument("--max-images", type=int, default=6, help="images per item are drawn from 1..this (max 6)")
    s.set_defaults(func=_cmd_synth)
    sh = dsub.add_parser("shards", help="LLaVA JSON/JSONL or a mixture YAML -> WebDataset shards + manifest")
    sh.add_argument("inputs", nargs="+", help="mixture .yaml (paper A.6 format) and/or LLaVA .json/.jsonl files")
    sh.add_argument("--out", required=True, help="output folder for shard-NNNNNN.tar + manifest.json")
    sh.add_argument("--image-root", default=None, help="image paths are relative to this (default: the JSON's folder)")
    sh.add_argument("--samples-per-shard", type=int, default=1000)
    sh.add_argument("--workers", type=int, default=2, help="parallel shard writers (processes)")
    sh.add_argument("--seed", type=int, default=0, help="seed of random:N sampling")
    sh.set_defaults(func=_cmd_shards)
    mx = dsub.add_parser("mixture", help="resolve a mixture YAML and print the selected counts")
    mx.add_argument("mixture", help="mixture .yaml")
    mx.add_argument("--seed", type=int, default=0)
    mx.set_defaults(func=_cmd_mixture)

    ex = sub.add_parser("export", help="export an ecomvlm megatron checkpoint (any TP/PP) to an HF LLaVA directory")
    ex.add_argument("--checkpoint", required=True, help="checkpoint directory (has meta.json, model/, tokenizer/)")
    ex.add_argument("--out", required=True, help="output HF directory (transformers / vLLM loadable)")
    ex.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ex.set_defaults(func=_cmd_export)

    tr = sub.add_parser("train", help="run a training recipe: ecomvlm train RECIPE key=value ...")
    tr.add_argument("recipe", help="a recipe config in conf/, e.g. tiny_siglip_qwen3_stage3_sft, siglip2_qwen3_8b_stage3_sft")
    tr.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.shards=DIR trainer.max_steps=100")
    tr.add_argument("--nproc", type=int, default=1, help="processes on this node (torchrun); 1 = run in this process")
    tr.set_defaults(func=_cmd_train)

    la = sub.add_parser("launch", help="submit a recipe to SLURM: ecomvlm launch RECIPE --cluster NAME -- key=value ...")
    la.add_argument("recipe")
    la.add_argument("overrides", nargs="*", help="Hydra overrides passed to the recipe")
    la.add_argument("--cluster", default="local", help="conf/cluster/<name>.yaml or a path (default: local)")
    la.add_argument("--nodes", type=int, default=None, help="override the cluster's node count")
    la.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                    help="job array over values (repeat for a grid), e.g. --sweep model=siglip2_qwen3_4b,siglip2_qwen3_8b")
    la.add_argument("--after", default=None, metavar="JOBID", help="start after this job succeeded (afterok)")
    la.add_argument("--job-name", default=None)
    la.add_argument("--dry-run", action="store_true", help="print the sbatch script, submit nothing")
    la.add_argument("--wait", action="store_true", help="wait for the job; exit non-zero if it failed")
    la.set_defaults(func=_cmd_launch)

    ev = sub.add_parser("eval", help="evaluate HF-format checkpoints: e-commerce, item intelligence, public sets",
                        description="Tables 1-3 of the paper for one or more models. Benchmarks: "
                                    "aspect_general, aspect_fashion, aspect_fashion_tc, fashion_apparel, "
                                    "fashion_sneakers_handbags, dae (group 'ecommerce'), item_intel, and the public "
                                    "mmbench, mme, mmstar, cv_bench, textvqa, ai2d, mmmu, ecommmmu (group 'public').")
    ev.add_argument("--model", action="append", help="[LABEL=]HF model dir (or served model name with --backend "
                                                      "openai); repeat to compare models side by side")
    ev.add_argument("--backend", choices=["hf", "vllm", "openai"], default="hf",
                    help="hf: transformers (CPU ok); vllm: offline engine; openai: a running server (--server-url)")
    ev.add_argument("--server-url", help="OpenAI-compatible base URL for --backend openai, e.g. http://host:8000/v1")
    ev.add_argument("--served-model", help="model name the server knows (default: the --model value)")
    ev.add_argument("--data", help="folder with eval/<benchmark>.jsonl and images (e-commerce + item_intel)")
    ev.add_argument("--benchmarks", default="ecommerce", help="comma list of names and/or groups (ecommerce, "
                                                              "public, all); default ecommerce")
    ev.add_argument("--public-data", action="append", metavar="NAME=PATH",
                    help="local copy of a public benchmark (save_to_disk folder, parquet folder, or HF cache id)")
    ev.add_argument("--out", default="eval_out", help="results folder (per-benchmark JSON, table.md/.csv, plot)")
    ev.add_argument("--merge", action="append", metavar="RESULTS_JSON",
                    help="add the models of an earlier results.json to the tables (alone: rebuild the report)")
    ev.add_argument("--limit", type=int, default=None, help="first N records of each benchmark")
    ev.add_argument("--batch-size", type=int, default=8, help="batch (hf) or concurrent requests (openai)")
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--item-intel-max-new-tokens", type=int, default=512, help="item_intel answers are long JSON")
    ev.add_argument("--judge", choices=["rules", "llm"], default="rules",
                    help="item_intel judge: exact normalised match, or an LLM over an OpenAI-compatible endpoint")
    ev.add_argument("--judge-url", help="judge endpoint base URL (e.g. http://localhost:8001/v1)")
    ev.add_argument("--judge-model", help="judge model name on that endpoint")
    ev.add_argument("--judge-prompt", default="item_intel_v1", help="prompt version in eval/judge_prompts or a path")
    ev.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="env var holding the judge API key")
    ev.add_argument("--judge-attempts", type=int, default=3, help="tries per item before it counts as judge_failed")
    ev.add_argument("--judge-unconstrained", action="store_true",
                    help="do not send a JSON schema (for endpoints without structured output)")
    ev.add_argument("--mmbench-matcher", choices=["auto", "judge", "static"], default="auto",
                    help="MMBench answers the rules cannot map: the judge endpoint's LLM (lmms-eval mmbench_en_dev) "
                         "or the static extractor (mmbench_en_dev_static); auto: the LLM when --judge-url is given")
    ev.add_argument("--json-retries", type=int, default=2,
                    help="re-generate item_intel answers that are not JSON up to N times (sampled)")
    ev.add_argument("--no-plot", action="store_true")
    ev.set_defaults(func=_cmd_eval)

    d = sub.add_parser("demo", help="the main job on CPU: everything that exists, end to end")
    d.add_argument("--workdir", default="demo_out", help="where the demo writes (default ./demo_out)")
    d.add_argument("--quick", action="store_true", help="smaller data and fewer steps (used by tests)")
    d.set_defaults(func=_cmd_demo)

    sub.add_parser("info", help="versions, CUDA/TE availability").set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:  # `ecomvlm launch RECIPE --cluster X -- key=value ...`: everything after -- is an override
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    if extra:
        if not hasattr(args, "overrides"):
            print(f"ecomvlm {args.command}: takes no overrides after --", file=sys.stderr)
            return 2
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args) or 0)
    except Exception as e:  # user errors: one clear line, no traceback (ECOMVLM_DEBUG=1 shows it)
        user_error = isinstance(e, (ValueError, OSError, KeyError, NotImplementedError)) or \
            type(e).__module__.split(".")[0] in ("hydra", "omegaconf")
        if os.environ.get("ECOMVLM_DEBUG") or not user_error:
            raise
        print(f"ecomvlm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
