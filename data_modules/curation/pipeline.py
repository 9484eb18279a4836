"""The curation pipeline (paper 3.2.1-3.2.2): raw listings -> verified aspects -> the four-family instruction set.

Stages (each can run on its own, resumes, and reports; all but ``ingest`` and ``export`` are
:class:`~ecomvlm.data_modules.partitions.StageRun` s over fixed partitions of listing ids)::

    ingest    raw JSONL / JSON / parquet -> one normalised shape               -> <work>/ingest/listings.jsonl
    clean     HTML, whitespace, placeholders, units, casing, language; drops   -> <work>/clean/
    image     duplicate listings dropped; the main image resolved, fetched,
              decoded and checked                                              -> <work>/image/ (+ <work>/images/)
    caption   the captioner (a VLM endpoint) describes the main image          -> <work>/caption/
    verify    the verifier (an LLM endpoint) judges every aspect against the
              caption: visible / not_visible / unsure (structured JSON)        -> <work>/verify/
    generate  family + sub-task assigned over all listings by the shares; one
              instruction per listing, every stated constraint checked         -> <work>/generate/
    export    LLaVA JSON (train), IFEval-style JSONL (eval split), shards,
              report.json / report.md / report.png                             -> <work>/export/

A stage reads the written records of the stage before it, so for every stage: input = written + dropped + failed
(by reason, in its partition manifests). A stage whose input stage is not finished (an array still running) stops
with a message naming it. Each stage is a SLURM array of its own (``SLURM_ARRAY_TASK_ID/COUNT``: every task takes
its share of the partitions), chained with ``--dependency=afterok`` (docs/CURATION.md).

Digests: a partition's digest hashes its input records and the stage's settings (prompt name + version + sha256,
model names, rules), never the operational ones (URLs, concurrency, timeouts, the API key's variable: a
:class:`~ecomvlm.data_modules.curation.endpoints.Runtime`), so moving an endpoint re-does nothing.

One module on purpose (~600 lines): the stage graph, its digests and the report read the same on-disk layout;
split, each part would re-state that layout.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ecomvlm.data_modules.curation import clean as cl
from ecomvlm.data_modules.curation import generate as gen
from ecomvlm.data_modules.curation.endpoints import (
    Backends,
    EndpointSpec,
    ResponseCache,
    Runtime,
    drive,
    looks_refused,
)
from ecomvlm.data_modules.curation.images import ImageRules, image_for_request, inspect_image, is_url, resolve_local
from ecomvlm.data_modules.curation.images import store_fetched as store_image
from ecomvlm.data_modules.curation.listings import ingest, read_jsonl
from ecomvlm.data_modules.curation.prompts import DEFAULTS, load_prompt
from ecomvlm.data_modules.partitions import Fate, StageRun, partition_ids

STAGES = ("ingest", "clean", "image", "caption", "verify", "generate", "export")
VERDICTS = ("visible", "not_visible", "unsure")


class StageNotReady(RuntimeError):
    """A stage was asked to run before the stage it reads finished."""


@dataclass
class CurateConfig:
    work: Path
    inputs: list[Path] = field(default_factory=list)
    image_root: Path | None = None  # relative image paths are relative to this (default: the first input's folder)
    captioner: EndpointSpec | None = None
    verifier: EndpointSpec | None = None
    prompts: dict[str, str] = field(default_factory=lambda: dict(DEFAULTS))
    shares: dict[str, float] = field(default_factory=lambda: dict(gen.FAMILY_SHARES))
    mixes: dict[str, dict[str, float]] = field(default_factory=lambda: json.loads(json.dumps(gen.SUBTASK_MIX)))
    seed: int = 0
    partition_size: int = 1000
    workers: int = 1
    keep_non_english: bool = False
    image_rules: ImageRules = field(default_factory=ImageRules)
    max_image_side: int | None = 1024  # the image sent to the captioner is shrunk to this (the stored one is not)
    field_map: dict[str, str] = field(default_factory=dict)
    cache: bool = True
    shards: bool = True
    samples_per_shard: int = 1000
    # model: the verifier judges each aspect against the caption (the paper); trust_seller: the ablation that takes
    # every cleaned seller aspect as visible (no verifier needed), to measure what verification is worth
    verify: str = "model"

    def __post_init__(self) -> None:
        self.work = Path(self.work)
        if self.verify not in ("model", "trust_seller"):
            raise ValueError(f"verify must be model or trust_seller, got {self.verify!r}")
        self.inputs = [Path(p) for p in self.inputs]
        bad = [f for f in self.shares if f not in gen.FAMILIES]
        if bad:
            raise ValueError(f"unknown families {bad} in the shares; families: {sorted(gen.FAMILIES)}")
        if any(v < 0 for v in self.shares.values()) or sum(self.shares.values()) <= 0:
            raise ValueError(f"family shares must be >= 0 with a positive sum, got {self.shares}")
        for fam, mix in self.mixes.items():
            if fam not in gen.SUBTASK_MIX:
                raise ValueError(f"unknown family {fam!r} in a sub-task mix; families: {sorted(gen.SUBTASK_MIX)}")
            unknown = [s for s in mix if s not in gen.SUBTASK_MIX[fam]]
            if unknown:
                raise ValueError(f"unknown sub-tasks {unknown} of {fam}; known: {sorted(gen.SUBTASK_MIX[fam])}")
            if sum(mix.values()) <= 0:
                raise ValueError(f"the sub-task mix of {fam} sums to 0")

    @property
    def cache_dir(self) -> Path | None:
        return self.work / "cache" if self.cache else None


# ------------------------------------------------------------------------------------------ helpers
def _stage(cfg: CurateConfig, name: str, process, settings: dict[str, Any]) -> StageRun:
    return StageRun(name, cfg.work, process, settings, cfg.partition_size, cfg.workers)


def _write_plan(stage_dir: Path, n_partitions: int, inputs: int) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = stage_dir / f"plan.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"partitions": n_partitions, "records": inputs}) + "\n")
    os.replace(tmp, stage_dir / "plan.json")


def finished(cfg: CurateConfig, name: str) -> bool:
    plan = cfg.work / name / "plan.json"
    if name == "ingest":
        return (cfg.work / "ingest" / "listings.jsonl").is_file() and (cfg.work / "ingest" / "report.json").is_file()
    if not plan.is_file():
        return False
    n = json.loads(plan.read_text())["partitions"]
    return len(list((cfg.work / name).glob("part-*.done.json"))) >= n


def _need(cfg: CurateConfig, upstream: str, stage: str) -> None:
    if not finished(cfg, upstream):
        raise StageNotReady(f"curate {stage}: stage {upstream!r} is not finished under {cfg.work} (run "
                            f"`ecomvlm data curate {upstream}` first, or wait for its array tasks)")


def stage_outputs(cfg: CurateConfig, name: str) -> Iterator[tuple[str, Any]]:
    yield from StageRun(name, cfg.work, _no_process).outputs()


def _no_process(records, settings):  # pragma: no cover - reading outputs runs nothing
    return iter(())


def _run(cfg: CurateConfig, name: str, process, settings: dict[str, Any], records: list[dict[str, Any]],
         progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
    stage = _stage(cfg, name, process, settings)
    _write_plan(stage.stage_dir, len(partition_ids([r["id"] for r in records], cfg.partition_size)), len(records))
    rep = stage.run(records, progress=(lambda d, t: progress(name, d, t)) if progress else None)
    rep["input_records"] = len(records)
    return rep


# ------------------------------------------------------------------------------------------ ingest + clean
def run_ingest(cfg: CurateConfig) -> dict[str, Any]:
    if not cfg.inputs:
        raise ValueError("curate ingest: give the raw listing files or folders (JSONL, JSON or parquet)")
    rep = ingest(cfg.inputs, cfg.work / "ingest" / "listings.jsonl", cfg.field_map)
    (cfg.work / "ingest" / "report.json").write_text(json.dumps(rep, indent=1) + "\n")
    return rep


def clean_process(records: list[dict[str, Any]], settings: dict[str, Any]) -> Iterator[Fate]:
    counters = settings["_counters"]
    for rec in records:
        out, reason, detail = cl.clean_listing(rec, counters, keep_non_english=settings["keep_non_english"])
        yield Fate.written(rec["id"], out) if out is not None else Fate.dropped(rec["id"], reason, detail)


def run_clean(cfg: CurateConfig, progress=None) -> dict[str, Any]:
    _need(cfg, "ingest", "clean")
    records = list(read_jsonl(cfg.work / "ingest" / "listings.jsonl"))
    settings = {"rules": cl.CLEAN_RULES_VERSION, "keep_non_english": cfg.keep_non_english}
    return _run(cfg, "clean", clean_process, settings, records, progress)


# ------------------------------------------------------------------------------------------ image
def _image_root(cfg: CurateConfig) -> Path | None:
    if cfg.image_root is not None:
        return Path(cfg.image_root).resolve()
    if cfg.inputs:
        first = cfg.inputs[0]
        return (first if first.is_dir() else first.parent).resolve()
    return None


def image_process(records: list[dict[str, Any]], settings: dict[str, Any]) -> Iterator[Fate]:
    rt = settings["runtime"]
    rules = ImageRules(**settings["rules"])
    root = Path(rt["image_root"]) if rt["image_root"] else None
    http = None
    try:
        for rec in records:
            lid = rec["id"]
            if rec.get("duplicate_of"):
                yield Fate.dropped(lid, "duplicate_listing", f"same listing as {rec['duplicate_of']}")
                continue
            if not rec["images"]:
                yield Fate.dropped(lid, "no_image", "the listing names no image")
                continue
            ref = rec["images"][0]
            if is_url(ref):
                if http is None:
                    import httpx

                    http = httpx.Client(timeout=rt["fetch_timeout_s"], follow_redirects=True)
                data, kind, detail = _fetch(http, ref, rt["fetch_retries"])
                if data is None:
                    yield (Fate.dropped(lid, kind, detail) if kind == "image_missing"
                           else Fate.failed(lid, f"image_fetch_{kind}", detail))
                    continue
                path = None
            else:
                path = resolve_local(ref, root)
                if not path.is_file():
                    yield Fate.dropped(lid, "image_missing", f"{path}: no such file")
                    continue
                data = path.read_bytes()
            info, reason, detail = inspect_image(data, rules)
            if info is None:
                yield Fate.dropped(lid, reason, f"{ref}: {detail}")
                continue
            if path is None:
                path = Path(rt["out_dir"]) / store_image(data, info, Path(rt["out_dir"]))
            out = {k: rec[k] for k in ("id", "title", "category", "aspects", "split")}
            out.update(image=str(path.resolve()), image_sha256=info["sha256"], width=info["width"],
                       height=info["height"], images_listed=len(rec["images"]))
            yield Fate.written(lid, out)
    finally:
        if http is not None:
            http.close()


def _fetch(http, url: str, retries: int) -> tuple[bytes | None, str, str]:
    import time

    import httpx

    last = ""
    for attempt in range(retries + 1):
        try:
            r = http.get(url)
        except httpx.TimeoutException:
            kind, last = "timeout", "timed out"
        except httpx.HTTPError as e:
            kind, last = "transport", f"{type(e).__name__}: {e}"[:200]
        else:
            if r.status_code == 200:
                return r.content, "", ""
            if r.status_code in (404, 410):
                return None, "image_missing", f"{url}: HTTP {r.status_code}"
            kind, last = f"http_{r.status_code}", f"{url}: HTTP {r.status_code}"
            if r.status_code < 500 and r.status_code != 429:
                return None, kind, last
        if attempt < retries:
            time.sleep(0.5 * 2 ** attempt)
    return None, kind, last


def run_image(cfg: CurateConfig, progress=None) -> dict[str, Any]:
    _need(cfg, "clean", "image")
    records = [out for _, out in stage_outputs(cfg, "clean")]
    first: dict[str, str] = {}
    for rec in sorted(records, key=lambda r: r["id"]):  # the first id of a duplicate group wins, whatever the order
        k = cl.dedup_key(rec)
        if k in first:
            rec["duplicate_of"] = first[k]
        else:
            first[k] = rec["id"]
    runtime = Runtime(image_root=str(_image_root(cfg) or ""), out_dir=str(cfg.work.resolve()), fetch_timeout_s=30.0,
                      fetch_retries=3)
    settings = {"rules": cfg.image_rules.asdict(), "image_root": str(_image_root(cfg) or ""), "runtime": runtime}
    return _run(cfg, "image", image_process, settings, records, progress)


# ------------------------------------------------------------------------------------------ caption
def split_caption(text: str) -> tuple[str, str]:
    """(description, visible text) of a captioner answer ("Visible text: a | b" on the last line, "" for none)."""
    lines = text.strip().splitlines()
    visible = ""
    for i in range(len(lines) - 1, -1, -1):
        m = re.match(r"^\s*visible text\s*:\s*(.*)$", lines[i].replace("*", ""), re.IGNORECASE)  # **bold** too
        if m:
            visible = m.group(1).strip()
            lines = lines[:i] + lines[i + 1:]
            break
    if visible.lower().strip(" .") in ("none", "n/a", "no text", ""):
        visible = ""
    return "\n".join(lines).strip(), visible


def _endpoint_stage(settings: dict[str, Any]) -> tuple[dict[str, Any], Any, Any, EndpointSpec, ResponseCache]:
    """(runtime, counters, prompt, endpoint, cache) of a model-calling stage; the prompt file must be the one whose
    sha256 the stage's digest holds."""
    rt = settings["runtime"]
    prompt = load_prompt(rt["prompt_path"])
    if prompt.sha256 != settings["prompt"]["sha256"]:
        raise RuntimeError(f"prompt file {prompt.path} changed while the stage ran; run it again")
    return rt, settings["_counters"], prompt, EndpointSpec(**rt["endpoint"]), ResponseCache(rt["cache_dir"])


