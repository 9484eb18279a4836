"""The OpenAI-compatible chat client every endpoint user shares (the judge, the openai backend, MMBench matching):
vLLM serve, a hosted API, a scripted test server. Retries transport errors and 429/5xx with exponential backoff;
the API key is read from the environment variable named by ``api_key_env`` and never logged or shown.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class OpenAIChatClient:
    """Minimal OpenAI-compatible chat client (httpx): retries transport errors and 429/5xx with backoff."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    http_retries: int = 3
    backoff_s: float = 1.0

    def __post_init__(self) -> None:
        import httpx

        self.base_url = self.base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        key = os.environ.get(self.api_key_env, "")
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(timeout=self.timeout_s, headers=headers)

    def __repr__(self) -> str:  # never show headers (the key) in logs or tracebacks
        return f"OpenAIChatClient(base_url={self.base_url!r}, model={self.model!r})"

    def chat(self, messages: list[dict[str, Any]], *, max_tokens: int = 512, temperature: float = 0.0,
             json_schema: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> str:
        import httpx

        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                                "temperature": temperature, **(extra or {})}
        if json_schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "answer", "schema": json_schema, "strict": True}}
        last = ""
        for attempt in range(self.http_retries + 1):
            try:
                r = self._http.post(f"{self.base_url}/chat/completions", json=body)
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    return r.json()["choices"][0]["message"].get("content") or ""
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                if r.status_code not in (408, 409, 429) and r.status_code < 500:
                    break  # a request error: retrying does not help
            if attempt < self.http_retries:
                time.sleep(self.backoff_s * 2 ** attempt)
        raise ConnectionError(f"chat endpoint {self.base_url} failed: {last}")


@dataclass
class CallResult:
    """One structured call's outcome: ``value`` (the parsed answer) or ``error`` (why it failed after retries), and
    what it cost."""

    value: Any = None
    error: str | None = None  # None | "timeout" | "http_<code>" | "transport" | "malformed" | "refused" | ...
    detail: str = ""
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class AsyncChatClient:
    """Bounded-concurrency async OpenAI-compatible client for the data stages (curation, item intelligence).

    - at most ``concurrency`` requests in flight (a semaphore shared by every call of this client);
    - transport errors, timeouts, 408/409/429 and 5xx are retried with exponential backoff (+ jitter), up to
      ``http_retries`` times; other 4xx are not (the request is wrong);
    - :meth:`chat_json` asks for JSON-schema output and checks it with ``validate`` (returns an error message or
      None); an answer that is not JSON or fails the check is asked again with the error fed back, up to
      ``format_retries`` times, then reported as ``malformed``;
    - counters (requests, retries, errors by kind, tokens) in ``self.counters``; the API key comes from the
      environment variable ``api_key_env`` and is never logged.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 16,
                 timeout_s: float = 120.0, http_retries: int = 4, backoff_s: float = 0.5,
                 format_retries: int = 2) -> None:
        import asyncio
        from collections import Counter

        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.model, self.timeout_s = model, timeout_s
        self.http_retries, self.backoff_s, self.format_retries = http_retries, backoff_s, format_retries
        self.concurrency = concurrency
        self._key = os.environ.get(api_key_env, "")
        self._sem = asyncio.Semaphore(concurrency)
        self._http = None
        self.counters: Counter = Counter()

    def __repr__(self) -> str:
        return f"AsyncChatClient(base_url={self.base_url!r}, model={self.model!r}, concurrency={self.concurrency})"

    async def __aenter__(self) -> "AsyncChatClient":
        # aiohttp, not httpx: at 64+ requests in flight the client's own CPU per request decides whether a worker
        # keeps up with the endpoint (benchmarks/curation_throughput.py prints both)
        import aiohttp

        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        self._http = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                           connector=aiohttp.TCPConnector(limit=self.concurrency))
        return self

    async def __aexit__(self, *exc) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _post(self, body: dict[str, Any]) -> tuple[str | None, CallResult]:
        """(content or None, result with error/attempts/tokens) of one chat request, transport-retried."""
        import asyncio
        import random

        import aiohttp

        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        res = CallResult()
        for attempt in range(self.http_retries + 1):
            res.attempts += 1
            self.counters["requests"] += 1
            try:
                async with self._sem:
                    async with self._http.post(f"{self.base_url}/chat/completions", data=payload) as r:
                        status, raw = r.status, await r.read()
            except TimeoutError as e:
                res.error, res.detail = "timeout", f"{type(e).__name__}"
            except aiohttp.ClientError as e:
                res.error, res.detail = "transport", f"{type(e).__name__}: {e}"[:200]
            else:
                if status == 200:
                    try:
                        doc = json.loads(raw)
                        content = doc["choices"][0]["message"].get("content")
                        usage = doc.get("usage") or {}
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
                        head = raw[:200].decode("utf-8", "replace")
                        res.error, res.detail = "malformed_response", f"{type(e).__name__}: {head}"
                        self.counters["errors:malformed_response"] += 1
                        return None, res
                    res.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                    res.completion_tokens += int(usage.get("completion_tokens") or 0)
                    self.counters["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
                    self.counters["completion_tokens"] += int(usage.get("completion_tokens") or 0)
                    res.error = None
                    return content or "", res
                res.error, res.detail = f"http_{status}", raw[:200].decode("utf-8", "replace")
                if status not in (408, 409, 429) and status < 500:
                    break
            self.counters[f"errors:{res.error}"] += 1
            if attempt < self.http_retries:
                self.counters["retries"] += 1
                await asyncio.sleep(self.backoff_s * 2 ** attempt * (0.5 + random.random()))
        self.counters[f"failed:{res.error}"] += 1
        return None, res

    async def chat(self, messages: list[dict[str, Any]], *, max_tokens: int = 512, temperature: float = 0.0,
                   extra: dict[str, Any] | None = None) -> CallResult:
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
                **(extra or {})}
        content, res = await self._post(body)
        res.value = content
        return res

    async def chat_json(self, messages: list[dict[str, Any]], schema: dict[str, Any], *,
                        validate=None, max_tokens: int = 1024, temperature: float = 0.0,
                        extra: dict[str, Any] | None = None) -> CallResult:
        """A JSON answer of `schema`, checked; malformed answers are asked again with the error fed back."""
        body = {"model": self.model, "messages": list(messages), "max_tokens": max_tokens,
                "temperature": temperature, **(extra or {}),
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "answer", "schema": schema, "strict": True}}}
        total = CallResult()
        for fmt_try in range(self.format_retries + 1):
            content, res = await self._post(body)
            total.attempts += res.attempts
            total.prompt_tokens += res.prompt_tokens
            total.completion_tokens += res.completion_tokens
            if content is None:
                total.error, total.detail = res.error, res.detail
                return total
            try:
                value = json.loads(content)
                problem = validate(value) if validate else None
            except ValueError as e:
                value, problem = None, f"not JSON ({e})"
            if problem is None:
                total.value, total.error, total.detail = value, None, ""
                return total
            self.counters["format_retries"] += 1
            total.error, total.detail = "malformed", f"{problem}: {content[:200]}"
            body["messages"] = [*messages, {"role": "assistant", "content": content},
                                {"role": "user", "content": f"That answer is invalid: {problem}. Answer again with "
                                                            f"JSON that follows the schema exactly."}]
        self.counters["failed:malformed"] += 1
        return total
