"""The per-partition work of each stage (run by data_modules/partitions.py's StageRun, in worker processes).

Each ``*_process(records, settings, *, runtime)`` is a module-level generator of :class:`Fate` (picklable through
``functools.partial``). ``settings`` holds what changes the stage's output (models, prompt text + version + sha256,
schema, box conventions, crop and dedup settings) and is hashed into the partition digest; ``runtime`` holds what
does not (endpoint URLs, concurrency, timeouts, cache and crop folders), so a re-run with more concurrency or on
another server does not redo finished work.

Model-calling stages run an asyncio loop in a thread (``AsyncChatClient``: bounded concurrency, retries with backoff,
malformed JSON fed back) and yield each item's fate as soon as it is known, so StageRun appends it to the
partition's partial file at once (a kill -9 loses only the calls in flight; their answers are often in the cache
already). One item never stops a run: every exception inside an item becomes ``failed:internal_error``.

One module on purpose (~440 lines): the five stages share the per-item fate vocabulary and the digest
rule above; the geometry is boxes.py's, dedup dedup.py's, the endpoint client eval/openai_client.py's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

from ecomvlm.data_modules.partitions import Fate

UPSTREAM = "upstream"  # the fate reason of an item an earlier stage did not write (its reason is counted there)


# ------------------------------------------------------------------------------------------------ runtime
@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible endpoint (vLLM serve, a hosted API), or with ``kind="vllm"`` an offline vLLM engine in
    the worker (``url`` unused; ``model`` its folder or Hub name), and how hard to push it. The client is the
    curation stages' (data_modules/curation/endpoints.py ``chat_client``)."""

    url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 16
    timeout_s: float = 120.0
    http_retries: int = 4
    backoff_s: float = 0.5
    format_retries: int = 2
    kind: str = "openai"
    python: str | None = None
    engine: dict[str, Any] = field(default_factory=dict, hash=False)
    max_images: int = 8

    def client(self):
        from ecomvlm.data_modules.curation.endpoints import EndpointSpec, chat_client

        return chat_client(EndpointSpec(kind=self.kind, model=self.model, base_url=self.url or "",
                                        api_key_env=self.api_key_env, concurrency=self.concurrency,
                                        timeout_s=self.timeout_s, http_retries=self.http_retries,
                                        backoff_s=self.backoff_s, format_retries=self.format_retries,
                                        python=self.python, engine=dict(self.engine), max_images=self.max_images))


class Cache:
    """Content-addressed answers: ``<dir>/<key[:2]>/<key>.json``, written through a temp file + rename, so
    concurrent workers and kills never leave half a file. Only successful answers are cached."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None

    @staticmethod
    def key(parts: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> Any:
        if self.root is None:
            return None
        p = self.root / key[:2] / f"{key}.json"
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    def put(self, key: str, value: Any) -> None:
        if self.root is None:
            return
        p = self.root / key[:2] / f"{key}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(value, ensure_ascii=False))
        os.replace(tmp, p)


def run_async(records: list[dict[str, Any]], handle: Callable[[Any, dict[str, Any]], Awaitable[Fate]],
              endpoint: Endpoint, counters: Counter, limit: int) -> Iterator[Fate]:
    """Fates of `records` as they finish: ``handle(client, record)`` runs for at most `limit` items at a time in an
    event loop on a worker thread; the client's counters are added to `counters` at the end."""
    q: queue.Queue = queue.Queue()
    end = object()

    async def main() -> Counter:
        sem = asyncio.Semaphore(max(1, limit))
        async with endpoint.client() as client:
            async def one(rec: dict[str, Any]) -> None:
                async with sem:
                    try:
                        fate = await handle(client, rec)
                    except Exception as e:  # noqa: BLE001 - one item never stops the run
                        fate = Fate.failed(str(rec["id"]), "internal_error", f"{type(e).__name__}: {e}"[:300])
                q.put(fate)

            await asyncio.gather(*(one(r) for r in records))
            return client.counters

    def thread() -> None:
        try:
            q.put((end, asyncio.run(main()), None))
        except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
            q.put((end, None, e))

    threading.Thread(target=thread, daemon=True, name="item-intel-loop").start()
    while True:
        got = q.get()
        if isinstance(got, tuple) and got and got[0] is end:
            _, client_counters, error = got
            if error is not None:
                raise error
            counters.update(client_counters or {})
            return
        yield got


