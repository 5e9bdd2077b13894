"""JSON schemas sized for a context window, in the portable dialect clients expect.

pydantic's schemas carry what a model does not need: an auto-generated `title` on every
property ("Customer Id"), `"default": null` beside a field that is simply not required, and, for
every optional input, `anyOf: [{...}, {"type": "null"}]`. `compact_schema` drops the first two
and, for inputs, publishes an optional field as its plain schema: leave it out to mean "not
given" (the server still accepts an explicit null). Single `type` values only and `anyOf` for
nullable outputs: a `type` array is legal JSON Schema but other clients' dialects (Gemini's
OpenAPI subset) reject it, and the Inspector's strict mode flags it.

Output schemas (what the server sends, not what it accepts) also lose what constrains only the
producer, which is us: `required`, `additionalProperties: false`, string enums (the value lists
are in the input schemas). Nested objects, and fields that may be null, are listed only when they
carry a description: a model reads the other fields' names and types off the result itself."""

from __future__ import annotations

from typing import Any

# Nested output objects keep their described fields one level down; deeper ones are named in the result.
MAX_DESCRIBED_DEPTH = 1
_SCHEMA_MAPS = ("$defs", "definitions", "patternProperties")
_NULL = {"type": "null"}


def compact_schema(schema: Any, *, output: bool = False) -> Any:
    if output and isinstance(schema, dict) and "$defs" in schema:
        body = {k: v for k, v in schema.items() if k != "$defs"}
        return compact_schema(_inline_described(body, schema["$defs"]), output=True)
    if isinstance(schema, list):
        return [compact_schema(s, output=output) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if output and "$ref" in schema:
        schema = {"type": "object", **{k: v for k, v in schema.items() if k != "$ref"}}
    required = set(schema.get("required", ()))
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" or (key == "default" and value is None):
            continue
        if output and (key == "required" or (key == "additionalProperties" and value is False)):
            continue
        if output and key == "enum" and schema.get("type") == "string":
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {
                name: compact_schema(sub if output or name in required else _not_null(sub), output=output)
                for name, sub in value.items()
                if not (output and _NULL in sub.get("anyOf", ()) and "description" not in sub)
            }
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: compact_schema(sub, output=output) for name, sub in value.items()}
        else:
            out[key] = compact_schema(value, output=output)
    return out


def _not_null(prop: Any) -> Any:
    """An optional input's schema without its null branch: {"anyOf": [X, null], ...} -> {...X}."""
    if not isinstance(prop, dict):
        return prop
    options = prop.get("anyOf")
    if isinstance(options, list) and _NULL in options:
        rest = [o for o in options if o != _NULL]
        merged = {k: v for k, v in prop.items() if k != "anyOf"}
        if len(rest) == 1 and not (set(rest[0]) & set(merged)):
            return {**merged, **rest[0]}
        return {**merged, "anyOf": rest}
    if "enum" in prop and None in prop["enum"]:
        return {**prop, "enum": [v for v in prop["enum"] if v is not None]}
    return prop


def _inline_described(schema: Any, defs: dict[str, Any], depth: int = 0) -> Any:
    """Replace each `$ref` by {"type": "object", "properties": ...} holding only the nested fields
    that carry a description (what a figure means, which text is untrusted), each with its type."""
    if isinstance(schema, list):
        return [_inline_described(s, defs, depth) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        out = {"type": "object", **{k: v for k, v in schema.items() if k != "$ref"}}
        if depth >= MAX_DESCRIBED_DEPTH:
            return out
        target = defs.get(schema["$ref"].rsplit("/", 1)[-1], {})
        described = {}
        for name, prop in target.get("properties", {}).items():
            if "description" in prop:
                described[name] = _inline_described(prop, defs, depth + 1)
        if described:
            out["properties"] = described
        return out
    return {k: _inline_described(v, defs, depth) for k, v in schema.items()}
