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
from crm_mcp.tools import analytics, ticket_cohorts
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


# Tickets whose history crosses the days a range is cut at: (channel, conversation?, opened, first
# reply, [(event kind, at)], [staff replies]); times are (day offset from the start, hour). Events
# marked "late" happen today, after the roll-up ran.
STORIES: list[tuple[str, bool, tuple[int, int], tuple[int, int] | None, list[tuple[str, Any]], list[Any]]] = [
    ("email", True, (2, 10), (2, 11), [("escalation", (5, 9)), ("sla_breach", (9, 1)), ("resolved", (6, 12)),
                                       ("resolved", (6, 15)), ("resolved", (11, 3)), ("resolved", (15, 22))], [(13, 8)]),
    ("email", True, (3, 4), (7, 2), [("resolved", (4, 6))], ["late"]),  # a staff reply today to a ticket resolved long ago
    ("whatsapp", True, (8, 23), (10, 5), [("resolved", (9, 1)), ("escalation", "late"), ("resolved", "late")], []),
    ("whatsapp", True, (4, 12), None, [("escalation", (3, 20)), ("resolved", (4, 13))], []),  # escalated before it opened
    ("web_form", False, (10, 0), (10, 0), [("resolved", (12, 7)), ("escalation", (12, 6)), ("escalation", (12, 8))], []),
    ("web_form", True, (0, 1), (0, 2), [("resolved", (0, 3)), ("resolved", (19, 23))], []),  # AI-resolved twice
    ("email", True, (1, 5), (16, 1), [("escalation", (17, 0)), ("resolved", (18, 4)), ("resolved", (19, 1))], [(19, 0)]),
    ("whatsapp", True, (18, 22), "late", [("escalation", "late")], []),  # opened in the block, first reply and escalation today
    ("email", True, (12, 9), (12, 10), [("resolved", (13, 1)), ("resolved", (14, 2))], [(12, 11)]),
]


async def add_stories(conn: asyncpg.Connection, start: date, *, late: bool) -> None:
    """The stories' rows (late=False) or their events of today (late=True)."""
    now = datetime.now(timezone.utc)

    def at(t: Any) -> datetime:
        return now - timedelta(minutes=5) if t == "late" else midnight(start + timedelta(days=t[0])) + timedelta(hours=t[1])

    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        for i, (channel, has_conv, opened, first_reply, events, staff) in enumerate(STORIES):
            if late:
                tid, cust, conv = await conn.fetchrow(
                    "SELECT id, customer_id, conversation_id FROM tickets WHERE subject = $1", f"story {i}")
            else:
                cust = await conn.fetchval("INSERT INTO customers (name) VALUES ($1) RETURNING id", f"Story {i}")
                conv = await conn.fetchval(
                    """INSERT INTO conversations (customer_id, initial_channel, current_channel, status, started_at, ended_at)
                       VALUES ($1, $2, $2, 'closed', $3, $3) RETURNING id""", cust, channel, at(opened))
                await conn.execute(
                    """INSERT INTO messages (conversation_id, customer_id, channel, direction, role, content, delivery_status, created_at)
                       VALUES ($1, $2, $3, 'outbound', 'agent', 'story', 'delivered', $4)""", conv, cust, channel, at(opened))
                tid = await conn.fetchval(
                    """INSERT INTO tickets (customer_id, conversation_id, subject, source_channel, status, resolution_notes,
                                            created_at, first_response_at)
                       VALUES ($1, $2, $3, $4, 'resolved', 'done', $5, $6) RETURNING id""",
                    cust, conv if has_conv else None, f"story {i}", channel, at(opened),
                    at(first_reply) if first_reply not in (None, "late") else None)
            if late and first_reply == "late":
                await conn.execute("UPDATE tickets SET first_response_at = $2 WHERE id = $1", tid, at("late"))
            for kind, t in events:
                if (t == "late") == late:
                    await conn.execute(
                        "INSERT INTO ticket_events (ticket_id, kind, to_value, created_at) VALUES ($1, $2, $3, $4)",
                        tid, "status" if kind == "resolved" else kind, "resolved" if kind == "resolved" else "escalated", at(t))
            for t in staff:
                if (t == "late") == late:
                    await conn.execute(
                        """INSERT INTO messages (conversation_id, customer_id, channel, direction, role, content, delivery_status,
                                                 created_at) VALUES ($1, $2, $3, 'outbound', 'human', 'story', 'delivered', $4)""",
                        conv, cust, channel, at(t))


