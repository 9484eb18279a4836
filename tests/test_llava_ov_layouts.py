"""LLaVA-OneVision data as published (data_modules/llava_ov.py) and the paper's A.6 mixtures (conf/data/).

Fixtures are written here in the published layouts: LLaVA-OneVision-Data subset folders of parquet shards (written
by `datasets` with the dataset card's features, so the Image column is HF's own struct<bytes, path> encoding),
LLaVA-ReCap parquet snapshots and JSON, BLIP-558K's JSON + images/ folder, LLaVA-OneVision-Mid-Data's synthdog JSON.
"""

from __future__ import annotations

import inspect
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from ecomvlm.data_modules import llava_ov
from ecomvlm.data_modules.llava_json import SkipCounter, iter_checked
from ecomvlm.data_modules.llava_ov import (
    BROKEN_ROW,
    ONEVISION_SUBSETS,
    PAPER_NAME_FIXES,
    count_source,
    default_image_root,
    iter_selected,
    iter_source,
    parquet_files,
    read_source,
    resolve_source,
)
from ecomvlm.data_modules.mixture import load_mixture, resolve

REPO = Path(__file__).resolve().parents[1]
STAGE2 = REPO / "conf" / "data" / "llava_ov_stage2_mid.yaml"
STAGE3 = REPO / "conf" / "data" / "llava_ov_stage3_single_image.yaml"
# appendix A.6 of the paper (its two data lists, as printed), with the heading of A.7 that ends it
PAPER = Path(__file__).parent / "fixtures" / "paper_a6.md"


# ---------------------------------------------------------------- fixture writers
def _png(i: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (6, 4), ((40 * i) % 256, 90, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(i: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (5, 5), (200, (30 * i) % 256, 20)).save(buf, format="JPEG")
    return buf.getvalue()


def _row(i: int, subset: str, image: bytes | None) -> dict:
    q = "<image>\nWhat is shown?" if image is not None else "Write a haiku about parquet."
    return {"id": f"{subset}-{i}", "image": None if image is None else {"bytes": image, "path": None},
            "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": f"answer {i}"}],
            "data_source": subset}


def _hf_parquet(rows: list[dict], out: Path) -> None:
    """A parquet shard exactly as `push_to_hub` writes LLaVA-OneVision-Data (features from the dataset card)."""
    import datasets

    feats = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                               "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
                               "data_source": datasets.Value("string")})
    out.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=feats).to_parquet(str(out))


def _arrow_schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
                      ("data_source", pa.string())])


