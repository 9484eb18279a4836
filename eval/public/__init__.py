"""Public benchmarks of the paper's Table 2: loaders (local HF datasets) + prompts + scorers.

Prompts are lmms-eval 0.7.3's defaults and scorers reproduce lmms-eval's numbers on the same predictions
(tests/test_public_benchmarks.py checks each against lmms-eval's own functions); eComMMMU follows the authors'
evaluate.py (ninglab/EcomMMMU) with the paper's two changes: at most 10 images per sample, sample-weighted average.

| name       | dataset (lmms-eval path)         | split      | metric                                                |
|------------|----------------------------------|------------|-------------------------------------------------------|
| mmbench    | lmms-lab/MMBench (en)            | dev        | circular accuracy; rule match, then LLM or static     |
| mme        | lmms-lab/MME                     | test       | perception / cognition: sum over categories of acc+acc+ |
| mmstar     | Lin-Chen/MMStar                  | val        | mean over l2 categories of option accuracy            |
| cv_bench   | nyu-visionx/CV-Bench             | test       | official: ((ADE20K + COCO)/2 + Omni3D)/2              |
| textvqa    | lmms-lab/textvqa                 | validation | VQA accuracy (10 human answers, EvalAI normalisation) |
| ai2d       | lmms-lab/ai2d                    | test       | option-letter exact match                             |
| mmmu       | lmms-lab/MMMU                    | validation | instance-level accuracy (MMMU's parser)               |
| ecommmmu   | NingLab/EcomMMMU                 | test       | per-task accuracy / R@1, sample-weighted average      |

Datasets are read from a local path (a `save_to_disk` folder, a folder of parquet/json files as on the Hub, or
one such file) or from the HF cache by id (set HF_DATASETS_OFFLINE=1 on machines without internet). Nothing is
downloaded by the tests. Every scorer counts the predictions it could not parse instead of dropping them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ecomvlm.eval.public.ecommmmu import ECOMMMMU_TASKS, ecommmmu_doc, ecommmmu_extract, score_ecommmmu
from ecomvlm.eval.public.loading import _rgb, load_hf_split
from ecomvlm.eval.public.mmbench import mcq_extract, mmbench_prompt, score_mmbench
from ecomvlm.eval.public.mmmu import mmmu_images, mmmu_prompt, score_mmmu
from ecomvlm.eval.public.single_image import (
    ai2d_prompt,
    cv_bench_prompt,
    mme_prompt,
    mmstar_prompt,
    score_ai2d,
    score_cv_bench,
    score_mme,
    score_mmstar,
    score_textvqa,
    textvqa_prompt,
)

__all__ = ["ECOMMMMU_TASKS", "PUBLIC", "PublicBenchmark", "ecommmmu_extract", "load_hf_split", "load_public",
           "mcq_extract", "score_mme", "score_public"]

@dataclass(frozen=True)
class PublicBenchmark:
    name: str
    dataset: str  # HF id (what lmms-eval loads)
    split: str
    prompt: Callable[[dict[str, Any]], str]
    images: Callable[[dict[str, Any]], list[Any]]
    answer: Callable[[dict[str, Any]], Any]
    id: Callable[[dict[str, Any]], str]
    score: Callable[[list[dict[str, Any]], list[str]], dict[str, Any]]
    max_new_tokens: int = 16


def _one_image(doc):
    return [doc["image"]]


PUBLIC: dict[str, PublicBenchmark] = {b.name: b for b in [
    PublicBenchmark("mmbench", "lmms-lab/MMBench", "dev", mmbench_prompt, _one_image, lambda d: d["answer"],
                    lambda d: str(d["index"]), score_mmbench),
    PublicBenchmark("mme", "lmms-lab/MME", "test", mme_prompt, _one_image, lambda d: d["answer"],
                    lambda d: f"{d['question_id']}|{d['question']}", score_mme),
    PublicBenchmark("mmstar", "Lin-Chen/MMStar", "val", mmstar_prompt, _one_image, lambda d: d["answer"],
                    lambda d: str(d["index"]), score_mmstar),
    PublicBenchmark("cv_bench", "nyu-visionx/CV-Bench", "test", cv_bench_prompt, _one_image, lambda d: d["answer"],
                    lambda d: str(d["idx"]), score_cv_bench),
    PublicBenchmark("textvqa", "lmms-lab/textvqa", "validation", textvqa_prompt, _one_image,
                    lambda d: list(d["answers"]), lambda d: str(d["question_id"]), score_textvqa),
    PublicBenchmark("ai2d", "lmms-lab/ai2d", "test", ai2d_prompt, _one_image,
                    lambda d: chr(65 + int(d["answer"])), lambda d: str(d.get("id", d["question"])), score_ai2d),
    PublicBenchmark("mmmu", "lmms-lab/MMMU", "validation", mmmu_prompt, mmmu_images,
                    lambda d: d["answer"], lambda d: d["id"], score_mmmu, max_new_tokens=128),
    PublicBenchmark("ecommmmu", "NingLab/EcomMMMU", "test", lambda d: ecommmmu_doc(d)[0],
                    lambda d: ecommmmu_doc(d)[1], lambda d: ecommmmu_doc(d)[2],
                    lambda d: str(d.get("id", d.get("idx", ""))), score_ecommmmu),
]}


def load_public(name: str, path: str | Path | None = None, *, split: str | None = None,
                limit: int | None = None) -> list[dict[str, Any]]:
    """Records {id, prompt, images (PIL), answer, doc} of a public benchmark; `doc` keeps the other fields."""
    if name not in PUBLIC:
        raise ValueError(f"unknown public benchmark {name!r}; known: {sorted(PUBLIC)}")
    b = PUBLIC[name]
    ds = load_hf_split(path or b.dataset, split or b.split)
    if limit:
        n = min(limit, len(ds))
        if name == "mme":  # MME scores image pairs: a limit never cuts one
            qid = ds.select_columns(["question_id"])["question_id"]
            while 0 < n < len(qid) and qid[n] == qid[n - 1]:
                n += 1
        ds = ds.select(range(n))
    out = []
    for i, doc in enumerate(ds):
        images = [_rgb(im) for im in b.images(doc)]
        slim = {k: v for k, v in doc.items() if not (k == "image" or k.startswith("image_") or k == "images")}
        out.append({"id": b.id(doc) or str(i), "task": name, "prompt": b.prompt(doc), "images": images,
                    "answer": b.answer(doc), "doc": slim, "max_new_tokens": b.max_new_tokens})
    return out


def score_public(name: str, records: list[dict[str, Any]], preds: list[str], *,
                 matcher: Callable[[str], str] | None = None) -> dict[str, Any]:
    """`matcher`: an LLM (prompt -> text) for the benchmarks whose reference scoring uses one (MMBench)."""
    if len(records) != len(preds):
        raise ValueError(f"{name}: {len(records)} records but {len(preds)} predictions")
    if name == "mmbench":
        return score_mmbench(records, preds, matcher=matcher)
    return PUBLIC[name].score(records, preds)
