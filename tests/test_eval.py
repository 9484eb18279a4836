"""E-commerce scorers on hand-made predictions, and the HF-backend runner on an exported model."""

import json

import pytest

from ecomvlm.eval.scoring import aspect_match, classify, dae_scores, normalize, parse_attributes, score_records


@pytest.mark.parametrize("pred, answer, aliases, ok", [
    ("Red", "Red", [], True), ("red.", "Red", [], True), ("  RED  ", "Red", [], True),
    ("Gray", "Grey", ["gray"], True), ("tee", "T-Shirt", ["tee"], True), ("t shirt", "T-Shirt", [], True),
    ("500 Milliliters", "500 ml", [], True), ("Red colour", "Red", [], True), ("Blue", "Red", [], False),
    ("red and blue and green stripes", "Red", [], False), ("", "Red", [], False),
])
def test_aspect_string_match(pred, answer, aliases, ok):
    assert aspect_match(pred, answer, aliases) is ok


def test_normalize_units_and_punctuation():
    assert normalize("1 Litre!") == "1l" and normalize("EU-42") == "eu 42" and normalize("Café") == "cafe"


def test_classification_maps_free_text_to_one_class():
    classes = ["Crew Neck", "V-Neck", "Collar"]
    assert classify("v-neck", classes) == "V-Neck"
    assert classify("It has a crew neck.", classes) == "Crew Neck"
    assert classify("crew neck or v-neck", classes) is None  # ambiguous answers do not score
    assert classify("Short Sleeve", ["Short Sleeve", "Long Sleeve"]) == "Short Sleeve"


def test_dae_parses_json_and_key_value_lines():
    ref = {"Category": "Mug", "Colour": "Red", "Brand": "Acme", "Size": "350 ml"}
    assert parse_attributes('```json\n{"Colour": "Red", "Brand": ["Acme"]}\n```') == {"Colour": "Red",
                                                                                     "Brand": ["Acme"]}
    s = dae_scores("Category: Mug\nColour: Blue\nBrand: ACME\nMaterial: Ceramic", ref)
    assert s["precision"] == pytest.approx(2 / 4) and s["recall"] == pytest.approx(2 / 4)
    assert s["f1"] == pytest.approx(0.5)
    assert dae_scores("I cannot tell.", ref) is None


@pytest.mark.parametrize("pred, ref, p, r", [
    ('{"Brand": ["Nike", "Adidas"]}', {"Brand": "Nike"}, 1.0, 1.0),  # a list states each of its values
    ("Brand: Nike, Adidas", {"Brand": "Nike"}, 1.0, 1.0),  # so does a comma-separated line
    ('{"Brand": ["Puma", "Adidas"]}', {"Brand": "Nike"}, 0.0, 0.0),
    ('{"Colour": "Blue"}', {"Colour": ["Red", "Blue"]}, 1.0, 1.0),  # a reference may list several values
    ('{"Size": "1,000 ml", "Brand": "Acme"}', {"Size": "1,000 ml", "Colour": "Red"}, 0.5, 0.5),  # commas in a value
])
def test_dae_list_values(pred, ref, p, r):
    s = dae_scores(pred, ref)
    assert (s["precision"], s["recall"]) == (pytest.approx(p), pytest.approx(r))


def test_score_records_counts_unparsed_and_aggregates():
    recs = [{"answer": {"Colour": "Red"}}, {"answer": {"Colour": "Blue"}}]
    m = score_records("dae", recs, ["Colour: Red", "no idea"])
    assert m["unparsed"] == 1 and m["f1"] == pytest.approx(50.0)  # the unparsed one scores 0, not dropped
    recs = [{"answer": "Red", "aspect": "Colour"}, {"answer": "Acme", "aspect": "Brand"}]
    m = score_records("aspect_general", recs, ["red", "Zenith"])
    assert m["accuracy"] == 50.0 and m["per_aspect"] == {"Brand": 0.0, "Colour": 100.0}
    with pytest.raises(ValueError, match="2 records but 1 predictions"):
        score_records("aspect_general", recs, ["x"])


