"""Verified aspects + image -> instructions in the paper's four families (3.2.2, Appendix Fig. 3).

Shares of the e-commerce total (configurable; defaults from the paper): **VQA 45%** (free-form, yes/no and full
item description questions, each image-only or with title & category context), **dynamic attribute extraction
30%** (free-form ``Key: Value`` extraction with and without title & category, variants with OCR text and with
prompt-constrained output, and their combinations), **precise instruction following 12.5%** (keyword inclusion /
avoidance, strict length and form control, combinations), **listings 12.5%** (a full listing, or its title, from
the image).

Every listing that reaches generation yields one instruction record (possibly several turns). Families are
assigned over all training listings at once, in a hash order of their ids, by smooth weighted round robin: every
prefix of the sequence is within one record of the configured shares, so the written shares match them to
1/N (plus the few records dropped after assignment). Sub-tasks are assigned the same way inside each family; a
sub-task a listing cannot take (OCR without any visible text) falls back to its nearest variant, counted as
``subtask_fallback:<from>-><to>``. Listings of the ``eval`` split all get precise-instruction-following prompts:
they form the IFEval-style benchmark (``eval/ifeval.py``), never training data.

Targets are built from the *verified* aspects only (never from unverified seller claims), and every target whose
prompt states constraints is checked with :mod:`ecomvlm.eval.ifeval` before it is written; a target that fails is
rebuilt with another draw, and after ``MAX_DRAWS`` it is dropped as ``failed:constraint_unsatisfied``.

One module on purpose (~440 lines): the four families' templates and their share bookkeeping are one
table; the constraint checks they call live in eval/ifeval.py.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from typing import Any

from ecomvlm.eval import ifeval

GENERATOR_VERSION = "gen-v1"
IMAGE = "<image>\n"
FAMILY_SHARES: dict[str, float] = {"vqa": 45.0, "dae": 30.0, "pif": 12.5, "listing": 12.5}
SUBTASK_MIX: dict[str, dict[str, float]] = {
    "vqa": {"open": 25, "open+tc": 15, "yesno": 15, "yesno+tc": 10, "describe": 20, "describe+tc": 15},
    "dae": {"free": 25, "free+tc": 15, "ocr": 10, "ocr+tc": 10, "constrained": 15, "constrained+tc": 10,
            "ocr+constrained": 10, "ocr+constrained+tc": 5},
    "pif": {"include": 25, "avoid": 20, "length": 20, "format": 20, "combo": 15},
    "listing": {"full": 60, "title": 40},
}
MAX_DRAWS = 6
TITLE_MAX_CHARS = 80  # eBay's title limit

QUESTIONS = {
    "Colour": "What is the main colour of this item?",
    "Brand": "Which brand is shown on this item?",
    "Pattern": "What is the pattern of this item?",
    "Type": "What kind of product is this?",
    "Material": "What material is this item made of?",
    "Sleeve Length": "What is the sleeve length?",
    "Neckline": "What is the neckline style?",
    "Size": "What size is this item?",
    "Style": "What style is this item?",
}
DAE_PROMPTS = [
    "Using the provided product image, list every clearly visible attribute of the item. Present each as "
    "'Key: Value' on a new line.",
    "List all attributes of this product that you can see in the image, one 'Key: Value' pair per line.",
    "Extract the visible product attributes from this image as 'Key: Value' lines.",
]
DESCRIBE_PROMPTS = ["Describe this item in detail.", "Describe the product shown in this image.",
                    "Give a detailed description of this item."]
PIF_TASKS = ["Describe this item for a marketplace listing.", "Write a short product description of this item.",
             "Describe the item shown in the image."]
LISTING_PROMPTS = ["Create a product listing for this item: a title, a category and its item specifics.",
                   "Write a complete marketplace listing for the item in this image (title, category, item "
                   "specifics)."]
TITLE_PROMPTS = ["Write a listing title for this item.", "Suggest a marketplace title for the product in this image."]
END_PHRASES = ["Is there anything else I can help with?", "Happy shopping!", "Let me know if you have any questions."]
START_PHRASES = ["Here is the description:", "Item description:"]
STOPWORDS = {"the", "and", "with", "its", "this", "item", "for", "from", "is", "a", "an", "of", "by", "in"}
FORMATS = ["json", "bullets", "lowercase", "capital", "no_comma", "title", "quotation", "end_phrase", "postscript",
           "highlight", "kv_lines", "start_with"]
LENGTHS = ["words_less", "words_at_least", "sentences_less", "sentences_at_least", "max_chars"]


# ------------------------------------------------------------------------------------------ assignment
def swrr(weights: dict[str, float], n: int) -> list[str]:
    """Smooth weighted round robin: n picks whose every prefix is within one pick of the weights' shares."""
    names = [k for k, w in weights.items() if w > 0]
    if not names:
        raise ValueError(f"all weights are zero: {weights}")
    total = sum(weights[k] for k in names)
    credit = {k: 0.0 for k in names}
    out = []
    for _ in range(n):
        for k in names:
            credit[k] += weights[k]
        pick = max(names, key=lambda k: credit[k])  # first of the maxima: deterministic
        credit[pick] -= total
        out.append(pick)
    return out


