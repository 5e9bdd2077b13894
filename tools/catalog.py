"""The catalog: importing the domain modules fills the tool registry in a fixed order, which is
the order clients see in tools/list. Resources, prompts and background tasks hook in here too."""

from __future__ import annotations

from typing import Any

from . import customers  # noqa: F401  (registers tools)
from .context import Crm


def register_extras(server: Any, crm: Crm) -> None:
    """Resources, resource templates and prompts (see crm_mcp.resources)."""
    try:
        from crm_mcp.resources import register
    except ImportError:
        return
    register(server, crm)


async def startup(crm: Crm) -> None:
    pass


async def shutdown(crm: Crm) -> None:
    pass
