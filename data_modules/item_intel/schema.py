"""The item-intelligence answer (paper Figure 6): the instruction, and the JSON schema answers follow.

Producers (the synthetic data, teacher annotation) write records in this schema; eval/ constrains decoding to it
and judges answers against it. Only non-empty fields, only what the item's images show.
"""

from __future__ import annotations

from typing import Any

ITEM_INTEL_PROMPT = (
    "Extract all visible product attributes from the provided product photos and return them as a single JSON "
    "object that contains only non-empty fields. Use only what is clearly visible in the images.\n"
    "Identifiers: barcodes (EAN/UPC/GTIN), model_number\n"
    "Attributes: product_type, product_category, brand_name, colors, size\n"
    "Origin: country_of_origin\n"
    "Regulatory safety: certification_marks, hazard_statements"
)

# for schema-constrained decoding (docs/DATA_FORMAT.md has an example)
_STR_LIST = {"type": "array", "items": {"type": "string"}}
ITEM_INTEL_SCHEMA: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": {
    "identifiers": {"type": "object", "additionalProperties": False, "properties": {
        "barcodes": {"type": "array", "items": {"type": "object", "properties": {"value": {"type": "string"}},
                                                "required": ["value"], "additionalProperties": False}},
        "model_number": {"type": "string"}}},
    "attributes": {"type": "object", "additionalProperties": False, "properties": {
        "product_type": {"type": "string"}, "product_category": {"type": "string"}, "brand_name": {"type": "string"},
        "colors": _STR_LIST, "size": {"type": "string"}}},
    "origin_production": {"type": "object", "additionalProperties": False,
                          "properties": {"country_of_origin": {"type": "string"}}},
    "regulatory_safety": {"type": "object", "additionalProperties": False, "properties": {
        "certification_marks": _STR_LIST,
        "hazard_statements": {"type": "array", "items": {"type": "object", "properties": {"text": {"type": "string"}},
                                                         "required": ["text"], "additionalProperties": False}}}}}}


# ----------------------------------------------------------------------------------------------------------
# Teacher output. OpenAI's strict structured output requires every property of every object to be listed in
# `required`; a teacher schema therefore lists all of them and the prompt says to leave what is not visible empty
# ("" or []). `normalize_label` turns such an answer back into the item-intelligence form (only non-empty fields).


def strict_schema(schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """`schema` (default ITEM_INTEL_SCHEMA) with every object's properties required and no others allowed."""
    import copy

    s = copy.deepcopy(ITEM_INTEL_SCHEMA if schema is None else schema)

    def walk(node: dict[str, Any]) -> None:
        if node.get("type") == "object" and "properties" in node:
            node["required"] = list(node["properties"])
            node["additionalProperties"] = False
            for child in node["properties"].values():
                walk(child)
        elif node.get("type") == "array" and isinstance(node.get("items"), dict):
            walk(node["items"])

    walk(s)
    return s


def validate_answer(value: Any, schema: dict[str, Any] | None = None, path: str = "") -> str | None:
    """None if `value` follows `schema` (the JSON-schema subset used here: object/properties/required/
    additionalProperties, array/items, string), else what is wrong, said so a model can fix it."""
    schema = ITEM_INTEL_SCHEMA if schema is None else schema
    where = path or "the answer"
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            return f"{where} must be a JSON object"
        props = schema.get("properties", {})
        for k in value:
            if k not in props and schema.get("additionalProperties") is False:
                return f"{where} has an unknown field {k!r}; allowed: {sorted(props)}"
        for k in schema.get("required", []):
            if k not in value:
                return f"{where} lacks the required field {k!r}"
        for k, v in value.items():
            if k in props:
                problem = validate_answer(v, props[k], f"{path}.{k}" if path else k)
                if problem:
                    return problem
        return None
    if kind == "array":
        if not isinstance(value, list):
            return f"{where} must be a list"
        for i, v in enumerate(value):
            problem = validate_answer(v, schema.get("items", {}), f"{where}[{i}]")
            if problem:
                return problem
        return None
    if kind == "string" and not isinstance(value, str):
        return f"{where} must be a string, not {type(value).__name__}"
    return None


def normalize_label(value: Any) -> Any:
    """Only non-empty fields: empty strings, lists and objects (and None) are removed, strings stripped."""
    if isinstance(value, dict):
        out = {k: normalize_label(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in ("", [], {}, None)}
    if isinstance(value, list):
        out = [normalize_label(v) for v in value]
        return [v for v in out if v not in ("", [], {}, None)]
    if isinstance(value, str):
        return value.strip()
    return value
