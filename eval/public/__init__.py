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

Datasets are read as published (eval/public/loading.py): a Hub snapshot (MMBench's en/ cn/ cc/ subset folders ->
`subset`; split names in file names; CV-Bench's jsonl twins of its parquet files skipped), a `save_to_disk` folder,
one file (eComMMMU's single file with a `split` column), or the HF cache by id. Nothing is downloaded by the tests.
Every scorer counts the predictions it could not parse instead of dropping them; loaders report what they left
out (other splits, other subsets, images over the cap).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ecomvlm.eval.public.ecommmmu import (
    ECOMMMMU_SYSTEM,
    ECOMMMMU_TASKS,
    ecommmmu_doc,
    ecommmmu_extract,
    ecommmmu_in_subset,
    ecommmmu_options,
    score_ecommmmu,
)
from ecomvlm.eval.public.loading import ALL_SUBSETS, _rgb, load_hf_split, load_split
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
           "load_public_with_info", "mcq_extract", "score_mme", "score_public"]


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
    subset: str | None = None  # the Hub subset (config) lmms-eval loads, e.g. MMBench's "en"
    system: str | None = None  # a system turn the reference sends


def _one_image(doc):
    return [doc["image"]]


PUBLIC: dict[str, PublicBenchmark] = {b.name: b for b in [
    PublicBenchmark("mmbench", "lmms-lab/MMBench", "dev", mmbench_prompt, _one_image, lambda d: d["answer"],
                    lambda d: str(d["index"]), score_mmbench, subset="en"),
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
                    lambda d: d["answer"], lambda d: d["id"], score_mmmu, max_new_tokens=128,
                    subset=ALL_SUBSETS),  # MMMU/MMMU keeps one folder per subject; lmms-lab/MMMU one data/ folder
    PublicBenchmark("ecommmmu", "NingLab/EcomMMMU", "test", lambda d: ecommmmu_doc(d)[0],
                    lambda d: ecommmmu_doc(d)[1], lambda d: ecommmmu_doc(d)[2],
                    lambda d: str(d["id"]) if d.get("id") is not None else "", score_ecommmmu,
                    system=ECOMMMMU_SYSTEM),
]}
IMAGE_COLUMNS = ("image", "images")


def load_public_with_info(name: str, path: str | Path | None = None, *, split: str | None = None,
                          limit: int | None = None, options: dict[str, Any] | None = None
                          ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records {id, task, prompt, images (PIL), answer, doc, system, max_new_tokens} of a public benchmark, and
    what was read ({source, rows, ...}: files, rows of other splits / subsets left out, images over the cap).
    `options`: eComMMMU's setting (subset, images, max_images; see eval/public/ecommmmu.py)."""
    if name not in PUBLIC:
        raise ValueError(f"unknown public benchmark {name!r}; known: {sorted(PUBLIC)}")
    if options and name != "ecommmmu":
        raise ValueError(f"{name} takes no options (got {sorted(options)}); only ecommmmu does")
    b = PUBLIC[name]
    loaded = load_split(path or b.dataset, split or b.split, subset=b.subset)
    ds = loaded.ds
    info: dict[str, Any] = {"source": loaded.source}
    rows = range(len(ds))
    if name == "ecommmmu":
        opts = ecommmmu_options(options)
        info["setting"] = opts
        if opts["subset"] != "gts":
            if "is_vc" not in ds.column_names:
                ecommmmu_in_subset({}, opts["subset"])  # raises, naming the fix
            flags = ds["is_vc"]
            rows = [i for i, f in enumerate(flags) if f]
            info["subset_left_out"] = len(ds) - len(rows)
            info["is_vc_missing"] = sum(f is None for f in flags)
    if name == "ecommmmu" and "task" in ds.column_names:  # before any inference: the scorer needs a known task
        tasks = ds["task"]
        unknown = dict(Counter(str(tasks[i]) for i in rows if tasks[i] not in ECOMMMMU_TASKS))
        if unknown:
            raise ValueError(f"{loaded.source.get('path')}: rows of unknown eComMMMU tasks {unknown}; the authors' "
                             f"task names are {sorted(ECOMMMMU_TASKS)} (e.g. 'click-through_predction', as spelled "
                             f"in their data); fix the task column")
    if name == "mmbench":  # circular scoring joins the rotations of a question by index: each must be there once
        index = [int(v) for v in ds["index"]]
        dup = sorted(v for v, c in Counter(index).items() if c > 1)
        if dup:
            raise ValueError(f"{loaded.source.get('path')}: MMBench indexes {dup[:10]} occur more than once; a "
                             f"copy of one split holds each (question, rotation) once - check for merged files")
    if limit:
        n = min(limit, len(rows))
        if name == "mme":  # MME scores image pairs: a limit never cuts one
            qid = ds.select_columns(["question_id"])["question_id"]
            while 0 < n < len(qid) and qid[n] == qid[n - 1]:
                n += 1
        kept = list(rows)[:n]
        if name == "mmbench":  # every rotation of a kept question, wherever it sits in the file
            questions = {index[i] % 1_000_000 for i in kept}
            kept = [i for i in rows if index[i] % 1_000_000 in questions]
        info["limit_left_out"] = len(rows) - len(kept)
        rows = kept
    out = []
    dropped = 0
    for i in rows:
        doc = ds[i]
        if name == "ecommmmu":
            prompt, raw_images, answer, n_drop = ecommmmu_doc(doc, info["setting"])
            dropped += n_drop
        else:
            prompt, raw_images, answer = b.prompt(doc), b.images(doc), b.answer(doc)
        images = [_rgb(im, loaded.root) for im in raw_images]
        slim = {k: v for k, v in doc.items() if not (k in IMAGE_COLUMNS or k.startswith("image_"))}
        rid = b.id(doc) or (f"{doc['task']}/{i}" if name == "ecommmmu" else str(i))
        out.append({"id": rid, "task": name, "prompt": prompt, "images": images, "answer": answer, "doc": slim,
                    "system": b.system, "max_new_tokens": b.max_new_tokens})
    if name == "ecommmmu":
        info["images_over_cap"] = dropped
    info["n"] = len(out)
    return out, info


def load_public(name: str, path: str | Path | None = None, *, split: str | None = None,
                limit: int | None = None, options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The records of :func:`load_public_with_info`."""
    return load_public_with_info(name, path, split=split, limit=limit, options=options)[0]


def score_public(name: str, records: list[dict[str, Any]], preds: list[str], *,
                 matcher: Callable[[str], str] | None = None) -> dict[str, Any]:
    """`matcher`: an LLM (prompt -> text) for the benchmarks whose reference scoring uses one (MMBench)."""
    if len(records) != len(preds):
        raise ValueError(f"{name}: {len(records)} records but {len(preds)} predictions")
    if name == "mmbench":
        return score_mmbench(records, preds, matcher=matcher)
    return PUBLIC[name].score(records, preds)