def caption_process(records: list[dict[str, Any]], settings: dict[str, Any]) -> Iterator[Fate]:
    rt, counters, prompt, spec, cache = _endpoint_stage(settings)
    max_side = settings["max_image_side"]

    async def work(backends, rec: dict[str, Any]) -> Fate:
        lid = rec["id"]
        key = cache.key(stage="caption", model=spec.model, prompt=prompt.meta(), max_side=max_side,
                        max_tokens=prompt.max_tokens, temperature=prompt.temperature, input=rec["image_sha256"])
        text = cache.get(key)
        if text is None:
            counters["cache_misses"] += 1
            data, mime = image_for_request(Path(rec["image"]), max_side)
            content = [{"type": "image_url",
                        "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}},
                       {"type": "text", "text": prompt.render()}]
            ans = await backends["captioner"].text({"messages": prompt.messages(content),
                                                    "max_tokens": prompt.max_tokens,
                                                    "temperature": prompt.temperature})
            if ans.error:
                return Fate.failed(lid, ans.error, ans.detail)
            text = (ans.value or "").strip()
            if not text:
                return Fate.failed(lid, "empty_answer", "the captioner answered nothing")
            if looks_refused(text):
                return Fate.failed(lid, "refused", text[:200])
            cache.put(key, text, {"stage": "caption", "listing": lid})
        else:
            counters["cache_hits"] += 1
        description, visible = split_caption(text)
        if not description:
            return Fate.failed(lid, "empty_answer", f"only a visible-text line: {text[:120]}")
        return Fate.written(lid, {**rec, "caption": description, "visible_text": visible,
                                  "prompts": {"caption": prompt.meta()}, "models": {"captioner": spec.model}})

    yield from drive(records, lambda: Backends({"captioner": spec}), work, spec.concurrency, counters)


def _endpoint_settings(cfg: CurateConfig, which: str) -> tuple[dict[str, Any], dict[str, Any]]:
    spec: EndpointSpec | None = getattr(cfg, which)
    if spec is None:
        raise ValueError(f"curate: the {which} endpoint is not set (--{which}-url and --{which}-model)")
    prompt = load_prompt(cfg.prompts["caption" if which == "captioner" else "verify"])
    runtime = {"endpoint": spec.public(), "prompt_path": prompt.path,
               "cache_dir": str(cfg.cache_dir) if cfg.cache_dir else None}
    return {"prompt": prompt.meta(), "model": spec.model}, runtime


def run_caption(cfg: CurateConfig, progress=None) -> dict[str, Any]:
    _need(cfg, "image", "caption")
    records = [out for _, out in stage_outputs(cfg, "image")]
    settings, runtime = _endpoint_settings(cfg, "captioner")
    settings.update(max_image_side=cfg.max_image_side, runtime=Runtime(**runtime))
    return _run(cfg, "caption", caption_process, settings, records, progress)


# ------------------------------------------------------------------------------------------ verify
VERIFY_SCHEMA = {
    "type": "object",
    "properties": {"aspects": {"type": "array", "items": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "verdict": {"type": "string", "enum": list(VERDICTS)}},
        "required": ["name", "verdict"], "additionalProperties": False}}},
    "required": ["aspects"], "additionalProperties": False,
}