def _pa_parquet(rows: list[dict], out: Path, row_group_size: int = 2) -> None:
    """The same schema written by pyarrow with small row groups (uncompressed, so pages can be corrupted)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=_arrow_schema()), out, row_group_size=row_group_size,
                   compression="NONE", use_dictionary=False, write_statistics=False)


def _corrupt_page(path: Path, row_group: int, column: str) -> None:
    """Overwrite the first page header of one column chunk: that chunk no longer decodes."""
    import pyarrow.parquet as pq

    md = pq.ParquetFile(path).metadata
    rg = md.row_group(row_group)
    col = next(rg.column(c) for c in range(md.num_columns) if rg.column(c).path_in_schema == column)
    data = bytearray(path.read_bytes())
    data[col.data_page_offset:col.data_page_offset + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- LLaVA-OneVision-Data parquet
def test_subset_folder_of_shards_as_published(tmp_path):
    subset = tmp_path / "LLaVA-OneVision-Data" / "ai2d(gpt4v)"
    imgs = [_png(0), _jpeg(1), None, _png(3)]
    _hf_parquet([_row(i, "ai2d(gpt4v)", imgs[i]) for i in (0, 1)], subset / "train-00000-of-00002.parquet")
    _hf_parquet([_row(i, "ai2d(gpt4v)", imgs[i]) for i in (2, 3)], subset / "train-00001-of-00002.parquet")
    import pyarrow.parquet as pq

    assert pq.ParquetFile(subset / "train-00000-of-00002.parquet").schema_arrow.remove_metadata() == _arrow_schema()

    skips = SkipCounter()
    recs = read_source(subset, skips, "ai2d(gpt4v)")
    assert [r["id"] for r in recs] == [f"ai2d(gpt4v)-{i}" for i in range(4)]  # shard order, row order
    assert recs[0]["image"] == {"bytes": imgs[0], "name": "ai2d_gpt4v_-0.png"}  # bytes round-trip, never on disk
    assert recs[1]["image"]["bytes"] == imgs[1] and recs[1]["image"]["name"].endswith(".jpg")
    assert "image" not in recs[2]  # text-only row (magpie-style): no image
    assert recs[3]["data_source"] == "ai2d(gpt4v)"
    assert recs[0]["conversations"] == [{"from": "human", "value": "<image>\nWhat is shown?"},
                                        {"from": "gpt", "value": "answer 0"}]
    assert skips.total == 0
    assert count_source(subset, SkipCounter()) == 4
    # they are LLaVA records the shard path trains on as they are
    checked = SkipCounter()
    assert len(list(iter_checked(recs, checked, "ai2d(gpt4v)"))) == 4 and checked.total == 0
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["train-00000-of-00002.parquet",
                                                                           "train-00001-of-00002.parquet"]


def test_single_file_and_the_hub_convert_branch_layout(tmp_path):
    f = tmp_path / "sharegpt4o" / "train" / "0000.parquet"  # refs/convert/parquet: <subset>/train/0000.parquet
    _hf_parquet([_row(i, "sharegpt4o", _png(i)) for i in range(3)], f)
    assert [r["id"] for r in read_source(f, SkipCounter())] == [f"sharegpt4o-{i}" for i in range(3)]
    assert [r["id"] for r in read_source(tmp_path / "sharegpt4o", SkipCounter())] == [f"sharegpt4o-{i}"
                                                                                       for i in range(3)]


def test_row_groups_stream_and_selected_rows_only(tmp_path):
    f = tmp_path / "geo3k" / "train-00000-of-00001.parquet"
    _pa_parquet([_row(i, "geo3k", _png(i)) for i in range(7)], f, row_group_size=2)  # 4 row groups
    recs = list(iter_source(f, SkipCounter(), "geo3k"))
    assert [r["image"]["bytes"] for r in recs] == [_png(i) for i in range(7)]
    picked = list(iter_selected(f, SkipCounter(), [5, 0, 6, 0], "geo3k"))
    assert [i for i, _ in picked] == [0, 5, 6] and [r["id"] for _, r in picked] == ["geo3k-0", "geo3k-5", "geo3k-6"]
    assert picked[1][1]["image"]["bytes"] == _png(5)


def test_broken_rows_are_counted_not_dropped_silently(tmp_path):
    f = tmp_path / "textcaps" / "train-00000-of-00001.parquet"
    _pa_parquet([_row(i, "textcaps", _png(i)) for i in range(6)], f, row_group_size=2)
    _corrupt_page(f, 1, "conversations.list.element.value")  # rows 2, 3: nothing of them decodes
    _corrupt_page(f, 2, "image.bytes")  # rows 4, 5: text fine, images unreadable

    skips = SkipCounter()
    recs = read_source(f, skips, "textcaps")
    assert [r["id"] for r in recs] == ["textcaps-0", "textcaps-1", "textcaps-4", "textcaps-5"]
    assert skips.by_reason() == {BROKEN_ROW: 2} and "row group 1" in skips.examples[BROKEN_ROW][0]
    # the count without image bytes agrees row for row (what `data mixture` prints), with the same skips
    count_skips = SkipCounter()
    assert count_source(f, count_skips, "textcaps") == len(recs) and count_skips.by_reason() == {BROKEN_ROW: 2}
    # rows whose image chunk is unreadable are kept, and the shard writer counts their images as corrupt
    assert recs[2]["image"]["bytes"] == b"" and "error" in recs[2]["image"]
    from ecomvlm.data_modules.shards import ShardConfig, make_shards

    m = make_shards(ShardConfig([f], tmp_path / "shards", workers=1))
    assert m["samples"] == 2 and m["skipped"] == {BROKEN_ROW: 2, "corrupt_image": 2}
    assert m["samples"] + sum(m["skipped"].values()) == 6  # every input row is trained or counted


def test_bad_rows_reach_the_record_checks(tmp_path):
    rows = [_row(i, "mathqa", _png(i)) for i in range(4)]
    rows[1]["conversations"] = None
    rows[2]["conversations"] = [{"from": "gpt", "value": "answer first"}, {"from": "human", "value": "<image>"}]
    rows[3]["id"] = None
    f = tmp_path / "mathqa" / "train-00000-of-00001.parquet"
    _pa_parquet(rows, f)
    recs = read_source(f, SkipCounter(), "mathqa")
    assert len(recs) == 4 and recs[3]["id"] == "mathqa-000000003"  # one record per row, as LLaVA-NeXT counts
    checked = SkipCounter()
    assert len(list(iter_checked(recs, checked, "mathqa"))) == 2
    assert checked.total == 2 and "bad_record" in checked.by_reason()


def test_unreadable_files_are_named_errors(tmp_path):
    good = tmp_path / "iam(cauldron)" / "train-00000-of-00002.parquet"
    _pa_parquet([_row(i, "iam", _png(i)) for i in range(2)], good)
    cut = good.with_name("train-00001-of-00002.parquet")
    cut.write_bytes(good.read_bytes()[:-40])  # an interrupted download: no footer
    with pytest.raises(ValueError, match=r"train-00001-of-00002.parquet: not a readable parquet file"):
        read_source(good.parent, SkipCounter())
    cut.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(ValueError, match="Git LFS pointer"):
        count_source(good.parent, SkipCounter())
    other = tmp_path / "x" / "train-00000-of-00001.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    other.parent.mkdir()
    pq.write_table(pa.table({"question": ["q"], "answer": ["a"]}), other)
    with pytest.raises(ValueError, match="expected id, image, conversations"):
        read_source(other, SkipCounter())


def test_a_whole_snapshot_or_mixed_layouts_are_refused(tmp_path):
    root = tmp_path / "LLaVA-OneVision-Data"
    for s in ("geo3k", "mathqa"):
        _pa_parquet([_row(0, s, _png(0))], root / s / "train-00000-of-00001.parquet")
    with pytest.raises(ValueError, match="parquet shards in 2 folders"):
        parquet_files(root)
    (root / "geo3k" / "test-00000-of-00001.parquet").write_bytes(b"")  # another split: left out, not merged
    assert [p.name for p in parquet_files(root / "geo3k")] == ["train-00000-of-00001.parquet"]


# ---------------------------------------------------------------- JSON layouts
BLIP_RECORD = {"id": "004539375", "image": "00453/004539375.jpg", "conversations": [
    {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
    {"from": "gpt", "value": "select luxury furniture 3 - inch gel memory foam mattress topper"}]}


@pytest.mark.parametrize("unzipped_into", ["images", "."])
def test_blip_558k_json_with_its_images_folder(tmp_path, unzipped_into):
    pretrain = tmp_path / "LLaVA-Pretrain"
    img = pretrain / unzipped_into / "00453" / "004539375.jpg"
    img.parent.mkdir(parents=True)
    img.write_bytes(_jpeg(0))
    second = dict(BLIP_RECORD, id="004539376", image="00453/004539376.jpg")
    (pretrain / "blip_laion_cc_sbu_558k.json").write_text(json.dumps([BLIP_RECORD, second], indent=1))
    recs = read_source(pretrain / "blip_laion_cc_sbu_558k.json", SkipCounter())
    assert recs == [BLIP_RECORD, second]
    root = default_image_root(pretrain / "blip_laion_cc_sbu_558k.json", recs)
    assert root == (pretrain / "images" if unzipped_into == "images" else pretrain)
    assert (root / recs[0]["image"]).read_bytes() == _jpeg(0)
    # the metadata file next to it is refused with a pointer, not read as 558K bad records
    meta = [{"id": "004539375", "image": "00453/004539375.jpg", "blip_caption": "a mattress", "url": "http://x/y.jpg"}]
    (pretrain / "blip_laion_cc_sbu_558k_meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="blip_laion_cc_sbu_558k.json next to it"):
        read_source(pretrain / "blip_laion_cc_sbu_558k_meta.json", SkipCounter())


def test_recap_json_and_jsonl(tmp_path):
    rec = {"id": "000000000009", "image": "coco/train2017/000000000009.jpg",
           "conversations": [{"from": "human", "value": "<image>\nPlease generate detailed descriptions of the given "
                                                         "image."},
                             {"from": "gpt", "value": "The image shows a meal served in a blue tray."}],
           "data_source": "coco118k"}
    (tmp_path / "LLaVA-ReCap-118K.json").write_text(json.dumps([rec]))
    assert read_source(tmp_path / "LLaVA-ReCap-118K.json", SkipCounter()) == [rec]
    (tmp_path / "recap.jsonl").write_text(json.dumps(rec) + "\n{broken\n" + json.dumps(rec) + "\n")
    skips = SkipCounter()
    assert read_source(tmp_path / "recap.jsonl", skips) == [rec, rec]
    assert skips.by_reason() == {"broken_json": 1}
    assert count_source(tmp_path / "recap.jsonl", SkipCounter()) == 2


# ---------------------------------------------------------------- paper names -> published layout
def test_paper_file_names_resolve_to_the_hub_snapshots(tmp_path):
    ov = tmp_path / "llava_ov"
    _hf_parquet([_row(i, "recap", _png(i)) for i in range(3)], ov / "LLaVA-ReCap-558K" / "data" /
                "train-00000-of-00001.parquet")
    _pa_parquet([_row(0, "iiit5k", _png(0))], ov / "LLaVA-OneVision-Data" / "iiit5k" / "train-00000-of-00001.parquet")
    mid = ov / "LLaVA-OneVision-Mid-Data" / "synthdog_en" / "synthdog_en_processed.json"
    mid.parent.mkdir(parents=True)
    mid.write_text(json.dumps([BLIP_RECORD]))

    assert resolve_source(ov / "LLaVA-ReCap-558K.json") == ov / "LLaVA-ReCap-558K"
    assert count_source(ov / "LLaVA-ReCap-558K.json", SkipCounter()) == 3
    assert resolve_source(ov / "meta_ov" / "LLaVA-OneVision-Data_iuit5k.json") == ov / "LLaVA-OneVision-Data/iiit5k"
    assert resolve_source(ov / "synthdog_en_processed.json") == mid
    converted = ov / "meta_ov" / "LLaVA-OneVision-Data_iiit5k.json"  # a converted JSON wins over the snapshot
    converted.parent.mkdir()
    converted.write_text("[]")
    assert resolve_source(ov / "meta_ov" / "LLaVA-OneVision-Data_iuit5k.json") == converted
    with pytest.raises(FileNotFoundError, match="did you mean 'geo170k\\(qa\\)'"):
        resolve_source(ov / "meta_ov" / "LLaVA-OneVision-Data_geo170k(qq).json")


# ---------------------------------------------------------------- the A.6 mixtures
def _load(yaml_path: Path, root: Path):
    """load_mixture against a data root: through its `root` argument, and (works before and after it existed)
    with the YAML copied into the root."""
    copy = root / yaml_path.name
    shutil.copy(yaml_path, copy)
    entries = load_mixture(copy)
    if "root" in inspect.signature(load_mixture).parameters:
        assert load_mixture(yaml_path, root=root) == entries
    return entries


@pytest.mark.parametrize("yaml_path, n", [(STAGE2, 4), (STAGE3, 67)])
def test_a6_mixtures_load_with_relative_paths(tmp_path, yaml_path, n):
    text = yaml_path.read_text()
    assert "ecomvlm data mixture conf/data/" + yaml_path.name + " --data-root" in text
    entries = _load(yaml_path, tmp_path)
    assert len(entries) == n
    for e in entries:
        e.parse()  # every strategy parses
        rel = e.json_path.relative_to(tmp_path)  # relative to the data root, inside it
        assert rel.parts[0] == "llava_ov" and ".." not in rel.parts and e.json_path.suffix == ".json"


def test_stage3_names_are_hub_subsets():
    names = [Path(e.json_path).name for e in load_mixture(STAGE3)]
    subsets = [re.match(r"^LLaVA-OneVision-Data_(.+)\.json$", n).group(1) for n in names]
    assert len(set(subsets)) == 67
    unknown = [s for s in subsets if PAPER_NAME_FIXES.get(s, s) not in ONEVISION_SUBSETS]
    assert unknown == []
    assert sorted(s for s in subsets if s in PAPER_NAME_FIXES) == sorted(PAPER_NAME_FIXES)


def _paper_a6() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(json_path, strategy) of the paper's two A.6 lists, "↪"/"↵" continuations joined."""
    lines = PAPER.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("A.6 "))
    end = next(i for i, line in enumerate(lines) if line.startswith("A.7 "))
    joined: list[str] = []
    for line in lines[start:end]:
        s = line.strip()
        if not s or s.startswith("```"):
            continue
        m = re.match(r"^[↪↵]\s?(.*)$", s)
        if m:
            joined[-1] += m.group(1)
        else:
            joined.append(s)
    lists: dict[str, list[tuple[str, str]]] = {"mid": [], "si": []}
    block = None
    for s in joined:
        if s.startswith("Our mid-stage"):
            block = "mid"
        elif s.startswith("Our single-image"):
            block = "si"
        elif s.startswith("- json_path: "):
            lists[block].append((s[len("- json_path: "):], ""))
        elif s.startswith("sampling_strategy: "):
            lists[block][-1] = (lists[block][-1][0], s[len("sampling_strategy: "):].strip('"'))
    return lists["mid"], lists["si"]