def test_runner_on_an_exported_model(megatron_single, tiny_tokenizers, synth_data, tmp_path):
    import torch

    from ecomvlm.cli import main
    from ecomvlm.eval.public import score_mme
    from ecomvlm.recipes.config import model_config
    from ecomvlm.recipes.models.hf_export import export_hf
    from ecomvlm.recipes.models.parallel import ParallelConfig
    from ecomvlm.recipes.models.registry import resolve
    from ecomvlm.recipes.models.sharding import gather_full_state
    from ecomvlm.recipes.models.vlm import build_vlm

    tok = tiny_tokenizers["chatml"]
    cfg = resolve(model_config(["model=tiny_siglip_qwen3", "model.encoder.image_size=32"]),
                  image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    hf = export_hf(gather_full_state(build_vlm(cfg, ParallelConfig())), cfg, tok, tmp_path / "tiny",
                   dtype=torch.float32)
    # a public benchmark in its HF schema (MME pairs), read from a local save_to_disk folder
    import datasets
    from PIL import Image

    rows = [{"question_id": f"color/{i // 2}.png", "question": f"Is it red {i}? Please answer yes or no.",
             "answer": "Yes" if i % 2 else "No", "category": "color", "image": Image.new("RGB", (16, 16), "red")}
            for i in range(4)]
    ds = datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "mme"))
    out = tmp_path / "out"
    assert main(["eval", "--model", f"tiny={hf}", "--data", str(synth_data), "--out", str(out), "--limit", "3",
                 "--max-new-tokens", "4", "--benchmarks", "aspect_general,dae,item_intel,mme",
                 "--public-data", f"mme={tmp_path / 'mme'}", "--json-retries", "1",
                 "--item-intel-max-new-tokens", "24"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["tiny"]) == {"aspect_general", "dae", "item_intel", "mme"}
    assert res["tiny"]["aspect_general"]["n"] == 3
    per = json.loads((out / "tiny" / "dae.json").read_text())
    assert len(per["predictions"]) == 3 and per["metrics"]["sec_per_example"] > 0
    assert per["backend_info"]["engine"] == "transformers" and per["metrics"]["timing"]["warm"] is True
    assert per["metrics"]["timing"]["hardware"].startswith("CPU: ") and per["metrics"]["examples_per_s"] > 0
    ii = res["tiny"]["item_intel"]
    # a random model writes no JSON: every item is counted (and was re-generated once), none dropped
    assert ii["n"] == 3 and ii["n_scored"] == 3 and ii["judge"] == "rules-v1"
    assert ii["unparsed"] == 3 and ii["model_retries"] == 3 and ii["f1"] == 0.0
    assert len(json.loads((out / "tiny" / "item_intel.json").read_text())["verdicts"]) == 3
    assert res["tiny"]["mme"]["n"] == 4  # --limit 3 kept the pair
    # the reported score is the scorer's on the saved predictions (rows in the saved order)
    mme = json.loads((out / "tiny" / "mme.json").read_text())["predictions"]
    recs = [{"answer": r["answer"], "doc": {"category": "color", "question_id": r["id"].split("|")[0]}} for r in mme]
    assert res["tiny"]["mme"]["perception"] == score_mme(recs, [r["prediction"] for r in mme])["perception"]
    table = (out / "table.md").read_text()
    assert "| tiny |" in table and all(f"Table {i}" in table for i in (1, 2, 3, 4))
    assert "MME (Perc.)" in table and (out / "results.png").stat().st_size > 1000
    # merge: an earlier results.json joins the report under its own label, without re-running anything
    prev = tmp_path / "prev.json"
    prev.write_text(json.dumps({"other": res["tiny"]}))
    assert main(["eval", "--merge", str(prev), "--merge", str(out / "results.json"), "--out", str(tmp_path / "both"),
                 "--no-plot"]) == 0
    both = (tmp_path / "both" / "table.md").read_text()
    assert "| other |" in both and "| tiny |" in both
    assert main(["eval", "--model", str(hf), "--data", str(synth_data), "--benchmarks", "mmbench-cn"]) == 2
    assert main(["eval", "--model", str(hf), "--benchmarks", "item_intel", "--judge", "llm"]) == 2


class ScriptedBackend:
    """A backend double: answers from `answer(prompt, temperature)`, each prompt `delay_s` of latency, every call
    recorded (what the runner sends: prompts, image counts, sampling, system turn)."""

    name = "scripted"

    def __init__(self, answer, batch_size=2, delay_s=0.01):
        self.answer, self.batch_size, self.delay_s = answer, batch_size, delay_s
        self.calls, self.last_latencies = [], []

    @property
    def call_size(self):
        return 4

    def describe(self):
        return {"engine": "scripted", "device": "cpu"}

    def generate(self, prompts, images, *, max_new_tokens=64, json_schema=None, temperature=0.0, seed=0, system=None):
        import time

        self.calls.append({"prompts": list(prompts), "n_images": [len(i) for i in images], "temperature": temperature,
                           "system": system, "schema": json_schema is not None})
        time.sleep(self.delay_s * len(prompts))
        self.last_latencies = [self.delay_s * (i + 1) for i in range(len(prompts))]
        return [self.answer(p, temperature) for p in prompts]


def _item_intel_data(tmp_path, n=5):
    from PIL import Image

    (tmp_path / "eval").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "im.png")
    ref = {"attributes": {"brand_name": "Acme", "colors": ["Red"]}}
    rows = [{"id": f"it{i}", "prompt": f"Item {i}: extract the facts as JSON.", "images": ["im.png", "im.png"],
             "answer": ref} for i in range(n)]
    (tmp_path / "eval" / "item_intel.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path


def test_table4_latency_is_warm_and_includes_json_regeneration(tmp_path):
    """One warm-up batch is run untimed; an answer that needed a JSON re-generation is charged both passes; the
    throughput is examples per second of generation wall time; backend and hardware are recorded."""
    from ecomvlm.eval.report import tables_csv, tables_markdown
    from ecomvlm.eval.runner import evaluate

    good = json.dumps({"attributes": {"brand_name": "Acme", "colors": ["Red"]}})
    backend = ScriptedBackend(lambda p, t: "not json" if "Item 3" in p and t == 0.0 else good)
    data = _item_intel_data(tmp_path / "data")
    res = evaluate(backend, "m", ["item_intel", "item_intel"], tmp_path / "out", data_dir=data, json_retries=2,
                   hardware_note="1x test accelerator")
    warm, timed, regen = backend.calls[0], backend.calls[1:3], backend.calls[3]
    assert warm["prompts"] == [f"Item {i}: extract the facts as JSON." for i in range(2)]  # one batch, untimed
    assert [len(c["prompts"]) for c in timed] == [4, 1] and regen["prompts"] == ["Item 3: extract the facts as JSON."]
    assert regen["temperature"] == 0.7 and all(c["schema"] and c["n_images"][0] == 2 for c in backend.calls)
    m = res["item_intel"]
    t = m["timing"]
    # latencies: chunk [0.01, 0.02, 0.03, 0.04] + [0.01]; item 3 adds its re-generation's 0.01
    assert m["sec_per_example"] == pytest.approx((0.01 + 0.02 + 0.03 + 0.05 + 0.01) / 5)
    assert t["warm"] is True and t["warmup_s"] > 0 and t["n_timed"] == 5 and t["regenerated"] == 1
    assert t["wall_s"] >= 0.06 and m["examples_per_s"] == pytest.approx(5 / t["wall_s"])
    assert t["backend"] == "scripted" and t["hardware"] == "1x test accelerator" and t["batch"] == 2
    assert m["f1"] == pytest.approx(100.0) and m["model_retries"] == 1
    assert len(backend.calls) == 7  # the second run of the set is not warmed up again: 2 + 1 more calls
    saved = json.loads((tmp_path / "out" / "m" / "item_intel.json").read_text())
    assert saved["backend_info"] == {"engine": "scripted", "device": "cpu"} and saved["host"]["cpu_cores"] >= 1
    assert [round(p["latency_s"], 3) for p in saved["predictions"]] == [0.01, 0.02, 0.03, 0.05, 0.01]
    md = tables_markdown({"m": res})
    row = next(line for line in md.splitlines() if line.startswith("| m | scripted"))
    assert "1x test accelerator" in row and f"{m['sec_per_example']:.3g}" in row and "(2)" in row
    assert '"table4: examples/s (item_intel)"' in tables_csv({"m": res})
    cold = evaluate(ScriptedBackend(lambda p, t: good), "c", ["item_intel"], tmp_path / "out", data_dir=data,
                    warmup=False)
    assert cold["item_intel"]["timing"]["warm"] is False and "(cold)" in tables_markdown({"c": cold})


def test_runner_sends_the_benchmark_system_turn_and_images(tmp_path, monkeypatch):
    """eComMMMU through the runner: the authors' system turn on every call, images after the text, the setting
    and what the loader left out in the result."""
    import shutil
    from pathlib import Path

    from ecomvlm.eval.public.loading import cached_image_path
    from ecomvlm.eval.runner import evaluate

    fix = Path(__file__).parent / "fixtures" / "public"
    monkeypatch.setenv("ECOMVLM_IMAGE_CACHE", str(tmp_path / "cache"))
    for i in range(24):
        p = cached_image_path(f"https://m.media-amazon.com/images/I/fixture{i:02d}.jpg")
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fix / "ecommmmu_images" / f"fixture{i:02d}.png", p)
    backend = ScriptedBackend(lambda p, t: "yes")
    res = evaluate(backend, "m", ["ecommmmu"], tmp_path / "out", public_paths={"ecommmmu": str(fix / "ecommmmu")},
                   public_options={"ecommmmu": {"images": "main"}})
    assert {c["system"] for c in backend.calls} == {"You are a helpful shopping assistant."}
    sent = [p for c in backend.calls[1:] for p in c["prompts"]]
    assert len(sent) == 9 and all(p.endswith("<image>") and not p.startswith("<image>") for p in sent)
    m = res["ecommmmu"]
    assert m["data"]["setting"] == {"subset": "gts", "images": "main", "max_images": 10}
    assert m["data"]["source"]["split_column"]["other_splits"] == {"train": 2, "val": 2}
    assert m["n"] == 9 and m["per_task"]["AP"] == 50.0  # "yes" is right for one of the two AP rows


