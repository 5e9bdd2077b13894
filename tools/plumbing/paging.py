"""Opaque cursors for keyset pagination: base64url JSON that we produce and strictly re-check.
Anything we did not produce (forged, truncated, wrong shape or types) is one clear error."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from crm_mcp.tools.plumbing.errors import UserError

T = TypeVar("T")


def encode_cursor(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, parse: Callable[[dict[str, Any]], T]) -> T:
    """Decode a cursor and turn it into typed values with `parse`, which raises ValueError,
    TypeError or KeyError on anything unexpected."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return parse(data)
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise UserError(
            "cursor is not valid.", hint="Pass the next_cursor value from the previous page unchanged, or omit it to start over."
        ) from None


def aware(value: Any) -> datetime:
    """An ISO timestamp with a time zone."""
    ts = datetime.fromisoformat(str(value))
    if ts.tzinfo is None:
        raise ValueError("timestamp without time zone")
    return ts


def bounded(value: Any, limit: int = 100) -> str:
    text = str(value)
    if len(text) > limit or "\x00" in text:
        raise ValueError("cursor field too long")
    return text