def test_mixtures_are_the_papers_lists():
    mid, si = _paper_a6()
    for yaml_path, paper in ((STAGE2, mid), (STAGE3, si)):
        ours = [(str(Path(e.json_path).relative_to(yaml_path.parent)), e.sampling_strategy)
                for e in load_mixture(yaml_path)]
        assert ours == [(p.removeprefix("./"), s) for p, s in paper]


def _local_copy(root: Path, rows_per_source: int = 20) -> None:
    """The Hub snapshots both mixtures need, tiny: ReCap folders, Mid-Data synthdog JSON, 67 OV-Data subsets."""
    ov = root / "llava_ov"
    for name in llava_ov.RECAP_RELEASES:
        _pa_parquet([_row(i, name, _png(i)) for i in range(rows_per_source)],
                    ov / name / "data" / "train-00000-of-00001.parquet", row_group_size=8)
    mid = ov / "LLaVA-OneVision-Mid-Data" / "synthdog_en" / "synthdog_en_processed.json"
    mid.parent.mkdir(parents=True)
    mid.write_text(json.dumps([dict(BLIP_RECORD, id=str(i)) for i in range(rows_per_source)]))
    for e in load_mixture(STAGE3):
        subset = re.match(r"^LLaVA-OneVision-Data_(.+)\.json$", e.json_path.name).group(1)
        subset = PAPER_NAME_FIXES.get(subset, subset)
        _pa_parquet([_row(i, subset, b"\xff\xd8\xff" + bytes([i])) for i in range(rows_per_source)],
                    ov / "LLaVA-OneVision-Data" / subset / "train-00000-of-00001.parquet", row_group_size=8)


def test_mixture_counts_on_a_local_copy(tmp_path):
    _local_copy(tmp_path, rows_per_source=20)
    expected = {"all": 20, "first:30%": 6, "first:20%": 4, "first:10%": 2, "first:5%": 1, "first:1%": 1}
    for yaml_path in (STAGE2, STAGE3):
        entries = _load(yaml_path, tmp_path)
        skips = SkipCounter()
        totals = [count_source(e.json_path, skips) for e in entries]
        assert totals == [20] * len(entries) and skips.total == 0
        resolved = resolve(entries, totals, seed=0)
        assert [len(r.indices) for r in resolved] == [expected[e.sampling_strategy] for e in entries]
        # the selected rows are read without the rest: first:10% of a subset reads 2 of its 20 images
        first = resolved[0]
        picked = list(iter_selected(first.entry.json_path, SkipCounter(), first.indices))
        assert [i for i, _ in picked] == sorted(first.indices)
