"""Scripted captioner and verifier for synthetic listings: OpenAI-compatible answers computed from the truth, served
on loopback, so tests, the demo and the benchmark run the real client and pipeline with no model.

- captioner (a request with an image): looks the image up by its sha256 in the truth and answers
  :func:`~ecomvlm.data_modules.curation.synthetic.caption_for`; an unknown image gets a generic caption;
- verifier (a request with ``response_format``): a rule, not a lookup: an aspect is ``visible`` when every word of
  its value appears in the photo description (or its visible text), else ``not_visible``; it finds the listing by
  its MPN aspect only to apply the faults.

Faults (``truth[...]["fault"]``): ``caption_503`` (always 503), ``caption_503_once`` (503, then answers),
``caption_refusal``, ``caption_timeout`` (answers after ``slow_s``), ``verify_malformed`` (never valid JSON).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

from ecomvlm.data_modules.curation.synthetic import caption_for

REFUSAL = "I'm sorry, but I can't help with describing this image."


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower().replace("-", " "))


def _content_parts(body: dict[str, Any]) -> tuple[str, list[bytes]]:
    text, images = [], []
    for m in body.get("messages", []):
        c = m.get("content")
        if isinstance(c, str):
            text.append(c)
            continue
        for part in c or []:
            if part.get("type") == "text":
                text.append(part.get("text", ""))
            elif part.get("type") == "image_url":
                url = part["image_url"]["url"]
                if url.startswith("data:") and "," in url:
                    images.append(base64.b64decode(url.split(",", 1)[1]))
    return "\n".join(text), images


def send_chat_completion(handler, status: int, content: str | None, usage: dict[str, int]) -> None:
    """Answer an OpenAI chat-completions request from a BaseHTTPRequestHandler: the message (status 200) or an
    error body; a client that already gave up (its timeout) gets nothing."""
    payload = ({"choices": [{"message": {"role": "assistant", "content": content}}], "usage": usage}
               if status == 200 else {"error": content})
    data = json.dumps(payload).encode()
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


class ScriptedEndpoints:
    """``respond(body) -> (status, content, delay_s)``: the conftest ``function_endpoint`` contract."""

    def __init__(self, truth: dict[str, dict[str, Any]], latency_s: float = 0.0, slow_s: float = 2.0) -> None:
        self.truth = truth
        self.by_sha: dict[str, dict[str, Any]] = {}
        for t in truth.values():  # a duplicate listing shares its original's image: the original's truth wins
            if t.get("image_sha256") and not t.get("duplicate_of"):
                self.by_sha.setdefault(t["image_sha256"], t)
        self.by_mpn = {t["mpn"]: t for t in truth.values()}
        self.latency_s, self.slow_s = latency_s, slow_s
        self.lock = threading.Lock()
        self.seen_503: set[str] = set()
        self.calls = {"caption": 0, "verify": 0}

    def respond(self, body: dict[str, Any]) -> tuple[int, str | None, float]:
        text, images = _content_parts(body)
        if "response_format" in body:
            with self.lock:
                self.calls["verify"] += 1
            return self._verify(text)
        with self.lock:
            self.calls["caption"] += 1
        t = self.by_sha.get(hashlib.sha256(images[0]).hexdigest()) if images else None
        fault = (t or {}).get("fault")
        if fault == "caption_503":
            return 503, "overloaded", self.latency_s
        if fault == "caption_503_once":
            with self.lock:
                first = t["id"] not in self.seen_503
                self.seen_503.add(t["id"])
            if first:
                return 503, "overloaded", self.latency_s
        if fault == "caption_refusal":
            return 200, REFUSAL, self.latency_s
        if fault == "caption_timeout":
            return 200, "too late", self.slow_s
        if t is None:
            return 200, "A product photographed on a plain background.\nVisible text: none", self.latency_s
        return 200, caption_for(t), self.latency_s

    def _verify(self, prompt: str) -> tuple[int, str | None, float]:
        desc = prompt.split("Photo description:", 1)[-1].split("Listing category:", 1)[0]
        block = prompt.split("Seller's item aspects:", 1)[1].split("\n\n", 1)[0] if "Seller's item aspects:" in \
            prompt else ""
        aspects = [line[2:].split(": ", 1) for line in block.strip().splitlines() if line.startswith("- ")]
        listing = next((self.by_mpn[v] for n, v in (a for a in aspects if len(a) == 2) if n == "MPN"
                        and v in self.by_mpn), None)
        if listing and listing.get("fault") == "verify_malformed":
            return 200, "Sure! Here are the verdicts: colour visible, brand visible", self.latency_s
        seen = set(_words(desc))
        out = []
        for a in aspects:
            name, value = (a + [""])[:2]
            words = _words(value)
            out.append({"name": name, "verdict": "visible" if words and all(w in seen for w in words)
                        else "not_visible"})
        return 200, json.dumps({"aspects": out}), self.latency_s


class _Handler(BaseHTTPRequestHandler):
    endpoints: ScriptedEndpoints
    protocol_version = "HTTP/1.1"  # keep-alive, as vLLM and hosted APIs answer
    # Headers and body go out as two writes; with Nagle on, the body waits for the client's delayed ACK of the
    # headers (40 ms on Linux) on every kept-alive request. Real servers (uvicorn under vLLM) set TCP_NODELAY too.
    disable_nagle_algorithm = True

    def do_POST(self):  # noqa: N802
        import time

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, content, delay = self.endpoints.respond(body)
        if delay:
            time.sleep(delay)
        send_chat_completion(self, status, content, {"prompt_tokens": 10, "completion_tokens": 5})

    def log_message(self, *a):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the listen backlog: a burst of concurrent connects must not wait for SYN retries


@contextmanager
def serve(endpoints: ScriptedEndpoints) -> Iterator[str]:
    """A loopback OpenAI-compatible server answering with `endpoints`; yields its base URL (``.../v1``)."""
    handler = type("ScriptedCuration", (_Handler,), {"endpoints": endpoints})
    srv = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}/v1"
    finally:
        srv.shutdown()
        srv.server_close()


def _serve_forever(truth: dict[str, dict[str, Any]], latency_s: float, port_queue) -> None:
    with serve(ScriptedEndpoints(truth, latency_s=latency_s)) as url:
        port_queue.put(url)
        threading.Event().wait()


@contextmanager
def serve_in_process(truth: dict[str, dict[str, Any]], latency_s: float = 0.0) -> Iterator[str]:
    """:func:`serve` in a process of its own (its threads do not share the caller's interpreter lock, as a real
    endpoint does not): for measuring the client side."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_serve_forever, args=(truth, latency_s, q), daemon=True)
    proc.start()
    try:
        yield q.get(timeout=60)
    finally:
        proc.terminate()
        proc.join(10)
