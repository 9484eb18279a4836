"""Curation stages one at a time: ingest shapes (JSONL, JSON list, parquet, aliases), cleaning rules by reason,
main-image checks (local and URL), caption/verify failures against a loopback endpoint, prompt versioning."""

from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from pathlib import Path

import pytest

from ecomvlm.data_modules.curation import clean as cl
from ecomvlm.data_modules.curation.endpoints import Backends, EndpointSpec, drive
from ecomvlm.data_modules.curation.images import ImageRules, inspect_image
from ecomvlm.data_modules.curation.listings import ingest, parse_aspects, read_jsonl
from ecomvlm.data_modules.curation.pipeline import (
    CurateConfig,
    image_process,
    run_clean,
    run_image,
    run_ingest,
    split_caption,
    verdict_problem,
)
from ecomvlm.data_modules.curation.prompts import load_prompt
from ecomvlm.data_modules.partitions import Fate


def _png(size=(96, 96), colour=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def test_ingest_every_shape_and_counts_bad_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text("\n".join([
        json.dumps({"itemId": "1", "name": "Red shirt", "categoryPath": ["Clothing", "Shirt"],
                    "itemSpecifics": "Colour: Red; Size: M", "pictures": "img/1.png|img/1b.png"}),
        "{broken",
        json.dumps(["not", "an", "object"]),
        json.dumps({"title": "no id here"}),
        json.dumps({"id": "1", "title": "the same id again"}),
        json.dumps({"sku": "2", "title": "Mug", "aspects": [{"name": "Colour", "value": "White"}],
                    "images": [{"url": "img/2.png"}], "main_image": "img/2main.png"}),
    ]) + "\n")
    (tmp_path / "b.json").write_text(json.dumps([{"listing_id": "3", "title": "Bag",
                                                  "aspects": {"Material": ["Leather", "Canvas"]},
                                                  "image_urls": ["img/3.png"]}]))
    pq.write_table(pa.table({"id": ["4", "5"], "title": ["Toy", "Box"], "aspects": ['{"Colour": "Blue"}', ""],
                             "images": [["img/4.png"], []]}), tmp_path / "c.parquet")
    rep = ingest([tmp_path], tmp_path / "out" / "listings.jsonl")
    assert rep["fates"] == {"written": 5, "dropped:broken_json": 1, "dropped:not_an_object": 1, "dropped:no_id": 1,
                            "dropped:duplicate_id": 1}
    assert rep["rows"] == sum(rep["fates"].values()) == 9
    recs = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "listings.jsonl")}
    assert recs["1"]["category"] == "Clothing > Shirt" and recs["1"]["aspects"] == [["Colour", "Red"],
                                                                                     ["Size", "M"]]
    assert recs["1"]["images"] == ["img/1.png", "img/1b.png"]
    assert recs["2"]["images"][0] == "img/2main.png"  # the named main image goes first
    assert recs["3"]["aspects"] == [["Material", ["Leather", "Canvas"]]]
    assert recs["4"]["aspects"] == [["Colour", "Blue"]] and recs["5"]["images"] == []
    assert parse_aspects([["Brand", "Acme"], {"localizedName": "Size", "value": "L"}]) == [("Brand", "Acme"),
                                                                                          ("Size", "L")]
    with pytest.raises(FileNotFoundError, match="no such file"):
        ingest([tmp_path / "nope.jsonl"], tmp_path / "x.jsonl")


