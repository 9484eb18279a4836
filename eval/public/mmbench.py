"""MMBench-dev (circular evaluation), its rule-based and LLM option matching, and lmms-eval's multiple-choice
extractor (also used by MMStar)."""

from __future__ import annotations

import random
import string
from collections import defaultdict
from typing import Any, Callable

from ecomvlm.eval.public.loading import _missing

MC_POST = "\nAnswer with the option's letter from the given choices directly."
SHORT_POST = "\nAnswer the question using a single word or phrase."


def mmbench_options(doc: dict[str, Any]) -> dict[str, str]:
    return {c: doc[c] for c in "ABCDE" if c in doc and doc[c] and not _missing(doc[c])}


def mmbench_prompt(doc: dict[str, Any]) -> str:
    opts = "There are several options:\n" + "".join(f"{k}. {v}\n" for k, v in sorted(mmbench_options(doc).items()))
    opts = opts.rstrip("\n")
    hint = doc.get("hint")
    q = f"{hint} {doc['question']} {opts}" if not _missing(hint) else f"{doc['question']} {opts}"
    return q + MC_POST


def mmbench_infer_option(answer: str, num_choice: int = 5) -> str | None:
    """MMBench's rule-based option matcher (VLMEvalKit `can_infer_option`)."""
    choices = string.ascii_uppercase[:num_choice]
    if "Failed to obtain answer via API" in answer:
        return None
    splits = [x.strip() for x in answer.split()]

    def count(prefix: str = "", suffix: str = "") -> int:
        return sum(1 for c in choices if prefix + c + suffix in splits)

    if count() == 1:
        for ch in choices:
            if "A" in splits and len(splits) > 3:
                break  # "A" may be an article
            if ch in splits:
                return ch
    for pre, suf in [("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""),
                     (":", ","), (":", "."), (":", ")"), (":", ").")]:
        if count(pre, suf) == 1:
            for ch in choices:
                if pre + ch + suf in splits:
                    return ch
    return None


def mmbench_infer_text(answer: str, choices: dict[str, str]) -> str | None:
    answer = answer.lower()
    cands = [k for k, v in choices.items() if str(v).lower() in answer]
    return cands[0] if len(cands) == 1 else None


def mcq_extract(response: str, choices: list[str] | None = None) -> str:
    """Choice letter from free text by format priority (lmms-eval `extract_mcq_answer`, English phrases)."""
    if not response or not response.strip():
        return ""
    letters = choices or list("ABCDEFGH")
    text = response.strip()
    for ch in ",.!?;:'\"":
        text = text.strip(ch)
    text = " " + text + " "
    cands: list[tuple[str, int, int]] = []  # (letter, position, priority)
    for fmt, prio in (("({})", 6), ("{}.", 5), ("{}:", 4), ("{})", 3), ("{} ", 2)):
        for ch in letters:
            if fmt.format(ch) in text:
                cands.append((ch, text.rfind(fmt.format(ch)), prio))
    low = text.lower()
    for phrase in _ANSWER_PHRASES:
        idx = low.find(phrase)
        if idx != -1:
            for ch in letters:
                pos = text.find(ch, idx + len(phrase))
                if pos != -1:
                    cands.append((ch, pos, 7))
    stripped = text.strip()
    for ch in letters:
        if stripped.startswith(ch) and (len(stripped) == 1 or not stripped[1].isalpha()):
            cands.append((ch, 0, 10))
        if stripped.endswith(ch) and (len(stripped) == 1 or not stripped[-2].isalpha()):
            cands.append((ch, len(text) - 1, 9))
    if not cands:
        cands = [(ch, text.rfind(ch), 0) for ch in letters if ch in text]
    if not cands:
        return ""
    return max(cands, key=lambda c: (c[2], c[1]))[0]


_ANSWER_PHRASES = ["the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
                   "best answer is", "the correct option is", "correct option is", "the best option is",
                   "best option is", "the choice is", "choice is", "the correct choice is", "correct choice is",
                   "i choose", "i select", "i pick", "my answer is", "my choice is", "옵션", "정답은", "답은", "답:",
                   "答案是", "答案为", "选", "答えは"]


MMBENCH_MATCH_PROMPT = (
    "You are an AI assistant who will help me to match an answer with several options of a single-choice question. "
    "You are provided with a question, several options, and an answer, and you need to find which option is most "
    "similar to the answer. If the meaning of all options are significantly different from the answer, output E. "
    "Your should output a single uppercase character in A, B, C, D (if they are valid options), and E. \n"
    "Example 1: \nQuestion: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: a cute teddy bear\nYour output: A\nExample 2: \nQuestion: What is the main object in image?\n"
    "Options: A. teddy bear B. rabbit C. cat D. dog\nAnswer: Spider\nYour output: E\nExample 3: \n"
    "Question: {}?\nOptions: {}\nAnswer: {}\nYour output: ")


def mmbench_llm_match(doc: dict[str, Any], prediction: str, matcher: Callable[[str], str],
                      rng: random.Random) -> tuple[str, int]:
    """MMBench's GPT matching (VLMEvalKit / lmms-eval `extract_answer_from_item`): ask `matcher` (an LLM) which
    option the answer means, up to 3 times; then a random letter of A..(n)+E, as the reference does.
    Returns (letter, failed LLM answers)."""
    opts = ""
    for c in "ABCD":
        if _missing(doc.get(c)):
            break
        opts += f"{c}. {doc[c]}\n"
    prompt = MMBENCH_MATCH_PROMPT.format(doc["question"], "There are several options: \n" + opts, prediction)
    choices = {c: doc[c] for c in "ABCD" if c in doc and not _missing(doc[c])}
    failures = 0
    for _ in range(3):
        try:
            ans = matcher(prompt)
        except ConnectionError:
            ans = "Failed to obtain answer via API"
        got = mmbench_infer_option(ans) or mmbench_infer_text(ans, choices)
        if got:
            return got, failures
        failures += 1
    n = sum(c in doc for c in "ABCD")
    if n < 2:
        return "", failures
    letters = string.ascii_uppercase[:n] + "E"
    return letters[rng.randint(0, n)], failures


def score_mmbench(records: list[dict[str, Any]], preds: list[str],
                  matcher: Callable[[str], str] | None = None) -> dict[str, Any]:
    """Circular evaluation: a question counts only if every rotation of its options (index % 1e6) is right.

    Rule matching first (option letter, then option text). Leftovers: with `matcher` (an LLM behind
    `ecomvlm eval --judge llm`) MMBench's GPT matching, as lmms-eval's `mmbench_en_dev`; without, lmms-eval's
    "static" `mmbench_en_dev_static` extractor, so results need no API."""
    rng = random.Random(2680)  # the reference seeds its random fallback with 2680 per evaluation
    llm_failures = 0
    by_index = {int(r["doc"]["index"]): (r, p) for r, p in zip(records, preds)}
    main = sorted(i for i in by_index if i < 1_000_000)
    hits: dict[int, int] = {}
    unparsed = 0
    for idx in main:
        group = [by_index[i] for i in sorted(by_index) if i % 1_000_000 == idx]
        ok = 1
        pending = []
        for r, p in group:
            choices = {k: v for k, v in mmbench_options(r["doc"]).items() if k in "ABCD"}
            got = mmbench_infer_option(p) or mmbench_infer_text(p, choices)
            if got and got != r["answer"]:
                ok = 0
                break
            if not got:
                pending.append((r, p, choices))
        if ok:
            for r, p, choices in pending:
                if matcher is not None:
                    got, failed = mmbench_llm_match(r["doc"], p, matcher, rng)
                    llm_failures += failed
                else:
                    got = mcq_extract(p, sorted(choices))
                unparsed += not got
                if got != r["answer"]:
                    ok = 0
                    break
        hits[idx] = ok
    cat: dict[str, list[int]] = defaultdict(list)
    l2: dict[str, list[int]] = defaultdict(list)
    for idx, h in hits.items():
        cat[by_index[idx][0]["doc"].get("category", "all")].append(h)
        l2[by_index[idx][0]["doc"].get("L2-category", "all")].append(h)
    n = len(hits)
    return {"accuracy": 100 * sum(hits.values()) / max(1, n), "n": n, "n_rows": len(records), "unparsed": unparsed,
            "matcher": "llm" if matcher is not None else "static", "llm_match_failures": llm_failures,
            "per_category": {k: 100 * sum(v) / len(v) for k, v in sorted(cat.items())},
            "per_l2_category": {k: 100 * sum(v) / len(v) for k, v in sorted(l2.items())}}
