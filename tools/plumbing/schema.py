"""JSON schemas sized for a context window.

pydantic's schemas carry what a model does not need: an auto-generated `title` on every
property ("Customer Id"), `anyOf: [{...}, {"type": "null"}]` for each optional field, and
`"default": null` beside a field that is simply not required. `compact_schema` rewrites them to
the equivalent shorter form (a `type` list, no titles, no null defaults); what a value may be is
unchanged, so validation accepts and refuses exactly what it did."""

from __future__ import annotations

from typing import Any

_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def compact_schema(schema: Any, *, output: bool = False) -> Any:
    """Shorter equivalent schema. With output=True (a tool's outputSchema, which describes what
    the server sends rather than what it accepts) the schema is cut to its top level: nested
    objects become {"type": "object"} with their description, and `required`,
    `additionalProperties: false` and string enums go. They constrain the producer, which is us;
    a model sees every nested field by name in the result itself, and the closed value lists are
    in the input schemas. This halves tools/list (see bench/context_size.py)."""
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
