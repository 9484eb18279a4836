"""Verifiable instruction following: machine-checkable constraints, their checker, and an IFEval-style scorer.

One checker serves two purposes:

- curation (``data_modules/curation``): every *precise instruction following* target is checked against the
  constraints its prompt states before it is written (a target that fails is never trained on);
- evaluation: a benchmark of prompts with constraints, scored like IFEval (Zhou et al., 2023): prompt-level and
  instruction-level accuracy, each *strict* (the response as it is) and *loose* (the best of eight variants: the
  response, without its first line, without its last line, without both, and each of those with ``*`` removed).

Constraints use Google IFEval's instruction ids and keyword arguments, so records of the original IFEval set
(``{"key", "prompt", "instruction_id_list", "kwargs"}``) are scored as they are, plus a few e-commerce checks under
``ecom:``. The checks reproduce IFEval's ``check_following`` (lmms-eval's copy, ``lmms_eval/tasks/ifeval``) except
where IFEval needs third-party models: sentences are counted with IFEval's own rule-based splitter
(``split_into_sentences``) instead of NLTK's punkt model, the ``change_case:english_*`` checks do not run langdetect,
and ``language:response_language`` is not supported (a record that uses it is reported, never silently scored).
Keywords are matched as literal text (IFEval uses them as regular expressions; identical for plain words).

Record format (one JSON object per line; ``ecomvlm data curate`` writes ``export/eval/ifeval.jsonl``)::

    {"id": "listing-17-pif", "images": ["images/a.png"], "prompt": "<image>\\nDescribe ... Answer with less than
     40 words.", "constraints": [{"instruction_id": "length_constraints:number_words",
     "kwargs": {"num_words": 40, "relation": "less than"}}], "answer": "reference (optional)"}

API::

    check(response, instruction_id, kwargs, prompt="") -> bool       # one constraint, strict
    check_loose(response, instruction_id, kwargs, prompt="") -> bool
    check_all(response, constraints, prompt="") -> list[bool]
    violations(response, constraints, prompt="") -> list[str]        # human-readable, for feedback / logs
    describe(instruction_id, kwargs) -> str                          # the instruction as a prompt states it
    constraint_problem(constraint) -> str | None                     # a malformed constraint, before use
    normalize_record(record) -> dict                                 # IFEval or ecomvlm format -> ecomvlm format
    load_ifeval(path) -> list[dict];  score_ifeval(records, predictions) -> metrics

One module on purpose (~600 lines): IFEval's instruction registry is one table of checkers and their
strict/loose variants; the generator (curation) and the benchmark must read the same table.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable

RELATIONS = ("less than", "at least")
CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


# ------------------------------------------------------------------------------------------ text utilities
_ALPHABETS = "([A-Za-z])"
_PREFIXES = "(Mr|St|Mrs|Ms|Dr)[.]"
_SUFFIXES = "(Inc|Ltd|Jr|Sr|Co)"
_STARTERS = (r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s"
             r"|This\s|Wherever)")
_ACRONYMS = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_WEBSITES = "[.](com|net|org|io|gov|edu|me)"
_DIGITS = "([0-9])"
_MULTIPLE_DOTS = r"\.{2,}"


def split_into_sentences(text: str) -> list[str]:
    """IFEval's rule-based sentence splitter (instructions_util.split_into_sentences), verbatim in behaviour."""
    text = " " + text + "  "
    text = text.replace("\n", " ")
    text = re.sub(_PREFIXES, "\\1<prd>", text)
    text = re.sub(_WEBSITES, "<prd>\\1", text)
    text = re.sub(_DIGITS + "[.]" + _DIGITS, "\\1<prd>\\2", text)
    text = re.sub(_MULTIPLE_DOTS, lambda m: "<prd>" * len(m.group(0)) + "<stop>", text)
    if "Ph.D" in text:
        text = text.replace("Ph.D.", "Ph<prd>D<prd>")
    text = re.sub(r"\s" + _ALPHABETS + "[.] ", " \\1<prd> ", text)
    text = re.sub(_ACRONYMS + " " + _STARTERS, "\\1<stop> \\2", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>\\3<prd>", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>", text)
    text = re.sub(" " + _SUFFIXES + "[.] " + _STARTERS, " \\1<stop> \\2", text)
    text = re.sub(" " + _SUFFIXES + "[.]", " \\1<prd>", text)
    text = re.sub(" " + _ALPHABETS + "[.]", " \\1<prd>", text)
    if "\u201d" in text:
        text = text.replace(".\u201d", "\u201d.")
    if '"' in text:
        text = text.replace('."', '".')
    if "!" in text:
        text = text.replace('!"', '"!')
    if "?" in text:
        text = text.replace('?"', '"?')
    text = text.replace(".", ".<stop>").replace("?", "?<stop>").replace("!", "!<stop>").replace("<prd>", ".")
    sentences = [s.strip() for s in text.split("<stop>")]
    if sentences and not sentences[-1]:
        sentences = sentences[:-1]
    return sentences


