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
    assert parse_attributes('```json\n{"Colour": "Red", "Brand": ["Acme"]}\n```') == {"Colour": "Red", "Brand": "Acme"}
    s = dae_scores("Category: Mug\nColour: Blue\nBrand: ACME\nMaterial: Ceramic", ref)
    assert s["precision"] == pytest.approx(2 / 4) and s["recall"] == pytest.approx(2 / 4)
    assert s["f1"] == pytest.approx(0.5)
    assert dae_scores("I cannot tell.", ref) is None


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
    from ecomvlm.recipes.models.hf_io import export_llava_hf
    from ecomvlm.recipes.models.parallel import ParallelConfig
    from ecomvlm.recipes.models.registry import resolve
    from ecomvlm.recipes.models.sharding import gather_full_state
    from ecomvlm.recipes.models.vlm import build_vlm

    tok = tiny_tokenizers["chatml"]
    cfg = resolve(model_config(["model=tiny_siglip_qwen3", "model.encoder.image_size=32"]),
                  image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    hf = export_llava_hf(gather_full_state(build_vlm(cfg, ParallelConfig())), cfg, tok, tmp_path / "tiny",
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
