"""MCP resources and resource templates (templates.py), prompts (prompts.py) and completions
(completions.py). They read through the tools' domain functions and receive the same typed
context; nothing here imports the server package."""

from __future__ import annotations

from typing import Any

from crm_mcp.tools.plumbing.context import Crm


def register(server: Any, crm: Crm) -> None:
    from . import completions, prompts, templates

    templates.register(server, crm)
    prompts.register(server, crm)
    completions.register(server, crm)