def test_clean_rules_count_every_change_and_drop():
    c: Counter = Counter()
    kept = cl.clean_aspects([
        ["COLOR", "RED"], ["Volume", "500ML"], ["size", "1,5 litres"], ["Screen", '10"'], ["Brand", "Unbranded"],
        ["MPN", "ab-12X"], ["Material", "n/a"], ["Colour", "Blue"], ["colour", "red"],
        ["Notes", "call +44 20 7946 0958"], ["Style", "see www.shop.com"], ["Pattern", "STRIPED"], ["", "x"],
        ["Type", "!!!"], ["Fit", ""],
        ["Features", ["Waterproof", "N/A", "Waterproof"]]], "Red shirt", c)
    assert kept == [["Colour", "Red"], ["Volume", "500 ml"], ["Size", "1.5 L"], ["Screen", "10 in"],
                    ["MPN", "ab-12X"], ["Pattern", "Striped"], ["Features", "Waterproof"]]
    assert c["aspects_in"] == 16 and c["aspects_kept"] == 7
    dropped = {k.split(":", 1)[1]: v for k, v in c.items() if k.startswith("aspect_dropped:")}
    assert dropped == {"placeholder": 2, "conflict": 1, "duplicate": 1, "absurd": 3, "unnamed": 1, "empty": 1}
    assert sum(dropped.values()) + c["aspects_kept"] == c["aspects_in"]
    assert c["normalised:unit"] == 3 and c["normalised:case"] == 3  # RED, red (then a duplicate), STRIPED
    assert cl.clean_text("<p>Red&nbsp;<b>shirt</b></p>\u200b  <script>x()</script>") == "Red shirt"
    assert cl.detect_non_english("Herren T-Shirt schwarz neu mit Etikett Größe M") == "de"
    assert cl.detect_non_english("Красная футболка мужская новая") == "non-latin"
    assert cl.detect_non_english("Men's red cotton t-shirt, new with tags") is None
    out, reason, _ = cl.clean_listing({"id": "1", "title": "Rote Damen Jacke neu mit Etikett", "category": "",
                                       "aspects": [["Farbe", "Rot"]], "images": []}, Counter())
    assert out is None and reason == "non_english"
    out, reason, _ = cl.clean_listing({"id": "1", "title": "Jacket", "category": "", "aspects": [["Colour", "N/A"]],
                                       "images": []}, Counter())
    assert out is None and reason == "no_usable_aspects"


def test_main_image_checks_local_and_url(tmp_path, function_endpoint):
    url, handler = function_endpoint
    good = _png()

    # a tiny file server on the same loopback handler class: GET answers from a dict
    files = {"/ok.png": (200, good), "/gone.png": (404, b""), "/broken.png": (200, b"GIF89a nope")}

    def do_get(self):  # noqa: N802
        status, data = files.get(self.path, (500, b""))
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    handler.do_GET = do_get
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(good)
    (tmp_path / "imgs" / "wide.png").write_bytes(_png((800, 100)))
    recs = [{"id": i, "title": "t", "category": "c", "aspects": [["Colour", "Red"]], "split": "train", "images": im}
            for i, im in [("a", ["imgs/a.png"]), ("b", [f"{url}/ok.png"]), ("c", [f"{url}/gone.png"]),
                          ("d", [f"{url}/broken.png"]), ("e", ["imgs/wide.png"]), ("f", [f"{url}/boom.png"])]]
    runtime = {"image_root": str(tmp_path), "out_dir": str(tmp_path / "work"), "fetch_timeout_s": 5.0,
               "fetch_retries": 1}
    fates = {f.key: f for f in image_process(recs, {"rules": ImageRules().asdict(), "runtime": runtime})}
    assert fates["a"].fate == fates["b"].fate == "written"
    assert fates["b"].output["image"].startswith(str(tmp_path / "work" / "images"))
    assert Path(fates["b"].output["image"]).read_bytes() == good
    assert fates["b"].output["image_sha256"] == fates["a"].output["image_sha256"]
    assert fates["c"].fate == "dropped:image_missing"
    assert fates["d"].fate == "dropped:image_undecodable"
    assert fates["e"].fate == "dropped:image_bad_shape"
    assert fates["f"].fate == "failed:image_fetch_http_500"
    info, reason, _ = inspect_image(_png((40, 40)), ImageRules(min_side=64))
    assert info is None and reason == "image_too_small"


