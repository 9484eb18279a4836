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


