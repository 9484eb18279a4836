"""Multi-process (torchrun + gloo) checks, grouped so each group pays the imports once per process."""

import json

import pytest

from conftest import REPO, run_torchrun

pytestmark = pytest.mark.multiproc


def test_tensor_parallel_2_equals_tensor_parallel_1(tmp_path):
    worker = REPO / "tests" / "workers" / "gpt_tp_parity.py"
    run_torchrun(worker, 1, str(tmp_path / "tp1.json"))
    run_torchrun(worker, 2, str(tmp_path / "tp2.json"))
    tp1 = json.loads((tmp_path / "tp1.json").read_text())
    tp2 = json.loads((tmp_path / "tp2.json").read_text())
    assert (tp1["tp"], tp2["tp"]) == (1, 2)
    assert tp2["loss"] == pytest.approx(tp1["loss"], abs=1e-5)
    assert tp2["grad_norm"] == pytest.approx(tp1["grad_norm"], rel=1e-4)
    assert tp1["loss"] > 1.0  # a real untrained loss, not a placeholder


@pytest.fixture(scope="module")
def tiny_llava_dirs(tmp_path_factory, tiny_hf_configs):
    """family -> (dir of a tiny random HF LLaVA with that text decoder, HF logits, HF loss) on one image+text batch."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    cache = {}

    def make(family):
        if family in cache:
            return cache[family]
        if family == "qwen3_anyres":
            cache[family] = _tiny_onevision(tmp_path_factory.mktemp("llava_ov"), tiny_hf_configs)
            return cache[family]
        out = tmp_path_factory.mktemp(f"llava_{family}")
        text = tiny_hf_configs[family].to_dict()
        if family == "gemma3":
            text["layer_types"] = ["sliding_attention", "full_attention"]
        torch.manual_seed(0)
        lc = LlavaConfig(vision_config=tiny_hf_configs["siglip"], text_config=tiny_hf_configs[family].__class__(**text),
                         image_token_index=5, projector_hidden_act="gelu", vision_feature_layer=-1,
                         vision_feature_select_strategy="full")
        hf = LlavaForConditionalGeneration(lc).eval()
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if "norm" in name:
                    p.normal_(0, 0.3)
        hf.save_pretrained(out)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(10, 512, (2, 40), generator=g)
        ids[0, 2:18] = 5
        ids[1, 5:21] = 5
        labels = torch.roll(ids, -1, 1)
        pix = torch.randn(2, 3, 32, 32, generator=g)
        save_file({"input_ids": ids, "labels": labels, "pixel_values": pix, "image_token_id": torch.tensor(5)},
                  str(out / "batch.safetensors"))
        with torch.no_grad():
            logits = hf(input_ids=ids, pixel_values=pix).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)).item()
        cache[family] = (out, logits, loss)
        return cache[family]

    return make


def _tiny_onevision(out, tiny_hf_configs):
    """A tiny random HF LLaVA-OneVision (AnyRes) and a batch of two single-image rows of other aspect ratios."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    from ecomvlm.data_modules.preprocess import ImageSpec, default_pinpoints

    torch.manual_seed(0)
    pins = [list(p) for p in default_pinpoints(32)]
    cfg = LlavaOnevisionConfig(vision_config=tiny_hf_configs["siglip"], text_config=tiny_hf_configs["qwen3"],
                               image_token_index=5, video_token_index=6, image_grid_pinpoints=pins,
                               vision_feature_layer=-1, vision_feature_select_strategy="full")
    hf = LlavaOnevisionForConditionalGeneration(cfg).eval()
    hf.save_pretrained(out)
    spec = ImageSpec(mode="anyres", patch_size=8, image_mean=(0.5,) * 3, image_std=(0.5,) * 3, image_size=32,
                     grid_pinpoints=tuple(map(tuple, pins)))
    g = torch.Generator().manual_seed(1)
    views = [spec.process([Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).byte().numpy())])
             for w, h in ((90, 40), (30, 70))]
    n = [v["tokens"][0] for v in views]
    ids = torch.randint(10, 512, (2, max(n) + 24), generator=g)
    ids[0, 2:2 + n[0]] = 5
    ids[1, 5:5 + n[1]] = 5
    labels = torch.roll(ids, -1, 1)
    pix, sizes, tiles = (torch.cat([v[k] for v in views]) for k in ("pixel_values", "image_sizes", "image_tiles"))
    save_file({"input_ids": ids, "labels": labels, "pixel_values": pix, "image_sizes": sizes, "image_tiles": tiles,
               "image_token_id": torch.tensor(5)}, str(out / "batch.safetensors"))
    hf_pix = torch.zeros(2, int(tiles.max()), 3, 32, 32)  # transformers takes views padded per image
    for i, v in enumerate(views):
        hf_pix[i, : v["image_tiles"][0]] = v["pixel_values"]
    with torch.no_grad():
        logits = hf(input_ids=ids, pixel_values=hf_pix, image_sizes=sizes, batch_num_images=torch.tensor([1, 1])).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)).item()
    return out, logits, loss


