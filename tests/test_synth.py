"""Synthetic e-commerce data: determinism, exact ground truth, LLaVA format, eval-set schemas."""

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from ecomvlm.data_modules import synth
from ecomvlm.data_modules.synth import COLOURS, SynthConfig, ean13_check_digit, make_item, synthesize


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_runs_are_byte_identical(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    synthesize(SynthConfig(out=a, n=6, n_eval=4, seed=11, image_size=64))
    synthesize(SynthConfig(out=b, n=6, n_eval=4, seed=11, image_size=64))
    da, db = _digest(a), _digest(b)
    assert da == db and len(da) > 20


def test_item_is_a_function_of_seed_split_index_not_of_n(tmp_path):
    small, big = tmp_path / "s", tmp_path / "b"
    synthesize(SynthConfig(out=small, n=3, n_eval=0, seed=5, image_size=64))
    synthesize(SynthConfig(out=big, n=9, n_eval=0, seed=5, image_size=64))
    for p in (small / "images").iterdir():
        assert p.read_bytes() == (big / "images" / p.name).read_bytes()
    assert make_item(5, "train", 2) != make_item(6, "train", 2)


def test_ean13_check_digit_known_values():
    assert ean13_check_digit("400638133393") == "1"  # 4006381333931, a published example
    assert ean13_check_digit("590123412345") == "7"
    with pytest.raises(ValueError, match="12 leading digits"):
        ean13_check_digit("123")


def test_items_have_valid_eans_and_train_eval_splits_differ(synth_data):
    items = [json.loads(line) for line in (synth_data / "items.jsonl").read_text().splitlines()]
    assert Counter(i["split"] for i in items) == {"train": 24, "eval": 16}
    for it in items:
        assert ean13_check_digit(it["ean"][:12]) == it["ean"][12]
    train_imgs = {p for i in items if i["split"] == "train" for p in i["images"]}
    eval_imgs = {p for i in items if i["split"] == "eval" for p in i["images"]}
    assert not train_imgs & eval_imgs


def test_colour_ground_truth_is_the_dominant_pixel_colour(synth_data):
    """The label must be in the pixels: the most frequent non-background colour of a front view is the item's."""
    items = [json.loads(line) for line in (synth_data / "items.jsonl").read_text().splitlines()]
    for it in items:
        img = Image.open(synth_data / it["images"][0]).convert("RGB")
        bg = img.getpixel((0, 0))
        counts = Counter(px for px in img.getdata() if px != bg)
        assert counts.most_common(1)[0][0] == COLOURS[it["colour"]], it["item_id"]


def test_llava_records_have_one_image_token_per_image(synth_data):
    n_multi = 0
    for f in (synth_data / "train").glob("*.json"):
        for rec in json.loads(f.read_text()):
            images = rec.get("image")
            n_images = 0 if images is None else (1 if isinstance(images, str) else len(images))
            n_tokens = sum(t["value"].count("<image>") for t in rec["conversations"])
            assert n_tokens == n_images, (f.name, rec["id"])
            assert [t["from"] for t in rec["conversations"]][::2] == ["human"] * (len(rec["conversations"]) // 2)
            for p in ([images] if isinstance(images, str) else images or []):
                assert (synth_data / p).is_file()
            n_multi += isinstance(images, list) and len(images) > 1
    assert n_multi > 0  # multi-image items exist


def test_eval_sets_schema_and_answers(synth_data):
    files = {p.stem: [json.loads(line) for line in p.read_text().splitlines()]
             for p in (synth_data / "eval").glob("*.jsonl")}
    assert {"aspect_general", "dae", "item_intel"} <= set(files)
    for name, recs in files.items():
        for r in recs:
            assert {"id", "task", "images", "prompt", "answer"} <= set(r), name
            assert r["task"] == name
            if "classes" in r:
                assert r["answer"] in r["classes"]
    for r in files["aspect_fashion_tc"] if "aspect_fashion_tc" in files else []:
        assert r["answer"].lower() not in r["title"].lower()  # context must not leak the answer
    for r in files["item_intel"]:
        ans = r["answer"]
        assert ans["attributes"]["colors"] and ans["attributes"]["brand_name"] in synth.BRANDS
        if any(p.endswith("_back.png") for p in r["images"]):
            assert ean13_check_digit(ans["identifiers"]["barcodes"][0]["value"][:12])


def test_manifest_counts_match_files(synth_data):
    m = json.loads((synth_data / "manifest.json").read_text())
    for rel, count in m["records"].items():
        path = synth_data / rel
        n = len(json.loads(path.read_text())) if rel.endswith(".json") else len(path.read_text().splitlines())
        assert n == count
    assert m["images"] == len(list((synth_data / "images").iterdir()))


@pytest.mark.parametrize("kw, msg", [({"max_images": 9}, "max-images"), ({"image_size": 8}, "image-size"),
                                     ({"n": -1}, "n-eval")])
def test_bad_config_is_rejected_with_the_flag_name(tmp_path, kw, msg):
    with pytest.raises(ValueError, match=msg):
        synthesize(SynthConfig(out=tmp_path, **kw))