async def test_rollup_equals_live_for_ranges_that_cut_through_cohorts(db_dsn: str) -> None:
    """Ranges whose ends fall inside tickets' histories: opened before and escalated inside, opened
    inside and escalated or first answered after (in a later rolled-up day, or today), resolved on
    several days inside and outside, a staff reply days (or today) after an AI resolution."""
    today = datetime.now(timezone.utc).date()
    start = today - timedelta(days=20)
    settings = load_settings(database_url=db_dsn)
    pool = await create_pool(settings, db_dsn)
    try:
        async with pool.acquire() as conn:
            await generate(conn, start=start, days=21, messages=3000, customers=80, tickets=240)
            # generated tickets resolved again and escalated again days later (before today)
            await conn.execute(
                """INSERT INTO ticket_events (ticket_id, kind, to_value, created_at)
                   SELECT id, k, CASE k WHEN 'status' THEN 'resolved' ELSE 'escalated' END,
                          created_at + (1 + abs(hashtext(id::text || k)) % 9) * interval '1 day 37 minutes'
                   FROM tickets, unnest(ARRAY['status', 'escalation']) k
                   WHERE abs(hashtext(id::text || 'again')) % 3 = 0
                     AND created_at + (1 + abs(hashtext(id::text || k)) % 9) * interval '1 day 37 minutes' < $1""",
                midnight(today))
            await add_stories(conn, start, late=False)
        crm = Crm(settings=settings, pool=pool)
        await analytics.backfill(crm, start)
        cells_sql = "SELECT day, kind, channel, d1, d2, n, vals FROM analytics_ticket_cells ORDER BY 1, 2, 3, 4, 5"
        async with pool.acquire() as conn:
            cells = [tuple(r) for r in await conn.fetch(cells_sql)]
            assert {r[1] for r in cells} == {"opened_escalated", "first_response", "escalated", "resolved", "resolved_conv",
                                             "superseded", "human_resolved"}
        await analytics.backfill(crm, start)  # re-running the days gives the same cells
        async with pool.acquire() as conn:
            assert [tuple(r) for r in await conn.fetch(cells_sql)] == cells
            await add_stories(conn, start, late=True)
            now = datetime.now(timezone.utc)
            day = lambda i, h=0: midnight(start + timedelta(days=i)) + timedelta(hours=h)  # noqa: E731
            periods = [(day(i), day(j)) for i, j in ((0, 20), (3, 6), (5, 12), (6, 7), (9, 16), (12, 20), (13, 19), (4, 5))]
            periods += [(day(i), now) for i in (0, 4, 10, 19)]
            periods += [(day(2, 13), day(11, 2)), (day(6, 14), day(15, 9)), (day(1, 1), now), (day(18, 23), now)]
            seen = {"escalated_apart": False, "ai": False, "resolved_again": False}
            for since, until in periods:
                block = await _rollup_block(conn, since, until)
                assert block is not None
                assert await ticket_cohorts.figures(conn, since, until, block, None) is not None  # the cells answered
                for channel in (None, "email", "whatsapp"):
                    fast = await compute(conn, since, until, channel)
                    live = await compute(conn, since, until, channel, use_rollup=False)
                    assert fast.model_dump() == live.model_dump(), (since, until, channel)
                total = live.channels[-1]
                seen["escalated_apart"] |= total.tickets_escalated_in_period != total.opened_tickets_escalation_rate.numerator
                seen["ai"] |= total.ai_resolution_rate.numerator > 0
                resolutions = await conn.fetchval(
                    """SELECT count(*) FROM ticket_events WHERE kind = 'status' AND to_value = 'resolved'
                       AND created_at >= $1 AND created_at < $2""", since, until)
                seen["resolved_again"] |= 0 < total.tickets_resolved < resolutions  # once per ticket
            assert all(seen.values()), seen
    finally:
        await pool.close()
