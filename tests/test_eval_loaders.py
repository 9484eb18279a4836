"""The eight public benchmarks loaded as they are published (tests/fixtures/public/: Hub snapshots with subset
folders and shards, CV-Bench's parquet + jsonl twins, eComMMMU's single file with a split column and nested image
lists), plus save_to_disk copies, the HF cache path and the errors that name the fix."""

from __future__ import annotations

import io
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ecomvlm.eval.public import load_public, load_public_with_info, score_public
from ecomvlm.eval.public.loading import cached_image_path, load_split

FIX = Path(__file__).parent / "fixtures" / "public"
ECOM_URL = "https://m.media-amazon.com/images/I/fixture{:02d}.jpg"


@pytest.fixture
def image_cache(tmp_path, monkeypatch):
    """An image cache holding the eComMMMU fixture's URLs (as a previous ECOMVLM_ALLOW_DOWNLOAD=1 run leaves it)."""
    monkeypatch.setenv("ECOMVLM_IMAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ECOMVLM_ALLOW_DOWNLOAD", raising=False)
    for i in range(24):
        p = cached_image_path(ECOM_URL.format(i))
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIX / "ecommmmu_images" / f"fixture{i:02d}.png", p)
    return tmp_path / "cache"


def _pixels(img):
    return img.convert("RGB").getpixel((0, 0))


def test_mmbench_snapshot_reads_en_dev_only():
    recs, info = load_public_with_info("mmbench", FIX / "mmbench")
    assert info["source"]["files"] == ["en/dev-00000-of-00001.parquet"]  # not cn/dev, not the test files
    assert len(recs) == 4 and all(r["prompt"].isascii() for r in recs)
    assert [r["id"] for r in recs] == ["0", "1000000", "1", "1000001"]
    assert load_public("mmbench", FIX / "mmbench" / "en")[0]["prompt"] == recs[0]["prompt"]  # the subset folder
    m = score_public("mmbench", recs, ["A", "B", "C", "B"])  # q0 both rotations right, q1's second wrong
    assert m["n"] == 2 and m["accuracy"] == 50.0 and m["n_rows"] == 4


def test_mmbench_save_to_disk_and_subset_errors(tmp_path):
    import datasets

    dd = datasets.DatasetDict({s: load_split(FIX / "mmbench", s, subset="en").ds for s in ("dev", "test")})
    dd.save_to_disk(str(tmp_path / "mmb"))
    assert [r["id"] for r in load_public("mmbench", tmp_path / "mmb")] == ["0", "1000000", "1", "1000001"]
    shutil.copytree(FIX / "mmbench", tmp_path / "no_en", ignore=shutil.ignore_patterns("en"))
    with pytest.raises(ValueError, match=r"subsets \['cc', 'cn'\] but not 'en'"):
        load_public("mmbench", tmp_path / "no_en")


def test_cv_bench_prefers_parquet_and_reports_the_jsonl_twins(tmp_path):
    recs, info = load_public_with_info("cv_bench", FIX / "cv_bench")
    assert info["source"]["files"] == ["test_2d.parquet", "test_3d.parquet"]
    assert info["source"]["skipped_duplicates"] == ["test_2d.jsonl", "test_3d.jsonl"]
    assert len(recs) == 5 and {r["doc"]["source"] for r in recs} == {"ADE20K", "COCO", "Omni3D"}
    m = score_public("cv_bench", recs, ["A", "B", "A", "A", "A"])  # Omni3D: 1 of 2
    assert m["formula"] == "official" and m["accuracy"] == pytest.approx(((100 + 100) / 2 + 50) / 2)
    # the jsonl files alone, with the img/ folder that build_img.py recreates: same records, same pixels
    jl = tmp_path / "cvj"
    jl.mkdir()
    for f in ("test_2d.jsonl", "test_3d.jsonl"):
        shutil.copy(FIX / "cv_bench" / f, jl / f)
    with pytest.raises(FileNotFoundError, match="build_img.py"):
        load_public("cv_bench", jl)
    for r in recs:
        p = jl / r["doc"]["filename"]
        p.parent.mkdir(parents=True, exist_ok=True)
        r["images"][0].save(p)
    again = load_public("cv_bench", jl)
    assert [(r["id"], r["prompt"], r["answer"]) for r in again] == [(r["id"], r["prompt"], r["answer"]) for r in recs]
    assert [_pixels(r["images"][0]) for r in again] == [_pixels(r["images"][0]) for r in recs]
    # a jsonl without a parquet twin holds other data: refused, not guessed
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(FIX / "cv_bench" / "test_2d.parquet", mixed)
    shutil.copy(FIX / "cv_bench" / "test_3d.jsonl", mixed)
    with pytest.raises(ValueError, match="mixes file kinds"):
        load_public("cv_bench", mixed)