def _upstream(rec: dict[str, Any]) -> Fate | None:
    if rec.get(UPSTREAM):
        return Fate.dropped(str(rec["id"]), UPSTREAM, str(rec[UPSTREAM]))
    return None


# ------------------------------------------------------------------------------------------------ ingest
def ingest_process(records: list[dict[str, Any]], settings: dict[str, Any], *, runtime: dict[str, Any]
                   ) -> Iterator[Fate]:
    """Check every image (exists, decodes, not absurdly large), hash it, cap the images per item."""
    from ecomvlm.data_modules.item_intel.media import check_image

    counters: Counter = settings["_counters"]
    root = Path(settings["image_root"])
    cap, policy = settings["max_images"], settings["too_many_images"]
    for rec in records:
        key = str(rec["id"])
        refs = rec.get("images") or []
        counters["images_in"] += len(refs)
        if not refs:
            yield Fate.dropped(key, "no_images", "the item lists no image")
            continue
        if policy == "drop" and len(refs) > cap:
            yield Fate.dropped(key, "too_many_images", f"{len(refs)} images > --max-images {cap}")
            continue
        good, bad = [], Counter()
        for ref in refs:
            if len(good) >= cap:
                break
            path = Path(ref) if Path(ref).is_absolute() else root / ref
            info, why = check_image(path)
            if info is None:
                bad[why] += 1
                counters[f"images_skipped:{why}"] += 1
                continue
            good.append({"path": str(path), "sha256": info.sha256, "w": info.width, "h": info.height})
        if len(good) < len(refs) - sum(bad.values()):
            n = len(refs) - sum(bad.values()) - len(good)
            counters["images_capped"] += n
            counters["items_capped"] += 1
        if not good:
            why = ",".join(f"{k}={v}" for k, v in sorted(bad.items()))
            yield Fate.failed(key, "no_usable_image", f"no image could be used ({why})")
            continue
        counters["images_ok"] += len(good)
        yield Fate.written(key, {"images": good, "metadata": rec.get("metadata") or {},
                                 "skipped_images": dict(bad)})


# ------------------------------------------------------------------------------------------------ teacher
def teacher_messages(rec: dict[str, Any], prompt: dict[str, Any], instruction: str, max_side: int | None
                     ) -> tuple[list[dict[str, Any]], int, int, list[list[int]]]:
    """(messages, images sent, bytes sent, sent sizes): the system turn, then one user turn with every image
    (each introduced by its caption; crops say which image they were cut from and where), then the prompt."""
    from ecomvlm.data_modules.item_intel.media import data_url

    images = rec["images"]
    # where each original photo is in this request (crops point at it by its index in the item)
    position = {im.get("index", n): n for n, im in enumerate(images) if im.get("role", "original") == "original"}
    content: list[dict[str, Any]] = []
    sent_bytes, sizes = 0, []
    for n, im in enumerate(images, 1):
        if im.get("role") == "crop":
            src = im.get("of")
            if src is not None and src in position:
                x0, y0, x1, y1 = im["box"]
                cap = prompt["crop_caption"].format(n=n, of=position[src] + 1, x0=x0, y0=y0, x1=x1, y1=y1)
            else:  # its photo was deduplicated away: say what it is without pointing at a photo
                cap = f"Image {n}: a zoomed crop of a photo of this listing."
        else:
            cap = prompt["image_caption"].format(n=n)
        url, sw, sh, nb = data_url(im["path"], max_side)
        sent_bytes += nb
        sizes.append([sw, sh])
        content.append({"type": "text", "text": cap})
        content.append({"type": "image_url", "image_url": {"url": url}})
    meta = rec.get("metadata") or {}
    meta_text = prompt["metadata_line"].format(metadata=json.dumps(meta, ensure_ascii=False)) if meta else ""
    user = prompt["user"].format(n_images=len(images), metadata=meta_text, instruction=instruction)
    content.append({"type": "text", "text": "\n".join(line for line in user.strip().splitlines() if line.strip())})
    msgs: list[dict[str, Any]] = []
    if prompt.get("system"):
        msgs.append({"role": "system", "content": prompt["system"].strip()})
    msgs.append({"role": "user", "content": content})
    return msgs, len(images), sent_bytes, sizes


