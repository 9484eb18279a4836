"""`ecomvlm eval`: HF-format checkpoints x benchmarks -> per-benchmark JSON + the paper's tables and a plot.

Reads HF checkpoints (what `ecomvlm export` writes, or any image-text-to-text model), so our models and public
VLMs are evaluated the same way, through one of three backends (eval/backends.py: transformers, vLLM offline,
OpenAI-compatible server). Benchmarks:
- e-commerce (Table 1): the sets of docs/DATA_FORMAT.md "Eval sets", scored by eval/scoring.py;
- item_intel (Table 3): JSON answers (schema-constrained where the backend can), judged by eval/judge.py;
- public (Table 2): eval/public/, datasets from local paths (`--public-data NAME=PATH`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ecomvlm.data_modules.item_intel.schema import ITEM_INTEL_SCHEMA
from ecomvlm.eval.backends import Backend
from ecomvlm.eval.judge import Judge, RuleJudge, score_item_intel
from ecomvlm.eval.public import PUBLIC, load_public, score_public
from ecomvlm.eval.scoring import parse_model_json, score_records

ECOMMERCE = ["aspect_general", "aspect_fashion", "aspect_fashion_tc", "fashion_apparel",
             "fashion_sneakers_handbags", "dae"]
ITEM_INTEL = "item_intel"
GROUPS = {"ecommerce": ECOMMERCE, "public": sorted(PUBLIC), "all": [*ECOMMERCE, ITEM_INTEL, *sorted(PUBLIC)]}
KNOWN = [*ECOMMERCE, ITEM_INTEL, *sorted(PUBLIC)]

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
              json_schema: dict[str, Any] | None = None, chunk: int = 32, desc: str = "") -> list[str]:
    from tqdm import tqdm

    out: list[str] = []
    with tqdm(total=len(prompts), desc=desc, unit="ex", leave=False, disable=len(prompts) <= chunk) as bar:
        for i in range(0, len(prompts), chunk):
            out += backend.generate(prompts[i:i + chunk], images[i:i + chunk], max_new_tokens=max_new_tokens,
                                    json_schema=json_schema)
            bar.update(len(prompts[i:i + chunk]))
    return out


def evaluate(backend: Backend, label: str, benchmarks: list[str], out_dir: str | Path, *,
             data_dir: str | Path | None = None, public_paths: dict[str, str] | None = None,
             limit: int | None = None, max_new_tokens: int = 64, item_intel_max_new_tokens: int = 512,
             judge: Judge | None = None, json_retries: int = 2, matcher=None, progress=None) -> dict[str, Any]:
    """Run `benchmarks` through `backend`; write <out>/<label>/<benchmark>.json; return {benchmark: metrics}.

    Model answers to item_intel that are not JSON are re-generated with sampling (temperature 0.7, a new seed per
    try) up to `json_retries` times; what still fails is counted in `unparsed` and scores 0."""
    from PIL import Image

    out = Path(out_dir) / label
    out.mkdir(parents=True, exist_ok=True)
    public_paths = public_paths or {}
    results: dict[str, Any] = {}
    for bench in benchmarks:
        extra: dict[str, Any] = {}
        if bench in PUBLIC:
            recs = load_public(bench, public_paths.get(bench), limit=limit)
            images = [r.pop("images") for r in recs]
            n_tokens = max(max_new_tokens, recs[0]["max_new_tokens"]) if recs else max_new_tokens
        else:
            if data_dir is None:
                raise ValueError(f"{bench} reads <data>/eval/{bench}.jsonl: pass --data")
            recs = load_benchmark(Path(data_dir), bench, limit)
            images = []
            for r in recs:
                try:
                    images.append([Image.open(Path(data_dir) / p).convert("RGB") for p in r["images"]])
                except (OSError, ValueError) as e:
                    raise ValueError(f"{bench} record {r.get('id')}: image unreadable ({e}); fix or drop the "
                                     f"record") from None
            n_tokens = item_intel_max_new_tokens if bench == ITEM_INTEL else max_new_tokens
        schema = ITEM_INTEL_SCHEMA if bench == ITEM_INTEL else None
        t0 = time.perf_counter()
        preds = _generate(backend, [r["prompt"] for r in recs], images, max_new_tokens=n_tokens, json_schema=schema,
                          desc=f"{label}/{bench}")
        dt = time.perf_counter() - t0
        if bench == ITEM_INTEL:
            retried = 0
            for attempt in range(1, json_retries + 1):
                bad = [i for i, p in enumerate(preds) if parse_model_json(p) is None]
                if not bad:
                    break
                retried += len(bad)
                again = backend.generate([recs[i]["prompt"] for i in bad], [images[i] for i in bad],
                                         max_new_tokens=n_tokens, json_schema=schema, temperature=0.7, seed=attempt)
                for i, p in zip(bad, again):
                    preds[i] = p
            metrics = score_item_intel(recs, preds, judge or RuleJudge())
            items = metrics.pop("items")
            metrics["model_retries"] = retried
            extra["verdicts"] = items
        elif bench in PUBLIC:
            metrics = score_public(bench, recs, preds, matcher=matcher)
        else:
            metrics = score_records(bench, recs, preds)
        metrics["sec_per_example"] = dt / max(1, len(recs))
        results[bench] = metrics
        (out / f"{bench}.json").write_text(json.dumps(
            {"model": label, "backend": getattr(backend, "name", "?"), "benchmark": bench, "metrics": metrics,
             "predictions": [{"id": r["id"], "prediction": p, "answer": r["answer"]} for r, p in zip(recs, preds)],
             **extra}, indent=1, default=str) + "\n")
        if progress:
            progress(bench, metrics)
    return results