def test_sharded_and_split_named_hub_layouts():
    mme, info = load_public_with_info("mme", FIX / "mme")
    assert len(info["source"]["files"]) == 2 and len(mme) == 4  # data/test-0000N-of-00002 shards together
    assert len(load_public("mme", FIX / "mme", limit=3)) == 4  # a limit never cuts an image pair
    tv = load_public("textvqa", FIX / "textvqa")
    assert len(tv) == 3 and tv[0]["answer"][:2] == ["stop", "stop"]  # validation, not train/test
    with pytest.raises(ValueError, match=r"splits \['test', 'train', 'validation'\] but none for 'dev'"):
        load_public("textvqa", FIX / "textvqa", split="dev")
    star, info = load_public_with_info("mmstar", FIX / "mmstar")  # mmstar.parquet: no split in its name
    assert len(star) == 3 and info["source"]["files"] == ["mmstar.parquet"]
    ai2d = load_public("ai2d", FIX / "ai2d")
    assert [r["answer"] for r in ai2d] == ["A", "C", "D"]
    mmmu = load_public("mmmu", FIX / "mmmu")
    assert [len(r["images"]) for r in mmmu] == [1, 2] and mmmu[0]["id"] == "validation_Physics_1"


def test_ecommmmu_authors_file(image_cache):
    recs, info = load_public_with_info("ecommmmu", FIX / "ecommmmu")
    raw = json.loads((FIX / "ecommmmu" / "dataset.json").read_text())
    tests = [r for r in raw if r["split"] == "test"]
    assert len(recs) == len(tests) == 9
    assert info["source"]["split_column"] == {"column": "split", "kept": 9, "other_splits": {"train": 2, "val": 2}}
    r0 = recs[0]
    assert r0["system"] == "You are a helpful shopping assistant."
    assert r0["prompt"] == tests[0]["instruction"] + tests[0]["input"] + "<image>" * 3  # text, then the images
    flat = [len([im for product in r["images"] for im in product]) for r in tests]
    assert [len(r["images"]) for r in recs] == [min(10, n) for n in flat]
    assert info["images_over_cap"] == sum(max(0, n - 10) for n in flat) == 2
    assert [_pixels(im) for im in recs[3]["images"]] == [_pixels(_cached(u)) for p in tests[3]["images"] for u in p]
    assert {r["doc"]["task"] for r in recs} == {r["task"] for r in tests}
    m = score_public("ecommmmu", recs, [r["output"] for r in tests])
    assert m["average"] == 100.0 and m["n"] == 9 and sum(m["n_per_task"].values()) == 9


def _cached(url):
    from PIL import Image

    return Image.open(cached_image_path(url))


def test_ecommmmu_subsets_and_image_modes(image_cache):
    raw = [r for r in json.loads((FIX / "ecommmmu" / "dataset.json").read_text()) if r["split"] == "test"]
    vc, info = load_public_with_info("ecommmmu", FIX / "ecommmmu", options={"subset": "vc"})
    assert len(vc) == sum(r["is_vc"] for r in raw) and info["subset_left_out"] == 9 - len(vc)
    main = load_public("ecommmmu", FIX / "ecommmmu", options={"images": "main"})
    assert [len(r["images"]) for r in main] == [len(r["images"]) for r in raw]  # one per product
    capped = load_public("ecommmmu", FIX / "ecommmmu", options={"max_images": 2})
    assert max(len(r["images"]) for r in capped) == 2
    with pytest.raises(ValueError, match="subset 'multi'"):
        load_public("ecommmmu", FIX / "ecommmmu", options={"subset": "multi"})
    with pytest.raises(ValueError, match="unknown eComMMMU options"):
        load_public("ecommmmu", FIX / "ecommmmu", options={"cap": 3})
    with pytest.raises(ValueError, match="takes no options"):
        load_public("mme", FIX / "mme", options={"subset": "vc"})


