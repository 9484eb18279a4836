"""Encoder x decoder VLMs vs HF transformers: imported logits match, round trips are exact, export loads."""

import pytest
import torch

from ecomvlm.recipes.models.hf_io import hf_to_megatron, megatron_to_llava, read_hf_state_dict
from ecomvlm.recipes.models.mapping import prefixed, to_hf, to_megatron
from ecomvlm.recipes.models.parallel import ParallelConfig
from ecomvlm.recipes.models.registry import VLMConfig, decoder_config_from_hf, encoder_config_from_hf
from ecomvlm.recipes.models.sharding import gather_full_state, shard_into
from ecomvlm.recipes.models.vlm import build_vlm

TOL = 1e-4
IMG = 5  # image token id used with the tiny HF configs


def _text_config(tiny_hf_configs, family: str, **overrides):
    d = {**tiny_hf_configs[family].to_dict(), **overrides}
    if family == "gemma3":  # one sliding-window and one global layer, linear RoPE scaling on the global one
        d["layer_types"] = ["sliding_attention", "full_attention"]
        d["rope_parameters"] = {**d["rope_parameters"],
                                "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0}}
    return tiny_hf_configs[family].__class__(**d)


def _perturb_norms(model):
    """Random init leaves norm weights at 1 (or 0 for Gemma's 1+w): perturb them so the mapping is tested."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    return model


def _hf_llava(tiny_hf_configs, text: str, seed: int = 0):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    lc = LlavaConfig(vision_config=tiny_hf_configs["siglip"], text_config=_text_config(tiny_hf_configs, text),
                     image_token_index=IMG, projector_hidden_act="gelu", vision_feature_layer=-1,
                     vision_feature_select_strategy="full")
    return _perturb_norms(LlavaForConditionalGeneration(lc).eval())


def _image_batch(n_tokens: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 512, (2, 40), generator=g)
    ids[0, 2:2 + n_tokens] = IMG
    ids[1, 7:7 + n_tokens] = IMG
    return ids, torch.randn(2, 3, 32, 32, generator=g)


@pytest.mark.parametrize("family, tied", [("llama", False), ("qwen3", False), ("qwen3", True), ("gemma3", True)])
def test_decoder_import_matches_hf_and_round_trips_exactly(megatron_single, tiny_hf_configs, family, tied):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    hf = _perturb_norms(AutoModelForCausalLM.from_config(
        _text_config(tiny_hf_configs, family, tie_word_embeddings=tied)).eval())
    dec = decoder_config_from_hf(hf.config)
    assert dec.tie_word_embeddings == tied and dec.qk_layernorm == (family != "llama")
    cfg = VLMConfig(encoder=encoder_config_from_hf(tiny_hf_configs["siglip"]), decoder=dec, image_token_id=IMG)
    model = build_vlm(cfg, ParallelConfig()).eval()
    untouched = shard_into(model, hf_to_megatron(cfg, hf.state_dict()))
    assert untouched and all(n.startswith(("vision_model.", "vision_projection.")) for n in untouched)
    ids = torch.randint(10, 512, (2, 40), generator=torch.Generator().manual_seed(3))  # > Gemma's window of 16
    with torch.no_grad():
        ours, ref = model(ids).float(), hf(ids).logits
    assert (ours - ref).abs().max().item() < TOL
    rules = prefixed(dec.mapping(), body="model.")  # one declarative mapping, walked both ways
    back = to_hf(rules, to_megatron(rules, hf.state_dict()))
    ref_sd = {k: v for k, v in hf.state_dict().items() if not (tied and k == "lm_head.weight")}
    assert set(back) == set(ref_sd)
    assert all(torch.equal(back[k], ref_sd[k]) for k in ref_sd)


@pytest.mark.parametrize("feature_layer", [-1, -2])
def test_siglip_encoder_matches_hf_hidden_states(megatron_single, tiny_hf_configs, feature_layer):
    from transformers import SiglipVisionModel

    torch.manual_seed(0)
    hf = SiglipVisionModel(tiny_hf_configs["siglip"]).eval()
    enc = encoder_config_from_hf(hf.config, feature_layer=feature_layer)
    assert enc.layers_used == 2 + 1 + feature_layer and enc.tokens_per_image == 16
    cfg = VLMConfig(encoder=enc, decoder=decoder_config_from_hf(tiny_hf_configs["llama"]), image_token_id=IMG)
    model = build_vlm(cfg, ParallelConfig()).eval()
    shard_into(model, hf_to_megatron(cfg, _hf_llava(tiny_hf_configs, "llama").state_dict(), hf.state_dict()))
    pix = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model.vision_model(pix)
        ref = hf(pix, output_hidden_states=True).hidden_states[feature_layer]
    assert ours.shape == ref.shape == (3, 16, 32)
    assert (ours - ref).abs().max().item() < TOL


@pytest.mark.parametrize("text", ["llama", "qwen3", "gemma3"])
def test_composed_vlm_matches_hf_llava_on_image_and_text(megatron_single, tiny_hf_configs, text):
    hf = _hf_llava(tiny_hf_configs, text)
    sd = hf.state_dict()
    cfg = VLMConfig(encoder=encoder_config_from_hf(hf.config), decoder=decoder_config_from_hf(hf.config),
                    image_token_id=IMG)
    model = build_vlm(cfg, ParallelConfig()).eval()
    assert shard_into(model, hf_to_megatron(cfg, sd, sd, sd)) == []
    ids, pix = _image_batch(cfg.encoder.tokens_per_image)
    with torch.no_grad():
        ours, ref = model(ids, pixel_values=pix).float(), hf(input_ids=ids, pixel_values=pix).logits
        text_only = model(ids.masked_fill(ids == IMG, 11)).float()
    assert (ours - ref).abs().max().item() < TOL
    assert (ours - text_only).abs().max().item() > 1e-3  # the images really changed the output
    # HF -> megatron -> HF is exact (the unused SigLIP pooling head is not part of a LLaVA export)
    back = megatron_to_llava(gather_full_state(model), cfg)
    for k, v in sd.items():
        if ".head." in k or "post_layernorm" in k:
            continue
        if k == "lm_head.weight" and cfg.decoder.tie_word_embeddings:  # tied: HF lists the shared tensor twice
            k, v = "model.language_model.embed_tokens.weight", v
        assert torch.equal(back[k], v), k


def test_mismatched_image_tokens_raise_a_clear_error(megatron_single, tiny_hf_configs):
    hf = _hf_llava(tiny_hf_configs, "llama")
    cfg = VLMConfig(encoder=encoder_config_from_hf(hf.config), decoder=decoder_config_from_hf(hf.config),
                    image_token_id=IMG)
    model = build_vlm(cfg, ParallelConfig()).eval()
    ids, pix = _image_batch(cfg.encoder.tokens_per_image)
    with pytest.raises(ValueError, match="mismatched image tokens: the batch has 32 <image> tokens"):
        model(ids, pixel_values=pix[:1])
    with pytest.raises(ValueError, match="no pixel_values"):
        model(ids)


@pytest.mark.parametrize("family, chat", [("qwen3", "chatml"), ("gemma3", "gemma3")])
def test_export_loads_in_transformers_matches_and_generates(megatron_single, tiny_hf_configs, tiny_tokenizers, tmp_path,
                                                            family, chat):
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from ecomvlm.recipes.models.hf_io import export_llava_hf, load_hf_into, vlm_config_from_hf

    tok = tiny_tokenizers[chat]
    img_id = tok.convert_tokens_to_ids("<image>")
    cfg = VLMConfig(encoder=encoder_config_from_hf(tiny_hf_configs["siglip"]),
                    decoder=decoder_config_from_hf(_text_config(tiny_hf_configs, family)), image_token_id=img_id)
    cfg.decoder.vocab_size = cfg.decoder.hf_vocab_size = len(tok)
    torch.manual_seed(4)
    model = build_vlm(cfg, ParallelConfig()).eval()
    out = export_llava_hf(gather_full_state(model), cfg, tok, tmp_path / "hf", dtype=torch.float32)
    hf, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    proc = AutoProcessor.from_pretrained(out)
    prompt = tok.apply_chat_template([{"role": "user", "content": "<image>\nWhat colour?"}], tokenize=False,
                                     add_generation_prompt=True)
    inputs = proc(images=[Image.new("RGB", (50, 40), (200, 30, 30))], text=[prompt], return_tensors="pt")
    assert int((inputs["input_ids"] == img_id).sum()) == cfg.encoder.tokens_per_image
    with torch.no_grad():
        ours = model(inputs["input_ids"], pixel_values=inputs["pixel_values"]).float()
        ref = hf(**inputs).logits
    assert (ours - ref).abs().max().item() < TOL
    gen = hf.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] > inputs["input_ids"].shape[1]
    # and the exported directory imports back into megatron exactly
    again = build_vlm(vlm_config_from_hf(llava_path=out, image_token_id=img_id), ParallelConfig()).eval()
    assert load_hf_into(again, llava_path=out) == []
    a, b = gather_full_state(model), gather_full_state(again)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_qwen25_vit_tower_imports_and_runs(megatron_single, tiny_hf_configs):
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    from ecomvlm.recipes.models.hf_io import check_exportable

    vcfg = tiny_hf_configs["qwen2_5_vit"]
    vcfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    hf = Qwen2_5_VisionTransformerPretrainedModel._from_config(vcfg).eval()
    enc = encoder_config_from_hf(vcfg)
    cfg = VLMConfig(encoder=enc, decoder=decoder_config_from_hf(tiny_hf_configs["llama"]), image_token_id=IMG)
    model = build_vlm(cfg, ParallelConfig()).eval()
    shard_into(model, hf_to_megatron(cfg, _hf_llava(tiny_hf_configs, "llama").state_dict(),
                                     {"visual." + k: v for k, v in hf.state_dict().items()}))
    grid = torch.tensor([[1, 4, 4], [1, 4, 8]])  # two images of different native sizes (t, h, w patches)
    n_patches = int(grid.prod(-1).sum())
    pix = torch.randn(n_patches, 3 * 2 * 8 * 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model.vision_model(pix, grid)
        ref = hf(pix, grid_thw=grid)
        ref = ref.pooler_output if hasattr(ref, "pooler_output") else ref
        emb = model.encode_images(pix, grid)
    assert ours.shape == ref.shape == (n_patches // 4, 64)  # 2x2 patch merger
    assert (ours - ref).abs().max().item() < TOL
    assert emb.shape == (n_patches // 4, 64)
    with pytest.raises(NotImplementedError, match="Qwen2.5-VL vision tower"):
        check_exportable(cfg)


def test_import_errors_name_the_input(tmp_path, tiny_hf_configs):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_hf_state_dict(tmp_path / "nope")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="bin pickles are not loaded"):
        read_hf_state_dict(tmp_path)
    from transformers import MistralConfig

    with pytest.raises(ValueError, match="model_type 'mistral' is not supported"):
        decoder_config_from_hf(MistralConfig())
