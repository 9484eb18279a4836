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
        # exports keep the hub layout (SigLIP under vision_model.), which transformers and vLLM both load
        k = k.replace("model.vision_tower.", "model.vision_tower.vision_model.")
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

    from ecomvlm.recipes.models.hf_export import export_hf
    from ecomvlm.recipes.models.hf_io import load_hf_into, vlm_config_from_hf

    tok = tiny_tokenizers[chat]
    img_id = tok.convert_tokens_to_ids("<image>")
    cfg = VLMConfig(encoder=encoder_config_from_hf(tiny_hf_configs["siglip"]),
                    decoder=decoder_config_from_hf(_text_config(tiny_hf_configs, family)), image_token_id=img_id)
    cfg.decoder.vocab_size = cfg.decoder.hf_vocab_size = len(tok)
    torch.manual_seed(4)
    model = build_vlm(cfg, ParallelConfig()).eval()
    out = export_hf(gather_full_state(model), cfg, tok, tmp_path / "hf", dtype=torch.float32)
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
    from ecomvlm.recipes.models.hf_export import hf_kind

    assert hf_kind(cfg) == "remote_code"


@pytest.mark.parametrize("option, value", [("projector_hidden_act", "silu"),
                                           ("vision_feature_select_strategy", "default"),
                                           ("vision_feature_layer", [-2, -1]), ("multimodal_projector_bias", False)])
def test_llava_options_we_do_not_build_are_refused(tiny_hf_configs, tmp_path, option, value):
    from ecomvlm.recipes.models.hf_io import vlm_config_from_hf

    _hf_llava(tiny_hf_configs, "llama").config.save_pretrained(tmp_path)
    import json

    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, option: value}))
    with pytest.raises(ValueError, match=option):
        vlm_config_from_hf(llava_path=tmp_path, image_token_id=IMG)


@pytest.mark.parametrize("family, option, value", [("llama", "attention_bias", True), ("llama", "hidden_act", "gelu"),
                                                   ("qwen3", "use_sliding_window", True),
                                                   ("gemma3", "final_logit_softcapping", 30.0),
                                                   ("siglip", "hidden_act", "quick_gelu")])
def test_family_options_we_do_not_build_are_refused(tiny_hf_configs, family, option, value):
    hf = tiny_hf_configs[family].__class__(**{**tiny_hf_configs[family].to_dict(), option: value})
    convert = encoder_config_from_hf if family == "siglip" else decoder_config_from_hf
    with pytest.raises(ValueError, match=option):
        convert(hf)


@pytest.mark.parametrize("family, rope", [("llama", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 5e5}),
                                          ("qwen3", {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6})])
def test_rope_types_we_do_not_build_are_refused(tiny_hf_configs, family, rope):
    hf = tiny_hf_configs[family].__class__(**{**tiny_hf_configs[family].to_dict(), "rope_parameters": rope})
    with pytest.raises(ValueError, match=f"RoPE type '{rope['rope_type']}' is not supported"):
        decoder_config_from_hf(hf)


@pytest.mark.parametrize("option, value", [("hidden_act", "gelu"), ("in_channels", 4)])
def test_qwen2_5_vit_options_we_do_not_build_are_refused(option, value):
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

    from ecomvlm.recipes.models.encoders.qwen2_5_vit import Qwen25ViTConfig

    Qwen25ViTConfig.from_hf(Qwen2_5_VLVisionConfig(depth=2))  # the published options import
    with pytest.raises(ValueError, match=option):
        Qwen25ViTConfig.from_hf(Qwen2_5_VLVisionConfig(depth=2, **{option: value}))


def test_import_errors_name_the_input(tmp_path, tiny_hf_configs):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_hf_state_dict(tmp_path / "nope")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="bin pickles are not loaded"):
        read_hf_state_dict(tmp_path)
    from transformers import MistralConfig

    with pytest.raises(ValueError, match="model_type 'mistral' is not supported"):
        decoder_config_from_hf(MistralConfig())


def _anyres_cfg(tiny_hf_configs, tok, text="qwen3"):
    from ecomvlm.recipes.models.encoders.siglip import SiglipConfig

    enc = SiglipConfig.from_hf(tiny_hf_configs["siglip"])
    import dataclasses

    enc = dataclasses.replace(enc, image_mode="anyres", anyres_max_tiles=9)
    cfg = VLMConfig(encoder=enc, decoder=decoder_config_from_hf(_text_config(tiny_hf_configs, text)),
                    image_token_id=tok.convert_tokens_to_ids("<image>"))
    cfg.decoder.vocab_size = cfg.decoder.hf_vocab_size = len(tok)
    return cfg


SIZES = [(100, 40), (40, 100), (64, 64), (300, 200), (33, 190)]  # (width, height); 300x200 takes the reduced grid


