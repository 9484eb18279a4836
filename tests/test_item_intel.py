"""Item-intelligence pipeline pieces (issue 15): synthetic small print with true boxes (and the default synth output
unchanged), grounding-box parsing in the three coordinate conventions, the enclosing-square crop rule, pHash dedup.
The pipeline end to end is in test_item_intel_pipeline.py, the inference strategies in test_item_intel_eval.py."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

from ecomvlm.data_modules.item_intel.boxes import (
    Convention,
    CropSettings,
    coverage,
    crop_squares,
    cut,
    enclosing_square,
    merge,
    parse_answer,
    parse_boxes,
    to_original,
)
from ecomvlm.data_modules.item_intel.dedup import Candidate, DedupSettings, dedup


def _tree_sha(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


# sha256 over (relative path, file sha256) of every file `ecomvlm data synth` wrote before the item-intelligence
# options existed (computed from the code of the commit before them): the demo and the pinned golden losses read
# these exact bytes, so the new options must leave the default output alone.
DEFAULT_SYNTH_SHA = {
    "default": ({"n": 3, "n_eval": 2}, "0bc4d4fe1a1ccce5817a48797b026b398532b63d14f6342dcf4adce2558de8c0"),
    "demo": ({"n": 6, "n_eval": 3, "seed": 0, "image_size": 64},
             "8b4de40004ca40021ebb75ef60f97c70badf78071e1910399910c6e219627b91"),
    "seed5": ({"n": 4, "n_eval": 2, "seed": 5, "image_size": 96, "max_images": 6},
              "f07581a017c1a09da087f77d67fac807efb4e55391a15feb2f40d19d0fbb3ed6"),
}


@pytest.mark.parametrize("name", sorted(DEFAULT_SYNTH_SHA))
def test_default_synth_output_is_byte_identical_to_before(tmp_path, name):
    from ecomvlm.data_modules.synth import SynthConfig, synthesize

    kw, want = DEFAULT_SYNTH_SHA[name]
    synthesize(SynthConfig(out=tmp_path / name, **kw))
    assert _tree_sha(tmp_path / name) == want


@pytest.fixture(scope="module")
def small_print(tmp_path_factory) -> Path:
    from ecomvlm.data_modules.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("smallprint")
    synthesize(SynthConfig(out=out, n=6, n_eval=2, seed=1, image_size=192, small_print=0.035, regions=True))
    return out


def _rows(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "items.jsonl").read_text().splitlines() if line.strip()]


def test_small_print_regions_are_true_ink_boxes(small_print):
    """Every recorded region box lies inside its image and holds the ink of its text: the box is darker than the
    sticker around it, and the small-print text is small (the 64 px view shrinks it below 2 px)."""
    import numpy as np

    rows = _rows(small_print)
    kinds, small = set(), []
    for row in rows:
        assert row["image_size"] == [192, 192]
        for rel, regions in row["regions"].items():
            a = np.asarray(Image.open(small_print / rel).convert("L"), dtype=float)
            for r in regions:
                x0, y0, x1, y1 = r["box"]
                assert 0 <= x0 < x1 <= 192 and 0 <= y0 < y1 <= 192, r
                assert a[y0:y1, x0:x1].min() < 80, (rel, r)  # black ink inside the box
                kinds.add(r["kind"])
                if r["kind"] in ("ean", "country", "model", "size") and "front" not in rel:
                    small.append(y1 - y0)
    assert {"brand", "size", "ean", "country", "model"} <= kinds
    assert small and max(small) <= 12 and max(small) * 64 / 192 < 4.5  # unreadable in a 64 px view
    assert json.loads((small_print / "manifest.json").read_text())["config"]["small_print"] == 0.035


def test_print_codes_name_the_country_in_a_crop_and_shrink_to_a_speck_in_a_full_view(tmp_path):
    """`print_codes` (the CPU demo's small print): the swatch's colour names the item's country, read back from the
    photo's pixels; the swatch is below the scripted teacher's legibility in a full view and about 2 px in a 64 px
    view of the photo, while the demo's crop square shows it at least 8x wider. The truth holds exactly the printed
    facts."""
    import numpy as np

    from ecomvlm.data_modules.synth import COUNTRIES, Item, SynthConfig, synthesize
    from ecomvlm.data_modules.synth.render import COUNTRY_COLOURS

    out = tmp_path / "codes"
    synthesize(SynthConfig(out=out, n=24, n_eval=0, seed=3, image_size=192, small_print=0.035, regions=True,
                           print_codes=True, max_images=3))
    cs = CropSettings(crop_size=64, min_crop_px=16)
    read, countries = 0, set()
    for row in _rows(out):
        assert row["printed"] == ["country"]
        for rel, regions in row["regions"].items():
            photo = Image.open(out / rel).convert("RGB")
            a = np.asarray(photo, dtype=int)
            coded = [r for r in regions if r["kind"] != "brand"]
            assert [r["kind"] for r in coded] == (["country"] if "front" not in rel else [])
            for r in coded:
                x0, y0, x1, y1 = r["box"]
                assert (y1 - y0) * 96 / 192 < 4.0 and (x1 - x0) * 64 / 192 <= 2.5  # a speck in a full view
                colour = tuple(a[(y0 + y1) // 2, (x0 + x1) // 2])
                assert COUNTRIES[COUNTRY_COLOURS.index(colour)] == row["country"], (rel, r, colour)
                countries.add(row["country"])
                read += 1
                [square], _ = crop_squares([r["box"]], *photo.size, cs)
                assert (square[2] - square[0]) * 8 <= 192, (rel, square)
        item = Item(**{k: v for k, v in row.items() if k in Item.__dataclass_fields__})
        answer = item.item_intelligence_json()
        assert set(answer) <= {"attributes", "origin_production"} and "size" not in answer["attributes"]
        assert ("origin_production" in answer) == (len(row["images"]) > 1)
    assert read >= 15 and len(countries) >= 4
    with pytest.raises(ValueError, match="print-codes"):
        synthesize(SynthConfig(out=tmp_path / "bad", n=1, n_eval=0, print_codes=True))


# ------------------------------------------------------------------------------------------------ box parsing
def test_smart_resize_frame_is_qwen25vl_rule():
    # 1000 x 500 photo -> Qwen2.5-VL's input 1008 x 504 (multiples of 28); 192 -> 196
    assert Convention("resized_pixels").frame(1000, 500) == (1008.0, 504.0)
    assert Convention("resized_pixels").frame(192, 192) == (196.0, 196.0)
    # a small max_pixels (vLLM serve --mm-processor-kwargs) shrinks the frame, and the mapping follows it
    w, h = Convention("resized_pixels", max_pixels=256 * 28 * 28).frame(1000, 500)
    assert w * h <= 256 * 28 * 28 and w % 28 == 0 and h % 28 == 0


@pytest.mark.parametrize("conv,raw", [
    ("original_pixels", [100, 50, 300, 150]),
    ("resized_pixels", [100.8, 50.4, 302.4, 151.2]),  # the same box in the 1008 x 504 frame
    ("norm1000", [100, 100, 300, 300]),  # 0..1000 of 1000 x 500
])
def test_box_conventions_map_to_original_pixels(conv, raw):
    box, notes = to_original(raw, Convention(conv), 1000, 500)
    assert box == pytest.approx((100, 50, 300, 150), abs=1e-6) and notes == []


def test_boxes_sent_shrunk_are_mapped_back():
    # a 2000 x 1000 photo sent at 1000 x 500: the model's pixels of the sent image are doubled back
    box, _ = to_original([100, 50, 300, 150], Convention("original_pixels"), 2000, 1000, 1000, 500)
    assert box == pytest.approx((200, 100, 600, 300))


def test_bad_boxes_are_clipped_dropped_and_counted():
    text = json.dumps([
        {"bbox_2d": [10, 10, 60, 40], "label": "ok"},
        {"bbox_2d": [150, 20, 260, 50], "label": "overflows the right edge"},
        {"bbox_2d": [300, 300, 340, 330], "label": "outside"},
        {"bbox_2d": [20, 70, 90, 70], "label": "zero height"},
        {"bbox_2d": [90, 90, 80, 60], "label": "corners swapped"},
        {"bbox_2d": [1, 2, 3], "label": "three numbers"},
        {"bbox_2d": ["a", 2, 3, 4]},
    ])
    boxes, labels, counts, problem = parse_boxes(text, Convention("original_pixels"), 200, 100)
    assert problem is None
    assert boxes == [(10, 10, 60, 40), (150, 20, 200, 50), (80, 60, 90, 90)]
    assert labels == ["ok", "overflows the right edge", "corners swapped"]
    assert counts["boxes_parsed"] == 7 and counts["boxes_kept"] == 3
    assert counts["boxes_clipped"] == 1 and counts["boxes_outside"] == 1 and counts["boxes_degenerate"] == 1
    assert counts["boxes_reordered"] == 1 and counts["boxes_malformed"] == 2
    # over the cap: counted, not parsed
    many = json.dumps([[0, 0, 10, 10]] * 70)
    boxes, _, counts, _ = parse_boxes(many, Convention("original_pixels"), 100, 100, max_boxes=64)
    assert len(boxes) == 64 and counts["boxes_over_cap"] == 6


@pytest.mark.parametrize("text,n", [
    ('```json\n[{"bbox_2d": [1, 2, 30, 40], "label": "EAN"}]\n```', 1),  # Qwen2.5-VL's form
    ('Here you go: [{"bbox": [1, 2, 30, 40]}, {"box_2d": [5, 5, 9, 9]}] done', 2),
    ('{"boxes": [[1, 2, 30, 40], [3, 3, 8, 8]]}', 2),
    ("[1, 2, 30, 40]", 1),
    ("the label is at (12, 20, 40, 48) and the code at [50, 60, 70, 80].", 2),
    ("[]", 0),
    ("There is no such region.", 0),
])
def test_answer_forms(text, n):
    entries, problem = parse_answer(text)
    assert problem is None and len(entries) == n


def test_unparseable_answer_says_how_to_answer():
    entries, problem = parse_answer("I think the photo shows a shirt.")
    assert entries is None and "bbox_2d" in problem


# ------------------------------------------------------------------------------------------------ squares
def test_enclosing_square_is_smallest_and_inside():
    sq = enclosing_square([(100, 100, 160, 120)], 400, 300)
    assert sq[2] - sq[0] == sq[3] - sq[1] == 60  # the longer side of the box
    assert coverage(sq, (100, 100, 160, 120)) == 1.0
    # near an edge: shifted inside the image, not padded
    sq = enclosing_square([(0, 280, 50, 300)], 400, 300, min_side=64)
    assert sq[2] - sq[0] == 64 and sq[0] >= 0 and sq[1] >= 0 and sq[2] <= 400 and sq[3] <= 300
    assert coverage(sq, (0, 280, 50, 300)) == 1.0
    # a box wider than the image is tall: the square pads only along the short axis, centred
    sq = enclosing_square([(20, 40, 340, 60)], 400, 100)
    side = sq[2] - sq[0]
    assert side == 320 and sq[3] - sq[1] == 320 and 0 <= sq[0] and sq[2] <= 400
    assert sq[1] == -(320 - 100) // 2 and sq[3] == sq[1] + 320


def test_merge_and_one_square_per_image():
    cs = CropSettings(margin=0.0, margin_px=0.0, merge_gap=0.02, min_crop_px=8, crop_size=64)
    near = [(10, 10, 30, 20), (33, 10, 50, 20)]  # 3 px apart at gap 0.02 * 200 = 4 px
    assert merge(near, 4.0) == [(10, 10, 50, 20)]
    far = [(10, 10, 30, 20), (150, 150, 190, 170)]
    assert len(merge(far, 4.0)) == 2
    squares, groups = crop_squares(far, 200, 200, cs)
    assert groups == 2 and len(squares) == 1  # the paper's rule: one crop per image, enclosing every region
    assert all(coverage(squares[0], b) == 1.0 for b in far)
    squares, groups = crop_squares(far, 200, 200, CropSettings(**{**cs.__dict__, "crop_mode": "regions"}))
    assert len(squares) == 2
    # the margin grows each box before the square is taken
    squares, _ = crop_squares([(90, 90, 110, 100)], 200, 200, CropSettings(margin=0.5, margin_px=2, min_crop_px=4))
    assert squares[0][2] - squares[0][0] == 20 + 2 * (10 + 2)


def test_cut_resizes_and_pads_with_the_border_colour():
    img = Image.new("RGB", (400, 100), (200, 30, 30))
    img.paste((0, 0, 0), (100, 40, 120, 60))
    crop = cut(img, enclosing_square([(20, 40, 340, 60)], 400, 100), 64)
    assert crop.size == (64, 64)
    top = crop.getpixel((32, 2))  # padding above the image
    assert max(abs(a - b) for a, b in zip(top, (200, 30, 30))) <= 2
    inside = cut(img, (90, 30, 130, 70), 64)
    assert inside.size == (64, 64) and min(inside.getpixel((32, 32))) < 40


def test_crops_contain_true_regions_and_magnify_small_print(small_print):
    """Noise-free true boxes -> the crop of every back/label photo contains all of its true regions, and the EAN
    digits that are < 4 px tall in a 64 px full view are several times taller in the 64 px crop."""
    cs = CropSettings(crop_size=64, min_crop_px=32)
    gains = []
    for row in _rows(small_print):
        for rel, regions in row["regions"].items():
            if not regions or "front" in rel:
                continue
            boxes = [tuple(r["box"]) for r in regions]
            (sq,), _ = crop_squares(boxes, 192, 192, cs)
            assert sq[2] - sq[0] == sq[3] - sq[1] and 0 <= sq[0] and sq[2] <= 192 and 0 <= sq[1] and sq[3] <= 192
            assert all(coverage(sq, b) == 1.0 for b in boxes)
            for r in regions:
                if r["kind"] == "ean":
                    h = r["box"][3] - r["box"][1]
                    gains.append((h * 64 / (sq[2] - sq[0])) / (h * 64 / 192))
    assert gains and min(gains) >= 2.0


# ------------------------------------------------------------------------------------------------ pHash dedup
def _photo(small_print: Path, view: str) -> Image.Image:
    row = next(r for r in _rows(small_print) if any(view in p for p in r["images"]))
    return Image.open(small_print / next(p for p in row["images"] if view in p)).convert("RGB")


def _jpeg(img: Image.Image, q: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _shift(img: Image.Image, dx: int, dy: int) -> Image.Image:
    w, h = img.size
    return img.crop((dx, dy, w, h)).resize((w, h), Image.BICUBIC)


def test_phash_dedup_drops_planted_near_duplicates_keeps_distinct_views(small_print):
    front, back = _photo(small_print, "_front."), _photo(small_print, "_back.")
    label = _photo(small_print, "_label.")
    cands = [
        Candidate("original:0", front, 192 * 192, True, 0),
        Candidate("original:1", back, 192 * 192, True, 1),
        Candidate("original:2", label, 192 * 192, True, 2),
        Candidate("original:3", _shift(back, 3, 2), 192 * 192, True, 3),  # shifted re-shot of the back
        Candidate("original:4", _jpeg(label, 20), 192 * 192, True, 4),  # recompressed label
        Candidate("original:5", back.resize((96, 96)), 96 * 96, True, 5),  # smaller copy of the back
    ]
    kept, dropped = dedup(cands, DedupSettings(threshold=8))
    assert [c.key for c in kept] == ["original:0", "original:1", "original:2"]
    assert {d["key"]: d["duplicate_of"] for d in dropped} == {"original:3": "original:1",
                                                             "original:4": "original:2",
                                                             "original:5": "original:1"}
    assert all(0 <= d["distance"] <= 8 for d in dropped)


def test_dedup_keeps_the_larger_then_the_sharper(small_print):
    back = _photo(small_print, "_back.")
    # the smaller copy comes first in the item: the larger one is still the one kept
    small = Candidate("original:1", back.resize((96, 96)), 96 * 96, True, 1)
    big = Candidate("original:2", back, 192 * 192, True, 2)
    kept, dropped = dedup([Candidate("original:0", _photo(small_print, "_front."), 1, True, 0), small, big],
                          DedupSettings())
    assert [c.key for c in kept] == ["original:0", "original:2"] and dropped[0]["key"] == "original:1"
    # same size: the blurred one goes
    blurred = Candidate("original:1", back.filter(ImageFilter.GaussianBlur(1.2)), 192 * 192, True, 1)
    sharp = Candidate("original:2", back, 192 * 192, True, 2)
    kept, dropped = dedup([Candidate("original:0", _photo(small_print, "_front."), 1, True, 0), blurred, sharp],
                          DedupSettings())
    assert [c.key for c in kept] == ["original:0", "original:2"]
    # the primary photo stays whatever its duplicates are (unless told otherwise)
    kept, _ = dedup([Candidate("original:0", back.resize((96, 96)), 96 * 96, True, 0),
                     Candidate("original:1", back, 192 * 192, True, 1)], DedupSettings())
    assert [c.key for c in kept] == ["original:0"]
    kept, _ = dedup([Candidate("original:0", back.resize((96, 96)), 96 * 96, True, 0),
                     Candidate("original:1", back, 192 * 192, True, 1)], DedupSettings(keep_primary=False))
    assert [c.key for c in kept] == ["original:1"]


def test_dedup_threshold_zero_keeps_recompressed_copies(small_print):
    label = _photo(small_print, "_label.")
    cands = [Candidate("original:0", label, 1, True, 0), Candidate("original:1", _jpeg(label, 5), 1, True, 1)]
    kept, dropped = dedup(cands, DedupSettings(threshold=8))
    assert len(kept) == 1 and dropped[0]["distance"] > 0  # a near, not an exact, duplicate
    kept, _ = dedup(cands, DedupSettings(threshold=dropped[0]["distance"] - 1))
    assert len(kept) == 2
    with pytest.raises(ValueError, match="phash threshold"):
        DedupSettings(threshold=65)


def test_crop_size_for_reads_composed_and_complete_model_configs():
    """`--crop-size-for` (README, docs/ITEM_INTEL.md): Gemma3's published 896 square, a composed config's SigLIP
    side; native-resolution processors have no square and say so."""
    from ecomvlm.data_modules.item_intel.cli import encoder_square

    assert encoder_square("gemma3_4b") == 896 and encoder_square("gemma3_27b") == 896
    assert encoder_square("tiny_siglip_qwen3") == 64
    with pytest.raises(ValueError, match="qwen2_5_vl_7b.*--crop-size"):
        encoder_square("qwen2_5_vl_7b")
