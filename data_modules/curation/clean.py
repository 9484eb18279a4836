"""Cleaning one listing's text (paper 3.2.1: "we then clean and pre-process the textual entries").

- text: HTML tags and entities removed, Unicode NFKC, control / zero-width characters removed, whitespace collapsed;
- aspect names: canonical spelling for the common ones (``color``, ``Main Colour`` -> ``Colour``), title case
  when a seller wrote them all upper or all lower;
- aspect values: placeholders (``Does not apply``, ``N/A``, ``See description``, ``Unbranded`` ...) dropped, units
  normalised (``500ML`` -> ``500 ml``, ``1,5 litres`` -> ``1.5 L``, ``10"`` -> ``10 in``), SHOUTED or lower-case
  words title-cased (identifiers such as MPN or EAN are kept as they are), list values joined;
- aspects dropped by reason (``placeholder``, ``empty``, ``unnamed``, ``absurd``: too long, a URL, e-mail or phone
  number, no letters or digits, the whole title; ``duplicate`` / ``conflict``: the name seen before with the same or
  another value, the first one wins);
- the listing is dropped (one fate, counted by reason) for ``no_title``, ``non_english`` (the paper is English-only:
  a script and vocabulary heuristic, no model) or ``no_usable_aspects`` (nothing left to verify).

Counters (the stage manifest): ``aspects_in``, ``aspects_kept``, ``aspect_dropped:<reason>``,
``normalised:<what>``.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from typing import Any

CLEAN_RULES_VERSION = "clean-v1"

PLACEHOLDERS = {
    "does not apply", "doesnotapply", "does not apply.", "not applicable", "n/a", "n.a.", "na", "n a", "none",
    "null", "nil", "unknown", "not specified", "unspecified", "not known", "-", "--", "---", "?", ".",
    "see description", "see item description", "see photos", "see pictures", "see picture", "see images",
    "see listing", "as pictured", "as shown", "as per photo", "as per picture", "see title", "other", "others",
    "various", "tbd", "undefined", "default", "select", "please select", "not available", "unavailable",
}
BRAND_PLACEHOLDERS = {"unbranded", "generic", "no brand", "unbranded/generic", "brandless", "non-branded"}
NAME_ALIASES = {
    "color": "Colour", "colour": "Colour", "main colour": "Colour", "main color": "Colour", "colours": "Colour",
    "colors": "Colour", "colour family": "Colour",
    "brand": "Brand", "brand name": "Brand", "manufacturer brand": "Brand",
    "size": "Size", "size type": "Size Type", "pattern": "Pattern", "material": "Material", "outer material":
    "Outer Material", "sleeve length": "Sleeve Length", "sleeve": "Sleeve Length", "neckline": "Neckline",
    "neck style": "Neckline", "style": "Style", "type": "Type", "department": "Department", "model": "Model",
    "mpn": "MPN", "ean": "EAN", "upc": "UPC", "isbn": "ISBN", "gtin": "GTIN",
    "country/region of manufacture": "Country of Manufacture", "country of manufacture": "Country of Manufacture",
    "country of origin": "Country of Manufacture", "made in": "Country of Manufacture",
    "volume": "Volume", "capacity": "Capacity", "features": "Features", "theme": "Theme", "fit": "Fit",
}
IDENTIFIER_NAMES = {"MPN", "EAN", "UPC", "ISBN", "GTIN", "Model", "Model Number", "Part Number", "SKU"}
KEEP_CASE_NAMES = {"Brand", *IDENTIFIER_NAMES}
SIZE_TOKENS = {"XXS", "XS", "S", "M", "L", "XL", "XXL", "XXXL", "2XL", "3XL", "4XL", "EU", "UK", "US", "UE", "IT", "FR"}
MAX_VALUE_CHARS = 80
MAX_VALUE_WORDS = 12
MAX_NAME_CHARS = 40

_TAG = re.compile(r"<[^>]{0,500}>")
_BLOCK = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_BREAK = re.compile(r"<\s*(br|/p|/div|/li|/tr|/h\d)\s*/?\s*>", re.IGNORECASE)
_INVISIBLE = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f\u200b-\u200f\u2028-\u202f\u2060\ufeff]")
_URL = re.compile(r"(https?://|www\.)\S+", re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b")
_PHONE = re.compile(r"(\+?\d[\d\s().-]{8,}\d)")
UNITS = {
    "ml": "ml", "mls": "ml", "milliliter": "ml", "milliliters": "ml", "millilitre": "ml", "millilitres": "ml",
    "l": "L", "ltr": "L", "liter": "L", "liters": "L", "litre": "L", "litres": "L", "cl": "cl",
    "g": "g", "gr": "g", "gram": "g", "grams": "g", "kg": "kg", "kgs": "kg", "kilogram": "kg", "kilograms": "kg",
    "mm": "mm", "cm": "cm", "m": "m", "in": "in", "inch": "in", "inches": "in", '"': "in", "''": "in",
    "ft": "ft", "feet": "ft", "foot": "ft", "oz": "oz", "ounce": "oz", "ounces": "oz", "lb": "lb", "lbs": "lb",
    "pound": "lb", "pounds": "lb", "w": "W", "watt": "W", "watts": "W", "v": "V", "volt": "V", "volts": "V",
    "mah": "mAh", "gb": "GB", "tb": "TB", "mb": "MB",
}
_UNIT_RE = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)?)\s*(" + "|".join(sorted((re.escape(u) for u in UNITS),
                                                                          key=len, reverse=True)) +
                      r")(?![\w])", re.IGNORECASE)

# ---------------------------------------------------------------- language (English-only, like the paper's data)
_ENGLISH = set("""the and for with of in new men women mens womens kids boys girls size colour color black white red
blue green grey gray pink yellow purple orange brown beige navy cotton leather polyester wool silk shirt shirts tee
t-shirt dress shoes shoe sneakers boots bag handbag wallet watch jacket coat jeans trousers pants shorts skirt top
tops hoodie sweater jumper socks hat cap baby toy toys game set pack box bottle mug cup kitchen home garden tool
tools phone case cover charger cable headphones speaker lamp light vintage genuine original brand used excellent
condition large small medium long short sleeve neck round pattern striped solid printed floral""".split())
_FOREIGN: dict[str, set[str]] = {
    "de": set("""und mit für fur der die das ein eine herren damen kinder schwarz weiß weiss rot blau grün grun gelb
    neu größe grosse gr groesse hose schuhe jacke kleid tasche mantel pullover oder nicht aus von bei zum zur
    gebraucht sehr gut farbe marke stück stueck""".split()),
    "fr": set("""et avec pour le la les un une des homme femme enfant noir noire blanc blanche rouge bleu vert verte
    jaune taille neuf neuve chaussures sac robe veste pantalon manteau couleur marque très tres bon état
    etat""".split()),
    "es": set("""y con para el los las una hombre mujer niño nino negro negra blanco blanca rojo roja azul verde
    amarillo talla nuevo nueva zapatos bolso vestido chaqueta pantalones abrigo marca muy buen estado""".split()),
    "it": set("""e con per il lo gli uomo donna bambino nero nera bianco bianca rosso rossa blu verde giallo taglia
    nuovo nuova scarpe borsa vestito giacca pantaloni cappotto colore marca molto buono stato""".split()),
    "nl": set("""en met voor het een heren dames kinderen zwart wit rood blauw groen geel maat nieuw nieuwe
    schoenen tas jurk jas broek kleur merk zeer goed staat""".split()),
    "pt": set("""e com para o os as um uma homem mulher criança crianca preto preta branco branca vermelho azul
    verde amarelo tamanho novo nova sapatos bolsa vestido jaqueta calça calca cor marca muito bom estado""".split()),
}
_AMBIGUOUS = {"e", "o", "a", "in", "con", "set", "top", "den", "mit", "and", "blu", "verde", "azul", "marca", "cor"}


def _script_counts(text: str) -> tuple[int, int]:
    """(Latin letters, letters of other scripts)."""
    latin = other = 0
    for ch in text:
        if ch.isalpha():
            if ord(ch) < 0x250 or 0x1E00 <= ord(ch) <= 0x1EFF:
                latin += 1
            else:
                other += 1
    return latin, other


def detect_non_english(text: str) -> str | None:
    """A language guess ("de", "fr", ..., "non-latin") if `text` (title + aspect values) is clearly not English,
    else None. Rules: most letters in a non-Latin script; or at least two words of one other language's common
    listing vocabulary outnumbering the English ones (diacritics count as one more hint)."""
    latin, other = _script_counts(text)
    if other and other >= max(3, 0.3 * (latin + other)):
        return "non-latin"
    words = re.findall(r"[^\W\d_]+", text.lower())
    if not words:
        return None
    english = sum(1 for w in words if w in _ENGLISH)
    diacritics = sum(1 for w in words if any(c in "äöüßéèêàâçñãõìòùíóú" for c in w))
    best, hits = None, 0
    for lang, vocab in _FOREIGN.items():
        n = sum(1 for w in words if w in vocab and w not in _AMBIGUOUS)
        if n > hits:
            best, hits = lang, n
    if best and hits + (1 if diacritics else 0) >= 2 and hits > english:
        return best
    return None


# ---------------------------------------------------------------- text
def clean_text(value: Any, counters: Counter | None = None) -> str:
    s = "" if value is None else str(value)
    had_html = "<" in s and ">" in s or "&" in s
    s = _BLOCK.sub(" ", s)
    s = _BREAK.sub(" ", s)
    s = _TAG.sub(" ", s)
    s = html.unescape(s)
    s = unicodedata.normalize("NFKC", s)
    s = _INVISIBLE.sub("", s)
    s = re.sub(r"\s+", " ", s).strip()
    if counters is not None and had_html and s != str(value).strip():
        counters["normalised:html"] += 1
    return s


def canonical_name(name: str) -> str:
    n = clean_text(name).strip(" :-*#")
    key = n.lower()
    if key in NAME_ALIASES:
        return NAME_ALIASES[key]
    if n.isupper() or n.islower():
        return " ".join(w[:1].upper() + w[1:].lower() if w.isalpha() else w for w in n.split())
    return n


def normalise_units(value: str) -> str:
    def sub(m: re.Match) -> str:
        if m.group(2) in ("G", "M"):  # 4G, 5G networks; shoe widths (10 M): not grams or metres
            return m.group(0)
        num = m.group(1).replace(",", ".")
        if "." in num:
            num = num.rstrip("0").rstrip(".") or "0"
        return f"{num} {UNITS[m.group(2).lower()]}"

    return _UNIT_RE.sub(sub, value)


def normalise_case(name: str, value: str) -> str:
    if name in KEEP_CASE_NAMES:
        return value
    letters = [c for c in value if c.isalpha()]
    if len(letters) < 3 or not (value.isupper() or value.islower()) or any(c.isdigit() for c in value):
        return value  # technical values with numbers (4G LTE, 2 m cable) keep their case
    words = []
    for w in value.split(" "):
        if w.upper() in SIZE_TOKENS:
            words.append(w.upper())  # sizes (XL) and size systems (EU) stay upper case
        else:
            words.append("-".join(p[:1].upper() + p[1:].lower() for p in w.split("-")))
    return " ".join(words)


def _absurd(name: str, value: str, title: str) -> str | None:
    if len(value) > MAX_VALUE_CHARS or len(value.split()) > MAX_VALUE_WORDS:
        return "too long"
    if len(name) > MAX_NAME_CHARS:
        return "name too long"
    if _URL.search(value) or _EMAIL.search(value):
        return "a URL or e-mail"
    phone = _PHONE.search(value) if name not in IDENTIFIER_NAMES else None
    if phone and sum(c.isdigit() for c in phone.group(0)) >= 9:
        return "a phone number"
    if not any(c.isalnum() for c in value):
        return "no letters or digits"
    if re.search(r"(.)\1{5,}", value):
        return "repeated characters"
    if title and len(value) > 20 and value.lower() == title.lower():
        return "the whole title"
    if value.lower() == name.lower():
        return "the aspect's own name"
    return None


def clean_aspects(aspects: list[list[Any]], title: str, counters: Counter) -> list[list[str]]:
    """[[name, value], ...] -> the usable ones, each drop counted by reason (first name wins)."""
    kept: dict[str, str] = {}
    order: list[str] = []
    for pair in aspects:
        name_raw, value_raw = (pair + [None, None])[:2] if isinstance(pair, list) else (None, None)
        counters["aspects_in"] += 1
        name = canonical_name(str(name_raw or ""))
        if isinstance(value_raw, (list, tuple)):
            parts = [clean_text(v) for v in value_raw]
            parts = [p for p in parts if p and p.lower() not in PLACEHOLDERS]
            value = ", ".join(dict.fromkeys(parts))
        elif isinstance(value_raw, dict):
            value = ""
        else:
            value = clean_text(value_raw, counters)
        reason = None
        if not name:
            reason = "unnamed"
        elif not value:
            reason = "empty"
        elif value.lower().strip(" .") in PLACEHOLDERS or value.lower() in PLACEHOLDERS or (
                name == "Brand" and value.lower() in BRAND_PLACEHOLDERS):
            reason = "placeholder"
        else:
            absurd = _absurd(name, value, title)
            if absurd:
                reason = "absurd"
        if reason is None:
            v2 = normalise_units(value)
            if v2 != value:
                counters["normalised:unit"] += 1
            v3 = normalise_case(name, v2)
            if v3 != v2:
                counters["normalised:case"] += 1
            value = v3
            if name in kept:
                reason = "duplicate" if kept[name].lower() == value.lower() else "conflict"
        if reason:
            counters[f"aspect_dropped:{reason}"] += 1
            continue
        kept[name] = value
        order.append(name)
    counters["aspects_kept"] += len(order)
    return [[n, kept[n]] for n in order]


def clean_listing(rec: dict[str, Any], counters: Counter, keep_non_english: bool = False
                  ) -> tuple[dict[str, Any] | None, str, str]:
    """(cleaned listing or None, drop reason, detail)."""
    title = clean_text(rec.get("title"), counters)
    category = clean_text(rec.get("category"), counters)
    if not title:
        return None, "no_title", "empty title after cleaning"
    raw_values = " ".join(str(v) for _, v in (rec.get("aspects") or []) if isinstance(v, (str, int, float)))
    if not keep_non_english:
        lang = detect_non_english(f"{title} {clean_text(raw_values)}")
        if lang:
            return None, "non_english", f"looks {lang}: {title[:80]}"
    aspects = clean_aspects(rec.get("aspects") or [], title, counters)
    if not aspects:
        return None, "no_usable_aspects", f"{len(rec.get('aspects') or [])} raw aspects, none usable"
    out = {"id": rec["id"], "title": title, "category": category, "aspects": aspects,
           "images": list(rec.get("images") or []), "split": rec.get("split", "train")}
    return out, "", ""


def dedup_key(rec: dict[str, Any]) -> str:
    """Two listings are duplicates when their cleaned title, category, aspects and main image are the same."""
    import hashlib
    import json

    doc = [rec["title"].lower(), rec["category"].lower(), sorted([n.lower(), v.lower()] for n, v in rec["aspects"]),
           (rec["images"] or [""])[0]]
    return hashlib.sha256(json.dumps(doc, ensure_ascii=False).encode()).hexdigest()[:24]
