"""Shared fixtures. Heavy objects (tokenizers, synthetic data, the megatron process group) are built once per
session; torch/megatron are imported only by tests that need them.

Markers (pyproject.toml): slow, multiproc, slurm, gpu. `make test` runs everything but slow and gpu.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("llama3", "chatml", "gemma3")


def _slurm_up() -> bool:
    """sbatch exists and the controller answers with a usable node (.ci/start_slurm.sh brings it up)."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10).stdout
    except (subprocess.TimeoutExpired, OSError):
        return False
    return any(state in out for state in ("idle", "mixed", "allocated"))


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    has_slurm = _slurm_up()
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "slurm" in item.keywords and not has_slurm:
            item.add_marker(pytest.mark.skip(reason="needs the local SLURM cluster (.ci/run starts it)"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_tokenizers() -> dict:
    """One tiny byte-level BPE tokenizer per chat format (llama3, chatml, gemma3), trained offline."""
    from ecomvlm.data_modules.synth import BRANDS, CATEGORIES, COLOURS, PATTERNS
    from ecomvlm.data_modules.tiny_tokenizer import DEFAULT_CORPUS, build_tiny_tokenizer

    corpus = DEFAULT_CORPUS + list(COLOURS) + PATTERNS + BRANDS + list(CATEGORIES)
    return {fam: build_tiny_tokenizer(fam, corpus=corpus, vocab_size=400) for fam in FAMILIES}


@pytest.fixture(scope="session")
def tiny_hf_configs() -> dict:
    """Tiny HF configs of every encoder/decoder family (random weights are built from these; nothing downloaded)."""
    from tiny_hf import tiny_hf_configs as make

    return make()


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    from ecomvlm.data_modules.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(SynthConfig(out=out, n=24, n_eval=16, seed=3, image_size=96))
    return out


@pytest.fixture(scope="session")
def megatron_single():
    """A 1-process gloo group + megatron parallel state (TP=PP=1) for the whole session, CPU shim applied."""
    from ecomvlm.recipes.models.parallel import ParallelConfig, destroy_distributed, init_distributed

    info = init_distributed(ParallelConfig(), seed=1234)
    yield info
    destroy_distributed()


@pytest.fixture(scope="session")
def tiny_train_inputs(tmp_path_factory):
    """Synthetic data -> shards for stage 1 and stage 3, and a tiny ChatML tokenizer saved to disk."""
    from ecomvlm.data_modules.shards import ShardConfig, make_shards
    from ecomvlm.data_modules.synth import SynthConfig, synthesize
    from ecomvlm.data_modules.tiny_tokenizer import build_tiny_tokenizer, save_tiny_tokenizer

    w = tmp_path_factory.mktemp("train")
    synthesize(SynthConfig(out=w / "data", n=40, n_eval=4, image_size=48))
    for name, src in (("s1", "stage1_captions"), ("s3", "stage3_instruct")):
        make_shards(ShardConfig([w / "data" / "train" / f"{src}.json"], w / name, image_root=w / "data",
                                samples_per_shard=40, workers=1))
    texts = [t["value"] for r in json.loads((w / "data/train/stage3_instruct.json").read_text())
             for t in r["conversations"]]
    save_tiny_tokenizer(build_tiny_tokenizer("chatml", corpus=texts, vocab_size=600), w / "tok")
    return w


def run_torchrun(script: Path, nproc: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a worker under torchrun (gloo on CPU); raise with its output on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(script), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


# ------------------------------------------------------------------ a scripted OpenAI-compatible endpoint
class _Scripted(BaseHTTPRequestHandler):
    """/v1/chat/completions answering from a script (one (status, content) entry per request, in order)."""

    script: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"body": body, "auth": self.headers.get("Authorization"), "path": self.path})
        status, content = type(self).script.pop(0) if type(self).script else (200, "{}")
        payload = {"choices": [{"message": {"role": "assistant", "content": content}}]} if status == 200 else {}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def scripted_server():
    """(base URL, handler class): set handler.script, read handler.seen. A real HTTP round trip, no model."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _Scripted.script, _Scripted.seen = [], []
    yield f"http://127.0.0.1:{srv.server_port}", _Scripted
    srv.shutdown()


class _FunctionEndpoint(BaseHTTPRequestHandler):
    """/v1/chat/completions answered by ``respond(body) -> (status, content[, delay_s])``; counts requests in flight."""

    respond = None
    lock = threading.Lock()
    in_flight = 0
    max_in_flight = 0
    requests = 0

    def do_POST(self):  # noqa: N802
        import time

        cls = type(self)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with cls.lock:
            cls.in_flight += 1
            cls.requests += 1
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
        try:
            out = cls.respond(body)
            status, content, delay = (*out, 0.0) if len(out) == 2 else out
            if delay:
                time.sleep(delay)
        finally:
            with cls.lock:
                cls.in_flight -= 1
        payload = ({"choices": [{"message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5}} if status == 200 else {"error": content})
        data = json.dumps(payload).encode() if content is not None or status != 200 else b"not json"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def function_endpoint():
    """(base URL, handler class): set handler.respond = fn(body) -> (status, content[, delay]). A real loopback HTTP
    server (threaded: concurrent requests really overlap), no model."""
    handler = type("Endpoint", (_FunctionEndpoint,), {"respond": None, "lock": threading.Lock(), "in_flight": 0,
                                                      "max_in_flight": 0, "requests": 0})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}", handler
    srv.shutdown()