def verdict_problem(value: Any, names: list[str]) -> str | None:
    """Why a verifier answer is unusable for these aspect names, or None (one verdict per aspect, in order)."""
    if not isinstance(value, dict) or not isinstance(value.get("aspects"), list):
        return 'expected {"aspects": [{"name": ..., "verdict": ...}, ...]}'
    got = value["aspects"]
    if len(got) != len(names):
        return f"expected {len(names)} verdicts (one per aspect), got {len(got)}"
    for i, (g, n) in enumerate(zip(got, names)):
        if not isinstance(g, dict) or g.get("verdict") not in VERDICTS:
            return f"entry {i + 1}: verdict must be one of {list(VERDICTS)}"
        if str(g.get("name", "")).strip().lower() != n.lower():
            return f"entry {i + 1}: expected the aspect {n!r}, got {g.get('name')!r}"
    return None


def verify_process(records: list[dict[str, Any]], settings: dict[str, Any]) -> Iterator[Fate]:
    rt, counters, prompt, spec, cache = _endpoint_stage(settings)

    async def work(backends, rec: dict[str, Any]) -> Fate:
        lid = rec["id"]
        names = [n for n, _ in rec["aspects"]]
        user = prompt.render(title=rec["title"], category=rec["category"] or "unknown", caption=rec["caption"],
                             visible_text=rec["visible_text"] or "none",
                             aspects="\n".join(f"- {n}: {v}" for n, v in rec["aspects"]))
        key = cache.key(stage="verify", model=spec.model, prompt=prompt.meta(), max_tokens=prompt.max_tokens,
                        temperature=prompt.temperature, input=user)
        value = cache.get(key)
        if value is None:
            counters["cache_misses"] += 1
            ans = await backends["verifier"].json({"messages": prompt.messages(user), "schema": VERIFY_SCHEMA,
                                                   "validate": lambda v: verdict_problem(v, names),
                                                   "max_tokens": prompt.max_tokens,
                                                   "temperature": prompt.temperature})
            if ans.error:
                return Fate.failed(lid, ans.error, ans.detail)
            value = ans.value
            cache.put(key, value, {"stage": "verify", "listing": lid})
        else:
            counters["cache_hits"] += 1
        verdicts = {n: g["verdict"] for n, g in zip(names, value["aspects"])}
        return _with_verdicts(rec, verdicts, counters, prompt.meta(), spec.model)

    yield from drive(records, lambda: Backends({"verifier": spec}), work, spec.concurrency, counters)


