"""`ecomvlm data item-intel STAGE ...`: the item-intelligence data pipeline (docs/ITEM_INTEL.md).

Every stage takes the same options (pass the same ones to each, or run `all`); each is resumable and runs the
partitions of its SLURM array task when SLURM_ARRAY_TASK_ID/COUNT are set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

STAGE_HELP = {
    "ingest": "check, hash and cap every item's images",
    "annotate": "first labels: the teacher on the original photos",
    "ground": "grounding boxes of the informative regions of every photo",
    "crops": "expand + merge boxes, one enclosing square crop per photo, pHash dedup",
    "reannotate": "better labels: the teacher on the kept originals + crops",
    "all": "ingest, annotate, ground, crops, reannotate, then build both sets and the report",
    "build": "LLaVA JSON + shards of a training set (--labels first|better)",
    "report": "fates, endpoint cost, images per item, first vs better labels (report.json, report.md)",
    "boxes": "write the grounding stage's boxes as a boxes file for `ecomvlm eval --item-intel-boxes` (--out)",
    "synth": "a synthetic dataset for this pipeline: true region boxes, optional small print",
}

EPILOG = """examples:
  ecomvlm data item-intel all --items items.jsonl --work work/ii \\
      --teacher-url http://teacher:8000/v1 --teacher-model gpt-4.1 \\
      --grounder-url http://qwen:8001/v1 --grounder-model Qwen/Qwen2.5-VL-32B-Instruct --box-coords resized_pixels
  ecomvlm data item-intel ground --items items.jsonl --work work/ii --grounder-url ... --grounder-model ...
  # the better-labels training set -> work/ii/shards/better_kept
  ecomvlm data item-intel build --work work/ii --labels better
  ecomvlm data item-intel boxes --work work/ii_eval --out eval_boxes.jsonl --relative-to EVAL_DATA_DIR
  # a SLURM array (each task takes partitions i % COUNT == ID through every stage; docs/ITEM_INTEL.md):
  sbatch --array=0-31 --wrap 'ecomvlm data item-intel all --no-finish --items items.jsonl --work work/ii ...'
