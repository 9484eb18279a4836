"""The pipeline's report: what became of every item in every stage, what the endpoints cost, images per item before
and after crops + dedup (paper A.5: median 12 / max 43 -> median 4 / max 9), and first vs better labels.

With ``truth`` (a synthetic ``items.jsonl`` written with ``regions``) it also measures the grounding boxes against
the true boxes of the printed regions (IoU, recall at IoU 0.5), whether every crop contains its image's true regions,
and both label sets against the true answers; with ``reference`` (JSONL of {"id", "answer"}) the label sets are
scored against those answers (rule judge: exact normalised match, eval/judge.py).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from ecomvlm.data_modules.item_intel.pipeline import STAGES, Pipeline, _stats

COST_KEYS = ("requests", "retries", "format_retries", "prompt_tokens", "completion_tokens", "images_sent",
             "image_bytes_sent", "cache_hits", "cache_misses")


def fact_set(label: dict[str, Any]) -> set[tuple[str, str]]:
    from ecomvlm.eval.judge import flatten_facts
    from ecomvlm.eval.scoring import normalize

    return {(p, normalize(v)) for p, v in flatten_facts(label)}


def compare_labels(first: dict[str, dict], better: dict[str, dict]) -> dict[str, Any]:
    """Facts per item of both label sets, and on the items both have: agreement (mean Jaccard of the fact sets),
    facts the better labels add / drop / change, by field."""
    both = sorted(set(first) & set(better))
    jacc, added, removed, changed = [], Counter(), Counter(), Counter()
    for k in both:
        f, b = fact_set(first[k]), fact_set(better[k])
        jacc.append(len(f & b) / len(f | b) if f | b else 1.0)
        fp, bp = {p for p, _ in f}, {p for p, _ in b}
        for p, _ in b - f:
            (changed if p in fp else added)[p] += 1
        for p, _ in f - b:
            if p not in bp:
                removed[p] += 1
    return {"first_facts_per_item": _stats([len(fact_set(v)) for v in first.values()]),
            "better_facts_per_item": _stats([len(fact_set(v)) for v in better.values()]),
            "items_with_both": len(both),
            "agreement_jaccard_mean": round(sum(jacc) / len(jacc), 4) if jacc else None,
            "identical_items": sum(1 for j in jacc if j == 1.0),
            "facts_added_by_field": dict(added.most_common()), "facts_dropped_by_field": dict(removed.most_common()),
            "facts_changed_by_field": dict(changed.most_common())}


def label_quality(labels: dict[str, dict], reference: dict[str, dict]) -> dict[str, Any]:
    """Rule-judge P/R/F1 (0-100) of a label set against reference answers, over the items both have."""
    from ecomvlm.eval.judge import RuleJudge, score_item_intel

    ids = sorted(set(labels) & set(reference))
    if not ids:
        return {"n": 0}
    m = score_item_intel([{"id": k, "answer": reference[k]} for k in ids], [json.dumps(labels[k]) for k in ids],
                         RuleJudge())
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in m.items()
            if k in ("f1", "precision", "recall", "verifiable_correct", "verifiable_incorrect", "unverifiable", "n")}


def load_truth(path: Path) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """A synthetic items.jsonl -> ({item id: true answer}, {absolute image path: true regions})."""
    from ecomvlm.data_modules.synth import Item

    answers, regions = {}, {}
    root = Path(path).resolve().parent
    fields = set(Item.__dataclass_fields__)
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        item = Item(**{k: v for k, v in row.items() if k in fields})
        answers[item.item_id] = item.item_intelligence_json()
        for rel, regs in (row.get("regions") or {}).items():
            regions[str((root / rel).resolve())] = regs
    return answers, regions


def box_quality(ground: dict[str, Any], crops: dict[str, Any], regions: dict[str, list[dict]],
                kinds: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Grounded boxes vs true boxes (best IoU per true region, recall at IoU 0.5) and true regions vs the crop of
    their image (share fully inside; square rule: equal sides, inside the image unless padded)."""
    from ecomvlm.data_modules.item_intel.boxes import coverage, iou

    ious, hit, n_true = [], 0, 0
    for out in ground.values():
        for im in out["images"]:
            truth = regions.get(str(Path(im["path"]).resolve()))
            if truth is None or im.get("error"):
                continue
            for r in truth:
                if kinds and r["kind"] not in kinds:
                    continue
                n_true += 1
                best = max((iou(tuple(b), tuple(r["box"])) for b in im.get("boxes", [])), default=0.0)
                ious.append(best)
                hit += best >= 0.5
    inside, n_reg, crops_n, square_ok = 0, 0, 0, 0
    cov = []
    for out in crops.values():
        originals = {im["index"]: im for im in out["images"] if im["role"] == "original"}
        for im in out["images"]:
            if im["role"] != "crop":
                continue
            crops_n += 1
            x0, y0, x1, y1 = im["box"]
            src = originals.get(im["of"])
            w, h = (src["w"], src["h"]) if src else (None, None)
            ok = x1 - x0 == y1 - y0
            if src and not im.get("padded"):
                ok = ok and x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h
            square_ok += ok
            if src is None:
                continue
            for r in regions.get(str(Path(src["path"]).resolve()), []):
                if kinds and r["kind"] not in kinds:
                    continue
                n_reg += 1
                c = coverage((x0, y0, x1, y1), tuple(r["box"]))
                cov.append(c)
                inside += c >= 0.999
    return {"true_regions": n_true, "iou_mean": round(sum(ious) / len(ious), 4) if ious else None,
            "iou_median": round(sorted(ious)[len(ious) // 2], 4) if ious else None,
            "recall_at_iou50": round(hit / n_true, 4) if n_true else None,
            "crops": crops_n, "crops_square_rule_ok": square_ok,
            "regions_in_cropped_images": n_reg, "regions_fully_inside_crop": inside,
            "region_coverage_mean": round(sum(cov) / len(cov), 4) if cov else None}


def pipeline_report(pipe: Pipeline, truth: Path | None = None, reference: Path | None = None) -> dict[str, Any]:
    rep: dict[str, Any] = {"work": str(pipe.work), "input": pipe.input_report(), "stages": {}, "cost": {}}
    n_parts = len(pipe.partitions())
    for name in STAGES:
        if not (pipe.work / name).is_dir():
            continue
        r = pipe.stage_report(name)
        rep["stages"][name] = {"partitions": n_parts, "finished": r["finished"], "fates": r["fates"],
                               "records": r["records"], "counters": r["counters"]}
        rep["cost"][name] = {k: r["counters"].get(k, 0) for k in COST_KEYS if k in r["counters"]}
        rep["cost"][name]["errors"] = {k: v for k, v in r["counters"].items() if k.startswith(("errors:", "failed:"))}
    outs = {name: pipe.outputs(name) for name in rep["stages"]}
    if "ingest" in outs:
        rep["images_per_item"] = {"originals": _stats([len(o["images"]) for o in outs["ingest"].values()])}
    if "crops" in outs:
        st = [o["stats"] for o in outs["crops"].values()]
        rep["images_per_item"].update({
            "originals_plus_region_crops": _stats([s["images_before"] for s in st]),
            "originals_plus_square_crops": _stats([s["images_squares"] for s in st]),
            "after_dedup": _stats([s["kept"] for s in st]),
            "crops_kept": _stats([sum(1 for im in o["images"] if im["role"] == "crop")
                                  for o in outs["crops"].values()]),
            "dedup_dropped": {"originals": sum(1 for s in st for d in s["dropped"] if d["key"].startswith("original")),
                              "crops": sum(1 for s in st for d in s["dropped"] if d["key"].startswith("crop"))}})
    first = {k: v["label"] for k, v in outs.get("annotate", {}).items()}
    better = {k: v["label"] for k, v in outs.get("reannotate", {}).items()}
    if first or better:
        rep["labels"] = compare_labels(first, better)
    ref_answers: dict[str, dict] = {}
    if truth:
        ref_answers, regions = load_truth(Path(truth))
        if "ground" in outs:
            rep["boxes"] = box_quality(outs["ground"], outs.get("crops", {}), regions)
            small = ("size", "ean", "barcode", "country", "model", "certifications", "warning")
            rep["boxes_small_print"] = box_quality(outs["ground"], outs.get("crops", {}), regions, small)
    if reference:
        for line in Path(reference).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                ref_answers[str(row["id"])] = row["answer"]
    if ref_answers:
        rep["label_quality"] = {"first": label_quality(first, ref_answers) if first else None,
                                "better": label_quality(better, ref_answers) if better else None}
    from ecomvlm.data_modules.item_intel.pipeline import CHAINS

    for chain, names in CHAINS.items():
        if all(n in rep["stages"] for n in names):
            rep.setdefault("accounting", {})[chain] = pipe.accounting(chain)
    return rep


def report_markdown(rep: dict[str, Any]) -> str:
    out = [f"# item-intelligence pipeline: {rep['work']}", ""]
    inp = rep["input"]
    out.append(f"input: {inp['lines']} lines, {inp['items']} items"
               + (f"; skipped {inp['skipped']}" if inp["skipped"] else ""))
    out += ["", "| stage | partitions done | fates | requests | retries | tokens (prompt/completion) | images sent "
            "| cache hits |", "|---|---|---|---|---|---|---|---|"]
    for name, s in rep["stages"].items():
        c = rep["cost"][name]
        fates = ", ".join(f"{k} {v}" for k, v in s["fates"].items())
        out.append(f"| {name} | {s['finished']}/{s['partitions']} | {fates} | {c.get('requests', '-')} | "
                   f"{c.get('retries', '-')} | {c.get('prompt_tokens', '-')}/{c.get('completion_tokens', '-')} | "
                   f"{c.get('images_sent', '-')} | {c.get('cache_hits', '-')} |")
    ipi = rep.get("images_per_item")
    if ipi:
        out += ["", "images per item (paper A.5: originals + all crops median 12 / max 43 -> after squares + pHash "
                "median 4 / max 9)", "", "| | median | max | mean |", "|---|---|---|---|"]
        for k in ("originals", "originals_plus_region_crops", "originals_plus_square_crops", "after_dedup",
                  "crops_kept"):
            if k in ipi:
                out.append(f"| {k.replace('_', ' ')} | {ipi[k]['median']} | {ipi[k]['max']} | {ipi[k]['mean']} |")
        if "dedup_dropped" in ipi:
            out.append(f"\npHash dedup dropped {ipi['dedup_dropped']['originals']} originals and "
                       f"{ipi['dedup_dropped']['crops']} crops")
    lab = rep.get("labels")
    if lab:
        f, b = lab["first_facts_per_item"], lab["better_facts_per_item"]
        out += ["", f"labels: first {f['n']} items, {f['mean']} facts/item (median {f['median']}); better {b['n']} "
                f"items, {b['mean']} facts/item (median {b['median']}); agreement (mean Jaccard of fact sets) "
                f"{lab['agreement_jaccard_mean']} over {lab['items_with_both']} items; better adds "
                f"{dict(list(lab['facts_added_by_field'].items())[:6])}"]
    q = rep.get("label_quality")
    if q:
        out += ["", "| labels vs reference | F1 | precision | recall |", "|---|---|---|---|"]
        for k, m in q.items():
            if m and m.get("n"):
                out.append(f"| {k} | {m['f1']:.1f} | {m['precision']:.1f} | {m['recall']:.1f} |")
    for key in ("boxes", "boxes_small_print"):
        bq = rep.get(key)
        if bq:
            out.append(f"\n{key.replace('_', ' ')}: {bq['true_regions']} true regions, IoU mean {bq['iou_mean']}, "
                       f"recall@0.5 {bq['recall_at_iou50']}; crops {bq['crops']} (square rule ok "
                       f"{bq['crops_square_rule_ok']}); true regions fully inside their image's crop "
                       f"{bq['regions_fully_inside_crop']}/{bq['regions_in_cropped_images']}")
    for chain, a in rep.get("accounting", {}).items():
        out.append(f"\n{chain} labels: input {a['input']} = labelled {a['labelled']} + skipped "
                   f"{sum(a['skipped'].values())} {a['skipped']} ({'balanced' if a['balanced'] else 'NOT balanced'})")
    return "\n".join(out) + "\n"


def write_report(pipe: Pipeline, truth: Path | None = None, reference: Path | None = None) -> dict[str, Any]:
    rep = pipeline_report(pipe, truth, reference)
    (pipe.work / "report.json").write_text(json.dumps(rep, indent=1, default=str) + "\n")
    (pipe.work / "report.md").write_text(report_markdown(rep))
    return rep


def field_accuracy(predictions: list[dict[str, Any]], field: str) -> dict[str, int]:
    """How one schema field (dotted path, e.g. "origin_production.country_of_origin") fared in an item_intel result's
    `predictions` (records with `prediction` text and the reference `answer`): items whose reference has it
    (`in_reference`), items whose answer states it (`answered`), and answers equal to the reference after the
    scorers' normalisation (`correct`)."""
    from ecomvlm.eval.judge import flatten_facts
    from ecomvlm.eval.scoring import normalize, parse_model_json

    out = {"correct": 0, "answered": 0, "in_reference": 0}
    for rec in predictions:
        ref = {normalize(v) for k, v in flatten_facts(rec.get("answer") or {}) if k == field}
        got = {normalize(v) for k, v in flatten_facts(parse_model_json(rec.get("prediction") or "") or {})
               if k == field}
        out["in_reference"] += bool(ref)
        out["answered"] += bool(got)
        out["correct"] += bool(ref) and got == ref
    return out
