"""The automodel backend (NeMo AutoModel) on tiny random complete VLMs built from configs here: ``ecomvlm train
gemma3_4b_item_intel_ft`` trains on our multi-image item-intelligence shards with falling loss and an assistant-only
loss mask, writes our run directory (TensorBoard, history, summary) and a consolidated HF folder that loads in
transformers and that ``ecomvlm eval --backend hf`` scores; 2 gloo processes (FSDP2) equal 1; kill -9 + resume
equals the uninterrupted run; Gemma3 pan & scan records its crops at training and at inference.

Heavy variants (Qwen2.5-VL / Qwen3-VL, LoRA, pan & scan training, 2-process Qwen) are marked slow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

ECOMVLM = [sys.executable, "-m", "ecomvlm.cli"] if not (Path(sys.executable).parent / "ecomvlm").exists() \
    else [str(Path(sys.executable).parent / "ecomvlm")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
STEPS = 4
# 24 items, micro-batches of 2, 2 per step: one epoch is 6 steps; constant LR (min_lr = lr) so the loss visibly falls
TRAIN_ARGS = ["trainer.save_every=2", "trainer.log_every=1", "data.global_batch_size=4", "data.micro_batch_size=2",
              "data.num_workers=0", "precision=fp32", "optim.lr=3e-3", "optim.min_lr=3e-3", "optim.warmup_steps=0",
              "data.max_seq_length=1024"]
# 2 ranks x FSDP2 vs 1 rank: same global batches (the sampler interleaves ranks), fp32 on CPU; sums of
# per-rank partial losses in another order differ in the last bits only
FSDP_TOLERANCE = 1e-3


def _train(recipe: str, model: Path, shards: Path, run_dir: Path, *extra: str, steps: int = STEPS, nproc: int = 1,
           timeout: int = 400) -> dict:
    cmd = [*ECOMVLM, "train", recipe, *(["--nproc", str(nproc)] if nproc > 1 else []), f"model.hf_path={model}",
           f"data.shards={shards}", f"run.dir={run_dir}", f"trainer.max_steps={steps}", *TRAIN_ARGS, *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def am_inputs(tmp_path_factory):
    """Synthetic multi-image item-intelligence data (1-3 images per item) -> one shard folder; a tiny random Gemma3."""
    from ecomvlm.data_modules.shards import ShardConfig, make_shards
    from ecomvlm.data_modules.synth import SynthConfig, synthesize
    from ecomvlm.recipes.automodel.tiny import tiny_vlm

    w = tmp_path_factory.mktemp("automodel")
    synthesize(SynthConfig(out=w / "data", n=24, n_eval=8, seed=5, image_size=48, max_images=3))
    m = make_shards(ShardConfig([w / "data" / "train" / "item_intel_train.json"], w / "shards", image_root=w / "data",
                                samples_per_shard=100, workers=1))
    assert m["samples"] == 24
    texts = [t["value"] for r in json.loads((w / "data/train/item_intel_train.json").read_text())
             for t in r["conversations"]]
    tiny_vlm("gemma3", w / "gemma3", corpus=texts)
    return {"dir": w, "data": w / "data", "shards": w / "shards", "gemma3": w / "gemma3", "texts": texts}


@pytest.fixture(scope="module")
def gemma3_run(am_inputs):
    run_dir = am_inputs["dir"] / "runs" / "gemma3"
    t0 = time.time()
    summary = _train("gemma3_4b_item_intel_ft", am_inputs["gemma3"], am_inputs["shards"], run_dir)
    summary["wall_s"] = time.time() - t0
    return summary


# ---------------------------------------------------------------- data: the same samples, assistant-only loss
def test_dataset_masks_everything_but_the_assistant_answer(am_inputs):
    from ecomvlm.recipes.automodel.data import STATS_KEY, DataSpec, ShardVLMDataset, collate

    ds = ShardVLMDataset(DataSpec(shards=str(am_inputs["shards"]), model_dir=str(am_inputs["gemma3"]),
                                  processor_kwargs={}))
    records = json.loads((am_inputs["data"] / "train" / "item_intel_train.json").read_text())
    by_answer = {r["conversations"][-1]["value"]: r for r in records}
    tok = ds.inputs.tokenizer
    multi = 0
    for i in range(len(ds)):
        item = ds[i]
        labels = item["labels"]
        learned = tok.decode(labels[labels != -100])
        answer, end = learned[:-len("<end_of_turn>")], learned[-len("<end_of_turn>"):]
        assert end == "<end_of_turn>" and answer in by_answer  # exactly one assistant answer + the turn end
        n_images = len(by_answer[answer]["image"])
        assert item["pixel_values"].shape[0] == item[STATS_KEY]["images"] == n_images
        image_id = tok.convert_tokens_to_ids("<image_soft_token>")
        assert int((item["input_ids"] == image_id).sum()) == 4 * n_images  # Gemma3's pooled tokens per image
        multi += n_images > 1
    assert multi >= 8  # multi-image items are most of the set
    batch = collate([ds[0], ds[1]], pad_token_id=tok.pad_token_id)
    n0 = ds[0]["input_ids"].shape[-1]
    # labels are pre-shifted: position t is trained to predict token t+1
    assert batch["labels"][0, : n0 - 1].tolist() == ds[0]["labels"][1:].tolist()
    assert batch["input_ids"].shape == batch["labels"].shape and batch["input_ids"].is_contiguous()
    assert batch["pixel_values"].shape[0] == ds[0]["pixel_values"].shape[0] + ds[1]["pixel_values"].shape[0]


# ---------------------------------------------------------------- ecomvlm train gemma3_4b_item_intel_ft on CPU
def test_gemma3_trains_with_falling_loss_into_our_run_dir(gemma3_run, am_inputs):
    s = gemma3_run
    losses = s["losses"]
    assert len(losses) == STEPS and s["start_step"] == 0
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.1, losses
    run_dir = Path(s["run_dir"])
    for name in ("config.json", "automodel.json", "history.jsonl", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "config.json").read_text())["backend"] == "automodel"
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in history] == losses
    assert sum(r["images"] for r in history) == s["data"]["images_this_rank"] > s["data"]["samples_trained_this_rank"]
    assert s["data"]["samples_trained_this_rank"] == 4 * STEPS and s["data"]["skipped_this_rank"] == {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir / "tb"))
    ea.Reload()
    assert [round(e.value, 4) for e in ea.Scalars("train/loss")] == [round(x, 4) for x in losses]
    steps_saved = sorted(int(p.name.rsplit("_", 1)[1]) + 1 for p in (run_dir / "checkpoints").glob("epoch_*_step_*"))
    assert steps_saved == [2, 4]
    hf = run_dir / "hf"
    assert hf.is_symlink() and (hf / "config.json").is_file() and s["hf_dir"] == str(hf)
    assert (hf / "processor_config.json").is_file() or (hf / "preprocessor_config.json").is_file()


def test_result_loads_in_transformers_with_the_trained_weights(gemma3_run, am_inputs):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    hf = Path(gemma3_run["hf_dir"])
    model = AutoModelForImageTextToText.from_pretrained(hf, dtype=torch.float32)
    base = AutoModelForImageTextToText.from_pretrained(am_inputs["gemma3"], dtype=torch.float32)
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    trained, start = dict(model.named_parameters()), dict(base.named_parameters())
    assert trained.keys() == start.keys()
    changed = [n for n in trained if not torch.equal(trained[n], start[n])]
    # a full fine-tune: the tower, the projector and the decoder all moved
    for part in ("vision_tower", "multi_modal_projector", "language_model"):
        assert any(part in n for n in changed), part
    files = sorted(hf.glob("*.safetensors"))
    saved = {k: v for f in files for k, v in load_file(f).items()}
    assert len(saved) >= len([n for n in trained if "lm_head" not in n])
    # the published tensor names (vLLM's Gemma3 loader needs them; transformers reads both, as loaded above)
    tower = [k for k in saved if "vision_tower." in k]
    assert tower and all("vision_tower.vision_model." in k for k in tower)
    AutoProcessor.from_pretrained(hf)  # the processor and chat template travel with the result


def test_ecomvlm_eval_scores_the_result(gemma3_run, am_inputs, tmp_path, capsys):
    from ecomvlm.cli import main

    out = tmp_path / "eval"
    argv = ["eval", "--model", f"tiny_gemma3={gemma3_run['hf_dir']}", "--backend", "hf", "--data",
            str(am_inputs["data"]), "--benchmarks", "item_intel", "--out", str(out), "--limit", "2",
            "--item-intel-max-new-tokens", "16", "--json-retries", "0", "--no-plot"]
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    ii = json.loads((out / "results.json").read_text())["tiny_gemma3"]["item_intel"]
    assert ii["n"] == 2 and ii["n_scored"] + ii["judge_failed"] == 2 and 0.0 <= ii["f1"] <= 100.0


# ---------------------------------------------------------------- 2 gloo processes (FSDP2) == 1 process
def test_two_fsdp2_processes_equal_one(gemma3_run, am_inputs):
    run_dir = am_inputs["dir"] / "runs" / "gemma3_2proc"
    s2 = _train("gemma3_4b_item_intel_ft", am_inputs["gemma3"], am_inputs["shards"], run_dir, nproc=2, steps=3)
    assert s2["engine"]["world_size"] == 2 and s2["engine"]["dp"] == 2 and s2["engine"]["grad_acc"] == 1
    assert gemma3_run["engine"]["grad_acc"] == 2
    one = gemma3_run["losses"][:3]
    assert len(s2["losses"]) == 3
    assert max(abs(a - b) for a, b in zip(one, s2["losses"])) < FSDP_TOLERANCE, (one, s2["losses"])


# ---------------------------------------------------------------- kill -9 + resume == uninterrupted
def test_kill9_and_resume_equals_the_uninterrupted_run(gemma3_run, am_inputs):
    from ecomvlm.recipes.automodel.rundir import latest_checkpoint

    run_dir = am_inputs["dir"] / "runs" / "gemma3_killed"
    cmd = [*ECOMVLM, "train", "gemma3_4b_item_intel_ft", f"model.hf_path={am_inputs['gemma3']}",
           f"data.shards={am_inputs['shards']}", f"run.dir={run_dir}", f"trainer.max_steps={STEPS}", *TRAIN_ARGS]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            found = latest_checkpoint(run_dir)
            if found and found[0] >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = latest_checkpoint(run_dir)[0]
    assert 2 <= killed_at < STEPS
    before = [json.loads(line)["loss"] for line in (run_dir / "history.jsonl").read_text().splitlines()]
    s = _train("gemma3_4b_item_intel_ft", am_inputs["gemma3"], am_inputs["shards"], run_dir)
    assert s["start_step"] == killed_at and s["init"].startswith("resumed")
    reference = gemma3_run["losses"]
    assert before == pytest.approx(reference[:len(before)], abs=1e-5)
    assert s["losses"] == pytest.approx(reference[killed_at:], abs=1e-5), (s["losses"], reference)
    assert (run_dir / "hf" / "config.json").is_file()
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == list(range(1, STEPS + 1))  # steps redone after the kill appear once


# ---------------------------------------------------------------- pan & scan (Gemma3, Table 3 row 40)
def test_pan_and_scan_crops_are_recorded_at_training_and_inference(am_inputs, gemma3_run):
    from PIL import Image

    from ecomvlm.eval.backends import HFBackend
    from ecomvlm.recipes.automodel.inputs import load_inputs

    kw = {"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 16}
    inputs = load_inputs(am_inputs["gemma3"], processor_kwargs=kw)
    images = [Image.new("RGB", (120, 40), "red"), Image.new("RGB", (40, 40), "blue"), Image.new("RGB", (40, 100))]
    conv = [{"from": "human", "value": "<image>\n<image>\n<image>\nWhat is it?"}, {"from": "gpt", "value": "a"}]
    enc = inputs.encode_conversation(conv, images)
    assert enc.extra_crops == [3, 0, 3]  # 3:1 wide -> 3 crops, square -> none, 2.5:1 tall -> 3 (half rounds up)
    boi = inputs.tokenizer.convert_tokens_to_ids("<start_of_image>")
    # every crop is one more image: its own pixel block and its own <start_of_image> ... <end_of_image> span
    assert enc.inputs["pixel_values"].shape[0] == 3 + 6 == int((enc.inputs["input_ids"] == boi).sum())
    plain = load_inputs(am_inputs["gemma3"]).encode_conversation(conv, images)
    assert plain.extra_crops == [0, 0, 0] and plain.inputs["pixel_values"].shape[0] == 3

    backend = HFBackend(gemma3_run["hf_dir"], processor_kwargs=kw)
    backend.generate(["<image>\n<image>\nDescribe it."], [images[:2]], max_new_tokens=2)
    assert backend.last_extra_crops == [3, 0] and backend.describe()["processor_kwargs"] == kw
    default = HFBackend(gemma3_run["hf_dir"])  # the existing signature still works, pan & scan off
    default.generate(["<image>\nDescribe it."], [images[:1]], max_new_tokens=2)
    assert default.last_extra_crops == [0]


# ---------------------------------------------------------------- bad settings are refused, named
def test_impossible_settings_are_named_before_anything_starts(am_inputs):
    from ecomvlm.recipes.automodel.translate import LayoutError, check_layout
    from ecomvlm.recipes.config import load

    base = [f"model.hf_path={am_inputs['gemma3']}", f"data.shards={am_inputs['shards']}"]
    with pytest.raises(LayoutError, match="data.pack=true"):
        check_layout(load("gemma3_4b_item_intel_ft", [*base, "data.pack=true"]), 8)
    with pytest.raises(LayoutError, match="num_key_value_heads=4 is not divisible by TP=8"):
        check_layout(load("gemma3_4b_item_intel_ft", [*base, "parallel=tp8"]), 8)
    with pytest.raises(LayoutError, match="pipeline_model_parallel_size=2"):
        check_layout(load("gemma3_4b_item_intel_ft", [*base, "parallel=pp2"]), 8)
    with pytest.raises(LayoutError, match="global_batch_size=4 is not a multiple"):
        check_layout(load("gemma3_4b_item_intel_ft", [*base, "data.global_batch_size=4"]), 8)
    with pytest.raises(ValueError, match="composed encoder x decoder VLM"):
        load("tiny_siglip_qwen3_stage3_sft", ["backend=automodel", "tokenizer.path=x", "data.shards=y"])
    with pytest.raises(ValueError, match="peft.method='dora'"):
        load("gemma3_4b_item_intel_ft", [*base, "peft.method=dora"])


# ---------------------------------------------------------------- slow: the other families, LoRA, pan & scan run
@pytest.mark.slow
@pytest.mark.parametrize("family,recipe", [("qwen2_5_vl", "qwen2_5_vl_7b_item_intel_ft"),
                                           ("qwen3_vl", "qwen3_vl_8b_item_intel_ft")])
def test_qwen_families_train_with_falling_loss_and_load(am_inputs, family, recipe):
    import torch
    from transformers import AutoModelForImageTextToText

    from ecomvlm.recipes.automodel.tiny import tiny_vlm

    model = tiny_vlm(family, am_inputs["dir"] / family, corpus=am_inputs["texts"])
    s = _train(recipe, model, am_inputs["shards"], am_inputs["dir"] / "runs" / family, "data.max_image_tokens=null")
    assert sum(s["losses"][-2:]) / 2 < sum(s["losses"][:2]) / 2 - 0.1, s["losses"]
    assert s["data"]["images_this_rank"] > s["data"]["samples_trained_this_rank"]
    loaded = AutoModelForImageTextToText.from_pretrained(s["hf_dir"], dtype=torch.float32)
    assert family.replace("_", "") in type(loaded).__name__.lower().replace("_", "")


@pytest.mark.slow
def test_qwen2_5_vl_two_fsdp2_processes_equal_one(am_inputs):
    from ecomvlm.recipes.automodel.tiny import tiny_vlm

    model = tiny_vlm("qwen2_5_vl", am_inputs["dir"] / "qwen2_5_vl_fsdp", corpus=am_inputs["texts"])
    args = ("data.max_image_tokens=null",)
    one = _train("qwen2_5_vl_7b_item_intel_ft", model, am_inputs["shards"], am_inputs["dir"] / "runs" / "q1", *args,
                 steps=3)
    two = _train("qwen2_5_vl_7b_item_intel_ft", model, am_inputs["shards"], am_inputs["dir"] / "runs" / "q2", *args,
                 steps=3, nproc=2)
    assert max(abs(a - b) for a, b in zip(one["losses"], two["losses"])) < FSDP_TOLERANCE


@pytest.mark.slow
def test_lora_trains_only_the_adapters(am_inputs):
    import torch
    from safetensors.torch import load_file

    run_dir = am_inputs["dir"] / "runs" / "gemma3_lora"
    s = _train("gemma3_4b_item_intel_ft", am_inputs["gemma3"], am_inputs["shards"], run_dir, "peft=lora",
               "peft.dim=4", steps=3)
    assert s["engine"]["peft"] == "lora"
    assert s["losses"][-1] < s["losses"][0]
    adapter = Path(s["hf_dir"])
    assert (adapter / "adapter_config.json").is_file()
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)
    # LoRA B starts at zero: a trained adapter has moved it; nothing of the vision tower or lm_head is adapted
    assert any("lora_B" in k and torch.count_nonzero(v) > 0 for k, v in weights.items())
    assert not any("vision_tower" in k or "lm_head" in k for k in weights)
    base = load_file(am_inputs["gemma3"] / "model.safetensors")
    assert not any(k in base for k in weights)


@pytest.mark.slow
def test_pan_and_scan_training_records_the_crops(am_inputs, tmp_path):
    """Wide product shots (3:1) get crops at training; the summary counts them per image."""
    from PIL import Image

    from ecomvlm.data_modules.shards import ShardConfig, make_shards

    records = json.loads((am_inputs["data"] / "train" / "item_intel_train.json").read_text())[:8]
    root = tmp_path / "wide"
    (root / "images").mkdir(parents=True)
    for r in records:
        wide = []
        for rel in r["image"]:
            im = Image.open(am_inputs["data"] / rel).convert("RGB")
            canvas = Image.new("RGB", (3 * im.width, im.height), "white")
            canvas.paste(im, (im.width, 0))
            canvas.save(root / rel)
            wide.append(rel)
        r["image"] = wide
    (root / "wide.json").write_text(json.dumps(records))
    make_shards(ShardConfig([root / "wide.json"], root / "shards", image_root=root, samples_per_shard=100,
                            workers=1))
    s = _train("gemma3_4b_item_intel_ft", am_inputs["gemma3"], root / "shards", tmp_path / "run",
               "model.processor.pan_and_scan=true", "model.processor.pan_and_scan_min_crop_size=16", steps=2)
    ps = s["pan_and_scan"]
    n_images = s["data"]["images_this_rank"]
    assert ps["enabled"] and ps["extra_crops_per_image"] == {"3": n_images}
    assert ps["extra_crops_total"] == 3 * n_images


@pytest.mark.slow
def test_demo_finetune_tiny_gemma3_returns_a_loadable_model(am_inputs, tmp_path):
    import torch
    from transformers import AutoModelForImageTextToText

    from ecomvlm.data_modules.tiny_tokenizer import build_tiny_tokenizer, save_tiny_tokenizer
    from ecomvlm.recipes.automodel.demo import DEMO_MODEL, finetune_tiny_gemma3

    save_tiny_tokenizer(build_tiny_tokenizer("chatml", corpus=am_inputs["texts"], vocab_size=600), tmp_path / "tok")
    hf = finetune_tiny_gemma3(am_inputs["shards"], tmp_path / "tok", tmp_path / "demo", steps=3)
    summary = json.loads((tmp_path / "demo" / "run" / "summary.json").read_text())
    assert len(summary["losses"]) == 3 and summary["hf_dir"]
    model = AutoModelForImageTextToText.from_pretrained(hf, dtype=torch.float32)
    assert model.config.vision_config.image_size == DEMO_MODEL["image_size"]
    assert model.config.mm_tokens_per_image == DEMO_MODEL["tokens_per_image"]


@pytest.mark.slurm
def test_launch_runs_an_automodel_recipe_on_the_local_slurm(am_inputs, gemma3_run, tmp_path, capsys, monkeypatch):
    """`ecomvlm launch gemma3_4b_item_intel_ft --cluster local --wait`: two SLURM tasks (srun, FSDP2 over gloo) train
    the tiny Gemma3; the job's losses equal the single-process run's (the same global batches), its log shows the
    progress lines, and the HF result is where the recipe puts it."""
    import shutil

    if not shutil.which("sbatch") or subprocess.run(["scontrol", "ping"], capture_output=True).returncode != 0:
        pytest.skip("no local SLURM (.ci/start_slurm.sh)")
    from ecomvlm.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["launch", "gemma3_4b_item_intel_ft", "--cluster", "local", "--job-name", "gemma3_slurm", "--wait", "--",
            f"model.hf_path={am_inputs['gemma3']}", f"data.shards={am_inputs['shards']}", "trainer.max_steps=3",
            *TRAIN_ARGS]
    assert main(args) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    job = out.split("submitted job ")[1].split()[0]
    log = (tmp_path / "logs" / "slurm" / f"gemma3_slurm-{job}.out").read_text()
    run_dir = tmp_path / "runs" / "gemma3_slurm"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["engine"]["world_size"] == 2 and summary["backend"] == "automodel"
    assert summary["losses"] == pytest.approx(gemma3_run["losses"][:3], abs=FSDP_TOLERANCE), log[-3000:]
    assert (run_dir / "hf" / "config.json").is_file()
    assert "loss" in log
