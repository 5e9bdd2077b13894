"""Daily analytics: a year of get_metrics figures from the analytics_daily roll-up vs. the
live-table query, with a generated year of support traffic (1M messages by default).

    python bench/analytics.py [--messages 1000000] [--days 365] [--json bench/results/analytics.json]

The data is generated with set-based SQL (generate_series, one statement per table, triggers off
for the load: the load is not what is measured). Then `analytics.backfill` rolls the days up, and
tools/metrics.compute answers the year with and without the roll-up (same figures asserted).
`generate` is also the month of data tests/test_analytics.py checks the roll-up against."""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import asyncpg

if __package__ in (None, ""):
    # Run as a script, bench/ itself is first on the path, and bench/email.py would shadow the
    # standard library's email package (pydantic imports it): the repository root instead.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

GENERATE_SQL = [
    # customers and one closed conversation each (closed: the one-open-conversation index stays out of the way)
    """INSERT INTO customers (name, created_at) SELECT 'Gen ' || g, $1 FROM generate_series(1, $3) g""",
    """CREATE TEMP TABLE gen_c ON COMMIT DROP AS SELECT id, row_number() OVER (ORDER BY id) AS n FROM customers""",
    """INSERT INTO conversations (customer_id, initial_channel, current_channel, status, started_at, last_activity_at, ended_at)
       SELECT c.id, ch, ch, 'closed', t, t, t + interval '1 hour'
       FROM gen_c c, LATERAL (SELECT (ARRAY['email', 'whatsapp', 'web_form'])[1 + (c.n % 3)] AS ch,
                                     $1 + ($2 - $1) * ((c.n * 7919) % 100000) / 100000.0 AS t) x""",
    """CREATE TEMP TABLE gen_v ON COMMIT DROP AS
       SELECT v.id, v.customer_id, v.initial_channel AS ch, row_number() OVER (ORDER BY v.id) AS n FROM conversations v""",
    # messages: 55% inbound with a sentiment (some without), the rest replies by the agent, staff or system
    """INSERT INTO messages (conversation_id, customer_id, channel, direction, role, content, delivery_status, sentiment, created_at)
       SELECT v.id, v.customer_id, v.ch, d.dir, d.role, 'generated',
              CASE WHEN d.role IN ('agent', 'human') THEN 'delivered' END,
              CASE WHEN d.dir = 'inbound' AND g % 10 <> 0 THEN ((g * 37) % 2001 - 1000) / 1000.0 END,
              $1 + ($2 - $1) * random()
       FROM generate_series(1, $4) g
       JOIN gen_v v ON v.n = 1 + (g % $3)
       CROSS JOIN LATERAL (SELECT CASE WHEN g % 20 < 11 THEN 'inbound' ELSE 'outbound' END AS dir,
                                  CASE WHEN g % 20 < 11 THEN 'customer' WHEN g % 20 < 17 THEN 'agent'
                                       WHEN g % 20 < 19 THEN 'human' ELSE 'system' END AS role) d""",
    # reply latency per agent / staff reply (a few without a channel: counted in the total only)
    """INSERT INTO agent_metrics (metric_type, channel, value, message_id, recorded_at)
       SELECT 'response_latency', CASE WHEN random() < 0.02 THEN NULL ELSE m.channel END, (random() * 600000)::int / 10.0,
              m.id, m.created_at
       FROM messages m WHERE m.direction = 'outbound' AND m.role IN ('agent', 'human')""",
    # tickets: half resolved (some across midnight), 15% escalated; unfinished ones own their conversation
    """INSERT INTO tickets (customer_id, conversation_id, subject, source_channel, status, resolution_notes, created_at,
                            first_response_at)
       SELECT v.customer_id, CASE WHEN g % 2 = 0 OR g <= $3 THEN v.id END, 'generated', v.ch,
              CASE WHEN g % 2 = 0 THEN 'resolved' ELSE 'open' END, CASE WHEN g % 2 = 0 THEN 'done' END, t,
              CASE WHEN g % 7 <> 0 THEN t + (g % 50) * interval '17 minutes' END
       FROM generate_series(1, $5) g
       JOIN gen_v v ON v.n = 1 + (g % $3)
       CROSS JOIN LATERAL (SELECT $1 + ($2 - $1) * (((g::bigint * 104729) % 1000003) / 1000003.0) AS t) x""",
    """INSERT INTO ticket_events (ticket_id, kind, from_value, to_value, created_at)
       SELECT id, 'status', 'in_progress', 'resolved', created_at + (abs(hashtext(id::text)) % 3000) * interval '1 minute'
       FROM tickets WHERE status = 'resolved'""",
    """INSERT INTO ticket_events (ticket_id, kind, to_value, note, created_at)
       SELECT id, CASE WHEN abs(hashtext(id::text)) % 2 = 0 THEN 'escalation' ELSE 'sla_breach' END, 'escalated', 'generated',
              created_at + (abs(hashtext(id::text || 'e')) % 2000) * interval '1 minute'
       FROM tickets WHERE abs(hashtext(id::text)) % 100 < 15""",
    # CSAT: one rating per ticket for a third of them; some with no channel recorded
    """INSERT INTO feedback (customer_id, ticket_id, channel, rating, created_at)
       SELECT customer_id, id, CASE WHEN abs(hashtext(id::text)) % 10 = 0 THEN NULL ELSE source_channel END,
              1 + abs(hashtext(id::text || 'r')) % 5, created_at + interval '2 hours'
       FROM tickets WHERE abs(hashtext(id::text || 'f')) % 3 = 0""",
]


