"""Item-intelligence judging: facts, verdict validation, rule judge numbers, and the LLM judge's retry/failure
accounting over a real HTTP round trip (conftest's scripted OpenAI-compatible server in this process; the
real-model check is tests/test_vllm_cpu.py)."""

from __future__ import annotations

import json

import pytest

from ecomvlm.eval.judge import (
    JudgePrompt,
    LLMJudge,
    RuleJudge,
    flatten_facts,
    score_item_intel,
    validate_verdict,
    verdict_schema,
)
from ecomvlm.eval.openai_client import OpenAIChatClient
from ecomvlm.eval.scoring import parse_model_json

REF = {"identifiers": {"barcodes": [{"value": "4006381333931"}]},
       "attributes": {"product_type": "Toys", "brand_name": "Acme", "colors": ["Red", "Blue"]},
       "regulatory_safety": {"hazard_statements": [{"text": "Choking hazard"}]}}


def test_flatten_and_parse():
    assert flatten_facts(REF) == [("identifiers.barcodes", "4006381333931"), ("attributes.product_type", "Toys"),
                                  ("attributes.brand_name", "Acme"), ("attributes.colors", "Red"),
                                  ("attributes.colors", "Blue"), ("regulatory_safety.hazard_statements",
                                                                  "Choking hazard")]
    assert parse_model_json('Here you go:\n```json\n{"a": {"b": 1}}\n```') == {"a": {"b": 1}}
    assert parse_model_json('noise {"a": 1} trailing') == {"a": 1}
    assert parse_model_json("{not json") is None and parse_model_json("[1, 2]") is None


def test_rule_judge_metrics_by_hand():
    recs = [{"id": "a", "answer": REF}, {"id": "b", "answer": REF}, {"id": "c", "answer": json.dumps(REF)}]
    perfect = json.dumps(REF)
    # 4 facts: brand wrong, one colour right, model number unverifiable, barcode right
    partial = json.dumps({"attributes": {"brand_name": "Zenith", "colors": ["red"]},
                          "identifiers": {"model_number": "X1", "barcodes": [{"value": "4006381333931"}]}})
    m = score_item_intel(recs, [perfect, partial, "I see a toy."], RuleJudge())
    # item a: P=R=1; item b: P=2/4, R=2/6; item c: not JSON -> 0
    f1_b = 2 * 0.5 * (1 / 3) / (0.5 + 1 / 3)
    assert m["precision"] == pytest.approx(100 * (1 + 0.5) / 3) and m["recall"] == pytest.approx(100 * (1 + 1 / 3) / 3)
    assert m["f1"] == pytest.approx(100 * (1 + f1_b) / 3)
    assert m["predicted_facts"] == 10 and m["verifiable_correct"] == pytest.approx(80.0)
    assert m["verifiable_incorrect"] == pytest.approx(10.0) and m["unverifiable"] == pytest.approx(10.0)
    assert m["unparsed"] == 1 and m["judge_failed"] == 0 and m["judge"] == "rules-v1"
    assert [it["status"] for it in m["items"]] == ["ok", "ok", "model_output_not_json"]


@pytest.mark.parametrize("text, err", [
    ("not json", "not a JSON object"), ('{"predicted": 3}', "must be a list"),
    ('{"predicted": [{"id": 1, "verdict": "maybe"}]}', "bad entry"),
    ('{"predicted": [{"id": 1, "verdict": "correct"}, {"id": 1, "verdict": "correct"}]}', "judged twice"),
    ('{"predicted": [{"id": 1, "verdict": "correct"}]}', "no verdict for predicted facts \\[2\\]"),
    ('{"predicted": [{"id": 9, "verdict": "correct"}]}', "outside 1..2"),
    ('{"predicted": [{"id": 1, "verdict": "correct"}, {"id": 2, "verdict": "incorrect"}], "reference_found": [7]}',
     "reference fact ids in 1..3"),
    ('{"predicted": [{"id": true, "verdict": "correct"}, {"id": 2, "verdict": "correct"}]}', "need an integer id"),
    ('{"predicted": [{"id": 1, "verdict": "correct"}, {"id": 2, "verdict": "correct"}], "reference_found": [true]}',
     "reference fact ids in 1..3"),
    ('{"predicted": [{"id": 1, "verdict": "incorrect"}, {"id": 2, "verdict": "unverifiable"}], '
     '"reference_found": [1, 2, 3]}', "lists 3 reference facts but only 0 predicted facts are judged correct"),
    ('{"predicted": [{"id": 1, "verdict": "correct"}, {"id": 2, "verdict": "correct"}], "reference_found": [2, 2]}',
     "lists a reference fact twice"),
])
def test_verdict_validation_names_the_problem(text, err):
    with pytest.raises(ValueError, match=err):
        validate_verdict(text, 2, 3)


def test_reference_found_is_consistent_with_the_verdicts():
    """One incorrect fact cannot find reference facts: the verdict is refused (and retried), never scored as
    recall 0.75 with precision 0."""
    v = validate_verdict('{"predicted": [{"id": 1, "verdict": "correct"}, {"id": 2, "verdict": "incorrect"}], '
                         '"reference_found": [3]}', 2, 4)
    assert v.predicted == ["correct", "incorrect"] and v.reference_found == {3}
    with pytest.raises(ValueError, match="only 0 predicted facts"):
        validate_verdict('{"predicted": [{"id": 1, "verdict": "incorrect"}], "reference_found": [1, 2, 3]}', 1, 4)


