"""The item-intelligence effect on synthetic data (paper Table 3: "Finetuned" vs "Finetuned with Better Labels", and
crops at inference), for the CPU demo.

:func:`build_demo_sets` synthesises products whose back and label prints are small (legible at the original's
resolution and in a crop, not in a full view downscaled to the tiny encoder's 64 px), then runs the real pipeline
(ingest -> first labels -> grounding -> square crops -> pHash dedup -> better labels -> LLaVA JSON + shards) against
the scripted stand-ins of scripted.py served over loopback HTTP: there is no hosted LLM in the demo, so the
"teacher" reads the synthetic truth restricted to what is legible in the images it is sent, and the "grounder"
returns noisy true boxes of the printed regions in Qwen2.5-VL's resized-pixel convention. It writes

- ``<shards_dir>/item_intel_first``: first labels on the original photos (the "Finetuned" rows);
- ``<shards_dir>/item_intel_better``: better labels on the kept originals + crops ("Finetuned with Better Labels");
- the eval side: the synthetic data's ``eval/item_intel.jsonl`` (``--data``) and the grounding boxes of its items
  (``eval_boxes.jsonl``) for ``ecomvlm eval --item-intel-strategies all,crops --item-intel-boxes eval_boxes.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

# the regions the demo's grounder returns: the small print (the front's brand is legible without a crop)
SMALL_PRINT_KINDS = ("size", "ean", "barcode", "country", "model", "certifications", "warning")


def write_pipeline_items(root: Path) -> dict[str, Path]:
    """items.jsonl of a synthetic dataset -> the pipeline's input per split (id + images only: no truth leaks)."""
    rows = [json.loads(line) for line in (Path(root) / "items.jsonl").read_text().splitlines() if line.strip()]
    out = {}
    for split in sorted({r["split"] for r in rows}):
        path = Path(root) / f"pipeline_items_{split}.jsonl"
        path.write_text("".join(json.dumps({"id": r["item_id"], "images": r["images"]}) + "\n"
                                for r in rows if r["split"] == split))
        out[split] = path
    return out


def synth_for_demo(out: Path, n: int = 300, n_eval: int = 60, seed: int = 0, image_size: int = 192,
                   small_print: float = 0.035, max_images: int = 3, print_codes: bool = False,
                   min_images: int = 1) -> dict[str, Any]:
    """A synthetic dataset whose back/label prints are too small to read in a view downscaled to 64 px (text of
    ``small_print * image_size`` pixels: 7 px at 192, 2.3 px at 64), with the true region boxes (items.jsonl
    `regions`). ``max_images=3``: front, back, label (+ their crops this stays within the tiny model's context)."""
    from ecomvlm.data_modules.synth import SynthConfig, synthesize

    return synthesize(SynthConfig(out=Path(out), n=n, n_eval=n_eval, seed=seed, image_size=image_size,
                                  small_print=small_print, regions=True, max_images=max_images,
                                  min_images=min_images, print_codes=print_codes))


