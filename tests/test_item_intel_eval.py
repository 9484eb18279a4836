"""Item-intelligence inference strategies in `ecomvlm eval` (issue 15; paper Table 3 rows 28, 29, 40, 41): primary
image only, all images, all + crops (boxes from a boxes file or a grounding endpoint), pan & scan. The model is a
scripted OpenAI-compatible endpoint on loopback that records the images it is sent (the code under test is the real
runner, backend client, crop and dedup code); results carry the strategy, and the tables show one row each."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from ecomvlm.data_modules.item_intel.boxes import Convention, CropSettings
from ecomvlm.data_modules.item_intel.scripted import SyntheticNoisyGrounder, SyntheticWorld
from ecomvlm.data_modules.item_intel.stages import Endpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from ecomvlm.data_modules.item_intel.demo import write_pipeline_items
    from ecomvlm.data_modules.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("ii_eval")
    synthesize(SynthConfig(out=out, n=1, n_eval=6, seed=4, image_size=192, small_print=0.035, regions=True))
    write_pipeline_items(out)
    return out


class Recorder:
    """The 'model': answers each request with a valid item-intelligence JSON and records the image sizes sent."""

    def __init__(self):
        self.sizes: list[list[tuple[int, int]]] = []

    def __call__(self, body):
        sizes = []
        for msg in body["messages"]:
            for part in msg["content"] if isinstance(msg["content"], list) else []:
                if part.get("type") == "image_url":
                    data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                    sizes.append(Image.open(io.BytesIO(data)).size)
        self.sizes.append(sizes)
        return 200, json.dumps({"attributes": {"colors": ["Red"] * min(3, len(sizes))}})


def _serve(handler, data: Path) -> Recorder:
    rec = Recorder()
    grounder = SyntheticNoisyGrounder(SyntheticWorld.load(data), convention="norm1000", noise=0.05)
    handler.respond = lambda body: grounder(body) if body["model"] == "grounder" else rec(body)
    return rec


def _boxes_file(data: Path, url: str, tmp: Path) -> Path:
    from ecomvlm.data_modules.item_intel.inference import write_boxes_file
    from ecomvlm.data_modules.item_intel.pipeline import Pipeline, PipelineConfig

    pipe = Pipeline(PipelineConfig(work=tmp / "ground", items=data / "pipeline_items_eval.jsonl",
                                   grounder=Endpoint(url, "grounder", concurrency=4), convention=Convention("norm1000"),
                                   crop=CropSettings(crop_size=64)))
    pipe.run(["ingest", "ground"])
    out = tmp / "boxes.jsonl"
    assert write_boxes_file(pipe.outputs("ground"), out, data) == 6
    return out


def test_strategies_send_the_right_images_and_are_recorded(data, tmp_path, function_endpoint):
    from ecomvlm.eval.backends import OpenAIBackend
    from ecomvlm.eval.report import tables_csv, tables_markdown
    from ecomvlm.eval.runner import evaluate

    url, handler = function_endpoint
    rec = _serve(handler, data)
    boxes = _boxes_file(data, url, tmp_path)
    lines = [json.loads(line) for line in boxes.read_text().splitlines()]
    assert all(not Path(im["image"]).is_absolute() for line in lines for im in line["images"])
    n_orig = [len(json.loads(line)["images"]) for line in (data / "eval" / "item_intel.jsonl").read_text().splitlines()]
    backend = OpenAIBackend(url, "model", concurrency=1)
    crop = CropSettings(crop_size=64)
    res = {}
    for bench in ("item_intel:primary", "item_intel", "item_intel:crops"):
        rec.sizes.clear()
        res.update(evaluate(backend, "m", [bench], tmp_path / "out", data_dir=data, item_intel_boxes=boxes,
                            crop=crop, json_retries=0, warmup=False))
        sent = list(rec.sizes)
        if bench == "item_intel:primary":
            assert [len(s) for s in sent] == [1] * 6
        elif bench == "item_intel":
            assert [len(s) for s in sent] == n_orig
        else:
            assert all(len(s) > n for s, n in zip(sent, n_orig) if n > 1)  # photos with print got a crop
            assert all(sz == (64, 64) for s, n in zip(sent, n_orig) for sz in s[n:])  # crops at the encoder size
            assert all(sz == (192, 192) for s, n in zip(sent, n_orig) for sz in s[:n])
    inf = {b: m["inference"] for b, m in res.items()}
    assert inf["item_intel:primary"]["strategy"] == "primary" and inf["item_intel:primary"]["images_per_item"]["max"] \
        == 1
    assert inf["item_intel"]["strategy"] == "all" and inf["item_intel"]["images_per_item"]["max"] == max(n_orig)
    c = inf["item_intel:crops"]
    assert c["strategy"] == "crops" and c["boxes"] == "file" and c["crop_size"] == 64 and c["crops_kept"] > 0
    assert c["images_per_item"]["mean"] > inf["item_intel"]["images_per_item"]["mean"]
    assert (tmp_path / "out" / "m" / "item_intel-crops.json").is_file()
    # one Table-3 row per strategy, in the paper's order, named as the paper names them
    md = tables_markdown({"m": res})
    table3 = md.split("Table 3", 1)[1].split("Table 4", 1)[0]
    rows = [line.split("|")[1].strip() for line in table3.splitlines() if line.startswith("| m ")]
    assert rows == ["m *primary image only*", "m", "m *image crops*"]
    assert "image crops" in tables_csv({"m": res})
    # a pan & scan row (row 40) goes between all images and crops, as in the paper
    from ecomvlm.eval.report import item_intel_rows

    names = [n for n, _ in item_intel_rows({"m": {**res, "item_intel:pan_scan": res["item_intel"]}})]
    assert names == ["m *primary image only*", "m", "m *pan&scan*", "m *image crops*"]

    # boxes from a grounding endpoint instead of the file: the same crops (same grounder, same rules)
    rec.sizes.clear()
    ground = evaluate(backend, "g", ["item_intel:crops"], tmp_path / "out", data_dir=data,
                      grounder=Endpoint(url, "grounder"), grounding_convention=Convention("norm1000"), crop=crop,
                      json_retries=0, warmup=False)["item_intel:crops"]["inference"]
    assert ground["boxes"] == "endpoint:grounder" and ground["crops_kept"] == c["crops_kept"]
    assert ground["grounding"]["requests"] >= sum(n_orig)


def test_crops_and_pan_scan_say_what_they_need(data, tmp_path, function_endpoint):
    from ecomvlm.eval.backends import OpenAIBackend
    from ecomvlm.eval.cli import pan_scan_backend
    from ecomvlm.eval.runner import evaluate

    url, handler = function_endpoint
    _serve(handler, data)
    backend = OpenAIBackend(url, "model")
    with pytest.raises(ValueError, match="--item-intel-boxes"):
        evaluate(backend, "m", ["item_intel:crops"], tmp_path, data_dir=data, warmup=False)
    with pytest.raises(ValueError, match="pan & scan"):
        evaluate(backend, "m", ["item_intel:pan_scan"], tmp_path, data_dir=data, warmup=False)
    with pytest.raises(ValueError, match="mm-processor-kwargs"):
        pan_scan_backend("openai", "model")
    bad = tmp_path / "bad_boxes.jsonl"
    bad.write_text('{"id": "x", "images": [{"boxes": []}]}\n')
    with pytest.raises(ValueError, match="bad_boxes.jsonl:1"):
        evaluate(backend, "m", ["item_intel:crops"], tmp_path, data_dir=data, item_intel_boxes=bad, warmup=False)


def test_eval_cli_runs_strategies_and_prints_table3_rows(data, tmp_path, function_endpoint, capsys):
    from ecomvlm.cli import main

    url, handler = function_endpoint
    _serve(handler, data)
    boxes = _boxes_file(data, url, tmp_path)
    rc = main(["eval", "--backend", "openai", "--server-url", url, "--model", "ours=model", "--data", str(data),
               "--benchmarks", "item_intel", "--item-intel-strategies", "primary,all,crops", "--item-intel-boxes",
               str(boxes), "--crop-size", "64", "--out", str(tmp_path / "eval"), "--no-plot", "--no-warmup",
               "--json-retries", "0"])
    assert rc == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["ours"]
    assert set(results) == {"item_intel:primary", "item_intel", "item_intel:crops"}
    assert results["item_intel:crops"]["inference"]["crop_size"] == 64
    out = capsys.readouterr().out
    assert "| ours *primary image only* |" in out and "| ours *image crops* |" in out