def test_ecommmmu_hub_copy_with_one_train_split(tmp_path, image_cache):
    """The Hub exposes the authors' file as one 'train' split: the split column picks the test rows."""
    import datasets

    ds = datasets.load_dataset("json", data_files=str(FIX / "ecommmmu" / "dataset.json"), split="train")
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hub"))
    recs, info = load_public_with_info("ecommmmu", tmp_path / "hub")
    assert len(recs) == 9 and info["source"]["split_column"]["other_splits"] == {"train": 2, "val": 2}
    with pytest.raises(ValueError, match=r"has \['test', 'train', 'val'\], not 'dev'"):
        load_public("ecommmmu", tmp_path / "hub", split="dev")
    no_vc = ds.remove_columns(["is_vc"])
    no_vc.to_json(str(tmp_path / "no_vc.jsonl"))
    with pytest.raises(ValueError, match="`is_vc` column"):
        load_public("ecommmmu", tmp_path / "no_vc.jsonl", options={"subset": "vc"})


def test_image_urls_are_fetched_only_when_allowed(tmp_path, monkeypatch):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (6, 6), (10, 200, 30)).save(buf, format="PNG")
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200 if self.path.endswith(".png") else 404)
            self.send_header("Content-Length", str(len(buf.getvalue())))
            self.end_headers()
            self.wfile.write(buf.getvalue())

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_port}/p.png"
    rows = [{"task": "sentiment_analysis", "instruction": "Rate: ", "input": "ok", "output": "C", "split": "test",
             "images": [[url]]}]
    (tmp_path / "dataset.json").write_text(json.dumps(rows))
    monkeypatch.setenv("ECOMVLM_IMAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ECOMVLM_ALLOW_DOWNLOAD", raising=False)
    try:
        with pytest.raises(ValueError, match="ECOMVLM_ALLOW_DOWNLOAD=1"):
            load_public("ecommmmu", tmp_path / "dataset.json")
        assert hits == []
        monkeypatch.setenv("ECOMVLM_ALLOW_DOWNLOAD", "1")
        assert _pixels(load_public("ecommmmu", tmp_path)[0]["images"][0]) == (10, 200, 30)
        monkeypatch.delenv("ECOMVLM_ALLOW_DOWNLOAD")
        assert _pixels(load_public("ecommmmu", tmp_path)[0]["images"][0]) == (10, 200, 30)  # from the cache
        assert hits == ["/p.png"]
        rows[0]["images"] = [[url.replace(".png", ".gif")]]
        (tmp_path / "dataset.json").write_text(json.dumps(rows))
        monkeypatch.setenv("ECOMVLM_ALLOW_DOWNLOAD", "1")
        with pytest.raises(ValueError, match="could not be fetched"):
            load_public("ecommmmu", tmp_path)
    finally:
        srv.shutdown()


def test_hf_cache_ids_load_offline_with_the_subset(monkeypatch):
    """An HF id goes to datasets' cache with the benchmark's subset (MMBench: "en"), downloads disabled."""
    import datasets
    import datasets.config as dcfg

    seen = []
    en_dev = load_split(FIX / "mmbench", "dev", subset="en").ds

    def fake_load(path, name=None, **kw):
        seen.append((path, name, dcfg.HF_DATASETS_OFFLINE, kw))
        return datasets.DatasetDict({"dev": en_dev})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.delenv("ECOMVLM_ALLOW_DOWNLOAD", raising=False)
    assert len(load_public("mmbench")) == 4
    assert seen == [("lmms-lab/MMBench", "en", True, {})]

    def missing(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", missing)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download --repo-type dataset lmms-lab/MMBench"):
        load_public("mmbench")


