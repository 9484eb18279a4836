"""eval/ifeval.py: the constraint checker on hand-written responses (each check passing and failing), IFEval's
strict vs loose accuracy, record formats, and evaluate_ifeval with a backend."""

from __future__ import annotations

import json

import pytest

from ecomvlm.eval import ifeval

# (instruction id, kwargs, a response that follows it, one that does not)
CASES = [
    ("keywords:existence", {"keywords": ["cotton", "red"]}, "A red Cotton shirt.", "A red linen shirt."),
    ("keywords:forbidden_words", {"forbidden_words": ["cheap"]}, "An affordable mug (not cheapest).",
     "A Cheap mug."),
    ("keywords:frequency", {"keyword": "mug", "frequency": 2, "relation": "at least"}, "Mug. A mug.", "One mug."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "less than"}, "Zero.",
     "Zig zag."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "A red shirt.",
     "A bright red cotton shirt."),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"},
     "It is red. It is cotton.", "It is red, cotton and new"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "Red shirt.\n***\nCotton.", "Red shirt."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "A mug.\n\nP.S. It is new.", "A mug."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Send to [name] at [address].",
     "Send it to [name]."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* red\n* cotton", "* red\n* cotton\n* new"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Yes."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "A *red* mug, *new*.",
     "A *red* mug."),
    ("detectable_format:json_format", {}, '```json\n{"Colour": "Red"}\n```', "Colour: Red"),
    ("detectable_format:title", {}, "<<Red Mug>>\nA red mug.", "Red Mug\nA red mug."),
    ("startend:end_checker", {"end_phrase": "Happy shopping!"}, "A red mug. Happy shopping!",
     "Happy shopping! A red mug."),
    ("startend:quotation", {}, '"A red mug."', "A red mug."),
    ("change_case:english_lowercase", {}, "a red mug.", "a Red mug."),
    ("change_case:english_capital", {}, "A RED MUG.", "A RED Mug."),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"},
     "The RED mug.", "The RED MUG."),
    ("punctuation:no_comma", {}, "A red mug.", "A red, new mug."),
    ("combination:two_responses", {}, "Red mug.\n******\nBlue mug.", "Red mug.\n******\nRed mug."),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nRed.\nSection 2\nMug.", "Section 1\nRed mug."),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "it"},
     "A red mug.\n\nIt is new.", "A red mug.\n\nThe mug is new."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Describe the mug."}, "Describe the mug. A red mug.",
     "A red mug."),
    ("ecom:max_characters", {"max_chars": 10}, "Red mug.", "A bright red mug."),
    ("ecom:start_with", {"phrase": "Item description:"}, "Item description: a mug.", "A mug."),
    ("ecom:key_value_lines", {"keys": ["Colour", "Brand"]}, "Colour: Red\nbrand: Acme", "Colour: Red\nAcme"),
    ("ecom:json_keys", {"keys": ["Colour"]}, '{"colour": "Red"}', '{"Colour": "Red", "Brand": "Acme"}'),
]


@pytest.mark.parametrize("iid,kwargs,good,bad", CASES, ids=[c[0] for c in CASES])
def test_each_check_passes_and_fails(iid, kwargs, good, bad):
    assert ifeval.constraint_problem({"instruction_id": iid, "kwargs": kwargs}) is None
    assert ifeval.check(good, iid, kwargs) is True
    assert ifeval.check(bad, iid, kwargs) is False
    assert ifeval.check("", iid, kwargs) is False  # an empty answer follows nothing
    text = ifeval.describe(iid, kwargs)
    assert text and "{" not in text.replace("{'", "").replace('{"', "")


def test_every_instruction_has_a_case():
    assert {c[0] for c in CASES} == set(ifeval.INSTRUCTIONS)


def test_sentence_splitter_and_word_count_follow_ifeval():
    assert ifeval.count_sentences("Dr. Smith sells 2.5 L bottles. They are blue! Are they new?") == 3
    assert ifeval.count_words("A t-shirt, 100% cotton.") == 5


def test_strict_vs_loose():
    kw = {}
    chatty = 'Sure, here is the JSON:\n{"Colour": "Red"}'
    assert not ifeval.check(chatty, "detectable_format:json_format", kw)
    assert ifeval.check_loose(chatty, "detectable_format:json_format", kw)  # without its first line
    bold_end = "A red mug. **Happy shopping!**"
    assert not ifeval.check(bold_end, "startend:end_checker", {"end_phrase": "Happy shopping!"})
    assert ifeval.check_loose(bold_end, "startend:end_checker", {"end_phrase": "Happy shopping!"})
    assert not ifeval.check_loose("A red, new mug.", "punctuation:no_comma", kw)  # loose is not "anything goes"