def count_words(text: str) -> int:
    """Words as IFEval counts them (NLTK's RegexpTokenizer(r"\\w+"))."""
    return len(re.findall(r"\w+", text))


def count_sentences(text: str) -> int:
    return len([s for s in split_into_sentences(text) if s])


def _word_tokens(text: str) -> list[str]:
    """A stand-in for nltk.word_tokenize, enough for counting all-capital words: words (hyphens and apostrophes
    kept inside) and single punctuation marks."""
    return re.findall(r"\w+(?:[-'’]\w+)*|[^\w\s]", text)


def _compare(value: int, relation: str, n: int) -> bool:
    return value < n if relation == "less than" else value >= n


def _strip_json_fence(value: str) -> str:
    value = value.strip()
    for p in ("```json", "```Json", "```JSON", "```"):
        if value.startswith(p):
            value = value[len(p):]
            break
    if value.endswith("```"):
        value = value[:-3]
    return value.strip()


def _paragraphs_by_divider(value: str) -> list[str]:
    return re.split(r"\s?\*\*\*\s?", value)


# ------------------------------------------------------------------------------------------ the checks
def _keywords_existence(v: str, kw: dict, prompt: str) -> bool:
    return all(re.search(re.escape(k), v, flags=re.IGNORECASE) for k in kw["keywords"])


def _keywords_forbidden(v: str, kw: dict, prompt: str) -> bool:
    return not any(re.search(r"\b" + re.escape(w) + r"\b", v, flags=re.IGNORECASE) for w in kw["forbidden_words"])


def _keywords_frequency(v: str, kw: dict, prompt: str) -> bool:
    n = len(re.findall(re.escape(kw["keyword"].strip()), v, flags=re.IGNORECASE))
    return _compare(n, kw["relation"], int(kw["frequency"]))


def _letter_frequency(v: str, kw: dict, prompt: str) -> bool:
    n = collections.Counter(v.lower())[kw["letter"].lower()]
    return _compare(n, kw["let_relation"], int(kw["let_frequency"]))


def _number_words(v: str, kw: dict, prompt: str) -> bool:
    return _compare(count_words(v), kw["relation"], int(kw["num_words"]))


def _number_sentences(v: str, kw: dict, prompt: str) -> bool:
    return _compare(count_sentences(v), kw["relation"], int(kw["num_sentences"]))


def _number_paragraphs(v: str, kw: dict, prompt: str) -> bool:
    paragraphs = _paragraphs_by_divider(v)
    n = len(paragraphs)
    for i, p in enumerate(paragraphs):
        if not p.strip():
            if i == 0 or i == len(paragraphs) - 1:
                n -= 1
            else:
                return False
    return n == int(kw["num_paragraphs"])