def test_malformed_reference_names_the_record():
    recs = [{"id": "sku-7", "answer": '{"attributes": {"brand_name": "Acme"'}]
    with pytest.raises(ValueError, match="item_intel record 'sku-7': the reference answer is not valid JSON"):
        score_item_intel(recs, ["{}"], RuleJudge())
    with pytest.raises(ValueError, match="record 'sku-8': the reference answer must be a JSON object"):
        score_item_intel([{"id": "sku-8", "answer": "[1, 2]"}], ["{}"], RuleJudge())


def test_prompt_is_versioned_and_renders():
    p = JudgePrompt.load("item_intel_v1")
    assert p.version == "item_intel_v1" and len(p.sha256) == 64
    judge = LLMJudge(OpenAIChatClient("http://127.0.0.1:9", "m"), p)
    msgs = judge.messages([("attributes.brand_name", "Acme")], flatten_facts(REF), REF)
    assert "1. attributes.brand_name = Acme" in msgs[1]["content"] and "ids 1..1" in msgs[1]["content"]
    assert verdict_schema(2, 3)["properties"]["predicted"]["minItems"] == 2
    with pytest.raises(FileNotFoundError, match="item_intel_v1"):
        JudgePrompt.load("item_intel_v0")


def test_llm_judge_retries_counts_and_never_crashes(scripted_server, monkeypatch):
    url, handler = scripted_server
    monkeypatch.setenv("ECOMVLM_TEST_KEY", "sk-secret-123")
    client = OpenAIChatClient(url, "judge-model", api_key_env="ECOMVLM_TEST_KEY", backoff_s=0.01)
    judge = LLMJudge(client, JudgePrompt.load("item_intel_v1"), max_attempts=3)
    pred = json.dumps({"attributes": {"brand_name": "Acme", "colors": ["Green"]}})
    good = json.dumps({"predicted": [{"id": 1, "verdict": "correct"}, {"id": 2, "verdict": "incorrect"}],
                       "reference_found": [3]})
    handler.script = [
        (200, "Sure! Both look fine."), (200, good),  # item 1: malformed, then valid on the retry
        (500, ""), (200, good),  # item 2: server error retried by the client, then valid
        (200, "{}"), (200, '{"predicted": []}'), (200, "nope"),  # item 3: never valid -> judge_failed
    ]
    recs = [{"id": i, "answer": REF} for i in range(3)]
    m = score_item_intel(recs, [pred] * 3, judge)
    assert m["n_scored"] == 2 and m["judge_failed"] == 1
    assert m["judge_stats"] == {"calls": 6, "malformed": 4, "http_errors": 0}
    assert [it.get("attempts") for it in m["items"]] == [2, 1, None]
    assert m["items"][2]["status"] == "judge_failed" and "no verdict" in m["items"][2]["error"]
    assert m["precision"] == pytest.approx(50.0) and m["recall"] == pytest.approx(100 / 6)
    assert m["judge"] == "llm:judge-model@item_intel_v1"
    first = handler.seen[0]
    assert first["auth"] == "Bearer sk-secret-123" and "sk-secret" not in repr(client)
    assert first["body"]["response_format"]["type"] == "json_schema"
    retry = handler.seen[1]["body"]["messages"]
    assert retry[-2]["content"] == "Sure! Both look fine." and "invalid" in retry[-1]["content"]


def test_client_gives_up_with_a_clear_error(scripted_server):
    url, handler = scripted_server
    handler.script = [(400, "")]
    with pytest.raises(ConnectionError, match="HTTP 400"):
        OpenAIChatClient(url, "m", backoff_s=0.0).chat([{"role": "user", "content": "x"}])
    assert len(handler.seen) == 1  # 4xx is not retried


def test_openai_backend_sends_images_in_place_and_keeps_order(scripted_server):
    from PIL import Image

    from ecomvlm.eval.backends import OpenAIBackend, openai_content, split_images

    url, handler = scripted_server
    red, blue = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")
    parts = openai_content("Front:<image> back:<image> Which colour?", [red, blue])
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "text"]
    assert parts[0]["text"] == "Front:" and parts[-1]["text"] == "Which colour?"
    assert [p["type"] for p in openai_content("Which colour?", [red, blue])] == ["image_url", "image_url", "text"]
    with pytest.raises(ValueError, match="1 <image> placeholders but 2 images"):
        split_images("<image> x", 2)
    handler.script = [(200, f"answer {i}") for i in range(5)]
    outs = OpenAIBackend(url, "served", concurrency=3).generate(
        [f"q{i}" for i in range(5)], [[red]] * 5, max_new_tokens=7, json_schema={"type": "object"})
    assert sorted(outs) == [f"answer {i}" for i in range(5)] and len(handler.seen) == 5
    body = handler.seen[0]["body"]
    assert body["model"] == "served" and body["max_tokens"] == 7 and body["response_format"]["type"] == "json_schema"
    img = body["messages"][0]["content"][0]
    assert img["type"] == "image_url" and img["image_url"]["url"].startswith("data:image/png;base64,")


def test_repeated_facts_count_once():
    """A generation loop that repeats a value does not inflate precision (or recall on the reference side)."""
    looped = {"attributes": {"colors": ["Red", "Red", " red ", "Blue"], "brand_name": "Zenith"}}
    assert flatten_facts(looped) == [("attributes.colors", "Red"), ("attributes.colors", "Blue"),
                                     ("attributes.brand_name", "Zenith")]
    ref = {"attributes": {"colors": ["Red", "Blue"], "brand_name": "Acme"}}
    m = score_item_intel([{"id": "a", "answer": ref}], [json.dumps(looped)], RuleJudge())
    assert m["precision"] == pytest.approx(100 * 2 / 3) and m["recall"] == pytest.approx(100 * 2 / 3)