def test_score_ifeval_accuracies_by_hand():
    recs = [
        {"id": "a", "prompt": "p", "constraints": [
            {"instruction_id": "punctuation:no_comma", "kwargs": {}},
            {"instruction_id": "length_constraints:number_words",
             "kwargs": {"num_words": 4, "relation": "less than"}}]},
        {"id": "b", "prompt": "p", "constraints": [{"instruction_id": "detectable_format:json_format", "kwargs": {}}]},
        {"id": "c", "prompt": "p", "constraints": [{"instruction_id": "startend:quotation", "kwargs": {}}]},
        # IFEval's own format, unused kwargs as None
        {"key": 7, "prompt": "p", "instruction_id_list": ["change_case:english_lowercase"],
         "kwargs": [{"num_words": None}]},
        {"id": "u", "prompt": "p", "constraints": [{"instruction_id": "language:response_language",
                                                    "kwargs": {"language": "de"}}]},
    ]
    preds = ["A red mug.", 'Here you go:\n{"a": 1}', "no quotes", "all lower case", "egal"]
    m = ifeval.score_ifeval(recs, preds)
    # a: both followed; b: loose only; c: neither; 7: followed; u: not scored
    assert m["scored"] == 4 and m["n"] == 5 and m["unsupported"] == {"language": 1}
    assert m["prompt_level_strict_acc"] == pytest.approx(2 / 4)
    assert m["prompt_level_loose_acc"] == pytest.approx(3 / 4)
    assert m["inst_level_strict_acc"] == pytest.approx(3 / 5)
    assert m["inst_level_loose_acc"] == pytest.approx(4 / 5)
    assert m["per_instruction"]["detectable_format:json_format"] == {"n": 1, "strict_acc": 0.0, "loose_acc": 1.0}
    with pytest.raises(ValueError, match="predictions"):
        ifeval.score_ifeval(recs, preds[:2])


def test_malformed_constraints_are_named():
    assert "missing kwarg" in ifeval.constraint_problem({"instruction_id": "keywords:existence", "kwargs": {}})
    assert "unknown instruction" in ifeval.constraint_problem({"instruction_id": "x:y", "kwargs": {}})
    assert "relation" in ifeval.constraint_problem({"instruction_id": "length_constraints:number_words",
                                                    "kwargs": {"num_words": 3, "relation": "about"}})
    with pytest.raises(ValueError, match="integer"):
        ifeval.check("x", "length_constraints:number_words", {"num_words": "three", "relation": "at least"})


def test_load_and_evaluate_with_a_backend(tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "red.png")
    rows = [{"id": "r1", "images": ["red.png"], "prompt": "<image>\nDescribe it. Answer with less than 4 words.",
             "constraints": [{"instruction_id": "length_constraints:number_words",
                              "kwargs": {"num_words": 4, "relation": "less than"}}]},
            {"id": "r2", "images": [], "prompt": "Describe a mug in lowercase.",
             "constraints": [{"instruction_id": "change_case:english_lowercase", "kwargs": {}}]}]
    path = tmp_path / "ifeval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = ifeval.load_ifeval(path)

    class ScriptedModel:  # a model that answers each prompt with a fixed text and records what it saw
        name = "scripted"
        last_latencies: list = []

        def __init__(self):
            self.seen = []

        def generate(self, prompts, images, *, max_new_tokens=64, **kw):
            self.seen = [(p, [im.size for im in ims], max_new_tokens) for p, ims in zip(prompts, images)]
            return ["A red square.", "A White Mug."]

    model = ScriptedModel()
    m = ifeval.evaluate_ifeval(model, recs, data_dir=tmp_path)
    assert model.seen[0] == (rows[0]["prompt"], [(32, 32)], ifeval.IFEVAL_MAX_NEW_TOKENS)
    assert m["prompt_level_strict_acc"] == 0.5 and m["predictions"][1]["prediction"] == "A White Mug."
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ValueError, match=r"ifeval.jsonl:3"):
        ifeval.load_ifeval(path)


def test_ecomvlm_eval_runs_ifeval_as_a_benchmark(tmp_path):
    """`ecomvlm eval --benchmarks ifeval` reads <data>/eval/ifeval.jsonl and scores it with the same checker."""
    from PIL import Image

    from ecomvlm.eval.runner import evaluate

    (tmp_path / "eval").mkdir()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(tmp_path / "red.png")
    rows = [{"id": "r1", "images": ["red.png"], "prompt": "<image>\nDescribe it in lowercase.",
             "constraints": [{"instruction_id": "change_case:english_lowercase", "kwargs": {}}]},
            {"id": "r2", "images": ["red.png"], "prompt": "<image>\nDescribe it in lowercase.",
             "constraints": [{"instruction_id": "change_case:english_lowercase", "kwargs": {}}]}]
    (tmp_path / "eval" / "ifeval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    class ScriptedModel:
        name = "scripted"
        last_latencies: list = []

        def describe(self):
            return {"engine": "scripted"}

        def generate(self, prompts, images, **kw):
            self.last_latencies = [0.0] * len(prompts)
            return ["a red square.", "A Red Square."]

    res = evaluate(ScriptedModel(), "scripted", ["ifeval"], tmp_path / "out", data_dir=tmp_path, warmup=False)
    assert res["ifeval"]["prompt_level_strict_acc"] == 0.5
