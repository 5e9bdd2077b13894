"""Work the server runs for its whole life beside the transports: the SLA sweep and the daily
analytics roll-up.

With several replicas on one PostgreSQL the sweep runs in one of them only: the leader, the
process holding a session-level advisory lock (LEADER_LOCK_KEY) on a connection of its own. The
others try for the lock every interval; when the leader dies its connection drops, PostgreSQL
releases the lock and the next follower to try takes over (within one interval). The sweep is
itself safe to run twice, so a brief overlap while a half-dead leader notices is harmless."""

from __future__ import annotations

import logging

import anyio

from crm_mcp.tools import analytics, tickets
from crm_mcp.tools.plumbing.context import Crm

from .db import connect_once

log = logging.getLogger(__name__)

LEADER_LOCK_KEY = 0x63726D6C6472  # "crmldr"; server/migrate.py uses "crmmcp"


async def sla_loop(crm: Crm, interval_s: float, dsn: str) -> None:
    """Auto-escalate tickets past their SLA, every interval_s, while this process is the
    leader; until cancelled."""
    while True:
        try:
            await _lead(crm, interval_s, dsn)
        except Exception as exc:  # the database may be restarting; try again next round
            log.warning("background leader: no database connection (%s); will retry", type(exc).__name__)
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


async def _lead(crm: Crm, interval_s: float, dsn: str) -> None:
    """Try for the leader lock; when it is ours, sweep every interval_s for as long as the
    lock's connection lives. Returns when another process leads (or raises when the
    connection breaks, which also ends this process's leadership). The lock lives on a
    connection of its own, outside the pool: held for the process's life, a pooled one would
    starve the tools of a small pool (CRM_POOL_MAX_SIZE=1 waited out the call deadline)."""
    conn = await connect_once(dsn, server_settings={"application_name": "crm-mcp-leader", "timezone": "UTC"})
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY):
            return
        log.info("background leader: this process runs the SLA sweep")
        while True:
            await _sweep(crm)
            await anyio.sleep(interval_s)
            # Still ours? (a terminated backend ends the lock; the check fails loudly then)
            await conn.fetchval("SELECT 1")
    finally:
        # Give the lock up by dropping its connection: immediate, no round trip (a frozen
        # backend cannot delay shutdown).
        conn.terminate()


async def _sweep(crm: Crm) -> None:
    try:
        breached = await tickets.sla_sweep(crm)
        if breached:
            log.info("SLA: auto-escalated %s", ", ".join(breached))
    except Exception:  # the database may be restarting; keep leading, try again next round
        log.warning("SLA sweep failed; will retry", exc_info=True)