def _nth_paragraph_first_word(v: str, kw: dict, prompt: str) -> bool:
    paragraphs = re.split(r"\n\n", v)
    n = len(paragraphs) - sum(1 for p in paragraphs if not p.strip())
    nth = int(kw["nth_paragraph"])
    if nth > n:
        return False
    paragraph = paragraphs[nth - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    first = ""
    for letter in word:
        if letter in {".", ",", "?", "!", "'", '"'}:
            break
        first += letter.lower()
    return n == int(kw["num_paragraphs"]) and first == kw["first_word"].lower()


def _placeholders(v: str, kw: dict, prompt: str) -> bool:
    return len(re.findall(r"\[.*?\]", v)) >= int(kw["num_placeholders"])


def _postscript(v: str, kw: dict, prompt: str) -> bool:
    marker = kw["postscript_marker"].strip()
    v = v.lower()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.findall(pattern, v, flags=re.MULTILINE))


def _bullets(v: str, kw: dict, prompt: str) -> bool:
    n = len(re.findall(r"^\s*\*[^\*].*$", v, flags=re.MULTILINE)) + len(re.findall(r"^\s*-.*$", v, flags=re.MULTILINE))
    return n == int(kw["num_bullets"])


def _constrained_response(v: str, kw: dict, prompt: str) -> bool:
    v = v.strip()
    return any(option in v for option in CONSTRAINED_RESPONSES)


def _highlighted(v: str, kw: dict, prompt: str) -> bool:
    n = sum(1 for h in re.findall(r"\*[^\n\*]*\*", v) if h.strip("*").strip())
    n += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", v) if h.removeprefix("**").removesuffix("**").strip())
    return n >= int(kw["num_highlights"])


def _sections(v: str, kw: dict, prompt: str) -> bool:
    sections = re.split(r"\s?" + re.escape(kw["section_spliter"].strip()) + r"\s?\d+\s?", v)
    return len(sections) - 1 >= int(kw["num_sections"])


def _json_format(v: str, kw: dict, prompt: str) -> bool:
    try:
        json.loads(_strip_json_fence(v))
    except ValueError:
        return False
    return True


def _title(v: str, kw: dict, prompt: str) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", v))


def _two_responses(v: str, kw: dict, prompt: str) -> bool:
    valid = []
    parts = v.split("******")
    for i, part in enumerate(parts):
        if not part.strip():
            if i != 0 and i != len(parts) - 1:
                return False
        else:
            valid.append(part)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def _repeat_prompt(v: str, kw: dict, prompt: str) -> bool:
    return v.strip().lower().startswith(str(kw.get("prompt_to_repeat") or prompt).strip().lower())


def _end_checker(v: str, kw: dict, prompt: str) -> bool:
    return v.strip().strip('"').lower().endswith(kw["end_phrase"].strip().lower())


def _quotation(v: str, kw: dict, prompt: str) -> bool:
    v = v.strip()
    return len(v) > 1 and v[0] == '"' and v[-1] == '"'


def _english_capital(v: str, kw: dict, prompt: str) -> bool:
    return v.isupper()


def _english_lowercase(v: str, kw: dict, prompt: str) -> bool:
    return v.islower()


def _capital_word_frequency(v: str, kw: dict, prompt: str) -> bool:
    n = sum(1 for w in _word_tokens(v) if w.isupper())
    return _compare(n, kw["capital_relation"], int(kw["capital_frequency"]))


def _no_comma(v: str, kw: dict, prompt: str) -> bool:
    return "," not in v


# e-commerce checks (ours)
def _max_characters(v: str, kw: dict, prompt: str) -> bool:
    return len(v.strip()) <= int(kw["max_chars"])


def _start_with(v: str, kw: dict, prompt: str) -> bool:
    return v.strip().lower().startswith(kw["phrase"].strip().lower())


def _key_value_lines(v: str, kw: dict, prompt: str) -> bool:
    """Every non-empty line is `Key: Value`; with `keys`, exactly those keys (case-insensitive), once each."""
    lines = [line.strip() for line in v.strip().splitlines() if line.strip()]
    if not lines:
        return False
    keys = []
    for line in lines:
        m = re.match(r"^([^:\n]{1,60}):\s*(\S.*)$", line)
        if not m:
            return False
        keys.append(m.group(1).strip().lower())
    want = kw.get("keys")
    if want is None:
        return True
    return sorted(keys) == sorted(k.strip().lower() for k in want)


