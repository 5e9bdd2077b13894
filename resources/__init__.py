"""MCP resources, resource templates, prompts and completions."""

from __future__ import annotations

from typing import Any


def register(server: Any, crm: Any) -> None:
    from . import catalog

    catalog.register(server, crm)