def _order(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def assign(listings: list[dict[str, Any]], shares: dict[str, float], mixes: dict[str, dict[str, float]],
           seed: int) -> dict[str, tuple[str, str]]:
    """{listing id: (family, sub-task)}: training listings by the shares, eval-split listings all `pif`."""
    train = sorted((r["id"] for r in listings if r.get("split", "train") != "eval"), key=lambda k: _order(seed, k))
    held = sorted((r["id"] for r in listings if r.get("split", "train") == "eval"), key=lambda k: _order(seed, k))
    out: dict[str, tuple[str, str]] = {}
    by_family: dict[str, list[str]] = {}
    for lid, fam in zip(train, swrr(shares, len(train))):
        by_family.setdefault(fam, []).append(lid)
    for fam, ids in by_family.items():
        for lid, sub in zip(ids, swrr(mixes[fam], len(ids))):
            out[lid] = (fam, sub)
    for lid, sub in zip(held, swrr(mixes["pif"], len(held))):
        out[lid] = ("pif", sub)
    return out


def value_pools(listings: list[dict[str, Any]], max_names: int = 50, max_values: int = 30) -> dict[str, list[str]]:
    """The most frequent visible values per aspect name (distractors for yes/no questions)."""
    from collections import Counter

    names: Counter = Counter()
    values: dict[str, Counter] = {}
    for r in listings:
        for n, v in r["visible"]:
            names[n] += 1
            values.setdefault(n, Counter())[v] += 1
    top = sorted(names, key=lambda n: (-names[n], n))[:max_names]
    return {n: sorted(values[n], key=lambda v: (-values[n][v], v))[:max_values] for n in sorted(top)}


# ------------------------------------------------------------------------------------------ text helpers
def leaf(category: str) -> str:
    return category.split(">")[-1].strip() if category else ""


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _context(rec: dict[str, Any], hide: list[str]) -> str:
    hidden = {w.lower() for v in hide for w in re.findall(r"[\w-]+", v)}
    title = " ".join(w for w in rec["title"].split() if w.lower().strip(",.") not in hidden)
    lines = [f"Title: {title}"] if title else []
    if rec.get("category"):
        lines.append(f"Category: {rec['category']}")
    return "\n".join(lines) + "\n" if lines else ""


def _question(name: str) -> str:
    return QUESTIONS.get(name, f"What is the {name.lower()} of this item?")


def _yesno(name: str, value: str) -> str:
    if name == "Colour":
        return f"Is this item {value.lower()}?"
    if name == "Brand":
        return f"Is this item made by {value}?"
    if name == "Type":
        return f"Is this {_article(value)} {value.lower()}?"
    return f"Is the {name.lower()} of this item {value}?"


def sentences(facts: list[list[str]], noun: str) -> list[str]:
    """A plain description built from verified facts only."""
    d = {n: v for n, v in facts}
    used = set()
    adjs = []
    for n in ("Colour", "Pattern"):
        if n in d and not (n == "Pattern" and d[n].lower() == "solid"):
            adjs.append(d[n].lower())
            used.add(n)
    if "Type" in d:
        noun = d["Type"]
        used.add("Type")
    noun = noun or "item"
    phrase = " ".join([*adjs, noun.lower()])
    first = f"This is {_article(phrase)} {phrase}"
    if "Brand" in d:
        first += f" by {d['Brand']}"
        used.add("Brand")
    out = [first + "."]
    for n, v in facts:
        if n not in used:
            out.append(f"Its {n.lower()} is {v}.")
    return out


def listing_title(facts: list[list[str]], noun: str, max_chars: int = TITLE_MAX_CHARS) -> str:
    d = {n: v for n, v in facts}
    parts = [d.get("Brand"), d.get("Colour"), None if (d.get("Pattern") or "").lower() == "solid" else d.get("Pattern"),
             d.get("Type") or noun]
    used = {"Brand", "Colour", "Pattern", "Type"}
    parts += [v for n, v in facts if n not in used and len(v) <= 20]
    title = ""
    for p in parts:
        if not p:
            continue
        cand = f"{title} {p}".strip()
        if len(cand) > max_chars:
            break
        title = cand
    return title or (noun or "Item")[:max_chars]


def _kv(facts: list[list[str]]) -> str:
    return "\n".join(f"{n}: {v}" for n, v in facts)


def _turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    out = []
    for h, g in pairs:
        out += [{"from": "human", "value": h}, {"from": "gpt", "value": g}]
    return out


def _c(iid: str, **kwargs: Any) -> dict[str, Any]:
    return {"instruction_id": iid, "kwargs": kwargs}


# ------------------------------------------------------------------------------------------ families
def vqa(rec: dict[str, Any], sub: str, rng: random.Random, pools: dict[str, list[str]]):
    facts = rec["visible"]
    tc = sub.endswith("+tc")
    kind = sub.split("+")[0]
    if kind == "open":
        k = rng.randint(1, min(3, len(facts)))
        asked = rng.sample(facts, k)
        ctx = _context(rec, [v for _, v in asked]) if tc else ""
        pairs = [((IMAGE + ctx if i == 0 else "") + _question(n) + " Answer with a short phrase.", v)
                 for i, (n, v) in enumerate(asked)]
        return _turns(*pairs), []
    if kind == "yesno":
        n, v = rng.choice(facts)
        others = [x for x in pools.get(n, []) if x.lower() != v.lower()]
        if others and rng.random() < 0.5:
            shown, answer = rng.choice(others), "No"
        else:
            shown, answer = v, "Yes"
        ctx = _context(rec, [v, shown]) if tc else ""
        return _turns((IMAGE + ctx + _yesno(n, shown) + " Answer yes or no.", answer)), []
    # describe
    ctx = _context(rec, []) if tc else ""
    return _turns((IMAGE + ctx + rng.choice(DESCRIBE_PROMPTS), " ".join(sentences(facts, leaf(rec["category"]))))), []


def dae(rec: dict[str, Any], sub: str, rng: random.Random, pools: dict[str, list[str]]):
    facts = rec["visible"]
    flags = set(sub.split("+"))
    ctx = _context(rec, []) if "tc" in flags else ""
    ocr = f"Text detected in the image (OCR): {rec['visible_text']}\n" if "ocr" in flags else ""
    if "constrained" not in flags:
        return _turns((IMAGE + ctx + ocr + rng.choice(DAE_PROMPTS), _kv(facts))), []
    k = rng.randint(1, min(3, len(facts)))
    chosen = [list(x) for x in rng.sample(facts, k)]
    hidden = [n for n, verdict in (rec.get("verdicts") or {}).items() if verdict == "not_visible"]
    if hidden and rng.random() < 0.5:
        chosen.insert(rng.randint(0, len(chosen)), [rng.choice(hidden), "Not visible"])
    keys = [n for n, _ in chosen]
    ask = (f"Extract only these attributes of the item from the image: {', '.join(keys)}. "
           "Write 'Not visible' for an attribute that cannot be seen.")
    if rng.random() < 0.5:
        c = _c("ecom:json_keys", keys=keys)
        target = json.dumps({n: v for n, v in chosen}, ensure_ascii=False)
    else:
        c = _c("ecom:key_value_lines", keys=keys)
        target = _kv(chosen)
    prompt = IMAGE + ctx + ocr + ask + " " + ifeval.describe(c["instruction_id"], c["kwargs"])
    return _turns((prompt, target)), [c]


_CONFLICTS = {
    "json": {"bullets", "title", "quotation", "end_phrase", "postscript", "highlight", "no_comma", "start_with",
             "kv_lines", "sentences_less", "sentences_at_least"},
    "bullets": {"json", "highlight", "kv_lines", "sentences_less", "sentences_at_least", "quotation"},
    "kv_lines": {"json", "bullets", "highlight", "title", "quotation", "end_phrase", "postscript", "start_with",
                 "sentences_less", "sentences_at_least", "capital", "lowercase"},
}


def _compatible(a: str, b: str) -> bool:
    return b not in _CONFLICTS.get(a, set()) and a not in _CONFLICTS.get(b, set())


def pif(rec: dict[str, Any], sub: str, rng: random.Random, pools: dict[str, list[str]]):
    """One draw of a precise-instruction-following record: the target is rendered first, then the constraints are
    stated so that it follows them (numbers from the target itself); :func:`generate_record` checks it."""
    facts = [list(x) for x in rec["visible"]]
    noun = leaf(rec["category"]) or "item"
    if sub == "combo":
        kinds = rng.sample(["include", "avoid", "length", "format"], rng.choice([2, 2, 3]))
    else:
        kinds = [sub]
    constraints: list[dict[str, Any]] = []
    forbidden = None
    if "avoid" in kinds:
        words = sorted({w for _, v in facts for w in re.findall(r"[A-Za-z][A-Za-z-]{2,}", v)
                        if w.lower() not in STOPWORDS} | ({noun} if re.fullmatch(r"[A-Za-z-]{3,}", noun) else set()))
        if words:
            forbidden = rng.choice(words)
            fl = forbidden.lower()
            facts = [f for f in facts if fl not in re.findall(r"[a-z-]+", f[1].lower())]
            if fl in re.findall(r"[a-z-]+", noun.lower()):
                noun = "item"
            constraints.append(_c("keywords:forbidden_words", forbidden_words=[forbidden]))
    fmt = None
    if "format" in kinds:
        fmt = rng.choice(FORMATS)
    length = rng.choice([x for x in LENGTHS if fmt is None or _compatible(fmt, x)]) if "length" in kinds else None
    # the content
    if fmt == "json":
        body = json.dumps({n: v for n, v in facts} or {"Item": noun}, ensure_ascii=False, indent=1)
    elif fmt == "bullets":
        items = [f"* {s}" for s in sentences(facts, noun)]
        body = "\n".join(items)
        constraints.append(_c("detectable_format:number_bullet_lists", num_bullets=len(items)))
    elif fmt == "kv_lines":
        body = _kv(facts) if facts else f"Type: {noun}"
    else:
        body = " ".join(sentences(facts, noun))
    if fmt == "json":
        constraints.append(_c("detectable_format:json_format"))
    elif fmt == "kv_lines":
        constraints.append(_c("ecom:key_value_lines"))
    elif fmt == "highlight":
        vals = [v for _, v in facts if v in body][:2]
        for v in vals:
            body = body.replace(v, f"*{v}*", 1)
        if vals:
            constraints.append(_c("detectable_format:number_highlighted_sections", num_highlights=len(vals)))
    elif fmt == "title":
        title = listing_title(facts, noun, 60)
        body = f"<<{title}>>\n{body}"
        constraints.append(_c("detectable_format:title"))
    elif fmt == "start_with":
        phrase = rng.choice(START_PHRASES)
        body = f"{phrase} {body}"
        constraints.append(_c("ecom:start_with", phrase=phrase))
    elif fmt == "end_phrase":
        phrase = rng.choice(END_PHRASES)
        body = f"{body}\n{phrase}"
        constraints.append(_c("startend:end_checker", end_phrase=phrase))
    elif fmt == "postscript":
        body = f"{body}\n\nP.S. Everything above can be seen in the photo."
        constraints.append(_c("detectable_content:postscript", postscript_marker="P.S."))
    if fmt == "quotation":
        body = f'"{body}"'
        constraints.append(_c("startend:quotation"))
    if fmt == "lowercase":
        body = body.lower()
        constraints.append(_c("change_case:english_lowercase"))
    elif fmt == "capital":
        body = body.upper()
        constraints.append(_c("change_case:english_capital"))
    elif fmt == "no_comma":
        body = body.replace(",", "")
        constraints.append(_c("punctuation:no_comma"))
    if "include" in kinds:
        words = sorted({w for _, v in facts for w in re.findall(r"[A-Za-z][A-Za-z-]{2,}", v)
                        if w.lower() not in STOPWORDS and re.search(re.escape(w), body, re.IGNORECASE)})
        if words:
            chosen = rng.sample(words, min(len(words), rng.randint(1, 2)))
            constraints.insert(0, _c("keywords:existence", keywords=sorted(chosen)))
    if length:
        words_n, sent_n = ifeval.count_words(body), ifeval.count_sentences(body)
        if length == "words_less":
            constraints.append(_c("length_constraints:number_words", num_words=words_n + rng.randint(1, 10),
                                  relation="less than"))
        elif length == "words_at_least":
            constraints.append(_c("length_constraints:number_words", num_words=max(1, words_n - rng.randint(0, 5)),
                                  relation="at least"))
        elif length == "sentences_less":
            constraints.append(_c("length_constraints:number_sentences", num_sentences=sent_n + rng.randint(1, 3),
                                  relation="less than"))
        elif length == "sentences_at_least":
            constraints.append(_c("length_constraints:number_sentences", num_sentences=max(1, sent_n),
                                  relation="at least"))
        else:
            constraints.append(_c("ecom:max_characters", max_chars=len(body.strip()) + rng.randint(0, 20)))
    if not constraints:  # nothing to avoid / include in this listing: state the length instead
        constraints.append(_c("length_constraints:number_words", num_words=ifeval.count_words(body) + 5,
                              relation="less than"))
    task = rng.choice(PIF_TASKS)
    prompt = IMAGE + task + " " + " ".join(ifeval.describe(c["instruction_id"], c["kwargs"]) for c in constraints)
    return _turns((prompt, body)), constraints


def listing(rec: dict[str, Any], sub: str, rng: random.Random, pools: dict[str, list[str]]):
    facts = rec["visible"]
    noun = leaf(rec["category"]) or "Item"
    title = listing_title(facts, noun)
    if sub == "title":
        c = _c("ecom:max_characters", max_chars=TITLE_MAX_CHARS)
        prompt = IMAGE + rng.choice(TITLE_PROMPTS) + " " + ifeval.describe(c["instruction_id"], c["kwargs"])
        return _turns((prompt, title)), [c]
    lines = [f"Title: {title}"]
    if rec.get("category"):
        lines.append(f"Category: {rec['category']}")
    lines += ["Item specifics:", _kv(facts)]
    return _turns((IMAGE + rng.choice(LISTING_PROMPTS), "\n".join(lines))), []


FAMILIES = {"vqa": vqa, "dae": dae, "pif": pif, "listing": listing}


def fallback(family: str, sub: str, rec: dict[str, Any]) -> str:
    """The sub-task a listing can take (OCR variants need visible text)."""
    if family == "dae" and "ocr" in sub.split("+") and not (rec.get("visible_text") or "").strip():
        rest = [p for p in sub.split("+") if p != "ocr"]
        return "+".join(rest) if rest and rest != ["tc"] else ("free+tc" if rest == ["tc"] else "free")
    return sub


def generate_record(rec: dict[str, Any], seed: int, pools: dict[str, list[str]], counters) -> tuple[
        dict[str, Any] | None, str]:
    """(instruction record or None, failure detail). Checks every stated constraint of every draw."""
    family, sub0 = rec["family"], rec["subtask"]
    sub = fallback(family, sub0, rec)
    if sub != sub0:
        counters[f"subtask_fallback:{family}/{sub0}->{family}/{sub}"] += 1
    last = ""
    for draw in range(MAX_DRAWS):
        rng = random.Random(f"{GENERATOR_VERSION}:{seed}:{rec['id']}:{draw}")
        conversations, constraints = FAMILIES[family](rec, sub, rng, pools)
        target = conversations[-1]["value"]
        for c in constraints:
            problem = ifeval.constraint_problem(c)
            if problem:
                raise ValueError(f"generator produced a malformed constraint: {problem}")
        counters["constraints_checked"] += len(constraints)
        bad = ifeval.violations(target, constraints, conversations[0]["value"]) if constraints else []
        if not target.strip() or "<image>" in target:
            bad.append("empty target or an <image> placeholder in the answer")
        if not bad:
            if draw:
                counters["constraint_redraws"] += draw
            return {"family": family, "subtask": f"{family}/{sub}", "conversations": conversations,
                    "constraints": constraints, "draws": draw + 1}, ""
        counters["constraint_violations"] += len(bad)
        last = "; ".join(bad)[:300]
    return None, last
