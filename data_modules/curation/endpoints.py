"""Model endpoints of the curation stages: the captioner (a VLM) and the verifier (an LLM).

- ``kind: openai``: any OpenAI-compatible endpoint (``vllm serve``, a hosted API) through the shared
  :class:`~ecomvlm.eval.openai_client.AsyncChatClient` (bounded concurrency, retries with backoff for transport
  errors / timeouts / 429 / 5xx, malformed JSON fed back). The API key is read from the environment variable named
  by ``api_key_env`` inside the worker; it is never part of a setting, a digest, a log or a record.
- ``kind: vllm``: a vLLM offline engine (``vllm.LLM``) in the worker process, started once per process and model
  (eval/engine_client.py: the stages' requests are gathered into batched ``LLM.chat`` calls, with the same JSON
  format retries). ``model`` is the model folder or Hub name; ``python`` runs the engine in another Python
  environment (e.g. ``.venv-vllm/bin/python``); ``engine`` holds ``vllm.LLM`` keyword arguments.
- tests, the demo and the benchmark use the scripted loopback server of ``scripted.py`` through the real client.

:class:`ResponseCache` keeps every successful answer keyed by (stage, model, prompt name + version + sha256,
request parameters, the canonical input), so a re-run, a re-partitioned run or a run whose other inputs changed
asks nothing twice. :func:`drive` runs one partition's records as asyncio tasks inside a partition worker and
yields their fates as they complete (StageRun appends each one to the partition's partial file at once).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

from ecomvlm.data_modules.partitions import Fate


@dataclass
class EndpointSpec:
    """One model endpoint. ``model`` is part of every digest and cache key; the rest is operational."""

    kind: str = "openai"  # openai (an OpenAI-compatible server) | vllm (an offline engine in the worker)
    model: str = ""
    base_url: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 32  # requests in flight per worker process (vllm: conversations per engine call)
    timeout_s: float = 120.0
    http_retries: int = 4
    backoff_s: float = 0.5
    format_retries: int = 2
    python: str | None = None  # vllm: an interpreter with vLLM, when this one has none
    engine: dict[str, Any] = field(default_factory=dict)  # vllm: vllm.LLM keyword arguments
    max_images: int = 1  # vllm: images per prompt the engine is sized for (0: a text-only model)

    def __post_init__(self) -> None:
        if self.kind not in ("openai", "vllm"):
            raise ValueError(f"endpoint kind must be openai (any OpenAI-compatible server) or vllm (an offline "
                             f"engine), got {self.kind!r}")
        if self.kind == "openai" and not self.base_url:
            raise ValueError("an endpoint needs base_url (e.g. http://host:8000/v1)")
        if self.kind == "vllm" and self.base_url:
            raise ValueError(f"a vllm engine endpoint takes no base_url (got {self.base_url!r}); for a server "
                             f"(`vllm serve`) use kind openai")
        if self.python and not Path(self.python).exists():
            raise ValueError(f"endpoint python {self.python!r}: no such interpreter (e.g. .venv-vllm/bin/python "
                             f"from `make vllm-cpu-env`)")
        if self.concurrency < 1:
            raise ValueError(f"endpoint concurrency must be >= 1, got {self.concurrency}")
        if not self.model:
            raise ValueError("an endpoint needs the served model name (--captioner-model / --verifier-model)")

    def public(self) -> dict[str, Any]:
        """What may be shown in reports (no key: only the variable's name)."""
        return asdict(self)


class Runtime:
    """Operational settings of a stage: endpoints (URLs, concurrency, timeouts), the cache folder, the image root,
    the output folder. Carried to the partition workers inside the stage settings, but NOT part of a partition's
    digest: StageRun hashes settings with ``json.dumps(default=str)`` and this object's ``str`` is a constant, so
    moving the endpoint to another host or port does not re-do finished partitions."""

    def __init__(self, **values: Any) -> None:
        self.values = values

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def __str__(self) -> str:
        return "<runtime: not part of the digest>"

    __repr__ = __str__

    def __getstate__(self) -> dict[str, Any]:
        return self.values

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.values = state


# --------------------------------------------------------------------------------------------- cache
class ResponseCache:
    """Content-addressed answers: ``<dir>/<key[:2]>/<key>.json``, written once with temp + rename, so any number of
    workers and array tasks (also on a shared file system) can read and write it at the same time."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root else None

    @staticmethod
    def key(**parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()

    def get(self, key: str) -> Any:
        if self.root is None:
            return None
        p = self.root / key[:2] / f"{key}.json"
        try:
            return json.loads(p.read_text(encoding="utf-8"))["value"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, key: str, value: Any, meta: dict[str, Any] | None = None) -> None:
        if self.root is None:
            return
        p = self.root / key[:2] / f"{key}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps({"value": value, **(meta or {})}, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, p)


# --------------------------------------------------------------------------------------------- backends
REFUSAL = re.compile(r"^\s*(i'?m sorry|i am sorry|sorry, (but )?i|i can(not|'t) (help|assist|provide|describe|"
                     r"comply|do that)|i'?m (unable|not able) to|as an ai\b|i apologi[sz]e)", re.IGNORECASE)


def looks_refused(text: str | None) -> bool:
    return bool(text) and bool(REFUSAL.search(text or ""))


@dataclass
class Answer:
    """A backend's answer: ``value`` or ``error`` (timeout, http_503, transport, malformed, refused, ...)."""

    value: Any = None
    error: str | None = None
    detail: str = ""
    attempts: int = 0


def chat_client(spec: EndpointSpec):
    """The async chat client of an endpoint: HTTP for ``openai``, the process's offline engine for ``vllm``."""
    if spec.kind == "vllm":
        from ecomvlm.eval.engine_client import EngineChatClient

        return EngineChatClient(spec.model, python=spec.python, engine_kwargs=spec.engine,
                                max_images=spec.max_images, batch_size=spec.concurrency,
                                format_retries=spec.format_retries)
    from ecomvlm.eval.openai_client import AsyncChatClient

    return AsyncChatClient(spec.base_url, spec.model, api_key_env=spec.api_key_env, concurrency=spec.concurrency,
                           timeout_s=spec.timeout_s, http_retries=spec.http_retries, backoff_s=spec.backoff_s,
                           format_retries=spec.format_retries)


class ChatBackend:
    """Chat requests to an endpoint (the request carries the rendered messages)."""

    def __init__(self, spec: EndpointSpec) -> None:
        self.spec = spec
        self.model = spec.model
        self.client = chat_client(spec)

    async def __aenter__(self) -> "ChatBackend":
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.client.__aexit__(*exc)

    @property
    def counters(self) -> Counter:
        return self.client.counters

    async def text(self, request: dict[str, Any]) -> Answer:
        res = await self.client.chat(request["messages"], max_tokens=request["max_tokens"],
                                     temperature=request["temperature"])
        return Answer(res.value, res.error, res.detail, res.attempts)

    async def json(self, request: dict[str, Any]) -> Answer:
        res = await self.client.chat_json(request["messages"], request["schema"], validate=request.get("validate"),
                                          max_tokens=request["max_tokens"], temperature=request["temperature"])
        return Answer(res.value, res.error, res.detail, res.attempts)


def make_backend(spec: EndpointSpec | dict[str, Any]) -> ChatBackend:
    return ChatBackend(spec if isinstance(spec, EndpointSpec) else EndpointSpec(**spec))


# --------------------------------------------------------------------------------------------- the driver
def drive(records: list[dict[str, Any]], open_context: Callable[[], Any],
          work: Callable[[Any, dict[str, Any]], Awaitable[Fate]], concurrency: int,
          counters: Counter | None = None, key_field: str = "id") -> Iterator[Fate]:
    """Run ``work(ctx, record)`` for every record on one event loop, at most `concurrency` at a time, and yield the
    fates as they complete. ``open_context()`` is an async context manager (endpoint clients); its ``counters``
    (requests, retries, errors, tokens) are added to `counters` at the end. A record whose work raises gets
    ``failed:internal``: one listing never stops a partition."""
    loop = asyncio.new_event_loop()
    tasks: list[asyncio.Task] = []
    ctx_manager = open_context()
    try:
        ctx = loop.run_until_complete(ctx_manager.__aenter__())
        queue: asyncio.Queue = asyncio.Queue()
        sem = asyncio.Semaphore(concurrency)

        async def one(rec: dict[str, Any]) -> None:
            try:
                async with sem:
                    fate = await work(ctx, rec)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - never lose a record to a bug in one listing's data
                fate = Fate.failed(str(rec[key_field]), "internal", f"{type(e).__name__}: {e}"[:300])
            queue.put_nowait(fate)

        tasks = [loop.create_task(one(r)) for r in records]
        remaining = len(records)
        while remaining:
            fate = loop.run_until_complete(queue.get())
            remaining -= 1
            yield fate
            while remaining and not queue.empty():
                remaining -= 1
                yield queue.get_nowait()
    finally:
        pending = [t for t in tasks if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        try:
            loop.run_until_complete(ctx_manager.__aexit__(None, None, None))
        finally:
            if counters is not None:
                for c in getattr(ctx_manager, "all_counters", lambda: [])():
                    counters.update({k: v for k, v in c.items() if isinstance(v, (int, float))})
            loop.close()


class Backends:
    """The endpoints one stage uses, opened together (an async context manager for :func:`drive`)."""

    def __init__(self, specs: dict[str, EndpointSpec | dict[str, Any] | None]) -> None:
        self.backends = {name: make_backend(s) for name, s in specs.items() if s}

    async def __aenter__(self) -> dict[str, Any]:
        for b in self.backends.values():
            await b.__aenter__()
        return self.backends

    async def __aexit__(self, *exc: Any) -> None:
        for b in self.backends.values():
            await b.__aexit__(*exc)

    def all_counters(self) -> list[Counter]:
        return [Counter({f"{name}:{k}": v for k, v in b.counters.items()}) for name, b in self.backends.items()]


