"""Data modules: mixtures, shards (determinism, resume, skip accounting), preprocessing, packing. The energon
loader (resume, accounting, balance) is in test_loader.py; each kind of bad input in test_bad_inputs.py."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from ecomvlm.data_modules.chat_templates import get_chat_format
from ecomvlm.data_modules.config import DataConfig
from ecomvlm.data_modules.mixture import MixtureEntry, load_mixture
from ecomvlm.data_modules.packing import block_causal_mask, collate_rows, first_fit
from ecomvlm.data_modules.preprocess import ImageSpec, SampleTooLong, build_sample
from ecomvlm.data_modules.shard_folder import iter_tar_samples
from ecomvlm.data_modules.shards import ShardConfig, make_shards

SPEC = ImageSpec(mode="fixed", image_size=32, patch_size=8, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)  # 16 tokens


# ---------------------------------------------------------------- mixtures
@pytest.mark.parametrize("strategy, total, expected", [
    ("all", 7, 7), ("first:3", 7, 3), ("first:10%", 7, 1), ("first:50%", 7, 4), ("end:2", 7, 2),
    ("first:2.5%", 100, 3), ("random:30%", 10, 3), ("first:100", 7, 7), ("end:0", 7, 0),
])
def test_mixture_counts_follow_llava_next_ceil_semantics(strategy, total, expected):
    e = MixtureEntry(Path("x.json"), strategy)
    assert e.count(total) == expected == len(e.select(total, seed=0))


def test_mixture_first_end_random_selections():
    assert MixtureEntry(Path("a.json"), "first:2").select(5, 0) == [0, 1]
    assert MixtureEntry(Path("a.json"), "end:2").select(5, 0) == [3, 4]
    r = MixtureEntry(Path("a.json"), "random:40%")
    assert r.select(50, 1) == r.select(50, 1)  # seeded: reproducible
    assert r.select(50, 1) != r.select(50, 2)
    assert math.ceil(0.4 * 50) == len(set(r.select(50, 1)))


@pytest.mark.parametrize("strategy, msg", [("sample:10", "unknown sampling_strategy"), ("first:ten", "needs a"),
                                           ("first:120%", "more than 100%"), ("first:2.5", "whole number"),
                                           ("first", "unknown sampling_strategy")])
def test_bad_strategies_are_errors_not_silently_ignored(strategy, msg):
    with pytest.raises(ValueError, match=msg):
        MixtureEntry(Path("x.json"), strategy).parse()


def test_mixture_yaml_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "m.yaml").write_text("datasets:\n  - json_path: sub/a.json\n    sampling_strategy: 'first:10%'\n")
    [e] = load_mixture(tmp_path / "m.yaml")
    assert e.json_path == tmp_path / "sub" / "a.json"
    (tmp_path / "bad.yaml").write_text("datasets:\n  - json_path: a.json\n    sampling: all\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_mixture(tmp_path / "bad.yaml")


# ---------------------------------------------------------------- shards
@pytest.fixture(scope="module")
def dirty_source(tmp_path_factory, synth_data):
    """Synthetic stage-3 records plus one of each kind of bad input, as JSONL."""
    d = tmp_path_factory.mktemp("dirty")
    shutil.copytree(synth_data / "images", d / "images")
    recs = json.loads((synth_data / "train" / "stage3_instruct.json").read_text())
    good = recs[:30]
    png = (d / "images" / Path(good[0]["image"]).name).read_bytes()
    (d / "images" / "truncated.png").write_bytes(png[: len(png) // 2])
    lines = [json.dumps(r) for r in good]
    lines.insert(3, '{"id": "broken", "conversations": [')  # broken JSON line
    lines.append(json.dumps({"id": "corrupt", "image": "images/truncated.png", "conversations": [
        {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red"}]}))
    lines.append(json.dumps({"id": "missing", "image": "images/nope.png", "conversations": [
        {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red"}]}))
    lines.append(json.dumps({"id": "mismatch", "image": good[0]["image"], "conversations": [
        {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Red"}]}))
    lines.append(json.dumps({"id": "nostructure", "conversations": "hi"}))
    (d / "data.jsonl").write_text("\n".join(lines) + "\n")
    return d


def _tars(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("shard-*.tar"))}


def test_shards_count_every_skip_and_write_the_rest(dirty_source, tmp_path):
    m = make_shards(ShardConfig([dirty_source / "data.jsonl"], tmp_path / "s", samples_per_shard=8, workers=2))
    # 32 records pass the text checks (4 shards of 8); 2 of them then fail on their image
    assert m["samples"] == 30 and len(m["shards"]) == 4
    assert m["skipped"] == {"bad_record": 1, "broken_json": 1, "corrupt_image": 1, "image_token_mismatch": 1,
                            "missing_image": 1}
    src = m["sources"]["data.jsonl"]
    assert src["written"] == 30 and src["skipped"]["missing_image"] == 1
    assert any("truncated.png" in ex for ex in m["skipped_examples"]["corrupt_image"])
    n = sum(1 for p in (tmp_path / "s").glob("shard-*.tar") for _ in iter_tar_samples(p))
    assert n == 30


def test_shards_are_deterministic_and_resumable(dirty_source, tmp_path):
    a = make_shards(ShardConfig([dirty_source / "data.jsonl"], tmp_path / "a", samples_per_shard=8, workers=2))
    make_shards(ShardConfig([dirty_source / "data.jsonl"], tmp_path / "b", samples_per_shard=8, workers=1))
    assert _tars(tmp_path / "a") == _tars(tmp_path / "b")
    before = _tars(tmp_path / "a")
    (tmp_path / "a" / "shard-000002.json").unlink()  # as if killed before this shard finished
    (tmp_path / "a" / "shard-000002.tar").unlink()
    again = make_shards(ShardConfig([dirty_source / "data.jsonl"], tmp_path / "a", samples_per_shard=8, workers=2))
    assert again["resumed_shards"] == 3 and _tars(tmp_path / "a") == before
    assert again["samples"] == a["samples"]


def test_shards_are_readable_by_webdataset(dirty_source, tmp_path):
    import webdataset as wds

    make_shards(ShardConfig([dirty_source / "data.jsonl"], tmp_path / "s", samples_per_shard=100, workers=1))
    ds = wds.WebDataset(str(tmp_path / "s" / "shard-000000.tar"), shardshuffle=False)
    first = next(iter(ds))
    meta = json.loads(first["json"])
    assert meta["images"] == ["img0.png"] and first["img0.png"][:4] == b"\x89PNG"


# ---------------------------------------------------------------- preprocessing
def _meta(n_images=1, answer="Red"):
    return {"conversations": [{"from": "human", "value": "<image>\n" * n_images + "What colour?"},
                              {"from": "gpt", "value": answer}], "images": [f"img{i}.png" for i in range(n_images)]}


def _png(color=(200, 30, 30), size=(40, 30)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("family", ["llama3", "chatml", "gemma3"])
def test_placeholders_expand_to_encoder_tokens_and_only_answers_train(tiny_tokenizers, family):
    tok = tiny_tokenizers[family]
    img_id = tok.convert_tokens_to_ids("<image>")
    s = build_sample(_meta(2), [_png(), _png()], tok, get_chat_format(family), SPEC, DataConfig(), img_id)
    assert s.input_ids.count(img_id) == 32 and s.pixel_values.shape == (2, 3, 32, 32)
    trained = tok.decode([i for i, m in zip(s.input_ids, s.loss_mask) if m])
    assert trained == "Red" + get_chat_format(family).turn_end.strip()


def test_image_budget_caps_images_and_their_placeholders(tiny_tokenizers):
    tok = tiny_tokenizers["chatml"]
    img_id = tok.convert_tokens_to_ids("<image>")
    s = build_sample(_meta(12), [_png()] * 12, tok, get_chat_format("chatml"), SPEC, DataConfig(max_images=5), img_id)
    assert s.n_images == 5 and s.input_ids.count(img_id) == 5 * 16 and "images_capped" in s.notes
    s = build_sample(_meta(12), [_png()] * 12, tok, get_chat_format("chatml"), SPEC,
                     DataConfig(max_image_tokens=50), img_id)
    assert s.n_images == 3 and s.input_ids.count(img_id) == 48


def test_native_resolution_matches_transformers_and_downscales_to_budget(tiny_tokenizers):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    spec = ImageSpec(mode="native", patch_size=14, spatial_merge_size=2, temporal_patch_size=2, min_pixels=56 * 56,
                     max_pixels=200 * 28 * 28, image_mean=(0.48145466, 0.4578275, 0.40821073),
                     image_std=(0.26862954, 0.26130258, 0.27577711))
    img = Image.new("RGB", (300, 170), (10, 200, 90))
    img.putpixel((5, 5), (255, 0, 0))
    ours = spec.process([img])
    ref = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=200 * 28 * 28)(images=[img], return_tensors="pt")
    assert torch.equal(ours["image_grid_thw"], ref["image_grid_thw"])
    assert torch.allclose(ours["pixel_values"], ref["pixel_values"], atol=1e-5)
    tok = tiny_tokenizers["chatml"]
    img_id = tok.convert_tokens_to_ids("<image>")
    full = build_sample(_meta(3), [_png(size=(600, 400))] * 3, tok, get_chat_format("chatml"), spec,
                        DataConfig(), img_id)
    small = build_sample(_meta(3), [_png(size=(600, 400))] * 3, tok, get_chat_format("chatml"), spec,
                         DataConfig(max_image_tokens=150), img_id)
    assert full.input_ids.count(img_id) > 150 >= small.input_ids.count(img_id) > 0 and "downscaled" in small.notes
    assert small.n_images == 3  # nothing dropped: every image was shrunk instead


def test_truncation_policy(tiny_tokenizers):
    tok = tiny_tokenizers["chatml"]
    img_id = tok.convert_tokens_to_ids("<image>")
    long_answer = " ".join(["Red"] * 80)
    with pytest.raises(SampleTooLong):
        build_sample(_meta(1, long_answer), [_png()], tok, get_chat_format("chatml"), SPEC,
                     DataConfig(max_seq_length=60), img_id)
    s = build_sample(_meta(1, long_answer), [_png()], tok, get_chat_format("chatml"), SPEC,
                     DataConfig(max_seq_length=60, truncation="truncate"), img_id)
    assert len(s) == 60 and s.input_ids.count(img_id) == 16 and "truncated" in s.notes
    with pytest.raises(SampleTooLong):  # never cut inside the image tokens
        build_sample(_meta(1), [_png()], tok, get_chat_format("chatml"), SPEC,
                     DataConfig(max_seq_length=10, truncation="truncate"), img_id)


# ---------------------------------------------------------------- packing
def _samples(tok, n=6, spec=SPEC, sizes=((40, 30),)):
    img_id = tok.convert_tokens_to_ids("<image>")
    return [build_sample(_meta(1 + i % 2, "Red " * (i + 1)), [_png(size=sizes[i % len(sizes)])] * (1 + i % 2), tok,
                         get_chat_format("chatml"), spec, DataConfig(), img_id) for i in range(n)]


def test_packing_boundaries_positions_and_labels(tiny_tokenizers):
    tok = tiny_tokenizers["chatml"]
    samples = _samples(tok)
    rows = first_fit(samples, 128)
    assert len(rows) < len(samples) and all(r.length <= 128 for r in rows)
    b = collate_rows(rows, tok.pad_token_id, multiple_of=16)
    assert b["input_ids"].shape[1] % 16 == 0
    for r, row in enumerate(rows):
        bounds = b["cu_seqlens"][r]
        for s, (start, end) in zip(row.samples, zip(bounds[:-1], bounds[1:])):
            assert end - start == len(s) - 1
            assert b["position_ids"][r, start:end].tolist() == list(range(end - start))
            assert b["labels"][r, start:end].tolist() == s.input_ids[1:]  # never the next sample's first token
    assert b["n_tokens"] == sum(len(s) - 1 for s in samples)
    m = block_causal_mask(b["cu_seqlens"], b["input_ids"].shape[1])
    s0, e0 = b["cu_seqlens"][0][0], b["cu_seqlens"][0][1]
    assert m[0, 0, e0, s0] and not m[0, 0, e0, e0] and not m[0, 0, e0 - 1, s0]


@pytest.mark.parametrize("model", ["tiny_siglip_qwen3", "tiny_siglip_gemma3", "tiny_siglip_qwen3_anyres"])
def test_packed_row_gives_the_same_losses_as_separate_samples(megatron_single, tiny_tokenizers, model):
    """The gold test of packing: one packed row == each sample alone (images, positions and masks all right).
    Gemma3: samples longer than its sliding window (16 tokens here), so the window and packing masks combine.
    AnyRes: single-image samples of several aspect ratios (tiles, unpadding, newlines) beside multi-image ones."""
    from ecomvlm.recipes.config import model_config
    from ecomvlm.recipes.models.parallel import ParallelConfig
    from ecomvlm.recipes.models.registry import resolve
    from ecomvlm.recipes.models.vlm import build_vlm

    tok = tiny_tokenizers["chatml"]
    anyres = model.endswith("_anyres")
    cfg = resolve(model_config([f"model={model.removesuffix('_anyres')}", "model.encoder.image_size=32",
                                *(["model.encoder.image_mode=anyres"] if anyres else [])]),
                  image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = build_vlm(cfg, ParallelConfig()).eval()
    samples = _samples(tok, 4 if anyres else 3, cfg.encoder.image_spec(), ((90, 40), (40, 30), (50, 150)))
    [row] = first_fit(samples, 2048)
    packed = collate_rows([row], tok.pad_token_id)
    L = packed["input_ids"].shape[1]
    with torch.no_grad():
        images = {k: packed[k] for k in ("pixel_values", "image_sizes", "image_tiles")}
        loss_packed = model(packed["input_ids"], packed["position_ids"], labels=packed["labels"],
                            attention_mask=block_causal_mask(packed["cu_seqlens"], L), **images)
        for s, (a, b) in zip(samples, zip(packed["cu_seqlens"][0][:-1], packed["cu_seqlens"][0][1:])):
            one = collate_rows(first_fit([s], 2048), tok.pad_token_id)
            alone = model(one["input_ids"], one["position_ids"], labels=one["labels"],
                          **{k: one[k] for k in ("pixel_values", "image_sizes", "image_tiles")})
            assert torch.allclose(loss_packed[0, a:b], alone[0, : b - a], atol=1e-5)


def _photo(w=1600, h=1200, seed=0) -> bytes:
    """A full-size listing photo (JPEG), like the real data."""
    import io

    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(h // 8, w // 8, 3, generator=g) * 255).byte().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).resize((w, h)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


@pytest.mark.parametrize("mode, policy, kept, tokens_each, note", [
    ("fixed", "auto", 5, 729, "images_capped"),           # 12 x 729 > 4096: keep 5, drop 7 (counted)
    ("anyres", "auto", 5, 730, "images_capped"),          # multi-image: one view each (730), keep 5
    ("native", "auto", 12, None, "downscaled"),           # every image shrunk, none dropped
    ("native", "drop_images", None, None, "images_capped"),
])
def test_a_twelve_photo_item_stays_within_the_image_token_budget(tiny_tokenizers, mode, policy, kept, tokens_each,
                                                                 note):
    """Paper limitation (v): items with 10+ full-size images. The sample's image tokens never exceed
    data.max_image_tokens; what happens past it is data.over_budget's choice, and it is counted."""
    from ecomvlm.recipes.config import model_config

    enc = model_config(["model=qwen2_5_vit_e_llama3_1_8b" if mode == "native" else "model=siglip2_qwen3_8b",
                        *([f"model.encoder.image_mode={mode}"] if mode != "native" else [])]).encoder
    spec = enc.image_spec()
    tok = tiny_tokenizers["chatml"]
    img_id = tok.convert_tokens_to_ids("<image>")
    photos = [_photo(seed=i) for i in range(12)]
    cfg = DataConfig(max_seq_length=20000, max_image_tokens=4096, over_budget=policy)
    s = build_sample(_meta(12), photos, tok, get_chat_format("chatml"), spec, cfg, img_id)
    n_tok = s.input_ids.count(img_id)
    assert n_tok <= 4096 and note in s.notes
    if kept is not None:
        assert s.n_images == kept
    if tokens_each is not None:
        assert n_tok == kept * tokens_each
    unlimited = build_sample(_meta(12), photos, tok, get_chat_format("chatml"), spec,
                             DataConfig(max_seq_length=40000), img_id)
    assert unlimited.n_images == 12 and unlimited.input_ids.count(img_id) > 4096


