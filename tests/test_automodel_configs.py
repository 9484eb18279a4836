"""The six automodel recipes (Table 3 rows 32-41): their header commands dry-run, their published geometry builds on
the meta device at the published size, their processor settings agree with the model's vision geometry, their
8xH100 layouts are possible, and our config translates into the AutoModel config the run hands over. No weights."""

from __future__ import annotations

import shlex

import pytest

from ecomvlm.cli import main

from conftest import REPO

RECIPES = {  # recipe -> (hf_model, processes the header's layout is for, FSDP2 size, TP)
    "gemma3_4b_item_intel_ft": ("gemma3_4b", 8, 8, 1),
    "gemma3_12b_item_intel_ft": ("gemma3_12b", 8, 8, 1),
    "gemma3_27b_item_intel_ft": ("gemma3_27b", 16, 8, 2),  # 2 nodes: FSDP2 8 x TP 2
    "qwen2_5_vl_7b_item_intel_ft": ("qwen2_5_vl_7b", 8, 8, 1),
    "qwen3_vl_8b_item_intel_ft": ("qwen3_vl_8b", 8, 8, 1),
    "nemotron_nano_vl_8b_item_intel_ft": ("nemotron_nano_vl_8b", 8, 8, 1),
}


def _header_commands(recipe: str) -> list[list[str]]:
    lines = [ln.lstrip("#").strip() for ln in (REPO / "conf" / f"{recipe}.yaml").read_text().splitlines()
             if ln.startswith("#")]
    cmds, cur = [], ""
    for line in lines:
        if cur or line.startswith("ecomvlm "):
            cur += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                cmds.append(shlex.split(cur)[1:])
                cur = ""
    return cmds


