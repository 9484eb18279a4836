"""conf/model: every paper row composes with its published dimensions; bad configs fail clearly."""

import pytest
from omegaconf import OmegaConf

from ecomvlm.recipes.config import compose, model_config
from ecomvlm.recipes.models.parallel import ParallelConfig, ParallelConfigError, validate_parallel
from ecomvlm.recipes.models.registry import list_models, resolve

PAPER_ROWS = {
    "siglip2_llama3_1_8b": 1, "siglip2_e_llama3_1_8b": 2, "qwen2_5_vit_e_llama3_1_8b": 3, "siglip2_qwen3_4b": 4,
    "siglip2_qwen3_8b": 5, "siglip2_lilium_1b": 6, "siglip2_lilium_4b": 7, "siglip2_lilium_8b": 8,
    "siglip_gemma3_4b": 9,
}


def _parallel(name: str):
    return OmegaConf.to_object(compose("train", [f"parallel={name}"]).parallel)


def test_every_table1_row_has_a_model_config():
    assert set(PAPER_ROWS) <= set(list_models())


@pytest.mark.parametrize("name, row", sorted(PAPER_ROWS.items()))
def test_row_composes_and_fits_an_8_node_layout(name, row):
    tp = 4 if "gemma3" in name else 8  # Gemma3-4B has 4 KV heads: TP can be at most 4
    vlm = resolve(model_config([f"model={name}"]), tp=tp)
    assert row in vlm.paper_rows
    d = vlm.decoder
    assert validate_parallel(_parallel(f"tp{tp}"), 64, num_attention_heads=d.num_attention_heads,
                             num_query_groups=d.num_query_groups, num_layers=d.num_layers,
                             vocab_size=d.vocab_size) == 64 // tp


@pytest.mark.parametrize("name, billions", [("siglip2_llama3_1_8b", 8.03), ("siglip2_qwen3_8b", 8.19),
                                            ("siglip2_qwen3_4b", 4.02), ("siglip_gemma3_4b", 3.88)])
def test_published_decoder_sizes(name, billions):
    assert model_config([f"model={name}"]).decoder.param_count() / 1e9 == pytest.approx(billions, rel=0.005)


def test_siglip_so400m_size_and_tokens():
    enc = model_config(["model=siglip2_qwen3_8b"]).encoder
    assert enc.tokens_per_image == 729
    assert enc.param_count() / 1e6 == pytest.approx(413, rel=0.01)  # SO400M tower without pooling head


def test_hf_path_dims_win_over_yaml(tmp_path, tiny_hf_configs, caplog):
    tiny_hf_configs["qwen3"].save_pretrained(tmp_path / "qwen3")
    model = model_config(["model=tiny_siglip_qwen3", f"model.decoder.hf_path={tmp_path / 'qwen3'}",
                          "model.decoder.num_layers=7"])
    with caplog.at_level("WARNING"):
        vlm = resolve(model)
    assert vlm.decoder.num_layers == 2 and "num_layers: yaml=7 checkpoint=2" in caplog.text
    assert vlm.decoder.hf_path == str(tmp_path / "qwen3")


def test_unknown_keys_wrong_types_and_impossible_layouts_are_named():
    with pytest.raises(Exception, match="model.decoder.num_heads"):
        compose("train", ["model=tiny_siglip_llama", "model.decoder.num_heads=4"])
    with pytest.raises(Exception, match="trainer.max_steps"):
        compose("train", ["trainer.max_steps=many"])
    vlm = model_config(["model=siglip_gemma3_4b"])
    with pytest.raises(ParallelConfigError, match="num_query_groups"):
        validate_parallel(_parallel("tp8"), 8, num_query_groups=vlm.decoder.num_query_groups)


def test_fp8_is_refused_without_transformer_engine():
    import torch

    prec = OmegaConf.to_object(compose("train", ["precision=fp8_delayed"]).precision)
    assert prec.dtype == torch.bfloat16 and prec.pad_to_multiple(ParallelConfig()) == 16
    sp = ParallelConfig(tensor_model_parallel_size=3, sequence_parallel=True)
    assert prec.pad_to_multiple(sp) == 48 and OmegaConf.to_object(compose("train").precision).pad_to_multiple(sp) == 3
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs Transformer Engine"):
            prec.transformer_overrides()
    assert OmegaConf.to_object(compose("train", ["precision=bf16"]).precision).transformer_overrides() == {}


def test_fp8_is_refused_where_it_would_silently_not_run(monkeypatch):
    """With TE and a Hopper GPU (simulated here), a decoder with local layers only (Gemma3) still cannot do FP8;
    without a Hopper GPU nobody can."""
    from ecomvlm.recipes.models import precision as prec_mod
    from ecomvlm.recipes.models.decoders import gpt

    prec = OmegaConf.to_object(compose("train", ["precision=fp8_current"]).precision)
    monkeypatch.setattr(gpt, "te_available", lambda: True)
    monkeypatch.setattr(prec_mod, "fp8_capable_gpu", lambda: True)
    gemma = model_config(["model=siglip_gemma3_4b"]).decoder
    with pytest.raises(ValueError, match="gemma3 decoder is built from local megatron layers"):
        prec.transformer_overrides(gemma)
    qwen = model_config(["model=siglip2_qwen3_8b"]).decoder
    assert prec.transformer_overrides(qwen)["fp8_recipe"] == "tensorwise"
    monkeypatch.setattr(prec_mod, "fp8_capable_gpu", lambda: False)
    monkeypatch.setattr(prec_mod.torch.cuda, "get_device_name", lambda: "A100")
    monkeypatch.setattr(prec_mod.torch.cuda, "get_device_capability", lambda: (8, 0))
    with pytest.raises(ValueError, match="needs a Hopper-or-newer GPU"):
        prec.transformer_overrides(qwen)
