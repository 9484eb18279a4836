"""Every shipped model config builds at its real geometry: full depth on the meta device (parameter counts equal the
analytic, published sizes), real-size images through each real encoder (one layer, real numbers, equal to HF), and
the real-size image -> projector -> decoder path for every paper row."""

import dataclasses

import pytest
import torch

from ecomvlm.recipes.config import compose, model_config
from ecomvlm.recipes.models.parallel import ParallelConfig
from ecomvlm.recipes.models.registry import resolve

from conftest import REPO

MODELS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
ENCODERS = sorted(p.stem for p in (REPO / "conf" / "model" / "encoder").glob("*.yaml"))
DECODERS = sorted(p.stem for p in (REPO / "conf" / "model" / "decoder").glob("*.yaml"))


def _build_meta(cfg):
    from ecomvlm.recipes.models.vlm import build_vlm

    with torch.device("meta"):
        return build_vlm(cfg, ParallelConfig())


@pytest.mark.parametrize("name", MODELS)
def test_every_model_builds_at_full_depth_with_the_analytic_size(megatron_single, name):
    cfg = resolve(model_config([f"model={name}"]), image_token_id=5)
    model = _build_meta(cfg)
    count = {part: sum(p.numel() for n, p in model.named_parameters() if n.startswith(part))
             for part in ("language_model.", "vision_model.", "vision_projection.")}
    assert count["language_model."] == cfg.decoder.param_count()
    assert count["vision_model."] == cfg.encoder.param_count()
    h_in, h = cfg.encoder.output_size, cfg.decoder.hidden_size
    assert count["vision_projection."] == h_in * h + h + h * h + h  # mlp2x_gelu with biases
    assert len(model.language_model.decoder.layers) == cfg.decoder.num_layers


def _one_layer(enc):
    return dataclasses.replace(enc, num_layers=1, feature_layer=-1,
                               **({"fullatt_block_indexes": [0]} if enc.family == "qwen2_5_vit" else {}))


def _real_image_batch(enc):
    """A real-size image the way the data pipeline prepares it."""
    from PIL import Image

    img = Image.new("RGB", (640, 480), (120, 30, 200))
    return enc.image_spec().process([img])


