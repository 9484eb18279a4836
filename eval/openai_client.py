"""The OpenAI-compatible chat client every endpoint user shares (the judge, the openai backend, MMBench matching):
vLLM serve, a hosted API, a scripted test server. Retries transport errors and 429/5xx with exponential backoff;
the API key is read from the environment variable named by ``api_key_env`` and never logged or shown.
"""

from __future__ import annotations

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