def _load(recipe: str, tmp_path, *extra: str):
    from ecomvlm.recipes.config import load

    (tmp_path / "hf").mkdir(exist_ok=True)
    (tmp_path / "shards").mkdir(exist_ok=True)
    return load(recipe, [f"model.hf_path={tmp_path / 'hf'}", f"data.shards={tmp_path / 'shards'}", *extra])


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_header_commands_dry_run_with_the_published_layout(recipe, tmp_path, capsys):
    from ecomvlm.recipes.vlm_train import plan

    cmds = _header_commands(recipe)
    trains = [c for c in cmds if c[0] == "train"]
    # every header command (launch ones too) also runs in tests/test_commands.py; a launch render: below
    assert trains and any(c[0] == "launch" for c in cmds)
    for argv in trains:
        argv = [a.replace("HF_DIR", str(tmp_path)).replace("SHARDS_DIR", str(tmp_path)) for a in argv]
        argv = [*argv[:2], "--dry-run", *argv[2:]]
        assert main(argv) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert "nothing trained" in out and "backend: automodel" in out
        assert "# automodel backend:" in out and "FSDP2 data-parallel" in out  # the AutoModel plan, not megatron's
    _, nproc, fsdp, tp = RECIPES[recipe]
    cfg = _load(recipe, tmp_path)
    text = plan(cfg, nproc)
    assert f"FSDP2 data-parallel {fsdp} x TP {tp} x CP 1" in text
    assert "full fine-tune" in text and cfg.peft.method == "none" and cfg.backend == "automodel"
    assert cfg.data.global_batch_size % (cfg.data.micro_batch_size * fsdp) == 0 and not cfg.data.pack
    lora = plan(_load(recipe, tmp_path, "peft=lora"), nproc)
    assert "LoRA" in lora


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_published_geometry_builds_at_the_published_size(recipe, tmp_path):
    from ecomvlm.recipes.automodel.geometry import image_tokens, param_count, published_config

    m = _load(recipe, tmp_path).model
    assert m.name == RECIPES[recipe][0] and m.hub_id
    text = published_config(m)
    if m.family != "nemotron_nano_vl":
        text = text.text_config
    # the layout checks read the YAML's dims: they must be the published ones
    assert (text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == \
        (m.num_layers, m.num_attention_heads, m.num_key_value_heads)
    n = param_count(m) / 1e9
    assert abs(n - m.params_b) / m.params_b < 0.015, (n, m.params_b)
    g, p = m.geometry, m.processor
    tokens = image_tokens(m)
    if m.family == "gemma3":
        v = g["vision_config"]
        patches = (v["image_size"] // v["patch_size"]) ** 2
        assert p.published["size"] == {"height": v["image_size"], "width": v["image_size"]}
        assert p.published["image_seq_length"] == tokens == 256 and patches % tokens == 0  # 4x4 average pooling
        assert not p.pan_and_scan  # row 40 switches it on: model.processor.pan_and_scan=true
    elif m.family in ("qwen2_5_vl", "qwen3_vl"):
        v = g["vision_config"]
        assert p.published["patch_size"] == v["patch_size"] and p.published["merge_size"] == v["spatial_merge_size"]
        assert p.published["temporal_patch_size"] == v["temporal_patch_size"]
        assert tokens == 1280  # the recipe's per-image cap
        assert v["out_hidden_size"] == g["text_config"]["hidden_size"]
    else:
        assert p.published["image_size"] == g["force_image_size"] and tokens == 256
        assert m.trust_remote_code
    d = _load(recipe, tmp_path).data
    assert d.max_images * tokens <= d.max_seq_length or d.max_image_tokens is not None
    if d.max_image_tokens is not None:
        assert d.max_image_tokens < d.max_seq_length


def test_translation_to_automodel(tmp_path):
    from ecomvlm.recipes.automodel.translate import automodel_config

    ds = {"_target_": "ecomvlm.recipes.automodel.data.build_dataset", "shards": "x"}
    col = {"_target_": "ecomvlm.recipes.automodel.data.collate", "pad_token_id": 0}
    cfg = _load("gemma3_27b_item_intel_ft", tmp_path)
    am = automodel_config(cfg, world_size=16, model_path="/m", checkpoint_dir="/c", dataset=ds, collate=col, cuda=True)
    d = am["distributed"]
    assert (d["strategy"], d["tp_size"], d["cp_size"], d["dp_size"]) == ("fsdp2", 2, 1, None)
    assert d["activation_checkpointing"] is True and d["mp_policy"]["param_dtype"] == "bfloat16"
    assert am["model"]["torch_dtype"] == "torch.float32" and am["model"]["use_liger_kernel"] is True
    assert am["dist_env"]["backend"] == "nccl"
    assert am["step_scheduler"]["global_batch_size"] == 64 and am["step_scheduler"]["local_batch_size"] == 1
    assert "freeze_config" not in am  # item_intel_ft trains every part
    assert [g["lr_mult"] for g in am["optimizer"]["param_group_overrides"]] == [1.0, 0.2]  # projector, tower
    cpu = automodel_config(_load("gemma3_4b_item_intel_ft", tmp_path, "recipe.train=[decoder]", "peft=lora"),
                           world_size=1, model_path="/m", checkpoint_dir="/c", dataset=ds, collate=col, cuda=False)
    assert cpu["dist_env"]["backend"] == "gloo" and cpu["model"]["use_liger_kernel"] is False
    assert cpu["peft"]["use_triton"] is False and "*vision_tower*" in cpu["peft"]["exclude_modules"]
    assert cpu["freeze_config"]["freeze_modules"] == [{"glob": "*vision_tower"}, {"glob": "*multi_modal_projector"}]
    import yaml

    yaml.safe_dump(am)  # plain data: AutoModel writes it as YAML into every checkpoint


def test_launch_renders_the_two_node_27b_job(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hf").mkdir()
    (tmp_path / "shards").mkdir()
    assert main(["launch", "gemma3_27b_item_intel_ft", "--cluster", "h100_8x", "--nodes", "2", "--dry-run", "--",
                 f"model.hf_path={tmp_path / 'hf'}", f"data.shards={tmp_path / 'shards'}"]) == 0
    out = capsys.readouterr().out
    assert "srun" in out and "-m ecomvlm.recipes.vlm_train --config-name gemma3_27b_item_intel_ft" in out
    assert "#SBATCH --nodes=2" in out or "--nodes=2" in out


def test_launch_sees_automodel_checkpoints_of_a_finished_run(tmp_path, capsys, monkeypatch):
    """The launcher's finished-run and --resume checks read the AutoModel run dir layout (epoch_E_step_S)."""
    from ecomvlm.launcher.plan import latest_step

    monkeypatch.chdir(tmp_path)
    (tmp_path / "hf").mkdir()
    (tmp_path / "shards").mkdir()
    args = ["launch", "gemma3_4b_item_intel_ft", "--cluster", "h100_8x", "--dry-run", "--",
            f"model.hf_path={tmp_path / 'hf'}", f"data.shards={tmp_path / 'shards'}", "trainer.max_steps=10"]
    assert main(args) == 0
    assert "run.dir=runs/gemma3_4b_item_intel_ft" in capsys.readouterr().out
    run_dir = tmp_path / "runs" / "gemma3_4b_item_intel_ft"
    step_dir = run_dir / "checkpoints" / "epoch_0_step_9"  # AutoModel counts from 0: 10 steps done
    step_dir.mkdir(parents=True)
    assert latest_step(run_dir) is None  # no step_scheduler.pt: an unfinished save
    (step_dir / "step_scheduler.pt").write_bytes(b"")
    assert latest_step(run_dir) == 10
    assert main(args) != 0
    assert "holds a finished run (step 10 of trainer.max_steps=10)" in capsys.readouterr().err