def count_facts(label: dict[str, Any]) -> int:
    from ecomvlm.eval.judge import flatten_facts

    return len(flatten_facts(label))


def annotate_process(records: list[dict[str, Any]], settings: dict[str, Any], *, runtime: dict[str, Any]
                     ) -> Iterator[Fate]:
    """Teacher labels (first labels on the originals, better labels on originals + crops)."""
    from ecomvlm.data_modules.item_intel.schema import normalize_label, validate_answer

    counters: Counter = settings["_counters"]
    endpoint: Endpoint = runtime["endpoint"]
    cache = Cache(runtime.get("cache_dir"))
    prompt, schema = settings["prompt"], settings["schema"]
    model = settings["model"]

    def validate(v: Any) -> str | None:
        return validate_answer(v, schema)

    async def handle(client, rec: dict[str, Any]) -> Fate:
        key = str(rec["id"])
        up = _upstream(rec)
        if up:
            return up
        ck = Cache.key({"stage": settings["label_kind"], "item": key, "images": [im["sha256"] for im in rec["images"]],
                        "prompt": [prompt["version"], prompt["sha256"]], "model": model,
                        "schema": settings["schema_sha256"], "max_side": settings["max_side"],
                        "max_tokens": settings["max_tokens"], "temperature": settings["temperature"],
                        "metadata": rec.get("metadata") or {}, "roles": [(im.get("role", "original"), im.get("of"),
                                                                          im.get("box")) for im in rec["images"]]})
        hit = cache.get(ck)
        if hit is not None:
            counters["cache_hits"] += 1
            raw = hit["raw"]
            attempts, tokens = 0, {"prompt": 0, "completion": 0}
        else:
            counters["cache_misses"] += 1
            msgs, n_img, n_bytes, _ = await asyncio.to_thread(teacher_messages, rec, prompt, settings["instruction"],
                                                              settings["max_side"])
            counters["images_sent"] += n_img
            counters["image_bytes_sent"] += n_bytes
            res = await client.chat_json(msgs, schema, validate=validate, max_tokens=settings["max_tokens"],
                                         temperature=settings["temperature"])
            if res.error:
                return Fate.failed(key, res.error, res.detail)
            raw = res.value
            attempts, tokens = res.attempts, {"prompt": res.prompt_tokens, "completion": res.completion_tokens}
            cache.put(ck, {"raw": raw, "attempts": attempts, "tokens": tokens})
        label = normalize_label(raw)
        n_facts = count_facts(label)
        if n_facts == 0:
            return Fate.dropped(key, "no_facts", "the teacher saw nothing to report")
        return Fate.written(key, {"label": label, "facts": n_facts, "kind": settings["label_kind"],
                                  "prompt": {"version": prompt["version"], "sha256": prompt["sha256"]},
                                  "model": model, "images": [im["path"] for im in rec["images"]],
                                  "image_sha256": [im["sha256"] for im in rec["images"]],
                                  "cache": "hit" if hit is not None else "miss", "attempts": attempts,
                                  "tokens": tokens})

    yield from run_async(records, handle, endpoint, counters, endpoint.concurrency)


