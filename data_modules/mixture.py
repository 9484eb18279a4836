"""Data mixtures in the LLaVA-NeXT / paper Appendix A.6 YAML format, made reproducible.

    datasets:
      - json_path: llava_ov/LLaVA-ReCap-558K.json
        sampling_strategy: all            # all | first:N | first:N% | end:N | end:N% | random:N | random:N%
        image_root: images/               # optional extension: where this file's image paths are relative to

Semantics follow LLaVA-NeXT where they are sane: N% of a file of L records is ceil(N * L / 100); ``first`` keeps
the head, ``end`` the tail. Differences (deliberate): percents may be fractional (``first:2.5%``) and are computed
exactly (``first:0.07%`` of 10000 is 7, not float's 8); ``random`` is seeded by the mixture seed and the source's
name, so the same YAML + seed selects the same records on every machine (LLaVA-NeXT shuffles with the global RNG);
``end:0`` selects nothing (LLaVA-NeXT's ``[-0:]`` returns all); an unknown strategy or a malformed number is an error
(LLaVA-NeXT silently keeps the whole file).

Relative ``json_path``/``image_root`` are relative to ``root`` when one is given (``--data-root``, the folder holding
a local copy of the data, so one YAML serves every machine), else to the YAML file's folder. Each source is named by
its path relative to the common folder of all sources (``a/train.jsonl`` and ``b/train.jsonl`` stay apart); a file
listed twice gets ``#2`` appended.
"""

from __future__ import annotations

import math
import os
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

STRATEGIES = ("all", "first", "end", "random")
_NUM = re.compile(r"^(\d+(?:\.\d+)?)(%?)$")


@dataclass(frozen=True)
class MixtureEntry:
    json_path: Path
    sampling_strategy: str = "all"
    image_root: Path | None = None

    def parse(self) -> tuple[str, Fraction | None, bool]:
        """-> (strategy, number, is_percent). Raises ValueError on anything it does not understand."""
        s = str(self.sampling_strategy).strip()
        if s == "all":
            return "all", None, False
        name, sep, num = s.partition(":")
        if name not in STRATEGIES or name == "all" or not sep:
            raise ValueError(f"{self.json_path}: unknown sampling_strategy {s!r}; use all, first:N, first:N%, "
                             f"end:N, end:N%, random:N or random:N%")
        m = _NUM.match(num.strip())
        if not m:
            raise ValueError(f"{self.json_path}: sampling_strategy {s!r} needs a non-negative number, e.g. "
                             f"{name}:1000 or {name}:10%")
        value, pct = Fraction(m.group(1)), bool(m.group(2))
        if pct and value > 100:
            raise ValueError(f"{self.json_path}: {s!r} asks for more than 100%")
        if not pct and value != int(value):
            raise ValueError(f"{self.json_path}: {s!r}: a count must be a whole number (or use a percent)")
        return name, value, pct

    def count(self, total: int) -> int:
        name, value, pct = self.parse()
        if name == "all":
            return total
        n = math.ceil(value * total / 100) if pct else int(value)  # Fraction: exact
        return min(n, total)

    def select(self, n_records: int, seed: int, name: str | None = None) -> list[int]:
        """Indices of the records this entry keeps, in the order they will be used."""
        name, _, _ = self.parse()
        n = self.count(n_records)
        idx = list(range(n_records))
        if name in ("all", "first"):
            return idx[:n]
        if name == "end":
            return idx[n_records - n:] if n else []
        rng = random.Random(f"ecomvlm-mixture:{seed}:{name or self.json_path.name}")
        rng.shuffle(idx)
        return idx[:n]


def load_mixture(path: str | Path, root: str | Path | None = None) -> list[MixtureEntry]:
    """The entries of a mixture YAML; relative paths resolved against `root` (else the YAML's folder)."""
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    if root is not None and not base.is_dir():
        raise FileNotFoundError(f"data root {base} is not a folder (it should hold the local copy of the data that "
                                f"{path}'s json_path entries are relative to)")
    if not path.is_file():
        raise FileNotFoundError(f"mixture file {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("datasets"), list) or not doc["datasets"]:
        raise ValueError(f"{path}: expected a top-level 'datasets:' list of {{json_path, sampling_strategy}}")
    out = []
    for i, d in enumerate(doc["datasets"]):
        if not isinstance(d, dict) or "json_path" not in d:
            raise ValueError(f"{path}: datasets[{i}] needs a json_path")
        unknown = set(d) - {"json_path", "sampling_strategy", "image_root"}
        if unknown:
            raise ValueError(f"{path}: datasets[{i}] has unknown keys {sorted(unknown)}")
        jp = Path(d["json_path"])
        img_root = Path(d["image_root"]) if d.get("image_root") else None
        entry = MixtureEntry(json_path=jp if jp.is_absolute() else base / jp,
                             sampling_strategy=str(d.get("sampling_strategy", "all")),
                             image_root=(img_root if img_root is None or img_root.is_absolute() else base / img_root))
        entry.parse()  # fail at load time, not halfway through sharding
        out.append(entry)
    return out


@dataclass
class ResolvedSource:
    entry: MixtureEntry
    name: str  # unique among the mixture's sources (see source_names)
    total: int
    indices: list[int]


def source_names(entries: list[MixtureEntry]) -> list[str]:
    """A unique, readable name per entry: its path relative to the common folder of all entries."""
    paths = [os.path.abspath(e.json_path) for e in entries]
    common = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
    names, seen = [], {}
    for p in paths:
        name = os.path.relpath(p, common).replace(os.sep, "/")
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return names


def resolve(entries: list[MixtureEntry], totals: list[int], seed: int) -> list[ResolvedSource]:
    return [ResolvedSource(e, name, t, e.select(t, seed, name))
            for e, name, t in zip(entries, source_names(entries), totals)]


def counts_table(resolved: list[ResolvedSource]) -> Any:
    from rich.table import Table

    table = Table(title="resolved mixture")
    for col, just in (("dataset", "left"), ("strategy", "left"), ("records", "right"), ("selected", "right")):
        table.add_column(col, justify=just)
    for r in resolved:
        table.add_row(r.name, r.entry.sampling_strategy, str(r.total), str(len(r.indices)))
    table.add_row("total", "", str(sum(r.total for r in resolved)), str(sum(len(r.indices) for r in resolved)))
    return table
