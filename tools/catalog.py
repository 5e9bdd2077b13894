"""The catalog: importing the domain modules fills the tool registry; tools/list shows them
grouped by toolset in registry.TOOLSETS order. Resources, prompts and the background SLA task
hook in here too."""

from __future__ import annotations

import logging
from typing import Any

import anyio

from . import customers, intake, knowledge, metrics, replies, tickets  # noqa: F401  (each registers its tools)
from .context import Crm

log = logging.getLogger(__name__)


def register_extras(server: Any, crm: Crm) -> None:
    """Resources, resource templates, prompts and completions (crm_mcp.resources)."""
    from crm_mcp.resources import register

    register(server, crm)


async def background(crm: Crm) -> None:
    """Runs for the life of the server: the SLA sweep, every sla_check_interval_s."""
    while True:
        try:
            breached = await tickets.sla_sweep(crm)
            if breached:
                log.info("SLA: auto-escalated %s", ", ".join(breached))
        except Exception:  # the database may be restarting; try again next round
            log.warning("SLA sweep failed; will retry", exc_info=True)
        await anyio.sleep(crm.settings.sla_check_interval_s)


async def startup(crm: Crm, *, check_embeddings: bool = True) -> None:
    if check_embeddings:
        await knowledge.check_embedding_space(crm)