def test_loader_errors_name_the_input(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="notes.txt is not a parquet"):
        load_public("mme", tmp_path / "notes.txt")
    rows = [{"task": "sentiment_analysis", "instruction": "Rate", "input": "", "output": "C", "split": "test",
             "images": [["img/missing.png"]]}]
    (tmp_path / "dataset.json").write_text(json.dumps(rows))
    with pytest.raises(FileNotFoundError, match="img/missing.png not found"):
        load_public("ecommmmu", tmp_path)
    rows[0].pop("output")
    (tmp_path / "dataset.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="without a label"):
        load_public("ecommmmu", tmp_path)


def test_ecommmmu_authors_downstream_conversation_files(tmp_path, image_cache):
    """The authors' data/downstrem/*.json rows: the human turn with leading <image> tokens, a flat `image` list (one
    selected image per product); inference.py strips the tokens and sends the images after the text."""
    urls = [ECOM_URL.format(i) for i in (1, 2)]
    rows = [{"system_prompt": "You are a helpful shopping assistant.", "image": urls,
             "task": "product_relation_prediction",
             "conversations": [{"from": "human", "value": "<image><image>Relation of the two products?"},
                               {"from": "gpt", "value": "B"}], "split": "test"}]
    (tmp_path / "test.json").write_text(json.dumps(rows))
    rec = load_public("ecommmmu", tmp_path / "test.json")[0]
    assert rec["prompt"] == "Relation of the two products?<image><image>" and rec["answer"] == "B"
    assert [_pixels(im) for im in rec["images"]] == [_pixels(_cached(u)) for u in urls]


def test_mmmu_subject_folders_are_one_benchmark(tmp_path):
    """MMMU/MMMU keeps one folder per subject (Physics/validation-*.parquet, ...): all of them are MMMU."""
    val = load_split(FIX / "mmmu", "validation").ds
    dev = load_split(FIX / "mmmu", "dev").ds
    for i, subject in enumerate(["Art", "Physics"]):
        (tmp_path / "MMMU" / subject).mkdir(parents=True)
        val.select([i]).to_parquet(str(tmp_path / "MMMU" / subject / "validation-00000-of-00001.parquet"))
        dev.select([0]).to_parquet(str(tmp_path / "MMMU" / subject / "dev-00000-of-00001.parquet"))
    recs, info = load_public_with_info("mmmu", tmp_path / "MMMU")
    assert sorted(r["id"] for r in recs) == sorted(val["id"]) and info["source"]["subsets"] == ["Art", "Physics"]
    assert [len(r["images"]) for r in recs] == [1, 2]


def test_a_lone_split_of_another_name_is_refused(tmp_path):
    import datasets

    val = load_split(FIX / "mmmu", "validation").ds
    datasets.DatasetDict({"test": val}).save_to_disk(str(tmp_path / "only_test"))
    with pytest.raises(ValueError, match="holds only the 'test' split, not 'validation'"):
        load_public("mmmu", tmp_path / "only_test")
    datasets.DatasetDict({"val": val}).save_to_disk(str(tmp_path / "val"))  # another name of the same split
    assert len(load_public("mmmu", tmp_path / "val")) == 2


def test_ecommmmu_hub_parquet_snapshot_with_one_train_file(tmp_path, image_cache):
    import datasets

    ds = datasets.load_dataset("json", data_files=str(FIX / "ecommmmu" / "dataset.json"), split="train")
    (tmp_path / "snap" / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "snap" / "data" / "train-00000-of-00001.parquet"))
    recs, info = load_public_with_info("ecommmmu", tmp_path / "snap")
    assert len(recs) == 9 and info["source"]["split_column"]["other_splits"] == {"train": 2, "val": 2}
    no_column = ds.remove_columns(["split"])
    no_column.to_parquet(str(tmp_path / "snap" / "data" / "train-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match=r"split \['train'\] only and no 'split' column"):
        load_public("ecommmmu", tmp_path / "snap")


def _ai2d_rows(folder: Path, n: int = 3) -> list[dict]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(folder / "a.png")
    return [{"question": f"Stage {i}?", "options": ["egg", "larva", "pupa"], "answer": str(i % 3), "image": "a.png"}
            for i in range(n)]


def test_json_twins_empty_files_and_missing_paths_are_named(tmp_path):
    rows = _ai2d_rows(tmp_path / "ai2d")
    (tmp_path / "ai2d" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "ai2d" / "test.json").write_text(json.dumps(rows))  # the same rows as one JSON array
    recs, info = load_public_with_info("ai2d", tmp_path / "ai2d")
    assert len(recs) == 3 and info["source"]["files"] == ["test.jsonl"]
    assert info["source"]["skipped_duplicates"] == ["test.json"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "test.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"\['test.jsonl'\] hold no rows"):
        load_public("ai2d", tmp_path / "empty")
    (tmp_path / "empty" / "test.jsonl").unlink()
    (tmp_path / "empty" / "test.json").write_text("[]\n")
    with pytest.raises(ValueError, match="hold no rows"):
        load_public("ai2d", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does_not_exist' does not exist"):
        load_public("mme", tmp_path / "does_not_exist")


def test_mmbench_limit_keeps_every_rotation_and_duplicates_are_refused(tmp_path):
    import datasets

    en = load_split(FIX / "mmbench", "dev", subset="en").ds
    assert [r["id"] for r in load_public("mmbench", FIX / "mmbench", limit=3)] == ["0", "1000000", "1", "1000001"]
    order = sorted(range(len(en)), key=lambda i: int(en[i]["index"]))  # the rotations after all the questions
    datasets.DatasetDict({"dev": en.select(order)}).save_to_disk(str(tmp_path / "sorted"))
    recs, info = load_public_with_info("mmbench", tmp_path / "sorted", limit=1)
    assert [r["id"] for r in recs] == ["0", "1000000"] and info["limit_left_out"] == 2
    datasets.DatasetDict({"dev": datasets.concatenate_datasets([en, en.select([0])])}).save_to_disk(
        str(tmp_path / "dup"))
    with pytest.raises(ValueError, match=r"MMBench indexes \[0\] occur more than once"):
        load_public("mmbench", tmp_path / "dup")


def test_unknown_ecommmmu_tasks_fail_before_inference(tmp_path):
    rows = [{"task": "click-through_prediction", "instruction": "Click?", "input": "", "output": "yes",
             "split": "test", "images": [["img/missing.png"]]}]  # the image is never opened
    (tmp_path / "dataset.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"unknown eComMMMU tasks \{'click-through_prediction': 1\}"):
        load_public("ecommmmu", tmp_path)


def test_eval_cli_names_an_unknown_public_data_name(tmp_path, capsys):
    from ecomvlm.cli import main

    assert main(["eval", "--model", f"m={tmp_path}", "--benchmarks", "mme", "--public-data", f"mmee={tmp_path}",
                 "--out", str(tmp_path / "out")]) != 0
    assert "no public benchmark 'mmee'" in capsys.readouterr().err


def test_data_loaded_without_split_names_empty_shards_and_split_column_aliases(tmp_path, image_cache):
    import datasets

    files = sorted(str(f) for f in (FIX / "mme").rglob("*.parquet"))
    datasets.load_dataset("parquet", data_files=files).save_to_disk(str(tmp_path / "mme"))  # named "train"
    assert len(load_public("mme", tmp_path / "mme")) == 4
    rows = _ai2d_rows(tmp_path / "ai2d", 2)
    (tmp_path / "ai2d" / "test-00000-of-00002.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "ai2d" / "test-00001-of-00002.jsonl").write_text("")
    recs, info = load_public_with_info("ai2d", tmp_path / "ai2d")
    assert len(recs) == 2 and info["source"]["skipped_empty"] == ["test-00001-of-00002.jsonl"]
    recs, info = load_public_with_info("ecommmmu", FIX / "ecommmmu", split="validation")  # the column says "val"
    assert len(recs) == 2 and info["source"]["split_column"]["other_splits"] == {"test": 9, "train": 2}
