"""`ecomvlm data item-intel` end to end (issue 15) against scripted loopback endpoints: the teacher and the grounding
model are stand-ins answering from the synthetic truth (data_modules/item_intel/scripted.py), served over real HTTP
(conftest's function_endpoint); the code under test is the real pipeline and its real client. Covered: labels,
boxes and crops against the true regions in each coordinate convention, caches, bad inputs counted by reason,
kill -9 + resume giving the same output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecomvlm.data_modules.item_intel.boxes import Convention, CropSettings
from ecomvlm.data_modules.item_intel.pipeline import Pipeline, PipelineConfig, StageNotReady
from ecomvlm.data_modules.item_intel.report import write_report
from ecomvlm.data_modules.item_intel.scripted import SyntheticNoisyGrounder, SyntheticTruthTeacher, SyntheticWorld
from ecomvlm.data_modules.item_intel.stages import Endpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from ecomvlm.data_modules.item_intel.demo import write_pipeline_items
    from ecomvlm.data_modules.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("ii_data")
    synthesize(SynthConfig(out=out, n=10, n_eval=2, seed=2, image_size=192, small_print=0.035, regions=True))
    write_pipeline_items(out)
    return out


def _serve_both(handler, teacher, grounder) -> None:
    """One loopback endpoint, two models: requests name theirs."""
    handler.respond = lambda body: teacher(body) if body["model"] == "teacher" else grounder(body)


def _config(work: Path, url: str, items: Path | None, **kw) -> PipelineConfig:
    ep = dict(concurrency=4, timeout_s=10.0, http_retries=2, backoff_s=0.01)
    kw.setdefault("convention", Convention("resized_pixels"))
    return PipelineConfig(work=work, items=items, partition_size=kw.pop("partition_size", 4),
                          teacher=Endpoint(url, "teacher", **{**ep, **kw.pop("teacher_kw", {})}),
                          grounder=Endpoint(url, "grounder", **{**ep, **kw.pop("grounder_kw", {})}),
                          crop=kw.pop("crop", CropSettings(crop_size=64)), **kw)


def test_pipeline_end_to_end_better_labels_caches_and_report(data, tmp_path, function_endpoint):
    url, handler = function_endpoint
    world = SyntheticWorld.load(data)
    teacher = SyntheticTruthTeacher(world, view_px=96)
    _serve_both(handler, teacher, SyntheticNoisyGrounder(world, convention="resized_pixels", noise=0.08))
    items = data / "pipeline_items_train.jsonl"
    pipe = Pipeline(_config(tmp_path / "w", url, items))
    with pytest.raises(StageNotReady, match="ingest"):
        pipe.run_stage("annotate")
    reps = pipe.run()
    assert all(r["fates"] == {"written": 10} and r["finished"] == 3 for r in reps.values()), reps
    first = pipe.build("first", shards=True, samples_per_shard=4)
    better = pipe.build("better", shards=False)
    rep = write_report(pipe, truth=data / "items.jsonl")

    # better labels: the small print the full photos hide is read in the crops
    lab = rep["labels"]
    assert lab["better_facts_per_item"]["mean"] > lab["first_facts_per_item"]["mean"] + 1
    assert 0 < lab["agreement_jaccard_mean"] < 1 and lab["facts_added_by_field"].get("identifiers.barcodes", 0) >= 3
    q = rep["label_quality"]
    assert q["better"]["recall"] > q["first"]["recall"] + 20 and q["better"]["f1"] > 90
    # boxes vs the true regions; every crop a square inside its photo, holding the true small-print regions
    bq = rep["boxes_small_print"]
    assert bq["iou_mean"] > 0.6 and bq["recall_at_iou50"] > 0.9
    assert bq["crops"] > 0 and bq["crops_square_rule_ok"] == bq["crops"]
    assert bq["regions_fully_inside_crop"] >= 0.95 * bq["regions_in_cropped_images"]
    # A.5 counts, request/token/image counters, balanced accounting
    ipi = rep["images_per_item"]
    assert ipi["originals"]["max"] <= 6 and ipi["originals_plus_square_crops"]["mean"] > ipi["originals"]["mean"]
    assert ipi["after_dedup"]["max"] <= ipi["originals_plus_square_crops"]["max"]
    assert rep["cost"]["annotate"]["requests"] == 10 and rep["cost"]["ground"]["images_sent"] >= 10
    assert rep["cost"]["reannotate"]["prompt_tokens"] > 0
    assert all(a["balanced"] and a["labelled"] == 10 for a in rep["accounting"].values())
    md = (tmp_path / "w" / "report.md").read_text()
    assert "after dedup" in md and "better labels: input 10 = labelled 10" in md

    # the training sets: first labels on originals, better labels on originals + 64 px crops
    llava = json.loads(Path(better["llava_json"]).read_text())
    assert first["records"] == better["records"] == 10 and first["shard_samples"] == 10
    assert (tmp_path / "w" / "shards" / "first_originals").is_dir()
    for rec in llava:
        assert rec["conversations"][0]["value"].count("<image>") == len(rec["image"])
        assert rec["label_source"]["kind"] == "better" and rec["label_source"]["prompt"]["version"] == \
            "teacher_better_v1"
    crops = [p for rec in llava for p in rec["image"] if "crop_images" in p]
    assert crops and all(Path(p).is_file() for p in crops)
    from PIL import Image

    assert Image.open(crops[0]).size == (64, 64)
    # every label records the prompt that made it: version + sha256 of the prompt file
    from ecomvlm.data_modules.item_intel.prompts import load_prompt

    sha = load_prompt("teacher_first_v1", "teacher").sha256
    assert all(o["prompt"] == {"version": "teacher_first_v1", "sha256": sha}
               for o in pipe.outputs("annotate").values())

    # re-run: every partition is finished, nothing is asked again
    n = handler.requests
    again = pipe.run()
    assert all(r["partitions_run"] == 0 for r in again.values()) and handler.requests == n
    # a fresh work folder sharing the cache: every answer comes from the cache (key: item, images, prompt, model)
    cached = Pipeline(_config(tmp_path / "w2", url, items, cache_dir=tmp_path / "w" / "cache"))
    cached.run()
    assert handler.requests == n
    assert cached.stage_report("annotate")["counters"]["cache_hits"] == 10
    assert cached.outputs("reannotate").keys() == pipe.outputs("reannotate").keys()
    # a new prompt version is a cache miss (and so is another model)
    prompt = tmp_path / "teacher_first_v2.yaml"
    prompt.write_text(Path(load_prompt("teacher_first_v1", "teacher").path).read_text()
                      .replace("version: teacher_first_v1", "version: teacher_first_v2"))
    v2 = cached.with_config(first_prompt=str(prompt))
    r = v2.run_stage("annotate")
    assert r["partitions_run"] == 3 and r["counters"]["cache_misses"] == 10 and handler.requests == n + 10
    assert {o["prompt"]["version"] for o in v2.outputs("annotate").values()} == {"teacher_first_v2"}


@pytest.mark.parametrize("convention", ["original_pixels", "resized_pixels", "norm1000"])
def test_grounding_conventions_give_crops_holding_the_true_regions(data, tmp_path, function_endpoint, convention):
    url, handler = function_endpoint
    world = SyntheticWorld.load(data)
    grounder = SyntheticNoisyGrounder(world, convention=convention, noise=0.06, overflow=True, outside=True,
                                      degenerate=True)
    _serve_both(handler, SyntheticTruthTeacher(world), grounder)
    pipe = Pipeline(_config(tmp_path / convention, url, data / "pipeline_items_train.jsonl",
                            convention=Convention(convention)))
    pipe.run(["ingest", "ground", "crops"])
    rep = write_report(pipe, truth=data / "items.jsonl")
    c = rep["stages"]["ground"]["counters"]
    n_images = rep["images_per_item"]["originals"]["mean"] * 10
    assert c["boxes_outside"] == n_images and c["boxes_degenerate"] == n_images and c["boxes_clipped"] >= 1
    bq = rep["boxes"]
    assert bq["iou_mean"] > 0.6, bq  # a wrong mapping (e.g. resized read as original) lands far below
    assert bq["crops_square_rule_ok"] == bq["crops"]
    assert bq["regions_fully_inside_crop"] >= 0.95 * bq["regions_in_cropped_images"]
    # the convention read wrongly: the boxes no longer fit the regions
    if convention == "norm1000":
        wrong = Pipeline(_config(tmp_path / "wrong", url, data / "pipeline_items_train.jsonl",
                                 convention=Convention("original_pixels")))
        wrong.run(["ingest", "ground", "crops"])
        assert write_report(wrong, truth=data / "items.jsonl")["boxes"]["iou_mean"] < 0.2


def _bad_items(data: Path, tmp: Path) -> Path:
    rows = [json.loads(line) for line in (data / "pipeline_items_train.jsonl").read_text().splitlines()]
    (tmp / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    good = (data / rows[0]["images"][0]).read_bytes()
    (tmp / "truncated.png").write_bytes(good[: len(good) // 2])
    lines = [json.dumps(r) for r in rows[:6]]
    lines += [
        "{broken json",
        json.dumps(rows[0]),  # the same id again
        json.dumps({"images": rows[0]["images"]}),  # no id
        json.dumps({"id": "zero-images", "images": []}),
        json.dumps({"id": "fifty-images", "images": [str(data / rows[7]["images"][0])] * 50}),
        json.dumps({"id": "missing-files", "images": ["nowhere/a.png", "nowhere/b.png"]}),
        json.dumps({"id": "one-undecodable", "images": [str(tmp / "garbage.png"), *rows[8]["images"]]}),
        json.dumps({"id": "truncated-only", "images": [str(tmp / "truncated.png")]}),
    ]
    path = data / "bad_items.jsonl"  # relative image paths resolve against the items file's folder
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_inputs_are_counted_by_reason_and_never_stop_the_run(data, tmp_path, function_endpoint):
    import hashlib

    url, handler = function_endpoint
    world = SyntheticWorld.load(data)
    rows = [json.loads(line) for line in (data / "pipeline_items_train.jsonl").read_text().splitlines()]
    always_500, slow, flaky, garbage = (rows[i]["id"] for i in range(4))

    def teacher_fault(body, item, n):
        if item == always_500:
            return 500, "internal error"
        if item == slow:
            return 200, "{}", 1.5  # past the 0.4 s timeout, every time
        if item == flaky and n == 1:
            return 200, "{\"identifiers\": oops"  # malformed once: asked again with the error fed back
        if item == garbage:
            return 200, json.dumps({"identifiers": {"barcodes": "not a list"}})  # schema-invalid, always
        return None

    grounder_down = {hashlib.sha256((data / p).read_bytes()).hexdigest()[:12] for p in rows[4]["images"]}
    odd_image = hashlib.sha256((data / rows[5]["images"][0]).read_bytes()).hexdigest()[:12]

    def grounder_fault(body, key, n):
        if key in grounder_down:
            return 503, "overloaded"
        if key == odd_image:
            return 200, "I cannot see any boxes, sorry."
        return None

    _serve_both(handler, SyntheticTruthTeacher(world, fault=teacher_fault),
                SyntheticNoisyGrounder(world, fault=grounder_fault))
    items = _bad_items(data, tmp_path)
    pipe = Pipeline(_config(tmp_path / "w", url, items, teacher_kw={"timeout_s": 0.4, "http_retries": 1},
                            grounder_kw={"http_retries": 1}))
    reps = pipe.run()
    inp = pipe.input_report()
    assert inp["lines"] == 14 and inp["items"] == 11
    assert inp["skipped"] == {"broken_json": 1, "duplicate_id": 1, "no_id": 1}
    assert reps["ingest"]["fates"] == {"written": 8, "dropped:no_images": 1, "failed:no_usable_image": 2}
    c = reps["ingest"]["counters"]
    assert c["items_capped"] == 1 and c["images_capped"] == 42 and c["images_skipped:missing"] == 2
    assert c["images_skipped:undecodable"] == 2  # the garbage file and the truncated PNG
    fifty = pipe.outputs("ingest")["fifty-images"]
    assert len(fifty["images"]) == 8
    assert pipe.outputs("ingest")["one-undecodable"]["skipped_images"] == {"undecodable": 1}

    assert reps["annotate"]["fates"] == {"written": 5, "failed:http_500": 1, "failed:timeout": 1,
                                         "failed:malformed": 1, "dropped:upstream": 3}
    ac = reps["annotate"]["counters"]
    assert ac["format_retries"] >= 1 + 2 and ac["retries"] >= 2  # flaky once; garbage twice; 500 and timeout
    assert flaky in pipe.outputs("annotate")
    # grounding: one item's photos all refused -> that item fails; one photo answered without boxes -> its item
    # goes on with the other photos
    g = reps["ground"]
    assert g["fates"]["failed:http_503"] == 1 and g["fates"]["written"] == 7
    assert g["counters"]["images_grounding_failed:malformed"] == 1
    assert reps["crops"]["fates"]["written"] == 7
    # the 50-image item: its 8 identical photos collapse to one by pHash (the primary one)
    assert [im["role"] for im in pipe.outputs("crops")["fifty-images"]["images"]].count("original") == 1
    # every input line is either trained or skipped with its reason
    for chain in ("first", "better"):
        a = pipe.accounting(chain)
        assert a["balanced"] and a["input"] == 14, a
    assert pipe.accounting("better")["skipped"]["ground:failed:http_503"] == 1
    rep = write_report(pipe)
    md = (tmp_path / "w" / "report.md").read_text()
    assert "failed:timeout 1" in md and rep["stages"]["annotate"]["finished"] == 3
    # too_many_images=drop skips such items instead of capping them
    drop = Pipeline(_config(tmp_path / "drop", url, items, too_many_images="drop"))
    assert drop.run_stage("ingest")["fates"]["dropped:too_many_images"] == 1


def _cli(work: Path, url: str, items: Path) -> list[str]:
    return [sys.executable, "-m", "ecomvlm.data_modules.item_intel.cli", "item-intel", "all", "--no-finish",
            "--items", str(items), "--work", str(work), "--partition-size", "3",
            "--teacher-url", url, "--teacher-model", "teacher", "--teacher-concurrency", "1",
            "--grounder-url", url, "--grounder-model", "grounder", "--grounder-concurrency", "2",
            "--box-coords", "resized_pixels", "--crop-size", "64"]


def _normalised(pipe: Pipeline, stage: str) -> str:
    """A stage's outputs without the bookkeeping of how each answer was got (cache hit or miss, attempts)."""
    outs = {k: {f: v for f, v in o.items() if f not in ("cache", "attempts", "tokens")}
            for k, o in pipe.outputs(stage).items()}
    return json.dumps(outs, sort_keys=True).replace(str(pipe.work), "<work>")