# ------------------------------------------------------------------------------------------------ grounding
def ground_process(records: list[dict[str, Any]], settings: dict[str, Any], *, runtime: dict[str, Any]
                   ) -> Iterator[Fate]:
    """Boxes of the informative regions of every original, in original pixels (boxes.py for the conventions)."""
    from ecomvlm.data_modules.item_intel.boxes import Convention, parse_boxes
    from ecomvlm.data_modules.item_intel.media import data_url

    counters: Counter = settings["_counters"]
    endpoint: Endpoint = runtime["endpoint"]
    cache = Cache(runtime.get("cache_dir"))
    prompt = settings["prompt"]
    conv = Convention(**settings["convention"])
    max_side = settings["max_side"]

    async def one_image(client, im: dict[str, Any]) -> dict[str, Any]:
        ck = Cache.key({"stage": "grounding", "image": im["sha256"], "prompt": [prompt["version"], prompt["sha256"]],
                        "model": settings["model"], "max_side": max_side, "max_tokens": settings["max_tokens"]})
        hit = cache.get(ck)
        out: dict[str, Any] = {"path": im["path"], "sha256": im["sha256"], "w": im["w"], "h": im["h"]}
        if hit is not None:
            counters["cache_hits"] += 1
            text, sw, sh = hit["text"], hit["sent"][0], hit["sent"][1]
            parsed = parse_boxes(text, conv, im["w"], im["h"], sw, sh, settings["min_box_px"], settings["max_boxes"])
        else:
            counters["cache_misses"] += 1
            url, sw, sh, nb = await asyncio.to_thread(data_url, im["path"], max_side)
            counters["images_sent"] += 1
            counters["image_bytes_sent"] += nb
            msgs: list[dict[str, Any]] = [{"role": "system", "content": prompt["system"].strip()}] \
                if (prompt.get("system") or "").strip() else []
            msgs.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                     {"type": "text", "text": prompt["user"].strip()}]})
            parsed = None
            for attempt in range(endpoint.format_retries + 1):
                res = await client.chat(msgs, max_tokens=settings["max_tokens"], temperature=0.0)
                if res.error:
                    out["error"] = res.error
                    out["detail"] = res.detail
                    return out
                parsed = parse_boxes(res.value, conv, im["w"], im["h"], sw, sh, settings["min_box_px"],
                                     settings["max_boxes"])
                if parsed[0] is not None:
                    cache.put(ck, {"text": res.value, "sent": [sw, sh]})
                    break
                counters["format_retries"] += 1
                msgs = [*msgs, {"role": "assistant", "content": res.value or ""},
                        {"role": "user", "content": f"That answer is invalid: {parsed[3]}. Answer again."}]
            if parsed is None or parsed[0] is None:
                out["error"] = "malformed"
                out["detail"] = (parsed[3] if parsed else "") or ""
                return out
        boxes, labels, counts, _ = parsed
        counters.update(counts)
        out.update(boxes=[[round(v, 2) for v in b] for b in boxes], labels=labels, counts=dict(counts))
        return out

    async def handle(client, rec: dict[str, Any]) -> Fate:
        key = str(rec["id"])
        up = _upstream(rec)
        if up:
            return up
        results = await asyncio.gather(*(one_image(client, im) for im in rec["images"]))
        failed = Counter(r["error"] for r in results if r.get("error"))
        for reason, n in failed.items():
            counters[f"images_grounding_failed:{reason}"] += n
        counters["images_grounded"] += len(results) - sum(failed.values())
        if len(failed) and sum(failed.values()) == len(results):
            reason = failed.most_common(1)[0][0]
            detail = next(r.get("detail", "") for r in results if r.get("error") == reason)
            return Fate.failed(key, reason, f"no image grounded: {detail}"[:300])
        return Fate.written(key, {"images": results, "metadata": rec.get("metadata") or {}})

    yield from run_async(records, handle, endpoint, counters, max(1, endpoint.concurrency // 2))


# ------------------------------------------------------------------------------------------------ crops + dedup
def crops_process(records: list[dict[str, Any]], settings: dict[str, Any], *, runtime: dict[str, Any]
                  ) -> Iterator[Fate]:
    """Boxes -> expanded, merged -> one square crop per image (resized for the encoder) -> pHash dedup over the
    originals and the crops; crops are written as PNG under the crops folder."""
    from ecomvlm.data_modules.item_intel.boxes import CropSettings
    from ecomvlm.data_modules.item_intel.dedup import DedupSettings

    counters: Counter = settings["_counters"]
    cs = CropSettings(**settings["crop"])
    ds = DedupSettings(**settings["dedup"])
    crops_dir = Path(runtime["crops_dir"])
    for rec in records:
        key = str(rec["id"])
        up = _upstream(rec)
        if up:
            yield up
            continue
        try:
            yield _crops_one(key, rec, cs, ds, crops_dir, counters)
        except Exception as e:  # noqa: BLE001 - one item never stops the run
            yield Fate.failed(key, "internal_error", f"{type(e).__name__}: {e}"[:300])


def _crops_one(key: str, rec: dict[str, Any], cs, ds, crops_dir: Path, counters: Counter) -> Fate:
    import io

    from ecomvlm.data_modules.item_intel.boxes import crop_squares, cut
    from ecomvlm.data_modules.item_intel.dedup import Candidate, dedup
    from ecomvlm.data_modules.item_intel.media import load_rgb, safe_name

    originals = rec["images"]
    cands, regions, squares = [], 0, 0
    folder = crops_dir / safe_name(key)
    for i, im in enumerate(originals):
        try:
            img = load_rgb(im["path"])
        except Exception:  # noqa: BLE001 - it decoded at ingest; a file changed since then
            counters["images_unreadable_at_crops"] += 1
            continue
        cands.append(Candidate(f"original:{i}", img, img.width * img.height, True, i,
                               meta={**im, "role": "original", "index": i}))
        boxes = [tuple(b) for b in (im.get("boxes") or [])]
        sq, n_groups = crop_squares(boxes, img.width, img.height, cs)
        regions += n_groups
        for k, s in enumerate(sq):
            crop = cut(img, s, cs.crop_size)
            inside = (max(0, min(s[2], img.width) - max(0, s[0])) * max(0, min(s[3], img.height) - max(0, s[1])))
            cands.append(Candidate(f"crop:{i}.{k}", crop, inside, False, 1000 + 100 * i + k,
                                   meta={"role": "crop", "of": i, "box": list(s), "w": cs.crop_size,
                                         "h": cs.crop_size, "padded": s[0] < 0 or s[1] < 0 or s[2] > img.width
                                         or s[3] > img.height}))
            squares += 1
    if not cands:
        return Fate.failed(key, "no_usable_image", "no image could be read at the crop stage")
    kept, dropped = dedup(cands, ds)
    images = []
    for c in kept:
        if c.is_original:
            m = c.meta
            images.append({"path": m["path"], "sha256": m["sha256"], "w": m["w"], "h": m["h"], "role": "original",
                           "index": m["index"]})
            continue
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        c.image.save(buf, format="PNG", optimize=False)
        data = buf.getvalue()
        i, k = c.key.split(":")[1].split(".")
        path = folder / f"{int(i):02d}-{int(k):02d}.png"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        images.append({"path": str(path), "sha256": hashlib.sha256(data).hexdigest(), **c.meta})
    n_orig = sum(1 for c in cands if c.is_original)
    counters["originals"] += n_orig
    counters["crops_made"] += squares
    counters["dedup_dropped"] += len(dropped)
    counters["dedup_dropped_originals"] += sum(1 for d in dropped if d["key"].startswith("original"))
    counters["dedup_dropped_crops"] += sum(1 for d in dropped if d["key"].startswith("crop"))
    stats = {"originals": n_orig, "regions": regions, "crops": squares, "kept": len(kept),
             "images_before": n_orig + regions, "images_squares": n_orig + squares, "dropped": dropped}
    return Fate.written(key, {"images": images, "metadata": rec.get("metadata") or {}, "stats": stats})


def settings_sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def as_dict(dc) -> dict[str, Any]:
    return asdict(dc)
