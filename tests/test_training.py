"""Training recipes on a tiny model: pinned losses, freezing, resume after a kill, TP/PP == single process, chaining."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_torchrun

WORKER = REPO / "tests" / "workers" / "train_recipe.py"


def _overrides(w: Path, run_dir: Path, *extra: str, shards: str = "s3", workers: int = 0) -> list[str]:
    return [f"tokenizer.path={w / 'tok'}", f"data.shards={w / shards}", f"run.dir={run_dir}",
            "data.global_batch_size=4", "data.micro_batch_size=2", "data.max_seq_length=192",
            f"data.num_workers={workers}",
            "model.encoder.image_size=32", "optim.lr=1e-3", "optim.warmup_steps=2", *extra]


# tiny_siglip_qwen3 stage 3, fp32 on CPU, seed 1234, the data of conftest.tiny_train_inputs read through the energon
# loader with data.num_workers=0: the loss of each of 10 steps (floating-point results can differ slightly between
# CPUs; the tolerance is 1e-4). Re-pinned when the loader moved to energon: its sample order (slice shuffling,
# first-fit-decreasing packing) differs from the old round-robin reader's, so the batches, not the model, changed.
GOLDEN_STAGE3 = [6.931597, 6.821465, 6.784772, 6.568877, 6.457129, 6.341272, 6.456646, 6.310049, 6.304517, 6.601698]


def test_stage3_loss_curve_is_pinned(megatron_single, tiny_train_inputs, tmp_path):
    from ecomvlm.recipes.config import load
    from ecomvlm.recipes.vlm_train import run

    s = run(load("tiny_siglip_qwen3_stage3_sft", _overrides(tiny_train_inputs, tmp_path / "g", "trainer.max_steps=10",
                                                            "trainer.save_every=10")))
    assert s["losses"] == pytest.approx(GOLDEN_STAGE3, abs=1e-4)
    assert s["engine"]["param_dtype"] == "torch.float32" and s["engine"]["master_param_dtype"] == "torch.float32"
    assert (tmp_path / "g" / "tb").is_dir() and s["final_checkpoint"].endswith("step_00000010")
    # the run summary accounts for every sample of each epoch: input = trained + skipped (by reason) + pending
    (rank,) = s["data"]["per_rank"]
    assert rank["epochs"] and rank["totals"]["trained"] > 0
    for e in rank["epochs"]:
        assert e["input"] == e["trained"] + sum(e["skipped"].values()) + e["pending"]
        assert e["input"] == rank["samples"][1] - rank["samples"][0]
    assert rank["totals"]["trained"] == sum(e["trained"] for e in rank["epochs"])
    # ... and TensorBoard has the same counts at the global steps, beside the loss
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(tmp_path / "g" / "tb")).Reload()
    tags = set(tb.Tags()["scalars"])
    assert {"train/loss", "data/trained"} <= tags
    assert [e.step for e in tb.Scalars("train/loss")] == list(range(1, 11))
    assert tb.Scalars("data/trained")[-1].value == rank["totals"]["trained"]


def test_stage1_trains_only_the_projector(megatron_single, tiny_train_inputs, tmp_path):
    from ecomvlm.recipes.checkpointing import load_checkpoint
    from ecomvlm.recipes.config import load
    from ecomvlm.recipes.vlm_train import run

    w = tiny_train_inputs
    s1 = run(load("train", _overrides(w, tmp_path / "s1", "recipe=stage1_alignment", "trainer.max_steps=3",
                                         "trainer.save_every=3", shards="s1")))
    first = s1["final_checkpoint"]
    assert first.endswith("step_00000003") and len(s1["losses"]) == 3
    # continue as stage 2 from stage 1's checkpoint: the projector moved in stage 1, nothing else did
    from ecomvlm.recipes.checkpointing import read_meta, vlm_config_from_meta
    from ecomvlm.recipes.models.parallel import ParallelConfig
    from ecomvlm.recipes.models.vlm import build_vlm

    cfg = vlm_config_from_meta(read_meta(first))
    torch.manual_seed(1234)  # the same seeded init the recipe used
    init = build_vlm(cfg, ParallelConfig())
    trained = build_vlm(cfg, ParallelConfig())
    load_checkpoint(trained, first)
    a, b = init.state_dict(), trained.state_dict()
    moved = {k for k in a if not k.endswith("_extra_state") and not torch.equal(a[k], b[k])}
    assert moved and all(k.startswith("vision_projection.") for k in moved)
    assert torch.equal(a["language_model.embedding.word_embeddings.weight"],
                       b["language_model.embedding.word_embeddings.weight"])
    s2 = run(load("train", _overrides(w, tmp_path / "s2", "recipe=stage2_mid", "trainer.max_steps=2",
                                         f"init.from_checkpoint={first}", "trainer.save_every=2", shards="s1")))
    assert s2["init"].startswith("checkpoint") and len(s2["losses"]) == 2


@pytest.mark.multiproc
def test_killed_run_resumes_on_the_same_loss_trajectory(tiny_train_inputs, tmp_path):
    w = tiny_train_inputs
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["recipe=stage3_sft", "trainer.max_steps=6", "trainer.save_every=3"]
    # two loader workers (the default): their positions are restored exactly, whatever each had read ahead
    straight = subprocess.run([sys.executable, str(WORKER), *_overrides(w, tmp_path / "a", *common, workers=2)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = subprocess.run([sys.executable, str(WORKER), "--kill-after-step", "5",
                             *_overrides(w, tmp_path / "b", *common, workers=2)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9  # SIGKILL after step 5; step 3 is the last checkpoint
    assert not (tmp_path / "b" / "checkpoints" / "step_00000006").exists()
    assert (tmp_path / "b" / "checkpoints" / "step_00000003" / "meta.json").is_file()
    resumed = subprocess.run([sys.executable, str(WORKER), *_overrides(w, tmp_path / "b", *common, workers=2)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((tmp_path / "a" / "summary.json").read_text())
    b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert b["start_step"] == 3 and len(a["losses"]) == 6 and len(b["losses"]) == 3
    assert b["losses"] == pytest.approx(a["losses"][3:], abs=1e-5)
    assert a["losses"][-1] < a["losses"][0]


@pytest.mark.multiproc
def test_tp2_training_steps_equal_tp1(tiny_train_inputs, tmp_path):
    w = tiny_train_inputs
    common = ["recipe=stage3_sft", "trainer.max_steps=3", "trainer.save_every=100"]
    run_torchrun(WORKER, 1, *_overrides(w, tmp_path / "tp1", *common), timeout=600)
    run_torchrun(WORKER, 2, *_overrides(w, tmp_path / "tp2", *common, "parallel=tp2"), timeout=600)
    a = json.loads((tmp_path / "tp1" / "summary.json").read_text())
    b = json.loads((tmp_path / "tp2" / "summary.json").read_text())
    assert len(a["losses"]) == len(b["losses"]) == 3
    assert b["losses"] == pytest.approx(a["losses"], abs=2e-4)  # same data, same weights, same updates
    # the TP=2 checkpoint loads at TP=1 (resharded) and equals the TP=1 run's weights after 3 steps
    from ecomvlm.recipes.checkpointing import load_checkpoint, read_meta, vlm_config_from_meta
    from ecomvlm.recipes.models.parallel import ParallelConfig, init_distributed
    from ecomvlm.recipes.models.vlm import build_vlm

    init_distributed(ParallelConfig())
    cfg = vlm_config_from_meta(read_meta(b["final_checkpoint"]))
    torch.manual_seed(1234)
    m0 = build_vlm(cfg, ParallelConfig())  # the recipe's seeded init
    m1, m2 = build_vlm(cfg, ParallelConfig()), build_vlm(cfg, ParallelConfig())
    load_checkpoint(m1, a["final_checkpoint"])
    load_checkpoint(m2, b["final_checkpoint"])
    s0, s1, s2 = m0.state_dict(), m1.state_dict(), m2.state_dict()
    keys = [k for k in s1 if not k.endswith("_extra_state")]
    update = sum((s1[k] - s0[k]).float().pow(2).sum() for k in keys).sqrt()
    apart = sum((s1[k] - s2[k]).float().pow(2).sum() for k in keys).sqrt()
    # Adam turns rounding-level gradient differences of near-zero grads into lr-sized steps, so compare
    # the whole update rather than single weights: the two runs moved the model the same way
    assert update > 0.1 and apart / update < 0.02


def test_sliding_window_decoder_trains_with_packing(megatron_single, tiny_train_inputs, tmp_path):
    """Gemma3 (sliding-window layers) with packed rows: the window and packing masks combine (the packed-row
    equivalence itself is tests/test_data.py::test_packed_row_gives_the_same_losses_as_separate_samples)."""
    from ecomvlm.recipes.config import load
    from ecomvlm.recipes.vlm_train import run

    s = run(load("train", _overrides(tiny_train_inputs, tmp_path / "g", "model=tiny_siglip_gemma3",
                                        "data.pack=true", "trainer.max_steps=3", "trainer.save_every=3")))
    assert len(s["losses"]) == 3 and s["losses"][-1] < s["losses"][0]


def test_a_run_dir_resumes_only_the_run_it_holds(megatron_single, tiny_train_inputs, tmp_path):
    """A finished run is not re-run, a run with other settings is not resumed; more steps continue it."""
    from ecomvlm.recipes.config import load
    from ecomvlm.recipes.vlm_train import run

    w, d = tiny_train_inputs, tmp_path / "r"
    first = run(load("train", _overrides(w, d, "trainer.max_steps=2", "trainer.save_every=1")))
    with pytest.raises(ValueError, match=r"already finished \(step 2 of trainer.max_steps=2\)"):
        run(load("train", _overrides(w, d, "trainer.max_steps=2", "trainer.save_every=1")))
    with pytest.raises(ValueError, match=r"optim.lr: 0.001 \(saved\) -> 0.002 \(now\)"):
        run(load("train", _overrides(w, d, "trainer.max_steps=4", "optim.lr=2e-3")))
    more = run(load("train", _overrides(w, d, "trainer.max_steps=3", "trainer.save_every=1", "run.note=longer")))
    assert more["start_step"] == 2 and len(more["losses"]) == 1 and len(first["losses"]) == 2


def test_distributed_optimizer_needs_data_parallel_ranks_to_shard_over(megatron_single, tiny_train_inputs, tmp_path):
    """ZeRO-1 on one rank is legal (nothing to shard); it trains the same steps as the plain optimizer."""
    from ecomvlm.recipes.config import load
    from ecomvlm.recipes.vlm_train import run

    w = tiny_train_inputs
    plain = run(load("train", _overrides(w, tmp_path / "p", "trainer.max_steps=3", "trainer.save_every=3")))
    zero = run(load("train", _overrides(w, tmp_path / "z", "trainer.max_steps=3", "trainer.save_every=3",
                                        "trainer.distributed_optimizer=true")))
    assert zero["engine"]["distributed_optimizer"] == "True"
    assert zero["losses"] == pytest.approx(plain["losses"], abs=1e-5)


@pytest.mark.multiproc
def test_zero1_bf16_master_weights_resume_exactly(tiny_train_inputs, tmp_path):
    """DP=2, distributed (ZeRO-1) optimizer, bf16 params + fp32 master weights: a run killed after step 5 resumes
    from step 3 and reproduces steps 4-6 of an uninterrupted run."""
    w = tiny_train_inputs
    common = ["recipe=stage3_sft", "trainer.max_steps=6", "trainer.save_every=3",
              "trainer.distributed_optimizer=true", "precision=bf16"]
    run_torchrun(WORKER, 2, *_overrides(w, tmp_path / "a", *common), timeout=600)
    straight = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert straight["engine"] == {"distributed_optimizer": "True", "param_dtype": "torch.bfloat16",
                                  "master_param_dtype": "torch.float32", "optimizer": straight["engine"]["optimizer"]}
    assert len(straight["losses"]) == 6 and straight["losses"][-1] < straight["losses"][0]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER),
           *_overrides(w, tmp_path / "b", *common)]
    kill = [*cmd[:7], "--kill-after-step", "5", *cmd[7:]]
    killed = subprocess.run(kill, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode != 0 and (tmp_path / "b" / "checkpoints" / "step_00000003" / "meta.json").is_file()
    assert list((tmp_path / "b" / "checkpoints" / "step_00000003" / "optimizer").glob("param_state_*.pt"))
    resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert again["start_step"] == 3 and again["losses"] == pytest.approx(straight["losses"][3:], abs=1e-5)


@pytest.mark.multiproc
def test_pipeline_parallel_training_equals_one_process(tiny_train_inputs, tmp_path):
    """PP=2 through the recipe: micro-batches of different lengths are padded to one p2p shape, and
    finalize_model_grads across stages gives the single-process losses. Both start from the same checkpoint (a
    random init differs by layout: each stage draws only its own layers)."""
    w = tiny_train_inputs
    common = ["recipe=stage3_sft", "trainer.max_steps=3", "trainer.save_every=3"]
    run_torchrun(WORKER, 1, *_overrides(w, tmp_path / "init", "recipe=stage3_sft", "trainer.max_steps=1",
                                        "trainer.save_every=1"), timeout=600)
    start = f"init.from_checkpoint={tmp_path / 'init'}"
    run_torchrun(WORKER, 1, *_overrides(w, tmp_path / "pp1", *common, start), timeout=600)
    run_torchrun(WORKER, 2, *_overrides(w, tmp_path / "pp2", *common, start, "parallel=pp2"), timeout=600)
    one = json.loads((tmp_path / "pp1" / "summary.json").read_text())["losses"]
    two = json.loads((tmp_path / "pp2" / "summary.json").read_text())["losses"]
    assert len(one) == 3 and two == pytest.approx(one, abs=1e-5)


def test_preemption_signal_saves_then_resume_continues_the_pinned_curve(tiny_train_inputs, tmp_path):
    """SIGUSR1 (SLURM's warning before the time limit) mid-run: the step finishes, a checkpoint is written, the
    run exits 75; started again, it resumes there and the two parts give the uninterrupted loss curve."""
    import signal

    from ecomvlm.recipes.checkpointing import PREEMPTED_EXIT_CODE

    exe = Path(sys.executable).with_name("ecomvlm")
    cmd = [str(exe), "train", "tiny_siglip_qwen3_stage3_sft",
           *_overrides(tiny_train_inputs, tmp_path / "r", "trainer.max_steps=10", "trainer.save_every=10",
                       "trainer.log_every=1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("[train] step 4/10"):
            proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=600) == PREEMPTED_EXIT_CODE, "".join(lines[-20:])
    saved = sorted(p.name for p in (tmp_path / "r" / "checkpoints").glob("step_*"))
    assert len(saved) == 1 and saved[0] in ("step_00000004", "step_00000005")  # the step in flight finished
    first = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert first["preempted"] and any("received signal SIGUSR1" in line for line in lines)
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert second["start_step"] == int(saved[0][5:]) and not second["preempted"]
    assert first["losses"] + second["losses"] == pytest.approx(GOLDEN_STAGE3, abs=1e-4)


def test_wandb_logs_the_same_steps_as_tensorboard_and_resumes_one_run(megatron_single, tiny_train_inputs, tmp_path,
                                                                       monkeypatch):
    """trainer.wandb (offline mode: no network): one W&B run per run dir, its id stable across a resume, the global
    steps and losses of the recipe's history; a bad mode is refused at composition."""
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    from ecomvlm.recipes import wandb_logging
    from ecomvlm.recipes.config import load
    from ecomvlm.recipes.vlm_train import run

    monkeypatch.setenv("WANDB_SILENT", "true")
    logged: list[tuple[int, float]] = []  # what reached W&B's logger (offline runs keep it in a binary file)
    original = WandbLogger.log_metrics

    def spy(self, metrics, step=None):
        logged.append((step, metrics["train/loss"]))
        return original(self, metrics, step)

    monkeypatch.setattr(WandbLogger, "log_metrics", spy)
    run_dir = tmp_path / "w"
    over = ["trainer.wandb.enabled=true", "trainer.wandb.mode=offline", "trainer.save_every=2"]
    first = run(load("tiny_siglip_qwen3_stage3_sft", _overrides(tiny_train_inputs, run_dir, "trainer.max_steps=2",
                                                                *over)))
    again = run(load("tiny_siglip_qwen3_stage3_sft", _overrides(tiny_train_inputs, run_dir, "trainer.max_steps=3",
                                                                *over)))
    assert again["start_step"] == 2 and len(again["losses"]) == 1
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    rid = wandb_logging.run_id(run_dir)
    assert len(runs) == 2 and all(p.name.endswith(rid) for p in runs)  # the resume continued the same W&B run
    assert all(list(p.glob("run-*.wandb")) for p in runs)
    assert logged == [(1, pytest.approx(first["losses"][0])), (2, pytest.approx(first["losses"][1])),
                      (3, pytest.approx(again["losses"][0]))]  # global steps, continuous across the resume
    with pytest.raises(Exception, match="trainer.wandb.mode='cloud'"):
        load("tiny_siglip_qwen3_stage3_sft", _overrides(tiny_train_inputs, tmp_path / "x", "trainer.wandb.mode=cloud"))
