"""`ecomvlm eval`: HF-format checkpoints x benchmarks -> per-benchmark JSON + the paper's tables and a plot.

Reads HF checkpoints (what `ecomvlm export` writes, or any image-text-to-text model), so our models and public
VLMs are evaluated the same way, through one of three backends (eval/backends.py: transformers, vLLM offline,
OpenAI-compatible server). Benchmarks:
- e-commerce (Table 1): the sets of docs/DATA_FORMAT.md "Eval sets", scored by eval/scoring.py;
- item_intel (Table 3): JSON answers (schema-constrained where the backend can), judged by eval/judge.py; with
  an inference strategy as ``item_intel:primary`` (first image only, row 28), ``item_intel`` (all images, row 29),
  ``item_intel:crops`` (all + square crops of the grounded regions, row 41), ``item_intel:pan_scan`` (Gemma3's pan
  & scan, row 40), see data_modules/item_intel/inference.py;
- public (Table 2): eval/public/, datasets from local paths (`--public-data NAME=PATH`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ecomvlm.data_modules.item_intel.inference import ROW_NAMES, STRATEGIES, benchmark_name, strategy_of
from ecomvlm.data_modules.item_intel.schema import ITEM_INTEL_SCHEMA
from ecomvlm.eval.backends import Backend
from ecomvlm.eval.judge import Judge, RuleJudge, parse_reference, score_item_intel
from ecomvlm.eval.public import PUBLIC, load_public_with_info, score_public
from ecomvlm.eval.scoring import parse_model_json, score_records

ECOMMERCE = ["aspect_general", "aspect_fashion", "aspect_fashion_tc", "fashion_apparel",
             "fashion_sneakers_handbags", "dae"]
ITEM_INTEL = "item_intel"
ITEM_INTEL_VARIANTS = [benchmark_name(s) for s in STRATEGIES if s != "all"]  # item_intel:primary, :crops, :pan_scan
ECOMMERCE_MAX_NEW_TOKENS = 64
IFEVAL = "ifeval"  # eval/ifeval.py: IFEval-style strict / loose accuracy of the instruction-following family
GROUPS = {"ecommerce": ECOMMERCE, "public": sorted(PUBLIC), "all": [*ECOMMERCE, ITEM_INTEL, *sorted(PUBLIC)]}
KNOWN = [*ECOMMERCE, ITEM_INTEL, *ITEM_INTEL_VARIANTS, IFEVAL, *sorted(PUBLIC)]


def is_item_intel(bench: str) -> bool:
    return bench == ITEM_INTEL or bench in ITEM_INTEL_VARIANTS


def _median(xs: list[int]) -> float | None:
    ys = sorted(xs)
    if not ys:
        return None
    m = len(ys) // 2
    return float(ys[m]) if len(ys) % 2 else (ys[m - 1] + ys[m]) / 2


def apply_strategy(bench: str, recs: list[dict[str, Any]], images: list[list[Any]], *, data_dir: Path,
                   boxes: dict[str, list] | None = None, grounder=None, grounding_prompt: str = "grounding_v1",
                   convention=None, crop=None, dedup=None, cache_dir: str | None = None
                   ) -> tuple[list[str], list[list[Any]], dict[str, Any]]:
    """(prompts, images, inference record) of an item_intel benchmark under its strategy."""
    strategy = strategy_of(bench)
    prompts = [r["prompt"] for r in recs]
    info: dict[str, Any] = {"strategy": strategy, "row": ROW_NAMES[strategy]}
    if strategy == "primary":
        from ecomvlm.data_modules.item_intel.inference import with_images

        images = [ims[:1] for ims in images]
        prompts = [with_images(p, len(ims)) for p, ims in zip(prompts, images)]
    elif strategy == "crops":
        from ecomvlm.data_modules.item_intel.boxes import Convention, CropSettings
        from ecomvlm.data_modules.item_intel.dedup import DedupSettings
        from ecomvlm.data_modules.item_intel.inference import add_crops, ground_paths, with_images

        crop = crop or CropSettings()
        dedup = dedup or DedupSettings()
        if boxes is None and grounder is None:
            raise ValueError("item_intel:crops needs boxes: --item-intel-boxes FILE (e.g. from `ecomvlm data "
                             "item-intel boxes`) or a grounding endpoint (--grounder-url, --grounder-model)")
        source = "file" if boxes is not None else f"endpoint:{grounder.model}"
        boxes = dict(boxes or {})
        counters: dict[str, Any] = {}
        if grounder is not None:
            paths = sorted({p for r in recs for p in r["images"] if p not in boxes})
            by_path = {p: im for r, ims in zip(recs, images) for p, im in zip(r["images"], ims)}
            got, counters = ground_paths(paths, by_path, grounder, grounding_prompt, convention or Convention(),
                                         cache_dir=cache_dir)
            boxes.update(got)
        new_images, new_prompts, totals = [], [], {"crops": 0, "dropped": 0, "crops_kept": 0, "images_no_boxes": 0}
        for r, p, ims in zip(recs, prompts, images):
            bx = [boxes.get(path, boxes.get(str((Path(data_dir) / path).resolve()))) for path in r["images"]]
            totals["images_no_boxes"] += sum(b is None for b in bx)
            out, c = add_crops(ims, bx, crop, dedup)
            for k in ("crops", "dropped", "crops_kept"):
                totals[k] += c[k]
            new_images.append(out)
            new_prompts.append(with_images(p, len(out)))
        images, prompts = new_images, new_prompts
        info.update(boxes=source, crop_size=crop.crop_size, crop_mode=crop.crop_mode, phash_threshold=dedup.threshold,
                    **totals, grounding=counters)
    elif strategy == "pan_scan":
        info["processor_kwargs"] = "backend"
    n = [len(ims) for ims in images]
    info["images_per_item"] = {"median": _median(n), "max": max(n) if n else None,
                               "mean": round(sum(n) / len(n), 3) if n else None}
    return prompts, images, info

def expand_benchmarks(spec: str) -> list[str]:
    """'ecommerce,mmbench' -> names; groups: ecommerce, public, all. Unknown names are an error."""
    names: list[str] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        names += GROUPS.get(part, [part])
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise ValueError(f"unknown benchmarks {unknown}; known: {KNOWN} or the groups {sorted(GROUPS)}")
    return list(dict.fromkeys(names))


def load_benchmark(data_dir: Path, name: str, limit: int | None = None) -> list[dict[str, Any]]:
    path = Path(data_dir) / "eval" / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {path} not found (make one with `ecomvlm data synth`, or put "
                                f"records in the format of docs/DATA_FORMAT.md there)")
    recs = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: broken JSON ({e.msg}); fix or remove the line") from None
    return recs[:limit] if limit else recs


def _generate(backend: Backend, prompts: list[str], images: list[list[Any]], *, max_new_tokens: int,
              json_schema: dict[str, Any] | None = None, temperature: float = 0.0, seed: int = 0,
              system: str | None = None, desc: str = "") -> tuple[list[str], list[float], float]:
    """(answers, per-example latencies, wall time). Latencies come from the backend (`last_latencies`: each
    example's time from the submission of its batch or request to its answer); the wall time covers the calls."""
    from tqdm import tqdm

    chunk = max(1, int(getattr(backend, "call_size", 32)))
    out: list[str] = []
    lat: list[float] = []
    wall = 0.0
    with tqdm(total=len(prompts), desc=desc, unit="ex", leave=False, disable=len(prompts) <= chunk) as bar:
        for i in range(0, len(prompts), chunk):
            t0 = time.perf_counter()
            got = backend.generate(prompts[i:i + chunk], images[i:i + chunk], max_new_tokens=max_new_tokens,
                                   json_schema=json_schema, temperature=temperature, seed=seed, system=system)
            dt = time.perf_counter() - t0
            wall += dt
            if len(got) != len(prompts[i:i + chunk]):
                raise RuntimeError(f"backend {getattr(backend, 'name', '?')} returned {len(got)} answers for "
                                   f"{len(prompts[i:i + chunk])} prompts")
            per = list(getattr(backend, "last_latencies", None) or [])
            out += got
            lat += per if len(per) == len(got) else [dt] * len(got)
            bar.update(len(got))
    return out, lat, wall


def _percentile(xs: list[float], q: float) -> float:
    ys = sorted(xs)
    return ys[min(len(ys) - 1, int(round(q * (len(ys) - 1))))] if ys else 0.0


def timing_metrics(latencies: list[float], wall_s: float, *, warm: bool, warmup_s: float | None,
                   batch: int | None, backend: str, hardware: str, regenerated: int = 0) -> dict[str, Any]:
    """Table 4's two numbers: per-example latency (mean seconds from an example's submission to its final answer,
    JSON re-generations included) and throughput (examples per second of generation wall time, at `batch`)."""
    n = len(latencies)
    return {"sec_per_example": sum(latencies) / max(1, n), "latency_p50_s": _percentile(latencies, 0.5),
            "latency_p90_s": _percentile(latencies, 0.9), "examples_per_s": n / wall_s if wall_s > 0 else None,
            "wall_s": wall_s, "n_timed": n, "regenerated": regenerated, "warm": warm, "warmup_s": warmup_s,
            "batch": batch, "backend": backend, "hardware": hardware}


def _batch(backend: Backend) -> int | None:
    for attr in ("batch_size", "concurrency"):
        v = getattr(backend, attr, None)
        if isinstance(v, int):
            return v
    return None


def evaluate(backend: Backend, label: str, benchmarks: list[str], out_dir: str | Path, *,
             data_dir: str | Path | None = None, public_paths: dict[str, str] | None = None,
             public_options: dict[str, dict[str, Any]] | None = None, limit: int | None = None,
             max_new_tokens: int | None = None, item_intel_max_new_tokens: int = 512, judge: Judge | None = None,
             json_retries: int = 2, matcher=None, progress=None, warmup: bool = True,
             hardware_note: str | None = None, item_intel_boxes: dict[str, list] | str | Path | None = None,
             grounder=None, grounding_prompt: str = "grounding_v1", grounding_convention=None, crop=None,
             dedup=None, pan_scan_backend: Backend | None = None, cache_dir: str | None = None) -> dict[str, Any]:
    """Run `benchmarks` through `backend`; write <out>/<label>/<benchmark>.json; return {benchmark: metrics}.

    `max_new_tokens`: one answer length for every set but item_intel; None gives each set its own (e-commerce 64,
    the public sets lmms-eval's: 16, MMMU 128). Model answers to item_intel that are not JSON are re-generated with
    sampling (temperature 0.7, a new seed per try) up to `json_retries` times; what still fails is counted in
    `unparsed` and scores 0.

    Timing (Table 4): before the first timed benchmark one warm-up batch (the first batch of that benchmark) runs
    untimed, so latencies exclude model load and first-call costs (compilation, caches); `warmup=False` skips it
    and the timings say `warm: false`. Re-generations count in the latency of their example and in the wall time.

    Item-intelligence strategies (``item_intel:primary|crops|pan_scan`` besides ``item_intel``): ``crops`` takes its
    boxes from `item_intel_boxes` (a boxes file or {image path: boxes}) or asks `grounder` (an
    item_intel.stages.Endpoint) with `grounding_prompt` / `grounding_convention`; crops and dedup follow `crop` /
    `dedup` (the pipeline's CropSettings / DedupSettings). ``pan_scan`` runs on `pan_scan_backend` (a backend built
    with Gemma3's pan & scan processor options; eval/cli.py builds it), or on `backend` when that one has them.
    Each strategy's settings and images per item are in its metrics under ``inference``.
    """
    from PIL import Image

    from ecomvlm.eval.hardware import hardware_summary, host_hardware

    out = Path(out_dir) / label
    out.mkdir(parents=True, exist_ok=True)
    public_paths = public_paths or {}
    public_options = public_options or {}
    host = host_hardware()
    backend_info = backend.describe() if hasattr(backend, "describe") else {"engine": getattr(backend, "name", "?")}
    hw = hardware_summary(backend_info, host, hardware_note)
    results: dict[str, Any] = {}
    if isinstance(item_intel_boxes, (str, Path)):
        from ecomvlm.data_modules.item_intel.inference import load_boxes_file

        item_intel_boxes = load_boxes_file(item_intel_boxes)
    for bench in benchmarks:
        extra: dict[str, Any] = {}
        gen = backend
        inference: dict[str, Any] | None = None
        data_info: dict[str, Any] | None = None
        system = None
        if bench in PUBLIC:
            recs, data_info = load_public_with_info(bench, public_paths.get(bench), limit=limit,
                                                    options=public_options.get(bench))
            images = [r.pop("images") for r in recs]
            system = recs[0]["system"] if recs else None
            n_tokens = max_new_tokens or (recs[0]["max_new_tokens"] if recs else 16)  # lmms-eval's lengths
        else:
            if data_dir is None:
                raise ValueError(f"{bench} reads <data>/eval/{bench}.jsonl: pass --data")
            recs = load_benchmark(Path(data_dir), ITEM_INTEL if is_item_intel(bench) else bench, limit)
            if is_item_intel(bench):
                for r in recs:  # a broken reference fails here, before any generation
                    parse_reference(r)
            if bench == IFEVAL:
                from ecomvlm.eval.ifeval import normalize_record

                recs = [normalize_record(r) for r in recs]  # IFEval's own format too; sets images / answer
            images = []
            for r in recs:
                try:
                    images.append([Image.open(Path(data_dir) / p).convert("RGB") for p in r["images"]])
                except (OSError, ValueError) as e:
                    raise ValueError(f"{bench} record {r.get('id')}: image unreadable ({e}); fix or drop the "
                                     f"record") from None
            n_tokens = item_intel_max_new_tokens if is_item_intel(bench) else \
                (max_new_tokens or (256 if bench == IFEVAL else ECOMMERCE_MAX_NEW_TOKENS))
        schema = ITEM_INTEL_SCHEMA if is_item_intel(bench) else None
        prompts = [r["prompt"] for r in recs]
        if is_item_intel(bench):
            prompts, images, inference = apply_strategy(
                bench, recs, images, data_dir=Path(data_dir), boxes=item_intel_boxes, grounder=grounder,
                grounding_prompt=grounding_prompt, convention=grounding_convention, crop=crop, dedup=dedup,
                cache_dir=cache_dir)
            if strategy_of(bench) == "pan_scan":
                gen = pan_scan_backend or backend
                if not (getattr(gen, "processor_kwargs", None) or {}).get("do_pan_and_scan"):
                    raise ValueError("item_intel:pan_scan needs a backend whose processor does Gemma3's pan & scan: "
                                     "pass pan_scan_backend= (ecomvlm eval builds one with processor_kwargs="
                                     "{'do_pan_and_scan': True, ...} for --backend hf / mm_processor_kwargs for vllm)")
                inference["processor_kwargs"] = dict(gen.processor_kwargs)
        if warmup and recs and not getattr(gen, "_ecomvlm_warm", False):
            n_warm = min(len(recs), max(1, _batch(gen) or 8))
            t0 = time.perf_counter()
            gen.generate(prompts[:n_warm], images[:n_warm], max_new_tokens=n_tokens, json_schema=schema,
                         system=system)
            gen._ecomvlm_warmup_s = time.perf_counter() - t0  # once per backend, reported with every set
            gen._ecomvlm_warm = True
        preds, lat, wall = _generate(gen, prompts, images, max_new_tokens=n_tokens, json_schema=schema,
                                     system=system, desc=f"{label}/{bench}")
        retried = 0
        if is_item_intel(bench):
            for attempt in range(1, json_retries + 1):
                bad = [i for i, p in enumerate(preds) if parse_model_json(p) is None]
                if not bad:
                    break
                retried += len(bad)
                again, lat2, wall2 = _generate(gen, [prompts[i] for i in bad], [images[i] for i in bad],
                                               max_new_tokens=n_tokens, json_schema=schema, temperature=0.7,
                                               seed=attempt, system=system)
                wall += wall2
                for i, p, d in zip(bad, again, lat2):
                    preds[i] = p
                    lat[i] += d
            metrics = score_item_intel(recs, preds, judge or RuleJudge())
            items = metrics.pop("items")
            metrics["model_retries"] = retried
            metrics["inference"] = inference
            extra["verdicts"] = items
        elif bench == IFEVAL:
            from ecomvlm.eval.ifeval import score_ifeval

            metrics = score_ifeval(recs, preds)
            extra["items"] = metrics.pop("items")
        elif bench in PUBLIC:
            metrics = score_public(bench, recs, preds, matcher=matcher)
        else:
            metrics = score_records(bench, recs, preds)
        timing = timing_metrics(lat, wall, warm=bool(getattr(gen, "_ecomvlm_warm", False)),
                                warmup_s=getattr(gen, "_ecomvlm_warmup_s", None),
                                batch=_batch(gen), backend=getattr(gen, "name", "?"), hardware=hw,
                                regenerated=retried)
        metrics["sec_per_example"] = timing["sec_per_example"]
        metrics["examples_per_s"] = timing["examples_per_s"]
        metrics["timing"] = timing
        if data_info is not None:
            metrics["data"] = data_info
        results[bench] = metrics
        (out / f"{bench.replace(':', '-')}.json").write_text(json.dumps(
            {"model": label, "backend": getattr(backend, "name", "?"), "backend_info": backend_info,
             "host": host, "benchmark": bench, "metrics": metrics,
             "predictions": [{"id": r["id"], "prediction": p, "answer": r["answer"], "latency_s": d}
                             for r, p, d in zip(recs, preds, lat)], **extra}, indent=1, default=str) + "\n")
        if progress:
            progress(bench, metrics)
    return results
