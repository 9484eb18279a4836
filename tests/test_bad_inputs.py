"""Each kind of bad input: a clear error naming the input and the fix, or a counted skip; nothing lost silently."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ecomvlm.data_modules.config import DataConfig
from ecomvlm.data_modules.llava_json import SkipCounter, read_records
from ecomvlm.data_modules.mixture import MixtureEntry
from ecomvlm.data_modules.preprocess import ImageSpec, to_rgb
from ecomvlm.data_modules.shard_folder import iter_tar_samples, upgrade_shards, verify_shards
from ecomvlm.data_modules.shards import ResizeRule, ShardConfig, ShardFolderError, make_shards

SPEC = ImageSpec(mode="fixed", image_size=32, patch_size=8, image_mean=(0.5,) * 3, image_std=(0.5,) * 3)


def _png(color=(200, 30, 30), size=(40, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def _rec(i, image="img.png", turns=None):
    turns = turns or [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red"}]
    out = {"id": f"r{i}", "conversations": turns}
    if image is not None:
        out["image"] = image
    return out


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "img.png").write_bytes(_png())
    return tmp_path


def _shard(folder, records, name="data.jsonl", **kw):
    (folder / name).write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return make_shards(ShardConfig([folder / name], folder / "out", workers=1, **kw))


# ---------------------------------------------------------------- records
@pytest.mark.parametrize("image, reason", [(5, "bad_image_field"), (["img.png", 3], "bad_image_field"),
                                           ("", "bad_image_field"), ({"path": "img.png"}, "bad_image_field")])
def test_a_non_string_image_field_is_counted_not_a_crash(folder, image, reason):
    m = _shard(folder, [_rec(0), _rec(1, image=image)])
    assert m["samples"] == 1 and m["skipped"] == {reason: 1}
    assert "'image' must be a path string" in m["skipped_examples"][reason][0]


@pytest.mark.parametrize("turns, reason", [
    ([{"from": "gpt", "value": "Hello"}, {"from": "human", "value": "<image>\nColour?"},
      {"from": "gpt", "value": "Red"}], "role_order"),                                    # gpt before the user
    ([{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red"},
      {"from": "human", "value": "And?"}], "role_order"),                                 # unanswered last turn
    ([{"from": "human", "value": "<image>"}, {"from": "human", "value": "Colour?"},
      {"from": "gpt", "value": "Red"}], "role_order"),                                    # two user turns in a row
    ([{"from": "system", "value": "Be brief."}, {"from": "human", "value": "<image>\nColour?"}], "no_assistant_turn"),
    ([{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "  "}], "empty_assistant_text"),
])
def test_conversations_a_template_cannot_render_honestly_are_counted(folder, turns, reason):
    m = _shard(folder, [_rec(0), _rec(1, turns=turns)])
    assert m["samples"] == 1 and m["skipped"] == {reason: 1}


def test_a_system_turn_first_is_fine(folder):
    turns = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "<image>\nColour?"},
             {"from": "gpt", "value": "Red"}]
    assert _shard(folder, [_rec(0, turns=turns)])["samples"] == 1


def test_bom_and_pretty_printed_json_are_read(tmp_path):
    recs = [_rec(i) for i in range(3)]
    (tmp_path / "list.json").write_text(json.dumps(recs, indent=2), encoding="utf-8-sig")
    (tmp_path / "lines.jsonl").write_text("\n".join(json.dumps(r) for r in recs), encoding="utf-8-sig")
    (tmp_path / "pretty.jsonl").write_text("\n".join(json.dumps(r, indent=2) for r in recs))
    (tmp_path / "broken.jsonl").write_text(json.dumps(recs[0]) + "\n{\"id\": \n" + json.dumps(recs[1]) + "\n")
    for name in ("list.json", "lines.jsonl", "pretty.jsonl"):
        skips = SkipCounter()
        assert [r["id"] for r in read_records(tmp_path / name, skips)] == ["r0", "r1", "r2"], name
        assert skips.total == 0
    skips = SkipCounter()
    assert [r["id"] for r in read_records(tmp_path / "broken.jsonl", skips)] == ["r0", "r1"]
    assert skips.by_reason() == {"broken_json": 1}


def test_sources_with_the_same_file_name_stay_apart(folder):
    for sub, n in (("a", 2), ("b", 3)):
        (folder / sub).mkdir()
        (folder / sub / "img.png").write_bytes(_png())
        (folder / sub / "train.jsonl").write_text("\n".join(json.dumps(_rec(i)) for i in range(n)))
    m = make_shards(ShardConfig([folder / "a" / "train.jsonl", folder / "b" / "train.jsonl"], folder / "out",
                                workers=1))
    assert {k: v["written"] for k, v in m["sources"].items()} == {"a/train.jsonl": 2, "b/train.jsonl": 3}
    sources = [meta["source"] for p in sorted((folder / "out").glob("*.tar")) for _, meta, _ in iter_tar_samples(p)]
    assert sources.count("a/train.jsonl") == 2 and sources.count("b/train.jsonl") == 3


@pytest.mark.parametrize("strategy, total, expected", [("first:0.07%", 10000, 7), ("first:1.1%", 100000, 1100),
                                                       ("end:0.3%", 1000, 3), ("random:33.3%", 1000, 333),
                                                       ("first:0.001%", 100000, 1)])
def test_percents_are_exact(strategy, total, expected):
    assert MixtureEntry(Path("x.json"), strategy).count(total) == expected


# ---------------------------------------------------------------- images
def test_a_16_bit_png_is_scaled_not_white():
    ramp = (np.arange(64 * 16, dtype=np.uint16).reshape(16, 64) * 64)  # 0 .. 65472
    im = Image.fromarray(ramp)
    assert im.mode.startswith("I;16")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    rgb = np.asarray(to_rgb(Image.open(io.BytesIO(buf.getvalue()))))
    expect = np.rint(ramp / 257.0).astype(np.uint8)
    assert rgb.shape == (16, 64, 3) and np.abs(rgb[..., 0].astype(int) - expect).max() <= 1
    assert (rgb == 255).mean() < 0.01  # PIL's plain convert makes ~99.6% of it white
    assert (np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")) == 255).mean() > 0.9


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (255, 0, 0, 0))        # fully transparent: white
    rgba.putpixel((1, 0), (0, 0, 255, 128))      # half blue on white
    out = np.asarray(to_rgb(rgba))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (255, 0, 0)
    assert tuple(out[0, 1]) == (127, 127, 255) or np.abs(out[0, 1].astype(int) - (127, 127, 255)).max() <= 1
    la = Image.new("LA", (2, 1), (0, 0))
    assert tuple(np.asarray(to_rgb(la))[0, 0]) == (255, 255, 255)
    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    assert np.asarray(to_rgb(pal)).tolist() == [[[255, 255, 255], [200, 100, 0]]]


def test_palette_and_cmyk_images_keep_their_colours():
    pal = Image.new("RGB", (8, 8), (200, 30, 30)).convert("P", palette=Image.ADAPTIVE)
    assert np.abs(np.asarray(to_rgb(pal)).astype(int) - (200, 30, 30)).max() <= 3
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    buf = io.BytesIO()
    cmyk.save(buf, format="JPEG", quality=95)
    red = np.asarray(to_rgb(Image.open(io.BytesIO(buf.getvalue())))).astype(int)
    assert red[..., 0].mean() > 200 and red[..., 1:].mean() < 50


def test_images_of_every_mode_go_through_the_shards_into_the_model_input(folder, tiny_tokenizers):
    from ecomvlm.data_modules.chat_templates import get_chat_format
    from ecomvlm.data_modules.preprocess import build_sample

    modes = {"rgba.png": ("RGBA", (200, 30, 30, 255)), "la.png": ("LA", (90, 255)), "p.png": ("P", 3),
             "l16.png": ("I;16", 30000), "cmyk.jpg": ("CMYK", (0, 200, 200, 0))}
    recs = []
    for i, (name, (mode, color)) in enumerate(modes.items()):
        im = Image.new(mode, (20, 20), color)
        im.save(folder / name)
        recs.append(_rec(i, image=name))
    m = _shard(folder, recs)
    assert m["samples"] == len(modes) and not m["skipped"]
    tok = tiny_tokenizers["chatml"]
    for p in sorted((folder / "out").glob("*.tar")):
        for _, meta, images in iter_tar_samples(p):
            s = build_sample(meta, images, tok, get_chat_format("chatml"), SPEC, DataConfig(),
                             tok.convert_tokens_to_ids("<image>"))
            pix = s.pixel_values * 0.5 + 0.5
            white = pix.min(dim=1).values > 0.99  # all three channels at the top
            assert pix.shape == (1, 3, 32, 32) and not white.any(), meta["id"]  # never a blank white image


# ---------------------------------------------------------------- shard folders
@pytest.fixture()
def built(folder):
    recs = [_rec(i) for i in range(30)]
    m = _shard(folder, recs, samples_per_shard=10)
    return folder, m


def test_a_truncated_shard_is_named_and_verify_rebuilds_it(built, tiny_tokenizers):
    from ecomvlm.data_modules.loader import VLMDataModule

    folder, m = built
    out = folder / "out"
    original = (out / "shard-000001.tar").read_bytes()
    (out / "shard-000001.tar").write_bytes(original[: len(original) // 2])
    tok = tiny_tokenizers["chatml"]
    with pytest.raises(ValueError, match=r"shard-000001.tar is truncated .*--verify .* --rebuild"):
        VLMDataModule(DataConfig(shards=str(out), num_workers=0), tok, "chatml", SPEC, 4)
    report = verify_shards(out)
    assert list(report["bad"]) == ["shard-000001.tar"] and "truncated" in report["bad"]["shard-000001.tar"]
    fixed = verify_shards(out, rebuild=True, workers=1)
    assert fixed["rebuilt"] == ["shard-000001.tar"] and not fixed["still_bad"]
    assert (out / "shard-000001.tar").read_bytes() == original
    assert not verify_shards(out)["bad"]


def test_a_corrupted_shard_of_the_same_size_is_found_by_verify(built):
    folder, _ = built
    out = folder / "out"
    data = bytearray((out / "shard-000002.tar").read_bytes())
    data[700] ^= 0xFF
    (out / "shard-000002.tar").write_bytes(bytes(data))
    assert "sha256" in verify_shards(out)["bad"]["shard-000002.tar"]


def test_verify_from_the_command_line_reports_and_exits_nonzero(built, capsys):
    from ecomvlm.cli import main

    folder, _ = built
    (folder / "out" / "shard-000000.tar").unlink()
    assert main(["data", "shards", "--verify", str(folder / "out")]) == 1
    assert "bad shard shard-000000.tar: missing" in capsys.readouterr().out
    assert main(["data", "shards", "--verify", str(folder / "out"), "--rebuild", "--workers", "1"]) == 0
    assert main(["data", "shards", "--verify", str(folder / "out")]) == 0


@pytest.mark.parametrize("change, why", [("seed", "seed: 0 -> 1"), ("input", "changed"),
                                         ("resize", "resize: None"), ("size", "samples_per_shard: 10 -> 7")])
def test_a_rerun_with_other_inputs_or_settings_refuses_or_rebuilds(built, change, why):
    folder, m = built
    kw = {"samples_per_shard": 10}
    if change == "seed":
        kw["seed"] = 1
    if change == "input":
        recs = [_rec(i) for i in range(31)]
        (folder / "data.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    if change == "resize":
        kw["resize"] = ResizeRule(short_side=16)
    if change == "size":
        kw["samples_per_shard"] = 7
    cfg = ShardConfig([folder / "data.jsonl"], folder / "out", workers=1, **kw)
    with pytest.raises(ShardFolderError, match=f"other inputs or settings .*{why}.*--rebuild"):
        make_shards(cfg)
    cfg.rebuild = True
    again = make_shards(cfg)
    assert again["fingerprint"] != m["fingerprint"] and again["resumed_shards"] == 0
    assert sorted(p.name for p in (folder / "out").glob("*.tar")) == again["shards"]
    assert again["seed"] == kw.get("seed", 0)


def test_an_old_shard_folder_gets_a_one_line_fix(built, tiny_tokenizers):
    from ecomvlm.data_modules.loader import VLMDataModule

    folder, m = built
    old = folder / "old"
    shutil.copytree(folder / "out", old)
    shutil.rmtree(old / ".nv-meta")
    for p in old.glob("*.idx"):
        p.unlink()
    (old / "build.json").unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    tok = tiny_tokenizers["chatml"]
    with pytest.raises(ShardFolderError, match=f"older ecomvlm.*`ecomvlm data shards --upgrade {old}`"):
        VLMDataModule(DataConfig(shards=str(old), num_workers=0), tok, "chatml", SPEC, 4)
    with pytest.raises(ShardFolderError, match="--upgrade"):
        make_shards(ShardConfig([folder / "data.jsonl"], old, workers=1, samples_per_shard=10))
    upgrade_shards(old)
    dm = VLMDataModule(DataConfig(shards=str(old), num_workers=0, max_seq_length=200), tok, "chatml", SPEC,
                       tok.convert_tokens_to_ids("<image>"))
    assert next(dm.batches())["n_samples"] >= 1
    assert (old / "shard-000000.tar.idx").read_bytes() == (folder / "out" / "shard-000000.tar.idx").read_bytes()


# ---------------------------------------------------------------- images stored at training resolution
def _photo(w, h, seed) -> bytes:
    g = np.random.default_rng(seed)
    small = Image.fromarray((g.random((h // 16, w // 16, 3)) * 255).astype(np.uint8))
    buf = io.BytesIO()
    small.resize((w, h), Image.BICUBIC).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_shards_store_photos_at_the_encoders_resolution(tmp_path, tiny_tokenizers):
    """1600x1200 listing photos: stored at the size each encoder reads (recorded in the manifest); what the model
    gets from the small stored image matches what it gets from the original."""
    from ecomvlm.data_modules.chat_templates import get_chat_format
    from ecomvlm.data_modules.preprocess import build_sample
    from ecomvlm.data_modules.shards import resize_rule_for

    for i in range(3):
        (tmp_path / f"p{i}.jpg").write_bytes(_photo(1600, 1200, i))
    recs = [_rec(i, image=f"p{i}.jpg") for i in range(3)] + [_rec(3, image="p0.jpg")]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    tok = tiny_tokenizers["chatml"]
    img_id = tok.convert_tokens_to_ids("<image>")
    from ecomvlm.recipes.config import model_config

    for model, mode in (("siglip2_qwen3_8b", "fixed"), ("qwen2_5_vit_e_llama3_1_8b", "native")):
        enc = model_config([f"model={model}", *([f"model.encoder.image_mode={mode}"] if mode == "fixed" else [])])
        spec = enc.encoder.image_spec()
        rule = resize_rule_for(model) if mode == "native" else ResizeRule(short_side=spec.image_size, encoder=model)
        out = tmp_path / f"s_{mode}"
        m = make_shards(ShardConfig([tmp_path / "d.jsonl"], out, workers=1, resize=rule))
        assert m["resize"]["encoder"] == model and m["resized_images"] == 4
        for _, meta, images in iter_tar_samples(out / "shard-000000.tar"):
            stored = Image.open(io.BytesIO(images[0]))
            if mode == "fixed":
                assert stored.format == "JPEG" and min(stored.size) == spec.image_size
            else:
                assert stored.format == "JPEG" and stored.size[0] * stored.size[1] <= spec.max_pixels
            idx = int(meta["id"][1:]) % 3
            small = build_sample(meta, images, tok, get_chat_format("chatml"), spec, DataConfig(max_seq_length=9000),
                                 img_id)
            full = build_sample(meta, [_photo(1600, 1200, idx)], tok, get_chat_format("chatml"), spec,
                                DataConfig(max_seq_length=9000), img_id)
            assert small.input_ids == full.input_ids  # same image tokens
            assert (small.pixel_values - full.pixel_values).abs().mean() < 0.05
