"""Checkpoint format v2 reads v1 checkpoints (a committed fixture written by the v1 code) for their weights."""

import json
import shutil
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_v1"


def test_v1_meta_migrates_to_the_family_configs():
    from ecomvlm.recipes.checkpointing import FORMAT, read_meta, vlm_config_from_meta
    from ecomvlm.recipes.models.decoders.qwen3 import Qwen3Config
    from ecomvlm.recipes.models.encoders.siglip import SiglipConfig

    raw = json.loads((FIXTURE / "meta.json").read_text())
    assert raw["format"] == "ecomvlm-megatron-v1" and "vlm" in raw
    meta = read_meta(FIXTURE)
    assert meta["format"] == FORMAT and meta["migrated_from"] == "ecomvlm-megatron-v1" and meta["step"] == 10
    cfg = vlm_config_from_meta(meta)
    assert isinstance(cfg.encoder, SiglipConfig) and isinstance(cfg.decoder, Qwen3Config)
    assert cfg.encoder.image_size == 32 and cfg.decoder.vocab_size == 1024 and cfg.image_token_id == 3
    assert not hasattr(cfg.encoder, "window_size")  # the other family's fields are gone


def test_v1_setting_without_a_place_in_v2_is_refused(tmp_path):
    from ecomvlm.recipes.checkpointing import read_meta

    bad = json.loads((FIXTURE / "meta.json").read_text())
    bad["vlm"]["decoder"]["sliding_window"] = 128  # a qwen3 decoder with a window: v2's qwen3 has none
    (tmp_path / "meta.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="sliding_window=128 has no place in the qwen3 family"):
        read_meta(tmp_path)


def test_v1_weights_load_exactly_and_export(megatron_single, tmp_path):
    import torch
    from transformers import LlavaForConditionalGeneration

    from ecomvlm.cli import main
    from ecomvlm.recipes.checkpointing import load_checkpoint, read_meta, vlm_config_from_meta
    from ecomvlm.recipes.models.parallel import ParallelConfig
    from ecomvlm.recipes.models.sharding import gather_full_state
    from ecomvlm.recipes.models.vlm import build_vlm

    model = build_vlm(vlm_config_from_meta(read_meta(FIXTURE)), ParallelConfig())
    load_checkpoint(model, FIXTURE)
    full = gather_full_state(model)
    digest = json.loads((FIXTURE / "digest.json").read_text())
    assert set(full) == set(digest)
    for name, (total, abs_total, shape) in digest.items():
        t = full[name].double()
        assert list(t.shape) == shape and t.sum().item() == pytest.approx(total, abs=1e-4), name
        assert t.abs().sum().item() == pytest.approx(abs_total, rel=1e-6, abs=1e-5), name  # 6 decimals stored
    assert main(["export", "--checkpoint", str(FIXTURE), "--out", str(tmp_path / "hf"), "--dtype", "fp32"]) == 0
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf")
    got = hf.state_dict()["model.language_model.embed_tokens.weight"]
    assert torch.equal(got, full["language_model.embedding.word_embeddings.weight"][: got.shape[0]])


def test_a_new_stage_starts_from_a_v1_checkpoint_but_a_v1_run_is_not_resumed(megatron_single, tiny_train_inputs,
                                                                            tmp_path):
    from ecomvlm.recipes.config import load
    from ecomvlm.recipes.vlm_train import run

    w = tiny_train_inputs
    common = [f"tokenizer.path={w / 'tok'}", f"data.shards={w / 's3'}", "model.encoder.image_size=32",
              "data.global_batch_size=4", "data.micro_batch_size=2", "data.max_seq_length=192",
              "data.num_workers=0", "trainer.max_steps=2", "trainer.save_every=2"]
    s = run(load("tiny_siglip_qwen3_stage3_sft", [*common, f"run.dir={tmp_path / 'new'}",
                                                  f"init.from_checkpoint={FIXTURE}"]))
    assert s["init"] == f"checkpoint {FIXTURE}" and len(s["losses"]) == 2
    old_run = tmp_path / "old"
    shutil.copytree(FIXTURE, old_run / "checkpoints" / "step_00000001")
    with pytest.raises(ValueError, match="start a new run from its weights: init.from_checkpoint="):
        run(load("tiny_siglip_qwen3_stage3_sft", [*common, f"run.dir={old_run}", "trainer.max_steps=20"]))