def _with_verdicts(rec: dict[str, Any], verdicts: dict[str, str], counters: Counter,
                   prompt_meta: dict[str, Any] | None, model: str | None, keep: tuple[str, ...] = ("visible",)) -> Fate:
    cat = gen.leaf(rec["category"]) or "(none)"
    for v in verdicts.values():
        counters[f"verdict:{v}"] += 1
    counters[f"aspects_judged:{cat}"] += len(verdicts)
    visible = [[n, v] for n, v in rec["aspects"] if verdicts[n] in keep]
    counters[f"aspects_visible:{cat}"] += len(visible)
    if not visible:
        return Fate.dropped(rec["id"], "no_visible_aspect", f"{len(verdicts)} aspects, none visible in the caption")
    out = {**rec, "verdicts": verdicts, "visible": visible}
    if model is not None:
        out.update(prompts={**rec.get("prompts", {}), "verify": prompt_meta},
                   models={**rec.get("models", {}), "verifier": model})
    return Fate.written(rec["id"], out)


def trust_seller_process(records: list[dict[str, Any]], settings: dict[str, Any]) -> Iterator[Fate]:
    """The ablation without visual verification: every cleaned seller aspect counts as visible (verdict
    ``trusted``), as a pipeline that trains on listings as sellers wrote them would."""
    counters = settings["_counters"]
    for rec in records:
        yield _with_verdicts(rec, {n: "trusted" for n, _ in rec["aspects"]}, counters, None, None,
                             keep=("trusted",))


