"""Public-benchmark loaders and scorers == lmms-eval 0.7.3's, on hand-made datasets and predictions.

lmms-eval is installed with --no-deps (Makefile); its task modules are imported without running the package
`__init__`s (which pull CUDA torch and the model zoo). Datasets are tiny HF datasets in each benchmark's real
column schema, written with `save_to_disk` / parquet and read back by our loaders.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import random
import re
import string
import sys
import types

import numpy as np
import pytest

from ecomvlm.eval import public
from ecomvlm.eval.public import load_public, score_public

LMMS_KW = {"pre_prompt": "", "post_prompt": "\nAnswer the question using a single word or phrase."}


@pytest.fixture(scope="module")
def lmms():
    """lmms-eval task modules, imported without the heavy package __init__s."""
    spec = importlib.util.find_spec("lmms_eval")
    assert spec is not None, "lmms-eval missing: `make test` installs it (pip install --no-deps lmms-eval==0.7.3)"
    root = spec.submodule_search_locations[0]
    saved = {k: v for k, v in sys.modules.items() if k == "lmms_eval" or k.startswith("lmms_eval.")}
    for name, sub in [("lmms_eval", ""), ("lmms_eval.tasks", "/tasks")]:
        m = types.ModuleType(name)
        m.__path__ = [root + sub]
        sys.modules[name] = m
    ext = types.ModuleType("lmms_eval.filters.extraction")  # needs `evaluate`; the AI2D filter only uses regex

    class ExtendedRegexFilter:
        def __init__(self, *a, **k):
            pass

    ext.ExtendedRegexFilter = ExtendedRegexFilter
    sys.modules["lmms_eval.filters.extraction"] = ext
    mods = types.SimpleNamespace(**{n: importlib.import_module(f"lmms_eval.tasks.{p}") for n, p in [
        ("mme", "mme.utils"), ("mmstar", "mmstar.utils"), ("cv", "cv_bench.utils"), ("textvqa", "textvqa.utils"),
        ("mmb", "mmbench.mmbench_evals"), ("mmmu", "mmmu.utils"), ("ai2d", "ai2d.utils")]})
    # lmms-eval's exact_match metric, taken from its source (api/metrics.py needs sacrebleu, pytz, ...)
    src = open(root + "/api/metrics.py").read()
    fn = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "exact_match_hf_evaluate")
    ns = {"np": np, "re": re, "string": string}
    exec(compile(ast.Module([fn], []), "metrics.py", "exec"), ns)
    mods.exact_match = ns["exact_match_hf_evaluate"]
    yield mods
    for k in [k for k in sys.modules if k == "lmms_eval" or k.startswith("lmms_eval.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def _img(color=(200, 30, 30)):
    from PIL import Image

    return Image.new("RGB", (8, 8), color)


def _save(tmp_path, name, rows, split, fmt="disk"):
    import datasets

    ds = datasets.Dataset.from_list(rows)
    if "image" in rows[0]:
        ds = ds.cast_column("image", datasets.Image())
    out = tmp_path / name
    if fmt == "disk":
        datasets.DatasetDict({split: ds}).save_to_disk(str(out))
    else:  # the Hub's layout: data/<split>-00000-of-00001.parquet
        (out / "data").mkdir(parents=True)
        ds.to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))
    return out


def test_mme_scores_and_prompts_match_lmms_eval(lmms, tmp_path):
    rows, preds = [], []
    answers = {"existence": [("Yes", "yes"), ("No", "No.")], "count": [("Yes", "no"), ("No", "no")],
               "OCR": [("Yes", "Yes, it is"), ("No", "I cannot tell")],
               "code_reasoning": [("Yes", "y"), ("No", "Nope")], "numerical_calculation": [("No", "n"), ("Yes", "x")]}
    for cat, pairs in answers.items():
        for j, (ans, pred) in enumerate(pairs):
            rows.append({"question_id": f"{cat}/1.png", "question": f"Is there a thing {j}? Please answer yes or no.",
                         "answer": ans, "category": cat, "image": _img()})
            preds.append(pred)
    recs = load_public("mme", _save(tmp_path, "mme", rows, "test"))
    assert [r["prompt"] for r in recs] == [lmms.mme.mme_doc_to_text(r, LMMS_KW) for r in rows]
    ours = score_public("mme", recs, preds)
    theirs = {"mme_perception_score": [], "mme_cognition_score": []}
    for r, p in zip(rows, preds):
        for k, v in lmms.mme.mme_process_results(r, [p]).items():
            theirs[k].append(v)
    assert ours["perception"] == pytest.approx(lmms.mme.mme_aggregate_results(theirs["mme_perception_score"]))
    assert ours["cognition"] == pytest.approx(lmms.mme.mme_aggregate_results(theirs["mme_cognition_score"]))
    assert ours["perception"] == pytest.approx(200.0 + 50.0 + 50.0)  # (acc + acc+): both right / one / one
    assert ours["unparsed"] == 2  # "I cannot tell", "x"
    with pytest.raises(ValueError, match="pairs"):
        score_public("mme", recs[:3], preds[:3])


def test_mmstar_matches_lmms_eval(lmms, tmp_path):
    cats = [("coarse perception", "image emotion"), ("coarse perception", "image style & quality"),
            ("math", "geometry"), ("math", "geometry")]
    preds = ["A", "The answer is (C).", "B. because", "I think D"]
    rows = [{"index": i, "question": f"Q{i}? Options: A: x, B: y, C: z, D: w", "answer": a, "category": c,
             "l2_category": l2, "image": _img()} for i, ((c, l2), a) in enumerate(zip(cats, ["A", "B", "B", "D"]))]
    recs = load_public("mmstar", _save(tmp_path, "mmstar", rows, "val", fmt="parquet"))
    kw = {"pre_prompt": "", "post_prompt": "\nAnswer with the option's letter from the given choices directly"}
    assert [r["prompt"] for r in recs] == [lmms.mmstar.mmstar_doc_to_text(r, kw) for r in rows]
    ours = score_public("mmstar", recs, preds)
    res = [lmms.mmstar.mmstar_process_results(r, [p]) for r, p in zip(rows, preds)]
    assert ours["average"] == pytest.approx(100 * lmms.mmstar.mmstar_aggregate_results([x["average"] for x in res]))
    for cat in ("coarse perception", "math"):
        theirs = lmms.mmstar.mmstar_aggregate_results([x[cat] for x in res if cat in x])
        assert ours["per_category"][cat] == pytest.approx(100 * theirs)
    for p in ["A", "(B)", "the answer is C", "D.", "Answer: B", "", "none of them", "B or C? I pick C"]:
        assert public.mcq_extract(p, list("ABCD")) == \
            importlib.import_module("lmms_eval.tasks._task_utils.mcq_extract").extract_mcq_answer(p, list("ABCD"))


def test_cv_bench_official_formula_matches_lmms_eval(lmms, tmp_path):
    srcs = ["ADE20K", "ADE20K", "COCO", "COCO", "COCO", "Omni3D", "Omni3D"]
    answers = ["(A)", "(B)", "(A)", "(C)", "(B)", "(A)", "(B)"]
    preds = ["A", "(A)", "A. left", "c", "(D)", "B", " (B) "]
    rows = [{"idx": i, "type": "2D" if s != "Omni3D" else "3D", "task": "Count", "prompt": f"How many? {i}",
             "choices": ["1", "2", "3"], "answer": a, "source": s, "image": _img()}
            for i, (s, a) in enumerate(zip(srcs, answers))]
    recs = load_public("cv_bench", _save(tmp_path, "cv", rows, "test"))
    kw = {"pre_prompt": "Note: You only need to respond with {} without providing any additional information.\n"}
    assert [r["prompt"] for r in recs] == [lmms.cv.cv_bench_doc_to_text(r, kw) for r in rows]
    ours = score_public("cv_bench", recs, preds)
    subs = [lmms.cv.cv_bench_process_results(r, [p])["cv_bench_acc"] for r, p in zip(rows, preds)]
    assert ours["accuracy"] == pytest.approx(100 * lmms.cv.cv_bench_default_aggregate_results(subs))
    assert ours["flat_accuracy"] == pytest.approx(100 * lmms.cv.cv_bench_aggregate_results(subs))
    assert ours["accuracy"] == pytest.approx(((50 + 200 / 3) / 2 + 50) / 2)


def test_textvqa_vqa_accuracy_matches_lmms_eval(lmms, tmp_path):
    answers = [["two"] * 4 + ["2"] * 3 + ["three"] * 3, ["coca cola"] * 2 + ["coke"] * 8,
               ["the yellow sign"] * 10, ["stop"] * 1 + ["go"] * 9, ["it's"] * 10]
    preds = ["2", "Coca-Cola", "yellow sign.", "Stop", "its"]
    rows = [{"question_id": i, "question": f"what is written {i}?", "answers": a, "ocr_tokens": ["x"], "image": _img()}
            for i, a in enumerate(answers)]
    recs = load_public("textvqa", _save(tmp_path, "tv", rows, "validation"))
    assert [r["prompt"] for r in recs] == [lmms.textvqa.textvqa_doc_to_text(dict(r), LMMS_KW) for r in rows]
    ours = score_public("textvqa", recs, preds)
    theirs = [lmms.textvqa.textvqa_process_results({**r, "answers": list(r["answers"])}, [p])["exact_match"]
              for r, p in zip(rows, preds)]
    assert ours["accuracy"] == pytest.approx(100 * sum(theirs) / len(theirs))
    assert 0 < ours["accuracy"] < 100


def test_ai2d_matches_lmms_eval_filter_and_exact_match(lmms, tmp_path):
    preds = ["A. the sun", "b", "(C)", "The answer is D", "D", "  A.", "c)"]
    answers = ["0", "1", "2", "3", "2", "0", "2"]
    rows = [{"question": f"Which {i}?", "options": ["sun", "moon", "star", "rock"], "answer": a, "image": _img()}
            for i, a in enumerate(answers)]
    recs = load_public("ai2d", _save(tmp_path, "ai2d", rows, "test"))
    kw = {"prompt_format": "mcq", "pre_prompt": "",
          "post_prompt": "\nAnswer with the option's letter from the given choices directly."}
    assert [r["prompt"] for r in recs] == [lmms.ai2d.ai2d_doc_to_text(r, kw) for r in rows]
    filtered = lmms.ai2d.MultiChoiceRegexFilter().apply([[p] for p in preds], rows)
    targets = [lmms.ai2d.ai2d_doc_to_target(r, "mcq") for r in rows]
    theirs = lmms.exact_match(filtered, targets, ignore_case=True, ignore_punctuation=True)["exact_match"]
    ours = score_public("ai2d", recs, preds)
    assert ours["accuracy"] == pytest.approx(100 * theirs) and ours["unparsed"] == 1


def test_mmmu_matches_lmms_eval(lmms, tmp_path):
    mc = {"question_type": "multiple-choice", "options": "['1 kg', '2 kg', '3 kg', '4 kg']"}
    op = {"question_type": "open", "options": "[]"}
    cases = [  # (kind, answer, prediction)
        (mc, "B", "B"), (mc, "C", "(C) is right"), (mc, "D", "I would say the mass is 4 kg in total here"),
        (mc, "B", "A B"), (mc, "A", "(B) or maybe (A)"), (op, "3.14", "The value is 3.14."),
        (op, "1,000", "so the result is 1000"), (op, "Paris", "It is paris"), (op, "42", "41")]
    rows = [{"id": f"validation_{'Physics' if i % 2 else 'Art_Theory'}_{i}", "question": f"<image 1> Q{i}?",
             "answer": ans, "image_1": _img(), "image_2": None, **kind} for i, (kind, ans, _) in enumerate(cases)]
    preds = [p for *_, p in cases]
    recs = load_public("mmmu", _save(tmp_path, "mmmu", rows, "validation"))
    kw = {"prompt_type": "format", "multiple_choice_prompt": "Answer with the option's letter from the given choices "
          "directly.", "open_ended_prompt": "Answer the question using a single word or phrase."}
    assert [r["prompt"] for r in recs] == [lmms.mmmu.mmmu_doc_to_text(r, kw) for r in rows]
    assert all(len(r["images"]) == 1 for r in recs)
    ours = score_public("mmmu", recs, preds)
    random.seed(0)
    theirs = lmms.mmmu.mmmu_aggregate_results([lmms.mmmu.mmmu_process_results(r, [p])["mmmu_acc"]
                                               for r, p in zip(rows, preds)])
    assert ours["accuracy"] == pytest.approx(100 * theirs, abs=1e-3)  # lmms rounds to 5 digits
    assert ours["accuracy"] == pytest.approx(100 * 8 / 9) and ours["unparsed"] == 0  # "(B) or (A)": the last wins


def test_mmbench_circular_static_matches_lmms_eval(lmms, tmp_path):
    # question 0 with 2 rotations (both right), question 1 with 2 rotations (one wrong), question 2 single
    # (needs the text matcher), question 3 single (needs the phrase extractor)
    base = [(0, "A", "A"), (1_000_000, "B", "B"), (1, "C", "C"), (1_000_001, "A", "B"), (2, "B", "It is a cat"),
            (3, "D", "the answer is D because")]
    rows = []
    for idx, ans, _ in base:
        rows.append({"index": idx, "question": "What is it?", "hint": "nan" if idx % 2 else "A hint.", "A": "dog",
                     "B": "cat", "C": "bird", "D": "fish", "answer": ans, "category": "object" if idx % 2 else "scene",
                     "L2-category": "perception", "source": "s", "split": "dev", "image": _img()})
    preds = [p for *_, p in base]
    recs = load_public("mmbench", _save(tmp_path, "mmb", rows, "dev"))
    ev = lmms.mmb.MMBench_Evaluator(sys_prompt="There are several options:")
    post = "\nAnswer with the option's letter from the given choices directly."
    for r, rec in zip(rows, recs):
        opts, _ = ev.create_options_prompt(r, ["A", "B", "C", "D", "E"])
        hint = r["hint"]
        q = f"{hint} {r['question']} {opts}" if hint != "nan" else f"{r['question']} {opts}"
        assert rec["prompt"] == q + post
    ours = score_public("mmbench", recs, preds)
    results = [{k: r[k] for k in ("index", "question", "answer", "hint", "source", "split", "category",
                                  "L2-category", "A", "B", "C", "D")} | {"prediction": p} for r, p in zip(rows, preds)]
    overall, cats, _ = ev.eval_result(results, eval_method="static")
    assert ours["accuracy"] == pytest.approx(100 * overall) and ours["n"] == 4
    assert ours["accuracy"] == pytest.approx(75.0)
    assert {k: v / 100 for k, v in ours["per_category"].items()} == pytest.approx(cats)


def test_ecommmmu_follows_the_authors_evaluate_py(tmp_path):
    """Hand-checked against evaluate.py's rules: options matched at the start or before a colon (else skipped,
    counted wrong), yes/no case-insensitive, letters case-sensitive; average weighted by samples; <= 10 images."""
    from PIL import Image

    paths = []
    for i in range(12):
        paths.append(str(tmp_path / f"im{i}.png"))
        Image.new("RGB", (4, 4), (i * 20, 0, 0)).save(paths[-1])
    products = [paths[:4], paths[4:8], paths[8:]]  # the authors' layout: one image list per product
    rows = [
        {"task": "answerability_prediction", "instruction": "Can it be answered?", "input": "q", "output": "yes"},
        {"task": "answerability_prediction", "instruction": "Can it be answered?", "input": "q", "output": "no"},
        {"task": "answerability_prediction", "instruction": "Can it be answered?", "input": "q", "output": "no"},
        {"task": "sentiment_analysis", "instruction": "Sentiment?", "input": "r", "output": "B"},
        {"task": "sentiment_analysis", "instruction": "Sentiment?", "input": "r", "output": "E"},
        {"task": "sequential_recommendation", "instruction": "Next?", "input": "h", "output": "K"},
    ]
    for r in rows:
        r["images"] = products
        r["split"] = "test"
    preds = ["Yes", "no: nothing in the text", "I think No", "B", "b", "Option K: because"]
    recs = load_public("ecommmmu", _save(tmp_path, "ecom", rows, "test", fmt="parquet"))
    assert all(len(r["images"]) == 10 for r in recs)  # the paper's cap over the flattened product images
    assert recs[0]["prompt"] == "Can it be answered?q" + "<image>" * 10  # instruction + input, then the images
    assert recs[0]["system"] == "You are a helpful shopping assistant."
    m = score_public("ecommmmu", recs, preds)
    assert m["per_task"] == {"AP": pytest.approx(200 / 3), "SA": 50.0, "SR": 100.0}
    assert m["average"] == pytest.approx(100 * 4 / 6) and m["skipped_per_task"] == {"AP": 1, "SA": 1, "SR": 0}
    # get_valid_response: `^\s*(opt)\b|\b(opt)\s*:\s*` over the answer with newlines as spaces; first option wins
    for task, text, got in [("binary-question_answering", "Cannot answer: no info", "Cannot answer"),
                            ("answerability_prediction", "Answer: yes", ""), ("answerability_prediction", "\nNo", "No"),
                            ("sentiment_analysis", "  E. five stars", "E"), ("sentiment_analysis", "Rating E", ""),
                            ("product_relation_prediction", "assistant\nB: also view", "B"),
                            ("sequential_recommendation", "The next one is T: a tent", "T")]:
        assert public.ecommmmu_extract(task, text) == got, (task, text)
    with pytest.raises(ValueError, match="unknown eComMMMU task"):
        public.ecommmmu_extract("nope", "A")


def test_mmmu_open_parser_matches_lmms_eval_on_messy_answers(lmms):
    """MMMU's open-answer parser on generated answers (indicator words, newlines, numbers, empty tails)."""
    from ecomvlm.eval.public.mmmu import mmmu_parse_open

    rng = random.Random(17)
    pieces = ["The answer is", "answer", "is", "so", "thus", "therefore", "final", "result", "could be", "=", "\n",
              ". ", "42", "3.14", "1,000", "-7", "2e3", "Paris", "kg", "", " ", ".", ":", "The", "A", "x = 5"]
    answers = ["The answer is \n42", "so \n", "is", "The answer is . 7", "thus 3\nso", "= 4"]
    answers += [" ".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))) for _ in range(3000)]
    mismatches = [a for a in answers if sorted(map(str, mmmu_parse_open(a))) !=
                  sorted(map(str, lmms.mmmu.parse_open_response(a)))]
    assert mismatches == []
    assert "is" in mmmu_parse_open("The answer is \n42")  # the empty tail after "is " does not win


