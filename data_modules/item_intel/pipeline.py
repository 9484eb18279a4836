"""The item-intelligence data pipeline (paper 3.2.3, A.5): items -> first labels, grounding boxes, square crops,
pHash dedup, better labels -> LLaVA JSON + shards for the ``item_intel_ft`` recipes.

Stages (each a :class:`~ecomvlm.data_modules.partitions.StageRun` over the same fixed partitions of item ids, so
a SLURM array task can take its partitions through every stage without waiting for the others)::

    ingest      check, hash and cap every item's images                       -> <work>/ingest/
    annotate    teacher on the originals: first labels                        -> <work>/annotate/
    ground      grounding VLM on every original: boxes in original pixels     -> <work>/ground/
    crops       expand + merge boxes, one enclosing square per image, resize,
                pHash dedup over originals + crops                            -> <work>/crops/, <work>/crop_images/
    reannotate  teacher on the kept originals + crops: better labels          -> <work>/reannotate/
    build       LLaVA JSON + shards (first or better labels)                  -> <work>/llava/, <work>/shards/
    report      fates, counters, images per item, first vs better labels      -> <work>/report.json, report.md

``annotate`` and ``ground`` both need only ``ingest``; ``crops`` needs ``ground``; ``reannotate`` needs ``crops``.
An item an earlier stage did not write is ``dropped:upstream`` downstream (its reason is counted where it
happened), so for each training set: input items = trained + skipped by (stage, reason).

One module on purpose (~420 lines): the stage order, resume checks and the build's accounting read the
same work layout; the stages themselves are stages.py.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ecomvlm.data_modules.item_intel.boxes import Convention, CropSettings
from ecomvlm.data_modules.item_intel.dedup import DedupSettings
from ecomvlm.data_modules.item_intel.stages import (
    UPSTREAM,
    Endpoint,
    annotate_process,
    crops_process,
    ground_process,
    ingest_process,
    settings_sha,
)
from ecomvlm.data_modules.partitions import WRITTEN, StageRun, array_share, partition_ids

STAGES = ("ingest", "annotate", "ground", "crops", "reannotate")
UPSTREAM_OF = {"ingest": None, "annotate": "ingest", "ground": "ingest", "crops": "ground", "reannotate": "crops"}
CHAINS = {"first": ("ingest", "annotate"), "better": ("ingest", "ground", "crops", "reannotate")}


class StageNotReady(RuntimeError):
    """A stage was asked to run (or a set to be built) before the stages it reads finished."""


@dataclass
class PipelineConfig:
    work: Path
    items: Path | None = None  # items JSONL: {"id", "images": [paths], "metadata": {...}?}
    image_root: Path | None = None  # relative image paths are relative to this (default: the items file's folder)
    partition_size: int = 1000
    workers: int = 1
    max_images: int = 8  # images per item taken (the paper's items have 2-8)
    too_many_images: str = "cap"  # cap: take the first max_images; drop: skip the item
    teacher: Endpoint | None = None
    grounder: Endpoint | None = None
    first_prompt: str = "teacher_first_v1"
    better_prompt: str = "teacher_better_v1"
    grounding_prompt: str = "grounding_v1"
    teacher_schema: str = "strict"  # strict: every field required, empty when not visible (OpenAI strict mode)
    teacher_max_side: int | None = 2048
    teacher_max_tokens: int = 1024
    teacher_temperature: float = 0.0
    grounder_max_side: int | None = None
    grounder_max_tokens: int = 1024
    convention: Convention = field(default_factory=Convention)
    min_box_px: float = 2.0
    max_boxes: int = 64
    crop: CropSettings = field(default_factory=CropSettings)
    dedup: DedupSettings = field(default_factory=DedupSettings)
    cache_dir: Path | None = None  # default <work>/cache (share one across work folders to reuse answers)

    def __post_init__(self) -> None:
        self.work = Path(self.work)
        if self.too_many_images not in ("cap", "drop"):
            raise ValueError(f"too_many_images must be 'cap' or 'drop', got {self.too_many_images!r}")
        if self.teacher_schema not in ("strict", "plain"):
            raise ValueError(f"teacher_schema must be 'strict' or 'plain', got {self.teacher_schema!r}")
        if self.max_images < 1 or self.partition_size < 1 or self.workers < 1:
            raise ValueError("max_images, partition_size and workers must be >= 1")


# ------------------------------------------------------------------------------------------------ input
def read_items(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Items JSONL -> (records {"id", "images", "metadata"}, input report). Broken lines, records without an id or
    images field of the wrong type, and repeated ids are skipped and counted (the first of a repeated id is kept).
    ``item_id`` is accepted for ``id``, ``image`` (one path) for ``images``. Only ``metadata`` is shown to the
    teacher: other fields (e.g. the synthetic data's ground truth) are never sent."""
    recs: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    seen: set[str] = set()
    lines = 0

    def skip(reason: str, detail: str) -> None:
        skipped[reason] += 1
        ex = examples.setdefault(reason, [])
        if len(ex) < 3:
            ex.append(detail[:200])

    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            lines += 1
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                skip("broken_json", f"line {n}: {e.msg}")
                continue
            if not isinstance(rec, dict):
                skip("bad_record", f"line {n}: not a JSON object")
                continue
            key = rec.get("id", rec.get("item_id"))
            if key is None or str(key).strip() == "":
                skip("no_id", f"line {n}: no id")
                continue
            key = str(key)
            images = rec.get("images", rec.get("image", []))
            if isinstance(images, str):
                images = [images]
            if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
                skip("bad_images_field", f"line {n} ({key}): images must be a list of paths")
                continue
            if key in seen:
                skip("duplicate_id", f"line {n}: id {key!r} again")
                continue
            seen.add(key)
            meta = rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {}
            recs.append({"id": key, "images": images, "metadata": meta})
    return recs, {"file": str(path), "lines": lines, "items": len(recs), "skipped": dict(sorted(skipped.items())),
                  "examples": examples}


