"""`ecomvlm eval`: HF-format checkpoints x benchmark sets -> per-benchmark JSON + a paper-style table.

Reads only HF checkpoints (what `ecomvlm export` writes, or any transformers image-text-to-text model), so our
models and public VLMs are evaluated the same way. Backend here: transformers generation (CPU/dev, batched,
greedy). Benchmarks: the e-commerce sets in docs/DATA_FORMAT.md ("Eval sets"); the multi-image item-intelligence
set needs an LLM judge and the public benchmarks need their datasets (both: issue #6, not in this version).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecomvlm.eval.scoring import score_records

ECOMMERCE = ["aspect_general", "aspect_fashion", "aspect_fashion_tc", "fashion_apparel",
             "fashion_sneakers_handbags", "dae"]
# Table 1 columns (paper order) -> (benchmark, metric)
TABLE1 = [("Aspect General", "aspect_general", "accuracy"), ("Aspect Fashion", "aspect_fashion", "accuracy"),
          ("Aspect Fashion + T&C", "aspect_fashion_tc", "accuracy"), ("Apparel", "fashion_apparel", "accuracy"),
          ("Sneakers & Handbags", "fashion_sneakers_handbags", "accuracy"), ("DAE (F1)", "dae", "f1")]


def load_benchmark(data_dir: Path, name: str, limit: int | None = None) -> list[dict[str, Any]]:
    path = Path(data_dir) / "eval" / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {path} not found (make one with `ecomvlm data synth`, or put "
                                f"records in the format of docs/DATA_FORMAT.md there)")
    recs = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: broken JSON ({e.msg}); fix or remove the line") from None
    return recs[:limit] if limit else recs


@dataclass
class HFBackend:
    """Batched greedy generation with transformers (LLaVA exports and other image-text-to-text models)."""

    model_dir: str
    batch_size: int = 8
    max_new_tokens: int = 64
    device: str = "cpu"

    def __post_init__(self) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(self.model_dir)
        dtype = torch.float32 if self.device == "cpu" else torch.bfloat16
        self.model = AutoModelForImageTextToText.from_pretrained(self.model_dir, torch_dtype=dtype).to(self.device).eval()
        tok = self.processor.tokenizer
        tok.padding_side = "left"  # generation continues every row at the end
        template = tok.chat_template or ""
        self.string_content = "'type'" not in template and '"type"' not in template

    def _prompt(self, text: str, n_images: int) -> str:
        if "<image>" not in text:
            text = "<image>\n" * n_images + text
        if self.string_content:  # our exports: plain-text turns with <image> placeholders
            return self.processor.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                                add_generation_prompt=True)
        parts = [{"type": "image"}] * n_images + [{"type": "text", "text": text.replace("<image>\n", "")}]
        return self.processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True)

    def generate(self, prompts: list[str], images: list[list[Any]]) -> list[str]:
        import torch

        out: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            chunk_p, chunk_i = prompts[i:i + self.batch_size], images[i:i + self.batch_size]
            texts = [self._prompt(p, len(ims)) for p, ims in zip(chunk_p, chunk_i)]
            flat = [im for ims in chunk_i for im in ims]
            inputs = self.processor(images=flat or None, text=texts, return_tensors="pt", padding=True).to(self.device)
            with torch.no_grad():
                gen = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            out += self.processor.tokenizer.batch_decode(gen[:, inputs["input_ids"].shape[1]:],
                                                         skip_special_tokens=True)
        return [o.strip() for o in out]


def evaluate(model_dir: str | Path, data_dir: str | Path, benchmarks: list[str], out_dir: str | Path, *,
             limit: int | None = None, batch_size: int = 8, max_new_tokens: int = 64, progress=None) -> dict[str, Any]:
    from PIL import Image

    backend = HFBackend(str(model_dir), batch_size=batch_size, max_new_tokens=max_new_tokens)
    name = Path(model_dir).name
    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for bench in benchmarks:
        recs = load_benchmark(Path(data_dir), bench, limit)
        images = [[Image.open(Path(data_dir) / p).convert("RGB") for p in r["images"]] for r in recs]
        t0 = time.perf_counter()
        preds = backend.generate([r["prompt"] for r in recs], images)
        dt = time.perf_counter() - t0
        metrics = score_records(bench, recs, preds)
        metrics["sec_per_example"] = dt / max(1, len(recs))
        results[bench] = metrics
        (out / f"{bench}.json").write_text(json.dumps(
            {"model": str(model_dir), "benchmark": bench, "metrics": metrics,
             "predictions": [{"id": r["id"], "prediction": p, "answer": r["answer"]} for r, p in zip(recs, preds)]},
            indent=1) + "\n")
        if progress:
            progress(bench, metrics)
    return results


def table1_markdown(results: dict[str, dict[str, Any]]) -> str:
    """Models side by side in the paper's Table 1 layout (+ sec/example, the Table 4 metric)."""
    cols = [c for c, b, _ in TABLE1 if any(b in r for r in results.values())]
    head = "| model | " + " | ".join(cols) + " | sec/example |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for model, res in results.items():
        cells = []
        for col, bench, metric in TABLE1:
            if col in cols:
                cells.append(f"{res[bench][metric]:.1f}" if bench in res else "-")
        secs = [m["sec_per_example"] for m in res.values()]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {sum(secs) / max(1, len(secs)):.3f} |")
    return "\n".join(lines) + "\n"


def table1_csv(results: dict[str, dict[str, Any]]) -> str:
    rows = ["model," + ",".join(c for c, _, _ in TABLE1)]
    for model, res in results.items():
        rows.append(model + "," + ",".join(f"{res[b][m]:.2f}" if b in res else "" for _, b, m in TABLE1))
    return "\n".join(rows) + "\n"