def _vlm_layout(made, tmp_path, tp, pp):
    hf_dir, ref_logits, ref_loss = made
    run_torchrun(REPO / "tests" / "workers" / "vlm_parallel_parity.py", tp * pp, str(hf_dir), str(tp), str(pp),
                 str(tmp_path))
    res = json.loads((tmp_path / f"result_tp{tp}_pp{pp}.json").read_text())
    assert res["roundtrip_max_diff"] == 0.0  # sharding + gathering loses nothing
    assert res["loss"] == pytest.approx(ref_loss, abs=1e-4)  # equals HF's loss on the same weights and batch
    if pp == 1:
        from safetensors.torch import load_file

        logits = load_file(str(tmp_path / f"logits_tp{tp}_pp{pp}.safetensors"))["logits"]
        assert (logits - ref_logits).abs().max().item() < 1e-4
    return res


@pytest.mark.parametrize("family, tp, pp", [("llama", 1, 1), ("llama", 2, 1), ("llama", 1, 2), ("gemma3", 2, 1),
                                            ("qwen3_anyres", 2, 1)])
def test_vlm_imported_at_tp_pp_matches_hf(tiny_llava_dirs, tmp_path, family, tp, pp):
    _vlm_layout(tiny_llava_dirs(family), tmp_path, tp, pp)


@pytest.mark.slow
@pytest.mark.parametrize("family, tp, pp", [("llama", 2, 2), ("gemma3", 1, 2), ("qwen3", 2, 1),
                                            ("qwen3_anyres", 1, 2)])
def test_vlm_imported_at_more_layouts_matches_hf(tiny_llava_dirs, tmp_path, family, tp, pp):
    _vlm_layout(tiny_llava_dirs(family), tmp_path, tp, pp)


def test_checkpoint_saved_at_tp2_exports_to_hf_exactly(tmp_path, megatron_single):
    """TP=2 checkpoint -> `ecomvlm export` (reshards to TP=1) -> HF LLaVA with exactly the saved weights."""
    import torch
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    from ecomvlm.cli import main
    from ecomvlm.recipes.checkpointing import read_meta, vlm_config_from_meta
    from ecomvlm.recipes.models.hf_io import megatron_to_llava

    run_torchrun(REPO / "tests" / "workers" / "save_checkpoint.py", 2, str(tmp_path))
    meta = read_meta(tmp_path / "ckpt")
    assert meta["step"] == 3 and meta["saved_at"]["tensor_model_parallel_size"] == 2
    assert not (tmp_path / "ckpt.tmp").exists()
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf"), "--dtype",
                 "fp32"]) == 0
    # the file keeps the hub layout (SigLIP under vision_tower.vision_model.); transformers' modules drop that level
    expected = {k.replace("vision_tower.vision_model.", "vision_tower."): v for k, v in megatron_to_llava(
        load_file(str(tmp_path / "reference.safetensors")), vlm_config_from_meta(meta)).items()}
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf")
    got = hf.state_dict()
    assert set(expected) <= set(got)
    assert all(torch.equal(got[k], v) for k, v in expected.items())