def _json_keys(v: str, kw: dict, prompt: str) -> bool:
    """A JSON object (``` fences allowed) whose keys are exactly `keys` (case-insensitive)."""
    try:
        obj = json.loads(_strip_json_fence(v))
    except ValueError:
        return False
    return isinstance(obj, dict) and sorted(k.lower() for k in obj) == sorted(k.lower() for k in kw["keys"])


Check = Callable[[str, dict, str], bool]


# instruction id -> (check, required kwargs with their types, description template)
INSTRUCTIONS: dict[str, tuple[Check, dict[str, type], str]] = {
    "keywords:existence": (_keywords_existence, {"keywords": list},
                           "Include the keywords {keywords} in your response."),
    "keywords:forbidden_words": (_keywords_forbidden, {"forbidden_words": list},
                                 "Do not include the words {forbidden_words} in your response."),
    "keywords:frequency": (_keywords_frequency, {"keyword": str, "frequency": int, "relation": str},
                           "In your response, the word {keyword} should appear {relation} {frequency} times."),
    "keywords:letter_frequency": (_letter_frequency, {"letter": str, "let_frequency": int, "let_relation": str},
                                  "In your response, the letter {letter} should appear {let_relation} "
                                  "{let_frequency} times."),
    "length_constraints:number_words": (_number_words, {"num_words": int, "relation": str},
                                        "Answer with {relation} {num_words} words."),
    "length_constraints:number_sentences": (_number_sentences, {"num_sentences": int, "relation": str},
                                            "Your response should contain {relation} {num_sentences} sentences."),
    "length_constraints:number_paragraphs": (_number_paragraphs, {"num_paragraphs": int},
                                             "There should be {num_paragraphs} paragraphs. Paragraphs are separated "
                                             "with the markdown divider: ***"),
    "length_constraints:nth_paragraph_first_word": (
        _nth_paragraph_first_word, {"num_paragraphs": int, "nth_paragraph": int, "first_word": str},
        "There should be {num_paragraphs} paragraphs. Paragraphs and only paragraphs are separated with each other "
        "by two new lines. The {nth_paragraph}-th paragraph must start with word {first_word}."),
    "detectable_content:number_placeholders": (_placeholders, {"num_placeholders": int},
                                               "The response must contain at least {num_placeholders} placeholders "
                                               "represented by square brackets, such as [address]."),
    "detectable_content:postscript": (_postscript, {"postscript_marker": str},
                                      "At the end of your response, please explicitly add a postscript starting "
                                      "with {postscript_marker}"),
    "detectable_format:number_bullet_lists": (_bullets, {"num_bullets": int},
                                              "Your answer must contain exactly {num_bullets} bullet points. Use the "
                                              "markdown bullet points such as:\n* This is point 1.\n* This is point 2"),
    "detectable_format:constrained_response": (_constrained_response, {},
                                               "Answer with one of the following options: ('My answer is yes.', "
                                               "'My answer is no.', 'My answer is maybe.')"),
    "detectable_format:number_highlighted_sections": (_highlighted, {"num_highlights": int},
                                                      "Highlight at least {num_highlights} sections in your answer "
                                                      "with markdown, i.e. *highlighted section*."),
    "detectable_format:multiple_sections": (_sections, {"section_spliter": str, "num_sections": int},
                                            "Your response must have {num_sections} sections. Mark the beginning of "
                                            "each section with {section_spliter} X, such as: {section_spliter} 1"),
    "detectable_format:json_format": (_json_format, {},
                                      "Entire output should be wrapped in JSON format. You can use markdown ticks "
                                      "such as ```."),
    "detectable_format:title": (_title, {},
                                "Your answer must contain a title, wrapped in double angular brackets, such as "
                                "<<poem of joy>>."),
    "combination:two_responses": (_two_responses, {},
                                  "Give two different responses. Responses and only responses should be separated "
                                  "by 6 asterisk symbols: ******."),
    "combination:repeat_prompt": (_repeat_prompt, {"prompt_to_repeat": str},
                                  "First repeat the request word for word without change, then give your answer "
                                  "(1. do not say any words or characters before repeating the request; 2. the "
                                  "request you need to repeat does not include this sentence)"),
    "startend:end_checker": (_end_checker, {"end_phrase": str},
                             "Finish your response with this exact phrase {end_phrase}. No other words should "
                             "follow this phrase."),
    "startend:quotation": (_quotation, {}, "Wrap your entire response with double quotation marks."),
    "change_case:english_capital": (_english_capital, {},
                                    "Your entire response should be in English, and in all capital letters."),
    "change_case:english_lowercase": (_english_lowercase, {},
                                      "Your entire response should be in English, and in all lowercase letters. No "
                                      "capital letters are allowed."),
    "change_case:capital_word_frequency": (_capital_word_frequency,
                                           {"capital_frequency": int, "capital_relation": str},
                                           "In your response, words with all capital letters should appear "
                                           "{capital_relation} {capital_frequency} times."),
    "punctuation:no_comma": (_no_comma, {},
                             "In your entire response, refrain from the use of any commas."),
    "ecom:max_characters": (_max_characters, {"max_chars": int},
                            "Your answer must be at most {max_chars} characters long."),
    "ecom:start_with": (_start_with, {"phrase": str}, "Start your answer with \"{phrase}\"."),
    "ecom:key_value_lines": (_key_value_lines, {},
                             "Write one attribute per line as 'Key: Value', and nothing else."),
    "ecom:json_keys": (_json_keys, {"keys": list},
                       "Answer with a JSON object whose keys are exactly {keys}."),
}
UNSUPPORTED = {"language:response_language": "needs a language identifier (langdetect); not reproduced here"}
RELATION_KWARGS = ("relation", "let_relation", "capital_relation")