def _partition_outputs(stage_dir: Path, i: int) -> dict[str, Any] | None:
    """{key: output} of one finished partition of a stage, or None if it is not finished."""
    m = stage_dir / f"part-{i:06d}.done.json"
    if not m.is_file():
        return None
    doc = json.loads(m.read_text())
    out: dict[str, Any] = {}
    with open(stage_dir / doc["output"], encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            out[rec["key"]] = rec["output"]
    return out


def _stats(xs: list[int | float]) -> dict[str, Any]:
    if not xs:
        return {"n": 0, "median": None, "max": None, "mean": None}
    return {"n": len(xs), "median": statistics.median(xs), "max": max(xs), "mean": round(sum(xs) / len(xs), 3)}


# ------------------------------------------------------------------------------------------------ pipeline
class Pipeline:
    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.work = cfg.work
        self.work.mkdir(parents=True, exist_ok=True)

    # ---- input and partitions
    @property
    def input_file(self) -> Path:
        return self.work / "input.json"

    def _keys(self) -> list[str]:
        if not self.input_file.is_file():
            raise StageNotReady(f"{self.work} has no ingested items yet: run `ecomvlm data item-intel ingest --items "
                                f"ITEMS.jsonl --work {self.work}` first")
        return json.loads(self.input_file.read_text())["keys"]

    def input_report(self) -> dict[str, Any]:
        doc = json.loads(self.input_file.read_text())
        return {k: v for k, v in doc.items() if k != "keys"}

    def _stage(self, name: str, process: Callable | None = None, settings: dict[str, Any] | None = None
               ) -> StageRun:
        return StageRun(name, self.work, process or (lambda r, s: iter(())), settings or {},
                        partition_size=self.cfg.partition_size, workers=self.cfg.workers)

    def partitions(self) -> list[list[str]]:
        return partition_ids(self._keys(), self.cfg.partition_size)

    # ---- settings of each stage (what changes its output; hashed into every partition digest)
    def _teacher_settings(self, kind: str) -> dict[str, Any]:
        from ecomvlm.data_modules.item_intel.prompts import load_prompt
        from ecomvlm.data_modules.item_intel.schema import ITEM_INTEL_PROMPT, ITEM_INTEL_SCHEMA, strict_schema

        if self.cfg.teacher is None:
            raise ValueError(f"the {'annotate' if kind == 'first' else 'reannotate'} stage needs a teacher endpoint "
                             f"(--teacher-url and --teacher-model)")
        p = load_prompt(self.cfg.first_prompt if kind == "first" else self.cfg.better_prompt, "teacher")
        schema = strict_schema() if self.cfg.teacher_schema == "strict" else ITEM_INTEL_SCHEMA
        return {"label_kind": kind, "model": self.cfg.teacher.model,
                "prompt": {**p.fields, "version": p.version, "sha256": p.sha256},
                "instruction": ITEM_INTEL_PROMPT, "schema": schema, "schema_sha256": settings_sha(schema),
                "max_side": self.cfg.teacher_max_side, "max_tokens": self.cfg.teacher_max_tokens,
                "temperature": self.cfg.teacher_temperature}

    def stage_settings(self, name: str) -> dict[str, Any]:
        c = self.cfg
        if name == "ingest":
            root = c.image_root or (c.items.parent if c.items else None)
            return {"image_root": str(Path(root).resolve()) if root else "", "max_images": c.max_images,
                    "too_many_images": c.too_many_images}
        if name == "annotate":
            return self._teacher_settings("first")
        if name == "reannotate":
            return self._teacher_settings("better")
        if name == "ground":
            from ecomvlm.data_modules.item_intel.prompts import load_prompt

            if c.grounder is None:
                raise ValueError("the ground stage needs a grounding endpoint (--grounder-url and --grounder-model)")
            p = load_prompt(c.grounding_prompt, "grounding")
            return {"model": c.grounder.model, "prompt": {**p.fields, "version": p.version, "sha256": p.sha256},
                    "convention": asdict(c.convention), "max_side": c.grounder_max_side,
                    "max_tokens": c.grounder_max_tokens, "min_box_px": c.min_box_px, "max_boxes": c.max_boxes}
        if name == "crops":
            return {"crop": asdict(c.crop), "dedup": asdict(c.dedup), "crops_dir": str(self.crops_dir.resolve())}
        raise ValueError(f"unknown stage {name!r}; stages: {list(STAGES)}")

    @property
    def crops_dir(self) -> Path:
        return self.work / "crop_images"

    def _runtime(self, name: str) -> dict[str, Any]:
        cache = Path(self.cfg.cache_dir) if self.cfg.cache_dir else self.work / "cache"
        rt: dict[str, Any] = {"cache_dir": str(cache / ("grounding" if name == "ground" else "teacher"))}
        if name in ("annotate", "reannotate"):
            rt["endpoint"] = self.cfg.teacher
        elif name == "ground":
            rt["endpoint"] = self.cfg.grounder
        elif name == "crops":
            rt["crops_dir"] = str(self.crops_dir.resolve())
        return rt

    # ---- running a stage
    def run_stage(self, name: str, progress: Callable[[int, int], None] | None = None,
                  only: list[int] | None = None) -> dict[str, Any]:
        """Run this array task's (or every) unfinished partition of one stage; returns its report."""
        process = {"ingest": ingest_process, "annotate": annotate_process, "ground": ground_process,
                   "crops": crops_process, "reannotate": annotate_process}.get(name)
        if process is None:
            raise ValueError(f"unknown stage {name!r}; stages: {list(STAGES)}")
        settings = self.stage_settings(name)
        fn = functools.partial(process, runtime=self._runtime(name))
        if name == "ingest":
            records = self._ingest_records()
            keys = [r["id"] for r in records]
        else:
            keys = self._keys()
        parts = partition_ids(keys, self.cfg.partition_size)
        mine = array_share(len(parts)) if only is None else only
        if name != "ingest":
            records = self._stage_records(name, keys, parts, mine)
        stage = self._stage(name, fn, settings)
        rep = stage.run(records, progress=progress, only=mine)
        rep["array_partitions"] = mine if len(mine) != len(parts) else "all"
        return rep

    def _ingest_records(self) -> list[dict[str, Any]]:
        if self.cfg.items is None:
            raise ValueError("the ingest stage needs --items ITEMS.jsonl")
        recs, info = read_items(Path(self.cfg.items))
        doc = {**info, "keys": [r["id"] for r in recs]}
        tmp = self.input_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc) + "\n")
        os.replace(tmp, self.input_file)
        return recs

    def _stage_records(self, name: str, keys: list[str], parts: list[list[str]], mine: list[int]
                       ) -> list[dict[str, Any]]:
        """Every key as a record: full records (built from the upstream stage's outputs) for the partitions this task
        runs, bare ones elsewhere (StageRun uses those only to cut the same partitions)."""
        up = UPSTREAM_OF[name]
        up_dir = self.work / up
        full: dict[str, dict[str, Any]] = {}
        missing = []
        for i in mine:
            outs = _partition_outputs(up_dir, i)
            if outs is None:
                missing.append(i)
                continue
            for k in parts[i]:
                if k in outs:
                    full[k] = {"id": k, **self._from_upstream(name, outs[k])}
                else:
                    full[k] = {"id": k, UPSTREAM: f"not written by {up}"}
        if missing:
            more = f" (and {len(missing) - 8} more)" if len(missing) > 8 else ""
            raise StageNotReady(f"stage {name} reads {up}, whose partitions {missing[:8]}{more} are not finished; run "
                                f"`ecomvlm data item-intel {up}` (same --work and --partition-size) first")
        return [full.get(k, {"id": k}) for k in keys]

    @staticmethod
    def _from_upstream(name: str, out: dict[str, Any]) -> dict[str, Any]:
        if name in ("annotate", "ground"):  # from ingest
            return {"images": out["images"], "metadata": out.get("metadata") or {}}
        if name == "crops":  # from ground: its images carry the boxes (and pass the metadata on)
            return {"images": out["images"], "metadata": out.get("metadata") or {}}
        return {"images": out["images"], "metadata": out.get("metadata") or {}}  # reannotate, from crops

    def run(self, stages: list[str] | None = None, progress: Callable[[str, int, int], None] | None = None
            ) -> dict[str, Any]:
        """Run stages in order (default: all five); returns {stage: report}."""
        out = {}
        for name in stages or STAGES:
            out[name] = self.run_stage(name, (lambda d, t, n=name: progress(n, d, t)) if progress else None)
        return out

    # ---- results
    def stage_report(self, name: str) -> dict[str, Any]:
        rep = self._stage(name).report(len(self.partitions()))
        return rep

    def outputs(self, name: str) -> dict[str, Any]:
        return dict(self._stage(name).outputs())

    def require_finished(self, names: tuple[str, ...] | list[str]) -> None:
        n = len(self.partitions())
        behind = []
        for name in names:
            done = {int(p.name.split("-")[1].split(".")[0]) for p in (self.work / name).glob("part-*.done.json")}
            lacking = [i for i in range(n) if i not in done]
            if lacking:
                behind.append(f"{name}: partitions {lacking[:8]}{' ...' if len(lacking) > 8 else ''} of {n}")
        if behind:
            raise StageNotReady("not finished: " + "; ".join(behind) + " (run those stages, or wait for the array "
                                "tasks that run them)")

    def accounting(self, chain: str) -> dict[str, Any]:
        """input items = trained + skipped by (stage, reason) along the stages a training set passes."""
        inp = self.input_report()
        skipped: Counter = Counter({f"input:{k}": v for k, v in inp["skipped"].items()})
        written = 0
        for name in CHAINS[chain]:
            fates = self.stage_report(name)["fates"]
            for fate, n in fates.items():
                if fate == WRITTEN:
                    written = n
                elif fate != f"dropped:{UPSTREAM}":
                    skipped[f"{name}:{fate}"] += n
        return {"input": inp["lines"], "labelled": written, "skipped": dict(sorted(skipped.items())),
                "balanced": written + sum(skipped.values()) == inp["lines"]}

    def build(self, labels: str = "better", images: str | None = None, name: str | None = None, *,
              shards: bool = True, samples_per_shard: int = 1000, shard_workers: int = 1, resize=None,
              rebuild: bool = False, shards_dir: Path | None = None) -> dict[str, Any]:
        """LLaVA JSON (+ shards through ``make_shards``) of one training set: ``labels`` first|better, ``images``
        originals|kept (default: the images the labels were made from). Shards go to ``<shards_dir>/<name>``
        (default ``<work>/shards``)."""
        from ecomvlm.data_modules.chat_templates import IMAGE_TOKEN
        from ecomvlm.data_modules.item_intel.schema import ITEM_INTEL_PROMPT

        if labels not in CHAINS:
            raise ValueError(f"labels must be 'first' or 'better', got {labels!r}")
        images = images or ("originals" if labels == "first" else "kept")
        if images not in ("originals", "kept"):
            raise ValueError(f"images must be 'originals' or 'kept', got {images!r}")
        chain = CHAINS[labels] + (("crops",) if images == "kept" and labels == "first" else ())
        self.require_finished(chain)
        name = name or f"{labels}_{images}"
        label_out = self.outputs("annotate" if labels == "first" else "reannotate")
        image_out = self.outputs("ingest" if images == "originals" else "crops")
        recs, no_images = [], 0
        n_images = []
        for key in self._keys():
            lab = label_out.get(key)
            if lab is None:
                continue
            ims = image_out.get(key)
            if ims is None:  # first labels with kept images, for an item the crop stage did not write
                no_images += 1
                continue
            paths = [im["path"] for im in ims["images"]]
            n_images.append(len(paths))
            recs.append({"id": f"{key}-ii", "image": paths, "conversations": [
                {"from": "human", "value": (IMAGE_TOKEN + "\n") * len(paths) + ITEM_INTEL_PROMPT},
                {"from": "gpt", "value": json.dumps(lab["label"], ensure_ascii=False)}],
                "label_source": {"kind": lab["kind"], "prompt": lab["prompt"], "model": lab["model"]}})
        acct = self.accounting(labels)
        if no_images:
            acct["skipped"]["crops:not_written"] = no_images
            acct["labelled"] -= no_images
        llava = self.work / "llava" / f"{name}.json"
        llava.parent.mkdir(parents=True, exist_ok=True)
        tmp = llava.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(recs, indent=1, ensure_ascii=False) + "\n")
        os.replace(tmp, llava)
        out: dict[str, Any] = {"name": name, "labels": labels, "images": images, "records": len(recs),
                               "llava_json": str(llava), "images_per_item": _stats(n_images), "accounting": acct}
        if shards:
            from ecomvlm.data_modules.shards import ShardConfig, make_shards

            dest = Path(shards_dir or self.work / "shards") / name
            m = make_shards(ShardConfig([llava], dest, image_root=self.work, samples_per_shard=samples_per_shard,
                                        workers=shard_workers, resize=resize, rebuild=rebuild))
            out["shards"] = str(dest)
            out["shard_samples"] = m["samples"]
            out["shard_skipped"] = m["skipped"]
            acct["trained"] = m["samples"]
            for reason, n in m["skipped"].items():
                acct["skipped"][f"shards:{reason}"] = n
            acct["balanced"] = acct["trained"] + sum(acct["skipped"].values()) == acct["input"]
        (self.work / "llava" / f"{name}.build.json").write_text(json.dumps(out, indent=1) + "\n")
        return out

    def with_config(self, **changes: Any) -> "Pipeline":
        return Pipeline(replace(self.cfg, **changes))
