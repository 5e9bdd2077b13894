"""The daily roll-up: on a generated month of traffic, get_metrics figures read from
analytics_daily equal the live computation for every metric (whole month, partial days at the
edges, today, one channel); a day recomputed gives the same rows; the job runs once across
processes (try-lock); `crm-mcp analytics backfill --since` and get_metrics over stdio."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import anyio
import asyncpg
import pytest

from bench.analytics import generate
from crm_mcp.server.config import load_settings
from crm_mcp.server.db import create_pool
from crm_mcp.server.registration import rounded
from crm_mcp.tools import analytics
from crm_mcp.tools.metrics import _rollup_block, compute
from crm_mcp.tools.plumbing.context import Crm

from .conftest import REPO, call, mcp_client, server_env

pytestmark = pytest.mark.anyio


def midnight(d: date) -> datetime:
    return datetime.combine(d, time(0), tzinfo=timezone.utc)


async def daily_rows(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT * FROM analytics_daily ORDER BY day, channel")
    return [{k: v for k, v in r.items() if k != "computed_at"} for r in rows]


async def test_rollup_equals_live_on_a_generated_month(db_dsn: str) -> None:
    today = datetime.now(timezone.utc).date()
    start = today - timedelta(days=30)
    settings = load_settings(database_url=db_dsn)
    pool = await create_pool(settings, db_dsn)
    crm = Crm(settings=settings, pool=pool)
    try:
        async with pool.acquire() as conn:
            await generate(conn, start=start, days=31, messages=12_000, customers=301, tickets=900)

        def backfill_cli() -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "crm_mcp.server.cli", "analytics", "backfill", "--since",
                                   start.isoformat()], env=server_env(db_dsn), cwd=str(REPO), capture_output=True,
                                  text=True, timeout=300)
        done = await anyio.to_thread.run_sync(backfill_cli)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1])["computed"] == 30  # start .. yesterday; today stays live

        async with pool.acquire() as conn:
            first = await daily_rows(conn)
            assert len(first) == 30 * 4
            assert {r["day"] for r in first} == {start + timedelta(days=i) for i in range(30)}
            assert sum(r["messages_in"] for r in first if r["channel"] == "all") > 5000

            now = datetime.now(timezone.utc)
            periods = [
                (midnight(start), midnight(today)),  # the 30 rolled-up days exactly
                (midnight(start) + timedelta(hours=13, minutes=7), now),  # partial first day, 29 days, today so far
                (midnight(start + timedelta(days=3)), midnight(start + timedelta(days=4))),  # one day
                (now - timedelta(days=7), now),  # get_metrics' 7d window
                (midnight(start) - timedelta(days=2), midnight(today) + timedelta(hours=1)),
            ]
            for since, until in periods:
                assert await _rollup_block(conn, since, until) is not None
                for channel in (None, "whatsapp", "web_form"):
                    fast = await compute(conn, since, until, channel)
                    live = await compute(conn, since, until, channel, use_rollup=False)
                    assert fast.model_dump() == live.model_dump(), (since, until, channel)
                    total = live.channels[-1]  # the comparison is over real figures
                    assert total.messages_in and total.response_latency_ms.samples and total.tickets_opened
            # a day's 'all' row is what the live queries compute for that day
            d = start + timedelta(days=10)
            live_day = await compute(conn, midnight(d), midnight(d + timedelta(days=1)), use_rollup=False)
            total = live_day.channels[-1]
            row = next(r for r in first if r["day"] == d and r["channel"] == "all")
            assert (row["conversations"], row["messages_in"], row["messages_out"], row["csat_responses"], row["tickets_opened"]) == (
                total.conversations, total.messages_in, total.messages_out, total.csat.denominator, total.tickets_opened)
            assert len(row["latency_ms"]) == total.response_latency_ms.samples

        # re-running the days gives the same rows
        await analytics.backfill(crm, start)
        async with pool.acquire() as conn:
            assert await daily_rows(conn) == first
            # another process holding the roll-up lock: this one skips
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", analytics.ANALYTICS_LOCK_KEY)
                skipped = await analytics.backfill(crm, start)
            assert skipped["computed"] == 0 and "another process" in skipped["skipped"]
            # the periodic job: nothing new to roll up but the last days, recomputed identically
            assert (await analytics.refresh(crm))["computed"] == analytics.RECOMPUTE_DAYS
            assert await daily_rows(conn) == first
            reference = await compute(conn, midnight(start), midnight(today), use_rollup=False)
    finally:
        await pool.close()

    async with mcp_client(db_dsn) as client:
        got = await call(client, "get_metrics", since=midnight(start).isoformat(), until=midnight(today).isoformat())
    assert got["channels"] == rounded(reference.model_dump(mode="json"))["channels"]


async def test_refresh_on_an_empty_database_and_bad_cli_date(db_dsn: str) -> None:
    settings = load_settings(database_url=db_dsn)
    pool = await create_pool(settings, db_dsn)
    try:
        assert await analytics.refresh(Crm(settings=settings, pool=pool)) == {"computed": 0}
    finally:
        await pool.close()
    proc = subprocess.run([sys.executable, "-m", "crm_mcp.server.cli", "analytics", "backfill", "--since", "last week"],
                          env=server_env(db_dsn), cwd=str(REPO), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "YYYY-MM-DD" in proc.stderr and "Traceback" not in proc.stderr


async def test_ticket_numbers_past_9999_stay_unique(db_dsn: str) -> None:
    """Found generating a year of tickets: numbering wrapped to TKT-1000 at 10000 (migration 0012)."""
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute("UPDATE counters SET value = 9998 WHERE name = 'ticket'")
        numbers = [await conn.fetchval("SELECT crm_next_ticket_number()") for _ in range(3)]
    finally:
        await conn.close()
    assert numbers == ["TKT-9999", "TKT-10000", "TKT-10001"]