def test_kill_minus_9_and_resume_give_the_same_output(data, tmp_path, function_endpoint):
    url, handler = function_endpoint
    world = SyntheticWorld.load(data)
    delay = {"s": 0.12}

    def slow(body, item, n):  # a slow teacher, so the kill lands mid-stage
        return (200, json.dumps(SyntheticTruthTeacher(world).answer(body)), delay["s"])

    teacher = SyntheticTruthTeacher(world, fault=slow)
    _serve_both(handler, teacher, SyntheticNoisyGrounder(world))
    items = data / "pipeline_items_train.jsonl"
    work = tmp_path / "killed"
    proc = subprocess.Popen(_cli(work, url, items), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        deadline = time.time() + 60
        part1 = work / "annotate" / "part-000001.partial.jsonl"
        while time.time() < deadline and proc.poll() is None:
            if (work / "annotate" / "part-000000.done.json").is_file() and part1.is_file() and \
                    part1.read_text().count("\n") >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (work / "annotate" / "part-000002.done.json").exists()
    done0 = (work / "annotate" / "part-000000.done.json").stat().st_mtime_ns
    asked_before = dict(teacher.calls)
    delay["s"] = 0.0
    rerun = subprocess.run(_cli(work, url, items), cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # finished partitions were not redone; items answered before the kill were not asked again
    assert (work / "annotate" / "part-000000.done.json").stat().st_mtime_ns == done0
    part0 = sorted(json.loads(line)["id"] for line in items.read_text().splitlines())[:3]
    assert all(asked_before.get(k) == 1 and teacher.calls[k] == 2 for k in part0)  # + its better label only
    assert not list(work.rglob("*.tmp")) and not list(work.rglob("*.partial.jsonl"))
    # the same output as a run that was never interrupted
    ref = Pipeline(_config(tmp_path / "ref", url, items, partition_size=3, crop=CropSettings(crop_size=64)))
    ref.run()
    resumed = Pipeline(_config(work, url, None, partition_size=3, crop=CropSettings(crop_size=64)))
    for stage in ("ingest", "annotate", "ground", "crops", "reannotate"):
        assert _normalised(resumed, stage) == _normalised(ref, stage), stage
    for crop in (tmp_path / "ref" / "crop_images").rglob("*.png"):
        assert (work / "crop_images" / crop.relative_to(tmp_path / "ref" / "crop_images")).read_bytes() == \
            crop.read_bytes()
    # the finishing job after an array: build + report from the finished stages
    from ecomvlm.cli import main

    assert main(["data", "item-intel", "build", "--work", str(work), "--labels", "better", "--no-shards"]) == 0
    assert json.loads((work / "llava" / "better_kept.json").read_text())
    assert main(["data", "item-intel", "report", "--work", str(work), "--truth", str(data / "items.jsonl")]) == 0
    assert json.loads((work / "report.json").read_text())["accounting"]["better"]["balanced"]


def test_demo_sets_with_print_codes_read_the_country_only_through_crops(tmp_path):
    """build_demo_sets (the demo's data: print_codes swatches, scripted teacher and grounder over loopback): the
    first labels never hold the country (its swatch is a speck in the full photo), the better labels hold it for
    every item with a back or label photo, and no label holds a fact the stickers do not print."""
    from ecomvlm.data_modules.item_intel.demo import build_demo_sets

    got = build_demo_sets(tmp_path, items=16, eval_items=4, encoder_model=None)
    assert got["summary"]["label_f1"]["better"] > got["summary"]["label_f1"]["first"]
    rows = {json.loads(line)["item_id"]: json.loads(line)
            for line in (tmp_path / "item_intel_data" / "items.jsonl").read_text().splitlines()}
    with_print = 0
    for kind in ("first", "better"):
        for rec in json.loads(Path(got["llava_json"][kind]).read_text()):
            row = rows[rec["id"].removesuffix("-ii")]
            answer = json.loads(rec["conversations"][-1]["value"])
            has_print = len(row["images"]) > 1  # front, then back, then label
            size = answer["attributes"].get("size")
            country = answer.get("origin_production", {}).get("country_of_origin")
            assert "identifiers" not in answer and "regulatory_safety" not in answer
            assert size is None
            if kind == "first":
                assert country is None, rec["id"]
            elif has_print:
                with_print += 1
                assert country == row["country"], rec["id"]
                assert any("crop_images" in p for p in rec["image"]), rec["image"]  # a crop survived dedup
    assert with_print >= 5


class RespondEngine:
    """``vllm.LLM.chat``'s contract answered by a scripted endpoint's ``respond(body)`` (the same stand-ins as over
    HTTP); records each call's size."""

    def __init__(self, model: str, respond) -> None:
        self.model, self.respond, self.calls = model, respond, []

    def chat(self, convs, params):
        self.calls.append(len(convs))
        texts = []
        for conv in convs:
            body = {"model": self.model, "messages": conv, "max_tokens": params["max_tokens"]}
            if params["json_schema"] is not None:
                body["response_format"] = {"type": "json_schema", "json_schema": {"schema": params["json_schema"]}}
            status, content = self.respond(body)[:2]
            assert status == 200, content
            texts.append(content)
        return texts, [0.0] * len(convs), [[10, 5]] * len(convs)


def test_offline_engines_label_like_the_endpoints(data, tmp_path, function_endpoint, monkeypatch):
    """--teacher-engine vllm / --grounder-engine vllm (the shared engine client of eval/engine_client.py): the same
    labels as over HTTP, the requests gathered into engine calls, the engines sized from the CLI."""
    from ecomvlm.data_modules.item_intel.cli import main as ii_main
    from ecomvlm.eval import engine_client

    url, handler = function_endpoint
    world = SyntheticWorld.load(data)
    teacher, grounder = SyntheticTruthTeacher(world, view_px=96), SyntheticNoisyGrounder(world,
                                                                                         convention="resized_pixels")
    _serve_both(handler, teacher, grounder)
    items = data / "pipeline_items_train.jsonl"
    over_http = Pipeline(_config(tmp_path / "http", url, items))
    over_http.run()

    engines = {"teacher-dir": RespondEngine("teacher", teacher), "grounder-dir": RespondEngine("grounder", grounder)}
    started = {}

    def shared_engine(model, *, python=None, max_images=1, engine=None):
        started[model] = (max_images, engine)
        return engines[model]

    monkeypatch.setattr(engine_client, "shared_engine", shared_engine)
    work = tmp_path / "engine"
    argv = ["item-intel", "all", "--items", str(items), "--work", str(work), "--partition-size", "4",
            "--teacher-engine", "vllm", "--teacher-model", "teacher-dir", "--teacher-concurrency", "8",
            "--grounder-engine", "vllm", "--grounder-model", "grounder-dir", "--crop-size", "64",
            "--vllm-engine-arg", "max_model_len=16384", "--no-finish"]
    assert ii_main(argv) == 0
    assert started == {"teacher-dir": (16, {"max_model_len": 16384}), "grounder-dir": (1, {"max_model_len": 16384})}
    engine_pipe = Pipeline(_config(work, url, None))
    for stage in ("annotate", "reannotate"):
        got, want = engine_pipe.outputs(stage), over_http.outputs(stage)
        assert got.keys() == want.keys() and len(got) == 10
        assert [got[k]["label"] for k in sorted(got)] == [want[k]["label"] for k in sorted(want)], stage
    # batched: 10 items per stage in calls of at most --teacher-concurrency, never one call per item
    assert max(engines["teacher-dir"].calls) <= 8 and len(engines["teacher-dir"].calls) < 20

    with pytest.raises(ValueError, match="no --teacher-url"):
        ii_main(["item-intel", "annotate", "--items", str(items), "--work", str(tmp_path / "x"),
                 "--teacher-engine", "vllm", "--teacher-model", "m", "--teacher-url", "http://x:1/v1"])