"""


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input and work folder")
    g.add_argument("--work", required=True, help="work folder: stage outputs, caches, crops, LLaVA JSON, shards")
    g.add_argument("--items", help="items JSONL: {\"id\", \"images\": [paths], \"metadata\": {...}} (ingest)")
    g.add_argument("--image-root", help="relative image paths are relative to this (default: the items file's folder)")
    g.add_argument("--partition-size", type=int, default=1000, help="items per partition (the unit of resume)")
    g.add_argument("--workers", type=int, default=1, help="partitions processed in parallel (processes)")
    g.add_argument("--max-images", type=int, default=8, help="images per item taken (default 8, the paper's max)")
    g.add_argument("--cache-dir", help="endpoint answer cache (default WORK/cache); share one across work folders")
    g.add_argument("--too-many-images", choices=["cap", "drop"], default="cap",
                   help="an item with more images: take the first --max-images (cap) or skip it (drop)")
    t = p.add_argument_group("teacher (first and better labels)")
    t.add_argument("--teacher-url", help="OpenAI-compatible base URL (vLLM serve, a hosted API)")
    t.add_argument("--teacher-model", help="model name on that endpoint (e.g. gpt-4.1)")
    t.add_argument("--teacher-api-key-env", default="OPENAI_API_KEY", help="env var holding its API key")
    t.add_argument("--teacher-concurrency", type=int, default=16, help="requests in flight per worker (engine "
                                                                       "vllm: conversations per engine call)")
    t.add_argument("--teacher-engine", choices=["openai", "vllm"], default="openai",
                   help="openai: a server at --teacher-url; vllm: an offline vLLM engine in each worker")
    t.add_argument("--teacher-timeout", type=float, default=120.0, help="seconds per request")
    t.add_argument("--teacher-retries", type=int, default=4, help="retries of timeouts, 429 and 5xx (backoff)")
    t.add_argument("--format-retries", type=int, default=2, help="re-asks of a malformed answer, its error fed back")
    t.add_argument("--teacher-prompt", default="teacher_first_v1", help="first-label prompt (version or path)")
    t.add_argument("--better-prompt", default="teacher_better_v1", help="better-label prompt (version or path)")
    t.add_argument("--teacher-schema", choices=["strict", "plain"], default="strict",
                   help="strict: every field required, empty when not visible (OpenAI strict structured output); "
                        "plain: the item-intelligence schema as it is")
    t.add_argument("--teacher-max-side", type=int, default=2048, help="photos larger than this are shrunk for sending")
    t.add_argument("--teacher-max-tokens", type=int, default=1024)
    gr = p.add_argument_group("grounding")
    gr.add_argument("--grounder-url", help="OpenAI-compatible base URL of the grounding VLM")
    gr.add_argument("--grounder-model", help="e.g. Qwen/Qwen2.5-VL-32B-Instruct")
    gr.add_argument("--grounder-api-key-env", default="OPENAI_API_KEY")
    gr.add_argument("--grounder-concurrency", type=int, default=16)
    gr.add_argument("--grounder-engine", choices=["openai", "vllm"], default="openai",
                    help="openai: a server at --grounder-url; vllm: an offline vLLM engine in each worker")
    gr.add_argument("--vllm-python", default=os.environ.get("ECOMVLM_VLLM_PYTHON"),
                    help="engine vllm: run the engines under this Python (an env with vLLM); default: import it here")
    gr.add_argument("--vllm-engine-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="engine vllm: a vllm.LLM argument, VALUE as JSON (e.g. max_model_len=16384)")
    gr.add_argument("--grounder-timeout", type=float, default=120.0)
    gr.add_argument("--grounding-prompt", default="grounding_v1", help="version or path")
    gr.add_argument("--box-coords", choices=["original_pixels", "resized_pixels", "norm1000"],
                    default="resized_pixels", help="the numbers the grounding model answers in: pixels of the image "
                    "sent, pixels of its smart-resized input (Qwen2.5-VL), or 0-1000 normalised")
    gr.add_argument("--qwen-min-pixels", type=int, default=4 * 28 * 28, help="resized_pixels: the server's min_pixels")
    gr.add_argument("--qwen-max-pixels", type=int, default=16384 * 28 * 28,
                    help="resized_pixels: the server's max_pixels (vLLM serve's --mm-processor-kwargs)")
    gr.add_argument("--qwen-factor", type=int, default=28, help="resized_pixels: patch x merge (Qwen2.5-VL: 28)")
    gr.add_argument("--grounder-max-side", type=int, default=None, help="shrink photos for sending (boxes are mapped "
                                                                       "back)")
    gr.add_argument("--min-box-px", type=float, default=2.0, help="boxes thinner than this after clipping are dropped")
    c = p.add_argument_group("crops and dedup")
    c.add_argument("--margin", type=float, default=0.10, help="each box grows by this share of its size ...")
    c.add_argument("--margin-px", type=float, default=4.0, help="... plus this many pixels")
    c.add_argument("--merge-gap", type=float, default=0.02, help="merge boxes closer than this share of the photo")
    c.add_argument("--min-crop-px", type=int, default=32, help="smallest crop square side")
    c.add_argument("--crop-size", type=int, default=None, help="crops are resized to this square (default 896, "
                                                               "Gemma3's input)")
    c.add_argument("--crop-size-for", metavar="MODEL", help="the square input of this model config's encoder "
                                                            "(conf/model/MODEL.yaml)")
    c.add_argument("--crop-mode", choices=["square", "regions"], default="square",
                   help="square: one crop per photo (the paper); regions: one per merged box group")
    c.add_argument("--phash-threshold", type=int, default=8, help="Hamming distance (of 64 bits) of near-duplicates")
    c.add_argument("--no-keep-primary", action="store_true", help="the first photo may be dropped as a duplicate")
    b = p.add_argument_group("build and report")
    b.add_argument("--labels", choices=["first", "better"], default="better", help="build: which labels")
    b.add_argument("--images", choices=["originals", "kept"], default=None,
                   help="build: original photos, or the kept originals + crops (default: what the labels saw)")
    b.add_argument("--name", help="build: name of the set (default LABELS_IMAGES)")
    b.add_argument("--no-shards", action="store_true", help="build: LLaVA JSON only")
    b.add_argument("--samples-per-shard", type=int, default=1000)
    b.add_argument("--resize-for", metavar="MODEL", help="build: store images at this model's encoder resolution")
    b.add_argument("--rebuild", action="store_true", help="build: replace shards of other inputs")
    b.add_argument("--truth", help="report: a synthetic items.jsonl with regions (box IoU, label quality)")
    b.add_argument("--reference", help="report: JSONL of {\"id\", \"answer\"} to score both label sets against")
    b.add_argument("--no-finish", action="store_true",
                   help="all: run the stages only (build + report are left to one job after the array)")


def config_from_args(a: argparse.Namespace):
    from ecomvlm.data_modules.item_intel.boxes import Convention, CropSettings
    from ecomvlm.data_modules.item_intel.dedup import DedupSettings
    from ecomvlm.data_modules.item_intel.pipeline import PipelineConfig
    from ecomvlm.data_modules.item_intel.stages import Endpoint
    from ecomvlm.eval.engine_client import parse_engine_args

    engine_kwargs = parse_engine_args(a.vllm_engine_arg)

    def endpoint(who: str, timeout: float, max_images: int) -> Endpoint | None:
        url, model, kind = getattr(a, f"{who}_url"), getattr(a, f"{who}_model"), getattr(a, f"{who}_engine")
        common = dict(api_key_env=getattr(a, f"{who}_api_key_env"), concurrency=getattr(a, f"{who}_concurrency"),
                      timeout_s=timeout, http_retries=a.teacher_retries, format_retries=a.format_retries)
        if kind == "vllm":
            if url or not model:
                raise ValueError(f"--{who}-engine vllm runs the model in the worker: give --{who}-model (its folder "
                                 f"or Hub name) and no --{who}-url")
            if a.vllm_python and not Path(a.vllm_python).exists():
                raise ValueError(f"--vllm-python {a.vllm_python}: no such interpreter")
            return Endpoint("", model, kind="vllm", python=a.vllm_python, engine=engine_kwargs,
                            max_images=max_images, **common)
        if not (url or model):
            return None
        if not (url and model):
            raise ValueError(f"give both --{who}-url and --{who}-model")
        return Endpoint(url, model, **common)

    teacher = endpoint("teacher", a.teacher_timeout, a.max_images * 2)  # better labels: originals + crops
    grounder = endpoint("grounder", a.grounder_timeout, 1)
    crop_size = a.crop_size
    if a.crop_size_for:
        if crop_size:
            raise ValueError("give --crop-size or --crop-size-for, not both")
        crop_size = encoder_square(a.crop_size_for)
    return PipelineConfig(
        work=Path(a.work), items=Path(a.items) if a.items else None,
        image_root=Path(a.image_root) if a.image_root else None, partition_size=a.partition_size,
        workers=a.workers, max_images=a.max_images, too_many_images=a.too_many_images, teacher=teacher,
        grounder=grounder, first_prompt=a.teacher_prompt, better_prompt=a.better_prompt,
        grounding_prompt=a.grounding_prompt, teacher_schema=a.teacher_schema, teacher_max_side=a.teacher_max_side,
        teacher_max_tokens=a.teacher_max_tokens, grounder_max_side=a.grounder_max_side,
        convention=Convention(a.box_coords, a.qwen_factor, a.qwen_min_pixels, a.qwen_max_pixels),
        min_box_px=a.min_box_px,
        crop=CropSettings(a.margin, a.margin_px, a.merge_gap, a.min_crop_px, crop_size or 896, a.crop_mode),
        dedup=DedupSettings(a.phash_threshold, keep_primary=not a.no_keep_primary),
        cache_dir=Path(a.cache_dir) if a.cache_dir else None)


def encoder_square(model: str) -> int:
    """The square input side of a model's encoder: a composed model config (conf/model/<model>.yaml, fixed-size
    SigLIP encoders) or a complete VLM (conf/hf_model/<model>.yaml with a fixed processor size, e.g. Gemma3's 896)."""
    import importlib.resources as res

    import yaml

    hf_model = Path(str(res.files("ecomvlm.conf"))) / "hf_model" / f"{model}.yaml"
    if hf_model.is_file():
        size = ((yaml.safe_load(hf_model.read_text()).get("processor") or {}).get("published") or {}).get("size", {})
        if size.get("height") and size.get("height") == size.get("width"):
            return int(size["height"])
        raise ValueError(f"--crop-size-for {model}: conf/hf_model/{model}.yaml publishes no square input size "
                         f"(native-resolution processors take any size); give --crop-size")
    from ecomvlm.recipes.config import model_config

    spec = model_config([f"model={model}"]).encoder.image_spec()
    if spec.mode != "fixed":
        raise ValueError(f"--crop-size-for {model}: its encoder reads {spec.mode} inputs, not one square; give "
                         f"--crop-size")
    return int(spec.image_size)


def _progress(console):
    from rich.progress import Progress

    return Progress(console=console, transient=True)


def _run(a: argparse.Namespace) -> int:
    from rich.console import Console

    from ecomvlm.data_modules.item_intel.pipeline import STAGES, Pipeline, StageNotReady
    from ecomvlm.eval.engine_client import EngineStartError

    console = Console(stderr=True)
    if a.stage == "synth":
        return _synth(a)
    pipe = Pipeline(config_from_args(a))
    if a.stage == "boxes":
        from ecomvlm.data_modules.item_intel.inference import write_boxes_file

        if not a.out:
            raise ValueError("boxes needs --out FILE (and --relative-to DATA_DIR for paths relative to the eval data)")
        pipe.require_finished(["ground"])
        n = write_boxes_file(pipe.outputs("ground"), Path(a.out), Path(a.relative_to) if a.relative_to else None)
        print(f"{n} items' boxes -> {a.out}")
        return 0
    try:
        if a.stage in STAGES or a.stage == "all":
            names = list(STAGES) if a.stage == "all" else [a.stage]
            for name in names:
                with _progress(console) as prog:
                    task = prog.add_task(f"{name}: partitions", total=None)
                    rep = pipe.run_stage(name, progress=lambda d, t: prog.update(task, completed=d, total=t))
                fates = ", ".join(f"{k} {v}" for k, v in rep["fates"].items())
                cost = {k: rep["counters"][k] for k in ("requests", "retries", "prompt_tokens", "completion_tokens",
                                                         "images_sent", "cache_hits") if k in rep["counters"]}
                console.print(f"[bold]{name}[/bold]: {rep['finished']}/{rep['partitions']} partitions done "
                              f"({rep['partitions_run']} run now, {rep['seconds']:.1f} s); {fates}"
                              + (f"; {cost}" if cost else ""))
            if a.stage != "all" or a.no_finish:
                return 0
        if a.stage in ("build", "all"):
            sets = [("first", None), ("better", None)] if a.stage == "all" else [(a.labels, a.images)]
            for labels, images in sets:
                resize = None
                if a.resize_for:
                    from ecomvlm.data_modules.shards import resize_rule_for

                    resize = resize_rule_for(a.resize_for)
                out = pipe.build(labels, images, a.name if a.stage == "build" else None, shards=not a.no_shards,
                                 samples_per_shard=a.samples_per_shard, resize=resize, rebuild=a.rebuild)
                acct = out["accounting"]
                print(f"{out['name']}: {out['records']} records -> {out.get('shards', out['llava_json'])}; images/item "
                      f"median {out['images_per_item']['median']} max {out['images_per_item']['max']}; input "
                      f"{acct['input']} = trained {acct.get('trained', acct['labelled'])} + skipped "
                      f"{sum(acct['skipped'].values())} {acct['skipped']}")
        if a.stage in ("report", "all"):
            from ecomvlm.data_modules.item_intel.report import report_markdown, write_report

            rep = write_report(pipe, Path(a.truth) if a.truth else None, Path(a.reference) if a.reference else None)
            print(report_markdown(rep), end="")
    except (StageNotReady, EngineStartError) as e:
        console.print(f"[red]{e}[/red]")
        return 2
    return 0


def _synth(a: argparse.Namespace) -> int:
    from ecomvlm.data_modules.item_intel.demo import write_pipeline_items
    from ecomvlm.data_modules.synth import SynthConfig, synthesize

    if not a.out:
        raise ValueError("synth needs --out")
    m = synthesize(SynthConfig(out=Path(a.out), n=a.n, n_eval=a.n_eval, seed=a.seed, image_size=a.image_size,
                               max_images=a.max_images_synth, min_images=a.min_images_synth,
                               small_print=a.small_print, regions=True,
                               print_codes=a.print_codes))
    files = write_pipeline_items(Path(a.out))
    print(json.dumps({"images": m["images"], "items": m["items"], "pipeline_items": {k: str(v) for k, v in
                                                                                      files.items()}}, indent=1))
    return 0


def register(dsub) -> None:
    """Add the `item-intel` subcommand to `ecomvlm data`."""
    ii = dsub.add_parser("item-intel", help="item-intelligence labels: teacher, grounding boxes, square crops, pHash "
                                            "dedup, better labels -> shards (paper 3.2.3, A.5)",
                         description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = ii.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, help_ in STAGE_HELP.items():
        sp = stages.add_parser(name, help=help_, description=help_, epilog=EPILOG,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == "synth":
            sp.add_argument("--out", required=True, help="output directory (ecomvlm data synth's layout + regions)")
            sp.add_argument("--n", type=int, default=200)
            sp.add_argument("--n-eval", type=int, default=50)
            sp.add_argument("--seed", type=int, default=0)
            sp.add_argument("--image-size", type=int, default=192)
            sp.add_argument("--max-images", dest="max_images_synth", type=int, default=6)
            sp.add_argument("--min-images", dest="min_images_synth", type=int, default=1)
            sp.add_argument("--small-print", type=float, default=0.035,
                            help="back/label text height as a share of the image side (0: the normal drawing)")
            sp.add_argument("--print-codes", action="store_true",
                            help="the small print shows the country of origin only, as a colour swatch a tiny "
                                 "encoder can learn to name (the CPU demo's setting)")
        else:
            _common(sp)
        if name == "boxes":
            sp.add_argument("--out", required=True, help="boxes JSONL to write")
            sp.add_argument("--relative-to", help="write image paths relative to this folder (the eval --data)")
        sp.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:  # python -m ecomvlm.data_modules.item_intel.cli
    p = argparse.ArgumentParser(prog="item-intel")
    sub = p.add_subparsers(dest="data_command", required=True)
    register(sub)
    a = p.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