def test_anyres_pipeline_equals_the_llava_onevision_processor(tiny_hf_configs, tiny_tokenizers):
    from PIL import Image
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )
    from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    cfg = _anyres_cfg(tiny_hf_configs, tiny_tokenizers["chatml"])
    spec = cfg.encoder.image_spec()
    ip = LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_grid_pinpoints=cfg.encoder.pinpoints,
                                         image_mean=[0.5] * 3, image_std=[0.5] * 3)
    proc = LlavaOnevisionProcessor(image_processor=ip, tokenizer=tiny_tokenizers["chatml"],
                                   video_processor=LlavaOnevisionVideoProcessor(), num_image_tokens=16,
                                   vision_feature_select_strategy="full", image_token="<image>",
                                   vision_aspect_ratio="anyres_max_9")
    rng = torch.Generator().manual_seed(0)
    imgs = [Image.fromarray((torch.rand(h, w, 3, generator=rng) * 255).byte().numpy()) for w, h in SIZES]
    for img in imgs:  # single-image samples: AnyRes
        ours = spec.process([img])
        ref = proc(images=[img], text=["<image>"], return_tensors="pt")
        assert ours["tokens"] == [int((ref["input_ids"] == proc.image_token_id).sum())]
        assert torch.allclose(ours["pixel_values"], ref["pixel_values"][0, : ours["image_tiles"][0]], atol=1e-6)
    ours = spec.process(imgs[:3])  # a multi-image sample: one padded-square view each
    ref = proc(images=[imgs[:3]], text=["<image><image><image>"], return_tensors="pt")
    assert ours["tokens"] == [17] * 3 == [int((ref["input_ids"] == proc.image_token_id).sum()) // 3] * 3
    assert torch.allclose(ours["pixel_values"], ref["pixel_values"][:, 0], atol=1e-6)


def test_anyres_model_exports_as_llava_onevision_and_matches_transformers(megatron_single, tiny_hf_configs,
                                                                           tiny_tokenizers, tmp_path):
    from PIL import Image
    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    from ecomvlm.recipes.models.hf_export import export_hf
    from ecomvlm.recipes.models.hf_io import load_hf_into, vlm_config_from_hf

    tok = tiny_tokenizers["chatml"]
    cfg = _anyres_cfg(tiny_hf_configs, tok)
    torch.manual_seed(4)
    model = _perturb_norms(build_vlm(cfg, ParallelConfig()).eval())
    out = export_hf(gather_full_state(model), cfg, tok, tmp_path / "ov", dtype=torch.float32)
    hf, info = LlavaOnevisionForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # the exported processor (transformers may pick its torchvision backend, whose resampling differs from PIL's by
    # a few grey levels; the PIL backend equals our pipeline: the test above) feeds both models the same pixels
    proc = AutoProcessor.from_pretrained(out)
    spec = cfg.encoder.image_spec()
    rng = torch.Generator().manual_seed(1)
    imgs = [Image.fromarray((torch.rand(h, w, 3, generator=rng) * 255).byte().numpy()) for w, h in SIZES]
    prompts = [([img], "<image>\nWhat is it?") for img in imgs] + [(imgs[:2], "<image>\n<image>\nSame item?")]
    for images, q in prompts:
        text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        inputs = proc(images=[images], text=[text], return_tensors="pt")
        mine = spec.process(images)
        assert int((inputs["input_ids"] == cfg.image_token_id).sum()) == sum(mine["tokens"])
        pixels = torch.cat([inputs["pixel_values"][i, :n] for i, n in enumerate(mine["image_tiles"].tolist())])
        with torch.no_grad():
            ref = hf(**inputs).logits
            ours = model(inputs["input_ids"], pixel_values=pixels, image_sizes=mine["image_sizes"],
                         image_tiles=mine["image_tiles"]).float()
        assert (ours - ref).abs().max().item() < 1e-4
    assert hf.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] > inputs["input_ids"].shape[1]
    again = build_vlm(vlm_config_from_hf(llava_path=out, image_token_id=cfg.image_token_id), ParallelConfig())
    assert again.cfg.encoder.image_mode == "anyres" and load_hf_into(again, llava_path=out) == []
    a, b = gather_full_state(model), gather_full_state(again)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("decoder", ["tiny_llama", "tiny_qwen3", "tiny_gemma3"])
def test_qwen25_vit_models_export_as_remote_code_and_match_transformers(megatron_single, tiny_tokenizers, tmp_path,
                                                                         decoder):
    import dataclasses

    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ecomvlm.recipes.config import model_config
    from ecomvlm.recipes.models.hf_export import export_hf
    from ecomvlm.recipes.models.registry import resolve

    tok = tiny_tokenizers["llama3"]
    cfg = resolve(model_config(["model=tiny_qwen2_5_vit_llama", f"model/decoder={decoder}"]),
                  image_token_id=tok.convert_tokens_to_ids("<image>"))
    cfg = dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder, vocab_size=len(tok)))
    torch.manual_seed(0)
    model = _perturb_norms(build_vlm(cfg, ParallelConfig()).eval())
    out = export_hf(gather_full_state(model), cfg, tok, tmp_path / "hf", dtype=torch.float32)
    assert (out / "modeling_ecomvlm.py").is_file() and not (out / "__init__.py").exists()
    hf = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
    proc = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    text = tok.apply_chat_template([{"role": "user", "content": "<image>\n<image>\nWhat colour?"}], tokenize=False,
                                   add_generation_prompt=True)
    images = [Image.new("RGB", (70, 50), (200, 30, 30)), Image.new("RGB", (40, 90), (20, 30, 200))]
    inputs = proc(images=images, text=[text], return_tensors="pt")
    mine = cfg.encoder.image_spec().process(images)
    assert torch.equal(mine["image_grid_thw"], inputs["image_grid_thw"])  # the data pipeline = the processor
    assert torch.allclose(mine["pixel_values"], inputs["pixel_values"], atol=1e-5)
    with torch.no_grad():
        ref = hf(**inputs).logits
        ours = model(inputs["input_ids"], pixel_values=inputs["pixel_values"],
                     image_grid_thw=inputs["image_grid_thw"]).float()
    assert (ours - ref).abs().max().item() < 1e-4
    assert hf.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1] > inputs["input_ids"].shape[1]