def test_endpoint_failures_are_counted_by_reason_and_never_stop_a_partition(function_endpoint, monkeypatch):
    url, handler = function_endpoint
    answers = {"ok": (200, "fine"), "bad": (400, "bad request"), "down": (503, "overloaded"),
               "json": (200, "not json at all"), "late": (200, "late", 2.0)}

    def respond(body):
        return answers[body["messages"][0]["content"].split()[0]]  # the first turn: format retries append turns

    handler.respond = respond
    monkeypatch.setenv("CURATION_TEST_KEY", "sk-x")
    spec = EndpointSpec(base_url=url, model="m", api_key_env="CURATION_TEST_KEY", concurrency=3, timeout_s=0.5,
                        http_retries=1, backoff_s=0.01, format_retries=1)
    assert "sk-x" not in repr(spec) and "sk-x" not in json.dumps(spec.public())

    async def work(backends, rec):
        b = backends["m"]
        msgs = [{"role": "user", "content": f"{rec['id']} please"}]
        ans = await (b.json({"messages": msgs, "schema": {"type": "object"}, "max_tokens": 8, "temperature": 0})
                     if rec["id"] == "json" else b.text({"messages": msgs, "max_tokens": 8, "temperature": 0}))
        if rec["id"] == "boom":
            raise KeyError("a bug in one listing")
        return Fate.written(rec["id"], ans.value) if ans.error is None else Fate.failed(rec["id"], ans.error)

    counters: Counter = Counter()
    recs = [{"id": k} for k in ["ok", "bad", "down", "json", "late", "boom"]]
    answers["boom"] = (200, "x")
    fates = {f.key: f.fate for f in drive(recs, lambda: Backends({"m": spec}), work, 3, counters)}
    assert fates == {"ok": "written", "bad": "failed:http_400", "down": "failed:http_503",
                     "json": "failed:malformed", "late": "failed:timeout", "boom": "failed:internal"}
    assert counters["m:retries"] >= 2 and counters["m:failed:http_503"] == 1


def test_verifier_answers_are_checked_and_captions_split():
    names = ["Colour", "Brand"]
    assert verdict_problem({"aspects": [{"name": "colour", "verdict": "visible"},
                                        {"name": "Brand", "verdict": "unsure"}]}, names) is None
    assert "2 verdicts" in verdict_problem({"aspects": [{"name": "Colour", "verdict": "visible"}]}, names)
    assert "Brand" in verdict_problem({"aspects": [{"name": "Colour", "verdict": "visible"},
                                                   {"name": "Size", "verdict": "visible"}]}, names)
    assert "verdict" in verdict_problem({"aspects": [{"name": "Colour", "verdict": "yes"},
                                                     {"name": "Brand", "verdict": "visible"}]}, names)
    assert split_caption("A red mug.\nVisible text: ACME | 350 ml") == ("A red mug.", "ACME | 350 ml")
    assert split_caption("A red mug.\n**Visible text:** none") == ("A red mug.", "")


def test_prompt_versions(tmp_path):
    p = load_prompt("verify")
    assert p.meta()["version"] == "v1" and p.tag.startswith("verify@v1:")
    edited = tmp_path / "verify_v2.yaml"
    edited.write_text(Path(p.path).read_text().replace("version: v1", "version: v2").replace("strict", "careful"))
    p2 = load_prompt(edited)
    assert p2.version == "v2" and p2.sha256 != p.sha256
    with pytest.raises(ValueError, match="placeholder"):
        p.render(caption="x")  # the stage must fill every placeholder
    with pytest.raises(FileNotFoundError, match="built-in prompts"):
        load_prompt("caption_v9")


def test_clean_and_image_stages_resume_and_redo_on_changed_rules(tmp_path):
    raw = tmp_path / "raw.jsonl"
    (tmp_path / "i.png").write_bytes(_png())
    rows = [{"id": f"{i:03d}", "title": f"Red shirt {i % 5}", "aspects": {"Colour": "Red"}, "images": ["i.png"]}
            for i in range(30)]
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = CurateConfig(work=tmp_path / "w", inputs=[raw], partition_size=8)
    run_ingest(cfg)
    assert run_clean(cfg)["partitions_run"] == 4
    rep = run_image(cfg)
    # 5 distinct listings (same title, aspects and image): the first id of each wins
    assert rep["fates"] == {"written": 5, "dropped:duplicate_listing": 25}
    assert run_clean(cfg)["partitions_run"] == 0
    cfg.keep_non_english = True  # a changed rule re-does every partition of that stage
    assert run_clean(cfg)["partitions_run"] == 4
    cfg.image_rules = ImageRules(min_side=128)
    assert run_image(cfg)["fates"] == {"dropped:image_too_small": 5, "dropped:duplicate_listing": 25}


def test_async_loop_is_closed_after_drive():
    # drive() owns its event loop: nothing is left running for the next partition of the worker
    fates = list(drive([{"id": "a"}], lambda: Backends({}), lambda ctx, r: _written(r), 1))
    assert [f.fate for f in fates] == ["written"]
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


async def _written(rec):
    return Fate.written(rec["id"], 1)
