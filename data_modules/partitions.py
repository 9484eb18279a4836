"""Partition workers: the unit of work of every data stage that calls models (curation, item intelligence).

A stage's records are cut into fixed partitions of record ids (sorted, ``partition_size`` each). A partition is
processed by one worker, which

- appends each finished record to ``<stage>/<partition>.partial.jsonl`` as it goes (a killed worker loses at most the
  records in flight; the next run reads them back and does only the rest),
- then writes ``<stage>/<partition>-<digest>.jsonl`` through a temp file + rename, and a manifest
  ``<stage>/<partition>.done.json`` with the fate of every record (written, dropped by reason, failed by reason), so
  written + dropped + failed = records of the partition.

``digest`` hashes the partition's input records and the stage's settings (prompt versions + sha256, models, options):
a re-run with the same inputs skips finished partitions; changed inputs or prompts re-do exactly the partitions they
touch (a finished partition whose digest differs is re-done, its old output removed).

The same partitions run as a process pool on one machine (``workers``) or as a SLURM job array (each array task takes
the partitions ``i`` with ``i % SLURM_ARRAY_TASK_COUNT == SLURM_ARRAY_TASK_ID``; ``ecomvlm launch`` submits it).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

WRITTEN = "written"


@dataclass
class Fate:
    """What became of one record: ``written`` (with its output), ``dropped:<reason>`` (by design: e.g. no visible
    aspect) or ``failed:<reason>`` (an endpoint or the data let it down, after retries)."""

    key: str
    fate: str
    output: Any = None
    detail: str = ""

    @classmethod
    def written(cls, key: str, output: Any) -> "Fate":
        return cls(key, WRITTEN, output)

    @classmethod
    def dropped(cls, key: str, reason: str, detail: str = "") -> "Fate":
        return cls(key, f"dropped:{reason}", None, detail)

    @classmethod
    def failed(cls, key: str, reason: str, detail: str = "") -> "Fate":
        return cls(key, f"failed:{reason}", None, detail)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def partition_ids(keys: Iterable[str], size: int) -> list[list[str]]:
    """Sorted record keys cut into partitions of `size` (the last may be shorter). Fixed: the same keys always give
    the same partitions, whatever order they were read in."""
    if size < 1:
        raise ValueError(f"partition size must be >= 1, got {size}")
    keys = sorted(set(keys))
    return [keys[i:i + size] for i in range(0, len(keys), size)]


def array_share(n_partitions: int, task_id: int | None = None, task_count: int | None = None) -> list[int]:
    """The partitions one SLURM array task takes (every partition when not in an array)."""
    task_id = int(os.environ.get("SLURM_ARRAY_TASK_ID", -1)) if task_id is None else task_id
    task_count = int(os.environ.get("SLURM_ARRAY_TASK_COUNT", 0)) if task_count is None else task_count
    if task_id < 0 or task_count <= 0:
        return list(range(n_partitions))
    if task_id >= task_count:
        raise ValueError(f"array task {task_id} of {task_count}: SLURM_ARRAY_TASK_ID must be < SLURM_ARRAY_TASK_COUNT")
    return [i for i in range(n_partitions) if i % task_count == task_id]


@dataclass
class StageRun:
    """One stage over partitions. ``process(records, settings, done_keys) -> iterator of Fate`` runs in a worker
    process; it must be a module-level function (it is pickled to the pool)."""

    name: str
    out_dir: Path
    process: Callable[[list[dict[str, Any]], dict[str, Any]], Iterable[Fate]]
    settings: dict[str, Any] = field(default_factory=dict)
    partition_size: int = 1000
    workers: int = 1

    @property
    def stage_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def run(self, records: list[dict[str, Any]], key_field: str = "id",
            progress: Callable[[int, int], None] | None = None, only: list[int] | None = None) -> dict[str, Any]:
        """Process every partition not finished yet (or those of this array task); returns the stage report.
        Records are identified by ``record[key_field]`` (unique)."""
        by_key: dict[str, dict[str, Any]] = {}
        for r in records:
            if key_field not in r:
                raise ValueError(f"stage {self.name}: a record has no {key_field!r}: {str(r)[:120]}")
            k = str(r[key_field])
            if k in by_key:
                raise ValueError(f"stage {self.name}: two records with key {k!r}; keys must be unique")
            by_key[k] = r
        parts = partition_ids(by_key, self.partition_size)
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        mine = array_share(len(parts)) if only is None else only
        todo = []
        for i in mine:
            recs = [by_key[k] for k in parts[i]]
            d = digest({"records": recs, "settings": self.settings})
            if _done(self.stage_dir, i, d) is None:
                todo.append((i, recs, d))
        t0 = time.perf_counter()
        done = len(mine) - len(todo)
        if progress:
            progress(done, len(mine))
        args = [(self.stage_dir, i, recs, d, self.process, self.settings, key_field) for i, recs, d in todo]
        if self.workers > 1 and len(args) > 1:
            with ProcessPoolExecutor(min(self.workers, len(args)), mp_context=get_context("spawn")) as pool:
                for _ in pool.map(_run_partition, args):
                    done += 1
                    if progress:
                        progress(done, len(mine))
        else:
            for a in args:
                _run_partition(a)
                done += 1
                if progress:
                    progress(done, len(mine))
        report = self.report(len(parts))
        report["seconds"] = time.perf_counter() - t0
        report["partitions_run"] = len(todo)
        return report

    def report(self, n_partitions: int | None = None) -> dict[str, Any]:
        """Fates summed over finished partitions; every record of a finished partition has exactly one."""
        fates: Counter = Counter()
        counters: Counter = Counter()
        finished = 0
        for m in sorted(self.stage_dir.glob("*.done.json")):
            doc = json.loads(m.read_text())
            fates.update(doc["fates"])
            counters.update(doc.get("counters", {}))
            finished += 1
        return {"stage": self.name, "partitions": n_partitions, "finished": finished,
                "fates": dict(sorted(fates.items())), "records": sum(fates.values()),
                "counters": dict(sorted(counters.items()))}

    def outputs(self) -> Iterator[tuple[str, Any]]:
        """(key, output) of every written record of the finished partitions, in partition then key order."""
        for m in sorted(self.stage_dir.glob("*.done.json")):
            doc = json.loads(m.read_text())
            with open(self.stage_dir / doc["output"], encoding="utf-8") as f:
                for line in f:
                    rec = json.loads(line)
                    yield rec["key"], rec["output"]


def _partition_name(i: int) -> str:
    return f"part-{i:06d}"


def _done(stage_dir: Path, i: int, d: str) -> dict[str, Any] | None:
    m = stage_dir / f"{_partition_name(i)}.done.json"
    if not m.is_file():
        return None
    doc = json.loads(m.read_text())
    if doc.get("digest") == d and (stage_dir / doc["output"]).is_file():
        return doc
    # finished with other inputs or settings: its output is stale, the partition is done again
    (stage_dir / doc.get("output", "-")).unlink(missing_ok=True)
    m.unlink()
    return None


def _run_partition(args) -> None:
    stage_dir, i, records, d, process, settings, key_field = args

    def key(r):
        return str(r[key_field])

    name = _partition_name(i)
    partial = stage_dir / f"{name}.partial.jsonl"
    seen: dict[str, dict[str, Any]] = {}
    if partial.is_file():
        stale = False
        with open(partial, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # the line a kill cut short
                    continue
                if rec.get("digest") != d:
                    stale = True
                    break
                seen[rec["key"]] = rec
        if stale:
            seen = {}
            partial.unlink()
    counters: Counter = Counter()
    todo = [r for r in records if key(r) not in seen]
    with open(partial, "a", encoding="utf-8") as f:
        for fate in process(todo, {**settings, "_counters": counters}):
            rec = {"digest": d, "key": fate.key, "fate": fate.fate, "output": fate.output, "detail": fate.detail}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            seen[fate.key] = rec
    missing = [key(r) for r in records if key(r) not in seen]
    for k in missing:  # a process() that forgot a record: never silently lost
        seen[k] = {"key": k, "fate": "failed:no_result", "output": None, "detail": "the stage returned nothing"}
    out_name = f"{name}-{d}.jsonl"
    tmp = stage_dir / f"{out_name}.tmp"
    fates: Counter = Counter()
    examples: dict[str, list[str]] = {}
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            rec = seen[key(r)]
            fates[rec["fate"]] += 1
            if rec["fate"] == WRITTEN:
                f.write(json.dumps({"key": rec["key"], "output": rec["output"]}, ensure_ascii=False) + "\n")
            elif rec.get("detail"):
                ex = examples.setdefault(rec["fate"], [])
                if len(ex) < 3:
                    ex.append(f"{rec['key']}: {rec['detail']}"[:300])
    os.replace(tmp, stage_dir / out_name)
    manifest = {"partition": i, "digest": d, "output": out_name, "records": len(records), "fates": dict(fates),
                "examples": examples, "counters": dict(counters)}
    done = stage_dir / f"{name}.done.json"
    done_tmp = stage_dir / f"{name}.done.json.tmp"
    done_tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(done_tmp, done)
    partial.unlink(missing_ok=True)