def test_plot_axes_for_all_zero_and_mixed_scale_panels(tmp_path):
    from ecomvlm.eval.report import panel_axis, plot

    assert panel_axis("mmbench", "accuracy", [0.0, 0.0]) == (0.0, pytest.approx(115.0), False)  # not 1e-9
    assert panel_axis("mme", "perception", [0.0, None])[1] == pytest.approx(2300.0)
    assert panel_axis("item_intel", "sec_per_example", [0.0, None]) == (0.0, 1.0, False)
    lo, hi, log = panel_axis("item_intel", "sec_per_example", [0.004, 25.5])  # 4 orders of magnitude
    assert log and lo < 0.004 and hi > 25.5
    assert panel_axis("item_intel", "examples_per_s", [2.0, 5.0]) == (0.0, pytest.approx(5.9), False)
    zeros = {"a": {"mmbench": {"accuracy": 0.0}, "item_intel": {"f1": 0.0, "sec_per_example": 0.003,
                                                                "examples_per_s": 300.0}},
             "b": {"mmbench": {"accuracy": 0.0}, "item_intel": {"f1": 0.0, "sec_per_example": 25.5,
                                                                "examples_per_s": 0.04}}}
    assert plot(zeros, tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.parametrize("pred, p, r", [
    ('{"Colour": null, "Brand": "Acme"}', 1.0, 1 / 3),  # null, "" and [] state no attribute
    ('{"Colour": "", "Size": [], "Brand": "Acme"}', 1.0, 1 / 3),
    ("**Colour**: Red", 1.0, 1 / 3),  # markdown keys, list markers and bold values as models write them
    ("- **Colour:** Red\n- **Brand:** Acme", 1.0, 2 / 3),
    ("1. Colour: Red\n2) Size: 350 ml", 1.0, 2 / 3),
    ("Colour: **Red**", 1.0, 1 / 3),
    ('[{"Colour": "Red"}, {"Brand": "Acme"}]', 1.0, 2 / 3),  # a JSON list of objects: all of them
    ('{"Colour": "Red", "colour": "Blue"}', 1.0, 1 / 3),  # one attribute after normalising, stating both values
    ("Colour: Blue\ncolour: Red", 1.0, 1 / 3),
])
def test_dae_answers_as_models_write_them(pred, p, r):
    s = dae_scores(pred, {"Colour": "Red", "Brand": "Acme", "Size": "350 ml"})
    assert (s["precision"], s["recall"]) == (pytest.approx(p), pytest.approx(r))


def test_dae_references_null_values_json_strings_and_bad_ones():
    assert dae_scores("Colour: Red", {"Colour": "Red", "Size": None})["recall"] == 1.0  # null: nothing to recall
    assert dae_scores("Colour: Red", {"Colour": "Red", "colour": "Blue"})["recall"] == 1.0  # one attribute
    assert dae_scores("Colour: Red", '{"Colour": "Red", "Brand": "Acme"}')["recall"] == 0.5  # JSON string reference
    with pytest.raises(ValueError, match=r"dae record 'x7'.*not an attribute object"):
        score_records("dae", [{"id": "x7", "answer": ["Red"]}], ["Colour: Red"])


def test_dae_values_keep_their_underscores_and_accents():
    assert dae_scores("Link: https://x.com/a__b__c", {"Link": "https://x.com/a__b__c"})["f1"] == 1.0
    assert dae_scores("__Brand__: Acme", {"Brand": "Acme"})["f1"] == 1.0
    assert dae_scores('{"Material": {"Top": "Café"}}', {"Material": {"Top": "Cafe"}})["f1"] == 1.0