def test_loader_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_to_disk"):
        load_public("mme", tmp_path / "not-there")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no parquet/json"):
        load_public("mme", tmp_path / "empty")
    with pytest.raises(ValueError, match="known"):
        load_public("mmbench-cn", tmp_path)


def test_mmbench_llm_matching_matches_lmms_eval_gpt_eval(lmms, tmp_path, scripted_server):
    """Answers the rules cannot map go to an LLM with MMBench's matching prompt (lmms-eval `mmbench_en_dev`,
    eval_method="openai"): both sides ask the same scripted endpoint and must score the same."""
    url, handler = scripted_server
    rows = []
    for idx, ans in [(0, "A"), (1_000_000, "B"), (1, "C"), (2, "D"), (1_000_002, "A")]:
        rows.append({"index": idx, "question": "What is it", "hint": "nan", "A": "dog", "B": "cat", "C": "bird",
                     "D": "fish", "answer": ans, "category": "c", "L2-category": "l2", "source": "s", "split": "dev",
                     "image": _img()})
    preds = ["A", "a kitten, I think", "something with feathers", "no idea at all", "a puppy maybe"]
    # LLM answers in call order: q0/rot1 -> "B" (right); q1 -> "The answer is C" (right);
    # q2/rot0 -> 3 useless answers -> MMBench's seeded random fallback
    script = [(200, "B"), (200, "The answer is C"), (200, "hmm"), (200, "not sure"), (200, "???")]
    recs = load_public("mmbench", _save(tmp_path, "mmb", rows, "dev"))
    client_calls = []

    from ecomvlm.eval.openai_client import OpenAIChatClient

    client = OpenAIChatClient(url, "gpt-matcher")

    def matcher(prompt):
        client_calls.append(prompt)
        return client.chat([{"role": "user", "content": prompt}], max_tokens=256)

    handler.script = list(script)
    ours = score_public("mmbench", recs, preds, matcher=matcher)
    our_prompts = [s["body"]["messages"][0]["content"] for s in handler.seen]
    handler.script, handler.seen = list(script), []
    ev = lmms.mmb.MMBench_Evaluator(sys_prompt="There are several options:", API_KEY="x",
                                    API_URL=f"{url}/v1/chat/completions", model_version="gpt-matcher")
    results = [{k: r[k] for k in ("index", "question", "answer", "hint", "source", "split", "category",
                                  "L2-category", "A", "B", "C", "D")} | {"prediction": p} for r, p in zip(rows, preds)]
    overall, _, _ = ev.eval_result(results, eval_method="openai")
    assert [s["body"]["messages"][0]["content"] for s in handler.seen] == our_prompts  # same prompts, same order
    assert ours["accuracy"] == pytest.approx(100 * overall) and ours["matcher"] == "llm"
    assert ours["llm_match_failures"] == 3 and len(client_calls) == 5
