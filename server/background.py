"""Work the server runs for its whole life beside the transports: the SLA sweep."""

from __future__ import annotations

import logging

import anyio

from crm_mcp.tools import tickets
from crm_mcp.tools.plumbing.context import Crm

log = logging.getLogger(__name__)


async def sla_loop(crm: Crm, interval_s: float) -> None:
    """Auto-escalate tickets past their SLA, every interval_s, until cancelled."""
    while True:
        try:
            breached = await tickets.sla_sweep(crm)
            if breached:
                log.info("SLA: auto-escalated %s", ", ".join(breached))
        except Exception:  # the database may be restarting; try again next round
            log.warning("SLA sweep failed; will retry", exc_info=True)
        await anyio.sleep(interval_s)
