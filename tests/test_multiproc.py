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
def tiny_llava_dir(tmp_path_factory, tiny_hf_configs):
    """A tiny random HF LLaVA (SigLIP + Llama) saved to disk, plus one image+text batch and HF's reference."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    out = tmp_path_factory.mktemp("llava")
    torch.manual_seed(0)
    lc = LlavaConfig(vision_config=tiny_hf_configs["siglip"], text_config=tiny_hf_configs["llama"],
                     image_token_index=5, projector_hidden_act="gelu", vision_feature_layer=-1,
                     vision_feature_select_strategy="full")
    hf = LlavaForConditionalGeneration(lc).eval()
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
    return out, logits, loss


def _vlm_layout(tiny_llava_dir, tmp_path, tp, pp):
    hf_dir, ref_logits, ref_loss = tiny_llava_dir
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


@pytest.mark.parametrize("tp, pp", [(1, 1), (2, 1), (1, 2)])
def test_vlm_imported_at_tp_pp_matches_hf(tiny_llava_dir, tmp_path, tp, pp):
    _vlm_layout(tiny_llava_dir, tmp_path, tp, pp)


@pytest.mark.slow
def test_vlm_imported_at_tp2_pp2_matches_hf(tiny_llava_dir, tmp_path):
    _vlm_layout(tiny_llava_dir, tmp_path, 2, 2)
