"""Small helpers for writing SQL safely next to the code that needs it."""

from __future__ import annotations


def like_escape(text: str) -> str:
    """Escape LIKE's wildcards so user text matches literally (PostgreSQL's default escape is \\)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