def constraint_problem(constraint: Any) -> str | None:
    """Why `constraint` ({"instruction_id", "kwargs"}) cannot be checked, or None."""
    if not isinstance(constraint, dict) or not isinstance(constraint.get("instruction_id"), str):
        return f"a constraint is {{'instruction_id': str, 'kwargs': {{...}}}}, got {constraint!r:.80}"
    iid = constraint["instruction_id"]
    if iid in UNSUPPORTED:
        return f"{iid} is not supported: {UNSUPPORTED[iid]}"
    if iid not in INSTRUCTIONS:
        return f"unknown instruction id {iid!r}"
    kwargs = constraint.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        return f"{iid}: kwargs must be an object, got {kwargs!r:.60}"
    for name, typ in INSTRUCTIONS[iid][1].items():
        if name == "prompt_to_repeat":
            continue  # IFEval fills it from the prompt
        if kwargs.get(name) is None:
            return f"{iid}: missing kwarg {name!r}"
        val = kwargs[name]
        if typ is int:
            if isinstance(val, bool) or not isinstance(val, (int, float)) or int(val) != val:
                return f"{iid}: {name} must be an integer, got {val!r}"
        elif typ is list:
            if not isinstance(val, list) or not val or not all(isinstance(x, str) and x.strip() for x in val):
                return f"{iid}: {name} must be a non-empty list of words, got {val!r:.60}"
        elif not isinstance(val, str) or not val.strip():
            return f"{iid}: {name} must be a non-empty string, got {val!r:.60}"
        if name in RELATION_KWARGS and val not in RELATIONS:
            return f"{iid}: {name} must be one of {RELATIONS}, got {val!r}"
    return None


def check(response: str, instruction_id: str, kwargs: dict[str, Any] | None = None, prompt: str = "") -> bool:
    """Strict: does `response` follow the instruction? An empty response follows nothing (as IFEval)."""
    kwargs = kwargs or {}
    problem = constraint_problem({"instruction_id": instruction_id, "kwargs": kwargs})
    if problem:
        raise ValueError(problem)
    if not isinstance(response, str) or not response.strip():
        return False
    return bool(INSTRUCTIONS[instruction_id][0](response, kwargs, prompt))