def build_item_intel_sets(data: Path, work: Path, *, crop_size: int = 64, min_crop_px: int = 32,
                          partition_size: int = 100,
                          teacher_view_px: int = 96, min_text_px: float = 4.0, grounder_noise: float = 0.08,
                          grounder_kinds: tuple[str, ...] | None = SMALL_PRINT_KINDS, phash_threshold: int = 8,
                          shards: bool = True, shards_dir: Path | None = None, samples_per_shard: int = 500,
                          resize=None, names: tuple[str, str] = ("first_originals", "better_kept"),
                          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the pipeline on `data` (a synthetic dataset with regions, e.g. from :func:`synth_for_demo`) with the
    scripted stand-ins; returns {"sets": {name: build summary}, "eval_boxes": path, "report": report dict,
    "eval_report": ...}.

    `crop_size`: the demo encoder's square input (tiny SigLIP: 64). `teacher_view_px` / `min_text_px`: the scripted
    teacher reads a print when it is at least `min_text_px` tall with the image shown at `teacher_view_px`. The eval
    items are grounded too (same grounder) for the crops inference strategy. `resize`: a shards ResizeRule (e.g.
    ``resize_rule_for("tiny_siglip_qwen3")``) to store the images at the encoder's resolution."""
    from ecomvlm.data_modules.item_intel.boxes import Convention, CropSettings
    from ecomvlm.data_modules.item_intel.dedup import DedupSettings
    from ecomvlm.data_modules.item_intel.inference import write_boxes_file
    from ecomvlm.data_modules.item_intel.pipeline import Pipeline, PipelineConfig
    from ecomvlm.data_modules.item_intel.report import write_report
    from ecomvlm.data_modules.item_intel.scripted import (
        SyntheticNoisyGrounder,
        SyntheticTruthTeacher,
        SyntheticWorld,
        serve,
    )
    from ecomvlm.data_modules.item_intel.stages import Endpoint

    data, work = Path(data), Path(work)
    say = progress or (lambda s: None)
    items = write_pipeline_items(data)
    world = SyntheticWorld.load(data)
    teacher = SyntheticTruthTeacher(world, view_px=teacher_view_px, min_text_px=min_text_px)
    grounder = SyntheticNoisyGrounder(world, convention="resized_pixels", noise=grounder_noise, kinds=grounder_kinds)
    out: dict[str, Any] = {"sets": {}}
    with serve(teacher) as t_url, serve(grounder) as g_url:
        common = dict(partition_size=partition_size, convention=Convention("resized_pixels"),
                      crop=CropSettings(crop_size=crop_size, min_crop_px=min(min_crop_px, crop_size)),
                      dedup=DedupSettings(phash_threshold),
                      teacher=Endpoint(t_url, "scripted-synthetic-truth-teacher", concurrency=4, backoff_s=0.05),
                      grounder=Endpoint(g_url, "scripted-noisy-grounder", concurrency=4, backoff_s=0.05))
        pipe = Pipeline(PipelineConfig(work=work / "train", items=items["train"], **common))
        for stage in ("ingest", "annotate", "ground", "crops", "reannotate"):
            say(f"item-intel train: {stage}")
            pipe.run_stage(stage)
        for labels, name in zip(("first", "better"), names):
            say(f"item-intel train: build {name}")
            b = pipe.build(labels, name=name, shards=shards, samples_per_shard=samples_per_shard, resize=resize,
                           rebuild=True, shards_dir=shards_dir)
            out["sets"][name] = b
        out["report"] = write_report(pipe, truth=data / "items.jsonl")
        if "eval" in items:
            ev = Pipeline(PipelineConfig(work=work / "eval", items=items["eval"], **common))
            for stage in ("ingest", "ground", "crops"):
                say(f"item-intel eval: {stage}")
                ev.run_stage(stage)
            out["eval_boxes"] = str(work / "eval_boxes.jsonl")
            write_boxes_file(ev.outputs("ground"), work / "eval_boxes.jsonl", data)
            out["eval_report"] = write_report(ev, truth=data / "items.jsonl")
    (work / "sets.json").write_text(json.dumps({k: v for k, v in out.items() if not k.endswith("report")},
                                               indent=1, default=str) + "\n")
    return out


def build_demo_sets(workdir: Path, data_dir: Path | None = None, *, items: int = 300, eval_items: int = 40,
                    image_size: int = 192, small_print: float = 0.035, max_images: int = 3, min_images: int = 1,
                    seed: int = 0,
                    encoder_model: str | None = "tiny_siglip_qwen3", crop_size: int = 64, min_crop_px: int = 16,
                    print_codes: bool = True,
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The demo's item-intelligence data, through the real pipeline with scripted teacher and grounder.

    Writes the small-print synthetic dataset to `data_dir` (default ``<workdir>/item_intel_data``), the pipeline's
    work to ``<workdir>/item_intel``, and two shard folders the ``item_intel_ft`` recipe trains on:
    ``<workdir>/shards/item_intel_first`` (first labels, originals) and ``<workdir>/shards/item_intel_better``
    (better labels, originals + crops). Images are stored at `encoder_model`'s input resolution (None: as they
    are). `print_codes`: the small print is the country as a colour swatch (render.py), which a tiny encoder can
    learn to name; False draws the full text stickers (EAN digits, model numbers, warnings). Returns::

        {"data": eval --data folder (eval/item_intel.jsonl of the small-print items),
         "shards": {"first": folder name under <workdir>/shards, "better": ...},
         "llava_json": {"first": the LLaVA JSON of the first-label set, "better": ...},
         "shard_paths": {"first": path, "better": path},
         "eval_boxes": boxes file for --item-intel-boxes / evaluate(item_intel_boxes=...),
         "crop_size", "min_crop_px": the crop settings (evaluate(crop=CropSettings(crop_size=.., min_crop_px=..))),
         "summary": {images per item, facts per item, label F1 of both sets, box IoU, seconds}}
    """
    import time

    workdir = Path(workdir)
    data = Path(data_dir) if data_dir else workdir / "item_intel_data"
    say = progress or (lambda s: None)
    t0 = time.perf_counter()
    say(f"item-intel data: {items} + {eval_items} small-print items at {image_size} px")
    synth_for_demo(data, n=items, n_eval=eval_items, seed=seed, image_size=image_size, small_print=small_print,
                   max_images=max_images, min_images=min_images, print_codes=print_codes)
    resize = None
    if encoder_model:
        from ecomvlm.data_modules.shards import resize_rule_for

        resize = resize_rule_for(encoder_model)
    names = ("item_intel_first", "item_intel_better")
    out = build_item_intel_sets(data, workdir / "item_intel", crop_size=crop_size, min_crop_px=min_crop_px,
                                shards_dir=workdir / "shards", resize=resize, names=names, progress=progress)
    rep = out["report"]
    lab, q = rep.get("labels", {}), rep.get("label_quality", {})
    summary = {"images_per_item": {k: rep["images_per_item"][k] for k in ("originals", "originals_plus_square_crops",
                                                                          "after_dedup")},
               "first_facts_per_item": lab.get("first_facts_per_item", {}).get("mean"),
               "better_facts_per_item": lab.get("better_facts_per_item", {}).get("mean"),
               "label_f1": {k: (v or {}).get("f1") for k, v in q.items()},
               "box_iou_mean": rep.get("boxes_small_print", {}).get("iou_mean"),
               "seconds": round(time.perf_counter() - t0, 1)}
    return {"data": str(data), "shards": {"first": names[0], "better": names[1]},
            "shard_paths": {"first": out["sets"][names[0]]["shards"], "better": out["sets"][names[1]]["shards"]},
            "llava_json": {k: out["sets"][n]["llava_json"] for k, n in zip(("first", "better"), names)},
            "eval_boxes": out.get("eval_boxes"), "crop_size": crop_size, "min_crop_px": min_crop_px,
            "summary": summary}