async def generate(conn: asyncpg.Connection, *, start: date, days: int, messages: int, customers: int | None = None,
                   tickets: int | None = None) -> dict[str, int]:
    """A support history over [start, start + days): set-based inserts, triggers off for the load."""
    since = datetime.combine(start, datetime.min.time(), tzinfo=timezone.utc)
    until = since + timedelta(days=days)
    customers = customers or max(messages // 20, 10)
    tickets = tickets or max(messages // 40, 10)
    async with conn.transaction():
        # Generated rows are consistent by construction; the per-row triggers (NOTIFY, lease ends,
        # updated_at) would only slow the load down.
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute("SET LOCAL statement_timeout = 0")
        # The values are ours (two timestamps, three counts), written in as literals: each statement
        # uses a different subset of them, which bind parameters cannot skip.
        values = {"$1": f"'{since.isoformat()}'::timestamptz", "$2": f"'{until.isoformat()}'::timestamptz",
                  "$3": str(int(customers)), "$4": str(int(messages)), "$5": str(int(tickets))}
        for sql in GENERATE_SQL:
            await conn.execute(re.sub(r"\$[1-5]", lambda m: values[m.group(0)], sql))
    await conn.execute("ANALYZE")
    return {"customers": customers, "messages": messages, "tickets": tickets}


async def run(messages: int, days: int, repeats: int = 5) -> dict[str, Any]:
    from bench.common import create_db, drop_db, embedded_postgres
    from crm_mcp.server.config import load_settings
    from crm_mcp.server.db import create_pool
    from crm_mcp.tools import analytics
    from crm_mcp.tools.metrics import compute
    from crm_mcp.tools.plumbing.context import Crm

    out: dict[str, Any] = {"messages": messages, "days": days}
    with embedded_postgres() as pg:
        admin = pg.admin_dsn
        dsn = await create_db(admin)
        try:
            settings = load_settings(database_url=dsn, statement_timeout_ms=600_000)
            pool = await create_pool(settings, dsn)
            crm = Crm(settings=settings, pool=pool)
            today = datetime.now(timezone.utc).date()
            start = today - timedelta(days=days)
            t0 = time.perf_counter()
            async with pool.acquire() as conn:
                out["generated"] = await generate(conn, start=start, days=days, messages=messages)
            out["generate_s"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            await analytics.backfill(crm, start)
            out["backfill_s"] = round(time.perf_counter() - t0, 1)
            since = datetime.combine(start, datetime.min.time(), tzinfo=timezone.utc)
            until = datetime.combine(today, datetime.min.time(), tzinfo=timezone.utc)
            timings: dict[str, list[float]] = {"rollup": [], "live": []}
            results = {}
            async with pool.acquire() as conn:
                await conn.execute("SET statement_timeout = 0")
                for _ in range(repeats):
                    for mode in ("rollup", "live"):
                        t = time.perf_counter()
                        results[mode] = await compute(conn, since, until, use_rollup=mode == "rollup")
                        timings[mode].append((time.perf_counter() - t) * 1000)
            assert results["rollup"].model_dump() == results["live"].model_dump(), "roll-up and live figures differ"
            # the same year asked again and again (a dashboard): no live scan in between evicts the roll-up's pages
            async with pool.acquire() as conn:
                again = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    await compute(conn, since, until)
                    again.append((time.perf_counter() - t) * 1000)
            again.sort()
            out["rollup_repeated_ms_median"] = round(again[len(again) // 2], 1)
            # the same year starting mid-day and ending now: live ends around the rolled-up days
            async with pool.acquire() as conn:
                await conn.execute("SET statement_timeout = 0")
                a, b = since + timedelta(hours=13, minutes=7), datetime.now(timezone.utc)
                edged, ms = {}, []
                for _ in range(repeats):
                    t = time.perf_counter()
                    edged["rollup"] = await compute(conn, a, b)
                    ms.append((time.perf_counter() - t) * 1000)
                edged["live"] = await compute(conn, a, b, use_rollup=False)
            assert edged["rollup"].model_dump() == edged["live"].model_dump(), "roll-up and live figures differ (partial days)"
            out["rollup_partial_days_ms_median"] = round(sorted(ms)[len(ms) // 2], 1)
            out["rollup_parts_ms"] = await _parts(pool, since, until)
            for mode, ms in timings.items():
                ms.sort()
                out[f"{mode}_ms_median"] = round(ms[len(ms) // 2], 1)
                out[f"{mode}_ms_min"] = round(ms[0], 1)
            await pool.close()
        finally:
            await drop_db(admin, dsn)
    return out


async def _parts(pool: Any, since: datetime, until: datetime) -> dict[str, float]:
    """Where the roll-up path spends its time, one part at a time, best of three; and the parts it
    replaced (marked "before"), on the same data."""
    import numpy as np

    from crm_mcp.tools import metrics, ticket_cohorts
    from crm_mcp.tools.agent_turns import figures as agent_figures

    d1, d2 = since.date(), until.date()
    block = (since, until)
    nothing = (since, since, since, since)

    async def old_latency(conn: Any) -> None:  # the previous reading: one Python float per sample
        rows = await conn.fetch("SELECT channel, latency_ms FROM analytics_daily WHERE day >= $1 AND day < $2", d1, d2)
        for ch in ("all", "email", "whatsapp", "web_form"):
            values = np.concatenate([np.asarray(r["latency_ms"], dtype=np.float64) for r in rows if r["channel"] == ch])
            np.percentile(values, [50, 90], method="linear")

    parts: dict[str, Any] = {
        "rollup_block": lambda c: metrics._rollup_block(c, since, until),
        "rollup_sums": lambda c: c.fetch(metrics.ROLLUP_SQL, d1, d2, None),
        "ticket_cells (all statements + numpy)": lambda c: ticket_cohorts.figures(c, since, until, block, None),
        "ticket_cells: counts": lambda c: c.fetch(ticket_cohorts.COUNTS_SQL, d1, d2, d2, None),
        "ticket_cells: values": lambda c: c.fetch(ticket_cohorts.VALUES_SQL, d1, d2, None),
        "ticket_cells: staff replies after the roll-up": lambda c: c.fetch(ticket_cohorts.STAFF_LATE_SQL, until, since, until, None),
        "latency_percentiles (packed + numpy)": lambda c: metrics._latency_from_rollup(c, nothing, block, None),
        "agent_turns (live)": lambda c: agent_figures(c, since, until, None),
        "before: tickets_opened_cohort_live": lambda c: c.fetch(metrics.OPENED_SQL, since, until, None),
        "before: ticket_history_live": lambda c: c.fetch(metrics.HISTORY_SQL, since, until, None),
        "before: latency_percentiles (Python floats + numpy)": old_latency,
    }
    out = {}
    async with pool.acquire() as conn:
        await conn.execute("SET statement_timeout = 0")
        for name, part in parts.items():
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                await part(conn)
                best = min(best, (time.perf_counter() - t) * 1000)
            out[name] = round(best, 1)
        out["cells"] = await conn.fetchval("SELECT count(*) FROM analytics_ticket_cells")
        out["latency_samples"] = await conn.fetchval(
            "SELECT sum(cardinality(latency_ms)) FROM analytics_daily WHERE channel = 'all'")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ns = ap.parse_args()
    result = anyio.run(run, ns.messages, ns.days, ns.repeats)
    import json

    text = json.dumps(result, indent=2)
    print(text)
    if ns.json:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
