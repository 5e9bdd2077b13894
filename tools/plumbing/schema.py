"""JSON schemas sized for a context window.

pydantic's schemas carry what a model does not need: an auto-generated `title` on every
property ("Customer Id"), `anyOf: [{...}, {"type": "null"}]` for each optional field, and
`"default": null` beside a field that is simply not required. `compact_schema` rewrites them to
the equivalent shorter form (a `type` list, no titles, no null defaults); what a value may be is
unchanged, so validation accepts and refuses exactly what it did."""

from __future__ import annotations

from typing import Any

# Nested objects keep their fields' descriptions one level down; deeper ones are named in the result.
MAX_DESCRIBED_DEPTH = 1
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def compact_schema(schema: Any, *, output: bool = False) -> Any:
    """Shorter equivalent schema. With output=True (a tool's outputSchema, which describes what
    the server sends rather than what it accepts) nested objects keep only their fields'
    descriptions, and `required`, `additionalProperties: false` and string enums go. They
    constrain the producer, which is us; a model reads every nested field's name and type off the
    result itself, and the closed value lists are in the input schemas. This halves tools/list
    (see bench/context_size.py)."""
    if output and isinstance(schema, dict) and "$defs" in schema:
        defs = schema["$defs"]
        body = {k: v for k, v in schema.items() if k != "$defs"}
        return compact_schema(_inline_descriptions(body, defs), output=True)
    if isinstance(schema, list):
        return [compact_schema(s, output=output) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if output and "$ref" in schema:
        schema = {"type": "object", **{k: v for k, v in schema.items() if k != "$ref"}}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" or (key == "default" and value is None) or (output and key == "$defs"):
            continue
        if output and (key == "required" or (key == "additionalProperties" and value is False)):
            continue
        if output and key == "enum" and schema.get("type") == "string":
            continue  # the value lists are in the input schemas and the descriptions
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: compact_schema(sub, output=output) for name, sub in value.items()}
        else:
            out[key] = compact_schema(value, output=output)
    return _fold_nullable(out)


def _inline_descriptions(schema: Any, defs: dict[str, Any], depth: int = 0) -> Any:
    """Replace each `$ref` to a nested object by {"type": "object", "properties": ...} holding only
    the nested fields that carry a description (what a figure means, which text is untrusted):
    the explanations stay, the types a model reads off the result itself go."""
    if isinstance(schema, list):
        return [_inline_descriptions(s, defs, depth) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema and depth < MAX_DESCRIBED_DEPTH:
        target = defs.get(schema["$ref"].rsplit("/", 1)[-1], {})
        described = {}
        for name, prop in target.get("properties", {}).items():
            inner = _inline_descriptions(prop, defs, depth + 1)
            kept = {k: v for k, v in inner.items() if k in ("description", "properties", "items")}
            if "items" in kept:
                kept["items"] = {k: v for k, v in kept["items"].items() if k == "properties"}
                if not kept["items"]:
                    del kept["items"]
            if kept:
                described[name] = kept
        out = {"type": "object", **{k: v for k, v in schema.items() if k != "$ref"}}
        if described:
            out["properties"] = described
        return out
    return {k: _inline_descriptions(v, defs, depth) for k, v in schema.items()}


def _fold_nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """{"anyOf": [{"type": "string", ...}, {"type": "null"}]} -> {"type": ["string", "null"], ...}"""
    options = schema.get("anyOf")
    if not isinstance(options, list) or len(options) != 2 or {"type": "null"} not in options:
        return schema
    other = options[0] if options[1] == {"type": "null"} else options[1]
    kind = other.get("type")
    if not isinstance(kind, str) or any(k in schema for k in other if k != "type"):
        return schema  # a $ref, an enum without type, or clashing keys: keep anyOf
    folded = {k: v for k, v in schema.items() if k != "anyOf"}
    folded.update(other)
    folded["type"] = [kind, "null"]
    if "enum" in folded:
        folded["enum"] = [*folded["enum"], None]
    return folded