@pytest.mark.parametrize("name", ENCODERS)
def test_every_encoder_reads_a_real_size_image_like_hf(megatron_single, name):
    from ecomvlm.recipes.models.mapping import find_prefix, prefixed, to_megatron

    enc = _one_layer(model_config([f"model/encoder={name}"]).encoder)
    torch.manual_seed(0)
    tower = enc.build(ParallelConfig()).eval()
    hf_cfg = enc.to_hf()
    if enc.family == "siglip":
        from transformers import SiglipVisionModel

        hf = SiglipVisionModel(hf_cfg).eval()
    else:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

        hf_cfg._attn_implementation = "sdpa"
        hf = Qwen2_5_VisionTransformerPretrainedModel._from_config(hf_cfg).eval()
    sd = hf.state_dict()
    body = find_prefix(sd, enc.hf_anchor, "vision tower")
    missing, unexpected = tower.load_state_dict(to_megatron(prefixed(enc.mapping(), body=body), sd), strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing)
    batch = _real_image_batch(enc)
    with torch.no_grad():
        ours = enc.features(tower, batch["pixel_values"], batch["image_grid_thw"])
        if enc.family == "siglip":
            ref = hf(batch["pixel_values"], output_hidden_states=True).hidden_states[-1]
        else:
            out = hf(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
            ref = (out.pooler_output if hasattr(out, "pooler_output") else out).unsqueeze(0)
    assert ours.shape == ref.shape and ours.shape[1] == batch["tokens"][0]
    if enc.family == "siglip":
        assert ours.shape[1] == (enc.image_size // enc.patch_size) ** 2  # e.g. 729 for so400m-patch14-384
    assert (ours - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", DECODERS)
def test_every_decoder_config_builds_at_full_depth(megatron_single, name):
    dec = resolve(model_config([f"model/decoder={name}"])).decoder
    with torch.device("meta"):
        gpt = dec.build(ParallelConfig())
    assert sum(p.numel() for p in gpt.parameters()) == dec.param_count()
    assert dec.to_hf().num_hidden_layers == dec.num_layers


PAPER_MODELS = [m for m in MODELS if not m.startswith("tiny_")]


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_MODELS)
def test_every_paper_row_runs_a_real_size_image_through_one_layer_of_each_tower(megatron_single, name):
    """Real widths, heads, vocab and image mode (AnyRes tiles for the SigLIP rows, native resolution for
    Qwen2.5-ViT); one layer per tower so it fits a CPU: a 640x480 photo -> encoder -> projector -> decoder logits."""
    from PIL import Image

    from ecomvlm.recipes.models.vlm import build_vlm

    cfg = resolve(model_config([f"model={name}"]), image_token_id=5)
    dec = dataclasses.replace(cfg.decoder, num_layers=1,
                              **({"sliding_layers": None} if hasattr(cfg.decoder, "sliding_layers") else {}))
    cfg = dataclasses.replace(cfg, encoder=_one_layer(cfg.encoder), decoder=dec)
    torch.manual_seed(0)
    model = build_vlm(cfg, ParallelConfig()).eval()
    batch = cfg.encoder.image_spec().process([Image.new("RGB", (640, 480), (120, 30, 200))])
    n_image = int(batch["tokens"][0])
    ids = torch.tensor([[1, 2, 3, *([5] * n_image), 6, 7, 8]])
    extra = {k: batch[k] for k in ("image_grid_thw", "image_sizes", "image_tiles") if batch.get(k) is not None}
    with torch.no_grad():
        logits = model(ids, pixel_values=batch["pixel_values"], **extra)
    assert logits.shape[-1] >= cfg.decoder.vocab_size and logits.shape[-2] == ids.shape[1]
    assert torch.isfinite(logits).all()
    del model


def test_paper_row_parallel_layouts_compose():
    for name in ("siglip2_qwen3_8b_stage3_sft", "siglip_gemma3_4b_stage3_sft", "qwen2_5_vit_e_llama3_1_8b_stage3_sft"):
        cfg = compose(name, ["tokenizer.path=x", "data.shards=y"])
        assert cfg.parallel.tensor_model_parallel_size in (2, 4)


@pytest.fixture(scope="module")
def photos_384(tmp_path_factory):
    """Synthetic captions of 384-px product photos, their shards and a tokenizer that fits the tiny decoders."""
    import json

    from ecomvlm.data_modules.shards import ShardConfig, make_shards
    from ecomvlm.data_modules.synth import SynthConfig, synthesize
    from ecomvlm.data_modules.tiny_tokenizer import build_tiny_tokenizer, save_tiny_tokenizer

    w = tmp_path_factory.mktemp("photos384")
    synthesize(SynthConfig(out=w / "data", n=4, n_eval=0, image_size=384, max_images=1))
    src = w / "data" / "train" / "stage1_captions.json"
    make_shards(ShardConfig([src], w / "shards", image_root=w / "data", workers=1))
    texts = [t["value"] for r in json.loads(src.read_text()) for t in r["conversations"]]
    for fmt in ("chatml", "gemma3"):
        save_tiny_tokenizer(build_tiny_tokenizer(fmt, corpus=texts, vocab_size=400), w / f"tok_{fmt}")
    return w


@pytest.mark.slow
@pytest.mark.parametrize("recipe, decoder, fmt", [("siglip2_qwen3_4b_stage1_alignment", "tiny_qwen3", "chatml"),
                                                  ("siglip_gemma3_4b_stage1_alignment", "tiny_gemma3", "gemma3")])
def test_a_paper_row_trains_with_its_real_encoder_and_a_tiny_decoder(photos_384, tmp_path, recipe, decoder, fmt):
    """The real so400m-patch14-384 tower (27 layers, 729 tokens per 384-px image) in the stage-1 recipe of a paper
    row, with a tiny decoder so it fits a CPU: one training step."""
    from ecomvlm.cli import main

    w = photos_384
    argv = ["train", recipe, f"model/decoder={decoder}", "parallel=single", "precision=fp32",
            f"tokenizer.path={w / f'tok_{fmt}'}", f"data.shards={w / 'shards'}", f"run.dir={tmp_path / 'run'}",
            "data.global_batch_size=1", "data.micro_batch_size=1", "data.num_workers=0", "trainer.max_steps=1",
            "trainer.save_every=1"]
    assert main(argv) == 0
    import json

    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(s["losses"]) == 1 and s["losses"][0] > 0 and s["data"]["per_rank"][0]["totals"]["trained"] >= 1