def run_verify(cfg: CurateConfig, progress=None) -> dict[str, Any]:
    _need(cfg, "caption", "verify")
    records = [out for _, out in stage_outputs(cfg, "caption")]
    if cfg.verify == "trust_seller":
        return _run(cfg, "verify", trust_seller_process, {"verify": "trust_seller"}, records, progress)
    settings, runtime = _endpoint_settings(cfg, "verifier")
    settings["runtime"] = Runtime(**runtime)
    return _run(cfg, "verify", verify_process, settings, records, progress)


# ------------------------------------------------------------------------------------------ generate
def generate_process(records: list[dict[str, Any]], settings: dict[str, Any]) -> Iterator[Fate]:
    counters = settings["_counters"]
    for rec in records:
        inst, problem = gen.generate_record(rec, settings["seed"], settings["pools"], counters)
        if inst is None:
            yield Fate.failed(rec["id"], "constraint_unsatisfied", problem)
            continue
        yield Fate.written(rec["id"], {"id": f"{rec['id']}-{inst['family']}", "source": rec["id"],
                                       "split": rec.get("split", "train"), "image": rec["image"], **inst,
                                       "prompts": rec.get("prompts", {}), "models": rec.get("models", {})})


def run_generate(cfg: CurateConfig, progress=None) -> dict[str, Any]:
    _need(cfg, "verify", "generate")
    records = [out for _, out in stage_outputs(cfg, "verify")]
    mixes = {fam: cfg.mixes.get(fam, gen.SUBTASK_MIX[fam]) for fam in gen.SUBTASK_MIX}
    assigned = gen.assign(records, cfg.shares, mixes, cfg.seed)
    pools = gen.value_pools(records)
    slim = []
    for r in records:
        fam, sub = assigned[r["id"]]
        slim.append({k: r[k] for k in ("id", "title", "category", "split", "image", "visible", "verdicts",
                                       "visible_text", "prompts", "models")} | {"family": fam, "subtask": sub})
    settings = {"generator": gen.GENERATOR_VERSION, "seed": cfg.seed, "pools": pools, "shares": cfg.shares,
                "mixes": mixes}
    return _run(cfg, "generate", generate_process, settings, slim, progress)


