"""Work the server runs for its whole life beside the transports: the SLA sweep and the daily
analytics roll-up."""

from __future__ import annotations

import logging

import anyio

from crm_mcp.tools import analytics, tickets
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


async def analytics_loop(crm: Crm, interval_s: float = 900.0, first_delay_s: float = 60.0) -> None:
    """Roll up finished days into analytics_daily every interval_s (one replica at a time: the job
    takes a try-lock and the others skip the round). The first round waits a minute, so data a
    start-up loads (--demo) is in before a day is rolled up."""
    await anyio.sleep(first_delay_s)
    while True:
        try:
            done = await analytics.refresh(crm)
            if done.get("computed"):
                log.info("analytics: rolled up %s day(s) to %s", done["computed"], done["last"])
        except Exception:  # the database may be restarting; try again next round
            log.warning("analytics roll-up failed; will retry", exc_info=True)
        await anyio.sleep(interval_s)