def loose_variants(response: str) -> list[str]:
    """IFEval's eight loose variants of a response."""
    r = response.split("\n")
    first, last, both = "\n".join(r[1:]).strip(), "\n".join(r[:-1]).strip(), "\n".join(r[1:-1]).strip()
    return [response, response.replace("*", ""), first, last, both, first.replace("*", ""),
            last.replace("*", ""), both.replace("*", "")]


def check_loose(response: str, instruction_id: str, kwargs: dict[str, Any] | None = None, prompt: str = "") -> bool:
    return any(check(v, instruction_id, kwargs, prompt) for v in loose_variants(response or ""))


def _constraint_items(constraints: Iterable[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(c["instruction_id"], c.get("kwargs") or {}) for c in constraints]


def check_all(response: str, constraints: Iterable[dict[str, Any]], prompt: str = "",
              loose: bool = False) -> list[bool]:
    fn = check_loose if loose else check
    return [fn(response, iid, kw, prompt) for iid, kw in _constraint_items(constraints)]


def describe(instruction_id: str, kwargs: dict[str, Any] | None = None) -> str:
    """The instruction as a prompt states it (IFEval's wording where IFEval has one)."""
    kwargs = dict(kwargs or {})
    template = INSTRUCTIONS[instruction_id][2]
    shown = {k: (", ".join(repr(x) for x in v) if isinstance(v, list) else v) for k, v in kwargs.items()}
    for k in INSTRUCTIONS[instruction_id][1]:
        shown.setdefault(k, "")
    return template.format(**shown)


def violations(response: str, constraints: Iterable[dict[str, Any]], prompt: str = "") -> list[str]:
    """One line per constraint the response breaks (strict), e.g. for an LLM writer's feedback."""
    out = []
    for iid, kw in _constraint_items(constraints):
        if not check(response, iid, kw, prompt):
            out.append(f"{iid}: {describe(iid, kw)}")
    return out


# ------------------------------------------------------------------------------------------ benchmark
def normalize_record(rec: dict[str, Any]) -> dict[str, Any]:
    """An IFEval record ({key, prompt, instruction_id_list, kwargs}) or an ecomvlm one ({id, prompt, constraints,
    images?}) -> the ecomvlm form. Falsy kwargs are dropped as IFEval does (its loader writes None for unused ones)."""
    if "constraints" in rec:
        out = dict(rec)
        out.setdefault("images", [])
        out.setdefault("answer", "")  # a reference answer is optional (the checker needs none)
        out["constraints"] = [{"instruction_id": c["instruction_id"],
                               "kwargs": {k: v for k, v in (c.get("kwargs") or {}).items() if v is not None}}
                              for c in rec["constraints"]]
        return out
    if "instruction_id_list" not in rec:
        raise ValueError(f"record {str(rec)[:80]}: needs 'constraints' or IFEval's 'instruction_id_list' + 'kwargs'")
    kwargs = rec.get("kwargs") or [{} for _ in rec["instruction_id_list"]]
    if len(kwargs) != len(rec["instruction_id_list"]):
        raise ValueError(f"record {rec.get('key')}: {len(rec['instruction_id_list'])} instruction ids but "
                         f"{len(kwargs)} kwargs")
    return {"id": str(rec.get("key", rec.get("id"))), "prompt": rec["prompt"], "images": rec.get("images", []),
            "answer": rec.get("answer", ""),
            "constraints": [{"instruction_id": i, "kwargs": {k: v for k, v in (kw or {}).items() if v}}
                            for i, kw in zip(rec["instruction_id_list"], kwargs)]}


def load_ifeval(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Records of a JSONL file (either format), normalized; a broken line is an error naming it."""
    out = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(normalize_record(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}:{i}: not an IFEval record ({e})") from None
        if limit and len(out) >= limit:
            break
    return out


def score_ifeval(records: list[dict[str, Any]], predictions: list[str]) -> dict[str, Any]:
    """IFEval's four accuracies (prompt/instruction level x strict/loose) + accuracy per instruction id.

    Records with an unsupported or malformed constraint are not scored: they are counted in ``unsupported`` (with
    examples) and left out of every accuracy, so a number never silently mixes in unchecked constraints."""
    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} records but {len(predictions)} predictions")
    prompt_s = prompt_l = 0
    inst_s: list[bool] = []
    inst_l: list[bool] = []
    per_id: dict[str, list[int]] = {}
    unsupported: collections.Counter = collections.Counter()
    examples: list[str] = []
    items = []
    scored = 0
    for rec, pred in zip(records, predictions):
        rec = normalize_record(rec)
        problems = [p for p in (constraint_problem(c) for c in rec["constraints"]) if p]
        if problems or not rec["constraints"]:
            unsupported[problems[0].split(":")[0] if problems else "no_constraints"] += 1
            if len(examples) < 5:
                examples.append(f"{rec['id']}: {problems[0] if problems else 'no constraints'}")
            items.append({"id": rec["id"], "scored": False})
            continue
        pred = pred if isinstance(pred, str) else ""
        strict = check_all(pred, rec["constraints"], rec["prompt"])
        loose = check_all(pred, rec["constraints"], rec["prompt"], loose=True)
        scored += 1
        prompt_s += all(strict)
        prompt_l += all(loose)
        inst_s += strict
        inst_l += loose
        for c, s, lo in zip(rec["constraints"], strict, loose):
            acc = per_id.setdefault(c["instruction_id"], [0, 0, 0])
            acc[0] += 1
            acc[1] += s
            acc[2] += lo
        items.append({"id": rec["id"], "scored": True, "strict": strict, "loose": loose})

    def ratio(a: float, b: int) -> float | None:
        return a / b if b else None

    return {
        "prompt_level_strict_acc": ratio(prompt_s, scored),
        "inst_level_strict_acc": ratio(sum(inst_s), len(inst_s)),
        "prompt_level_loose_acc": ratio(prompt_l, scored),
        "inst_level_loose_acc": ratio(sum(inst_l), len(inst_l)),
        "n": len(records), "scored": scored, "instructions": len(inst_s),
        "unsupported": dict(unsupported), "unsupported_examples": examples,
        "per_instruction": {k: {"n": v[0], "strict_acc": v[1] / v[0], "loose_acc": v[2] / v[0]}
                            for k, v in sorted(per_id.items())},
        "items": items,
    }


IFEVAL_MAX_NEW_TOKENS = 256  # constrained descriptions, JSON and bullet lists are longer than short answers


def evaluate_ifeval(backend: Any, records: list[dict[str, Any]], *, data_dir: str | Path | None = None,
                    images: list[list[Any]] | None = None, max_new_tokens: int = IFEVAL_MAX_NEW_TOKENS,
                    system: str | None = None) -> dict[str, Any]:
    """Generate with `backend` (eval/backends.py: ``generate(prompts, images, max_new_tokens=...)``) on the records
    (either format) and score them: :func:`score_ifeval`'s metrics plus ``predictions``. Images are the records'
    ``images`` paths (relative to `data_dir`), opened here unless `images` are given."""
    recs = [normalize_record(r) for r in records]
    if images is None:
        from PIL import Image

        images = []
        for r in recs:
            try:
                images.append([Image.open(Path(data_dir or ".") / p).convert("RGB") for p in r["images"]])
            except (OSError, ValueError) as e:
                raise ValueError(f"ifeval record {r['id']}: image unreadable ({e}); fix or drop the record") from None
    if len(images) != len(recs):
        raise ValueError(f"{len(recs)} records but {len(images)} image lists")
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    if system is not None:
        kwargs["system"] = system
    preds = backend.generate([r["prompt"] for r in recs], images, **kwargs) if recs else []
    metrics = score_ifeval(recs, preds)
    metrics["predictions"] = [{"id": r["id"], "prediction": p} for r, p in zip(recs, preds)]
    return metrics