# ------------------------------------------------------------------------------------------ export + report
def run_export(cfg: CurateConfig, console=None) -> dict[str, Any]:
    _need(cfg, "generate", "export")
    out = cfg.work / "export"
    (out / "eval").mkdir(parents=True, exist_ok=True)
    train, evals = [], []
    for _, inst in sorted(stage_outputs(cfg, "generate"), key=lambda kv: kv[0]):
        if inst["split"] == "eval":
            human = inst["conversations"][0]["value"]
            evals.append({"id": inst["id"], "images": [inst["image"]], "prompt": human,
                          "constraints": inst["constraints"], "answer": inst["conversations"][-1]["value"],
                          "subtask": inst["subtask"], "prompts": inst["prompts"]})
            continue
        rec = {"id": inst["id"], "image": inst["image"], "conversations": inst["conversations"],
               "family": inst["family"], "subtask": inst["subtask"], "prompts": inst["prompts"],
               "models": inst["models"]}
        if inst["constraints"]:
            rec["constraints"] = inst["constraints"]
        train.append(rec)
    _atomic(out / "stage3_curated.json", json.dumps(train, indent=1, ensure_ascii=False) + "\n")
    _atomic(out / "eval" / "ifeval.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in evals))
    shards = None
    if cfg.shards and train:
        from ecomvlm.data_modules.shards import ShardConfig, make_shards

        m = make_shards(ShardConfig([out / "stage3_curated.json"], out / "shards", image_root=None,
                                    samples_per_shard=cfg.samples_per_shard, workers=1, rebuild=True),
                        console=console)
        shards = {"samples": m["samples"], "shards": len(m["shards"]), "dir": str(out / "shards")}
    report = build_report(cfg, train, evals)
    report["shards"] = shards
    write_report(report, out)
    return report


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build_report(cfg: CurateConfig, train: list[dict[str, Any]], evals: list[dict[str, Any]]) -> dict[str, Any]:
    stages: dict[str, Any] = {}
    ing = json.loads((cfg.work / "ingest" / "report.json").read_text())
    stages["ingest"] = {"input": ing["rows"], "fates": ing["fates"], "examples": ing.get("examples", {})}
    examples: dict[str, dict[str, list[str]]] = {}
    for name in STAGES[1:-1]:
        st = StageRun(name, cfg.work, _no_process)
        rep = st.report()
        plan = json.loads((st.stage_dir / "plan.json").read_text())
        stages[name] = {"input": plan["records"], "fates": rep["fates"], "counters": rep["counters"]}
        for m in sorted(st.stage_dir.glob("*.done.json")):
            for fate, ex in json.loads(m.read_text()).get("examples", {}).items():
                bucket = examples.setdefault(name, {}).setdefault(fate, [])
                bucket += ex[:3 - len(bucket)]
    ver = stages["verify"]["counters"]
    per_cat = {}
    for k, n in ver.items():
        if k.startswith("aspects_judged:"):
            cat = k.split(":", 1)[1]
            vis = ver.get(f"aspects_visible:{cat}", 0)
            per_cat[cat] = {"aspects": n, "visible": vis, "rate": vis / n if n else None}
    fam = Counter(r["family"] for r in train)
    sub = Counter(r["subtask"] for r in train)
    total = sum(fam.values())
    return {
        "work": str(cfg.work), "stages": stages, "examples": examples,
        "verified_aspect_rate": dict(sorted(per_cat.items())),
        "instructions": {"train": len(train), "eval_ifeval": len(evals),
                         "families": {f: {"n": fam[f], "share": 100 * fam[f] / total if total else 0.0,
                                          "configured": 100 * cfg.shares.get(f, 0) / sum(cfg.shares.values())}
                                      for f in gen.FAMILIES},
                         "subtasks": dict(sorted(sub.items())),
                         "constraints_checked": stages["generate"]["counters"].get("constraints_checked", 0)},
        "settings": {"shares": cfg.shares, "seed": cfg.seed, "prompts": {k: load_prompt(v).meta()
                                                                         for k, v in cfg.prompts.items()},
                     "captioner": cfg.captioner.model if cfg.captioner else None,
                     "verifier": cfg.verifier.model if cfg.verifier else None},
    }


def write_report(report: dict[str, Any], out: Path) -> None:
    _atomic(out / "report.json", json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    lines = ["# Curation report", "", f"work folder: `{report['work']}`", "", "## Stages (input = written + "
             "dropped + failed)", "", "| stage | input | written | dropped / failed by reason |", "|---|---:|---:|---|"]
    for name, st in report["stages"].items():
        written = st["fates"].get("written", 0)
        other = ", ".join(f"{k} {v}" for k, v in st["fates"].items() if k != "written") or "-"
        lines.append(f"| {name} | {st['input']} | {written} | {other} |")
    lines += ["", "## Verified-aspect rate per category", "", "| category | aspects | visible | rate |",
              "|---|---:|---:|---:|"]
    for cat, r in report["verified_aspect_rate"].items():
        lines.append(f"| {cat} | {r['aspects']} | {r['visible']} | {r['rate']:.1%} |")
    ins = report["instructions"]
    lines += ["", f"## Instructions: {ins['train']} train, {ins['eval_ifeval']} IFEval-style eval prompts "
              f"({ins['constraints_checked']} constraints checked)", "", "| family | n | share | configured |",
              "|---|---:|---:|---:|"]
    for f, r in ins["families"].items():
        lines.append(f"| {f} | {r['n']} | {r['share']:.1f}% | {r['configured']:.1f}% |")
    lines += ["", "| sub-task | n |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in ins["subtasks"].items()]
    if report.get("shards"):
        lines += ["", f"shards: {report['shards']['samples']} samples in {report['shards']['shards']} shards -> "
                      f"`{report['shards']['dir']}`"]
    _atomic(out / "report.md", "\n".join(lines) + "\n")
    try:
        _plot(report, out / "report.png")
    except ImportError:  # matplotlib is optional: the tables above carry the same numbers
        pass


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    names = list(report["stages"])
    written = [report["stages"][n]["fates"].get("written", 0) for n in names]
    lost = [report["stages"][n]["input"] - w for n, w in zip(names, written)]
    axes[0].bar(names, written, label="written")
    axes[0].bar(names, lost, bottom=written, label="dropped / failed")
    axes[0].set_title("records per stage")
    axes[0].legend()
    axes[0].tick_params(axis="x", rotation=45)
    cats = list(report["verified_aspect_rate"])
    axes[1].bar(cats, [report["verified_aspect_rate"][c]["rate"] or 0 for c in cats])
    axes[1].set_title("verified-aspect rate per category")
    axes[1].tick_params(axis="x", rotation=45)
    fams = report["instructions"]["families"]
    axes[2].bar(list(fams), [fams[f]["share"] for f in fams], label="written")
    axes[2].scatter(list(fams), [fams[f]["configured"] for f in fams], color="black", zorder=3, label="configured")
    axes[2].set_title("family shares (%)")
    axes[2].legend()
    fig.tight_layout()
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


RUNNERS = {"clean": run_clean, "image": run_image, "caption": run_caption, "verify": run_verify,
           "generate": run_generate}


def run_all(cfg: CurateConfig, progress=None, console=None, until: str = "export") -> dict[str, Any]:
    """Every stage in order (finished partitions are skipped); the export report."""
    reports: dict[str, Any] = {}
    reports["ingest"] = run_ingest(cfg) if cfg.inputs or not finished(cfg, "ingest") else None
    for name in STAGES[1:-1]:
        reports[name] = RUNNERS[name](cfg, progress)
        if name == until:
            return reports
    reports["export"] = run_export(cfg, console=console)
    return reports