def test_an_impossible_budget_policy_is_named(tiny_tokenizers):
    tok = tiny_tokenizers["chatml"]
    with pytest.raises(ValueError, match="over_budget=single_view needs an encoder in image mode anyres"):
        build_sample(_meta(3), [_png()] * 3, tok, get_chat_format("chatml"), SPEC,
                     DataConfig(max_image_tokens=20, over_budget="single_view"), tok.convert_tokens_to_ids("<image>"))


def test_the_tower_in_chunks_equals_the_tower_at_once(megatron_single):
    """model.encoder.views_per_forward bounds the tower's activations for many-image items; same features."""
    import dataclasses

    from ecomvlm.recipes.config import model_config
    from ecomvlm.recipes.models.parallel import ParallelConfig

    enc = dataclasses.replace(model_config(["model=siglip2_qwen3_8b"]).encoder, num_layers=1)
    torch.manual_seed(0)
    tower = enc.build(ParallelConfig()).eval()
    pix = enc.image_spec().process([Image.open(__import__("io").BytesIO(_photo(seed=i))) for i in range(5)])
    with torch.no_grad():
        whole = enc.features(tower, pix["pixel_values"])
        chunked = dataclasses.replace(enc, views_per_forward=2).features(tower, pix["pixel_values"])
    assert whole.shape == (5, 729, 1152) and torch.allclose(whole, chunked, atol=1e-5)
