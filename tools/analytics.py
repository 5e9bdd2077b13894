"""The daily roll-up (analytics_daily): one row per UTC day and channel, plus 'all' for the total,
filled from the live tables by the same SQL get_metrics runs (tools/metrics.py), so a day's row
is by construction what get_metrics computes live for that day; and the day's ticket cells
(analytics_ticket_cells, tools/ticket_cohorts.py).

What get_metrics reads back for whole past days: from the rows, conversations, messages in and
out, the sentiment sum and count, CSAT counts, tickets opened and the day's response-latency
samples (a range's median and p90 are percentile_cont over the same values the live query sorts);
from the cells, the ticket figures whose definitions are cohorts of the period ("escalated by its
end", "resolved once per ticket", median first response of tickets opened in the period). A row's
own ticket figures (resolved, escalated, median first response) and refunds are the day's, for
reports.

Computing a day replaces its rows and its cells (re-running gives the same rows). The job runs
under pg_try_advisory_xact_lock: across replicas one computes and the others skip that round."""

from __future__ import annotations

import logging
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import asyncpg

from crm_mcp.tools.metrics import CONVERSATIONS_SQL, FEEDBACK_SQL, HISTORY_SQL, MESSAGES_SQL, OPENED_SQL
from crm_mcp.tools import ticket_cohorts
from crm_mcp.tools.plumbing.context import Crm
from crm_mcp.tools.vocabulary import CHANNELS

log = logging.getLogger(__name__)

ANALYTICS_LOCK_KEY = 0x63726D616E6C  # "crmanl": one roll-up at a time across replicas
RECOMPUTE_DAYS = 2  # late data (a message received yesterday, ingested today) lands in these
FIRST_RUN_MAX_DAYS = 366  # the automatic job's reach back; older days: `crm-mcp analytics backfill`

LATENCY_SAMPLES_SQL = """
SELECT channel, GROUPING(channel) = 1 AS is_total, array_agg(value ORDER BY value) AS latency_ms,
       string_agg(float8send(value), ''::bytea ORDER BY value) AS latency_packed
FROM agent_metrics
WHERE metric_type = 'response_latency' AND recorded_at >= $1 AND recorded_at < $2 AND ($3::text IS NULL OR channel = $3)
GROUP BY ROLLUP (channel)
"""

REFUNDS_SQL = """
SELECT count(*) AS refunds_count, coalesce(sum(amount), 0) AS refunds_amount
FROM agent_actions
WHERE action_type = 'refund' AND approval_status IN ('approved', 'not_required')
  AND coalesce(decided_at, created_at) >= $1 AND coalesce(decided_at, created_at) < $2
"""

UPSERT_SQL = """
INSERT INTO analytics_daily (day, channel, conversations, messages_in, messages_out, tickets_opened, tickets_resolved,
    tickets_escalated, avg_sentiment, median_first_response_s, csat_responses, csat_satisfied, refunds_count,
    refunds_amount, sentiment_sum, sentiment_n, latency_ms, latency_packed, computed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, now())
ON CONFLICT (day, channel) DO UPDATE SET conversations = EXCLUDED.conversations, messages_in = EXCLUDED.messages_in,
    messages_out = EXCLUDED.messages_out, tickets_opened = EXCLUDED.tickets_opened,
    tickets_resolved = EXCLUDED.tickets_resolved, tickets_escalated = EXCLUDED.tickets_escalated,
    avg_sentiment = EXCLUDED.avg_sentiment, median_first_response_s = EXCLUDED.median_first_response_s,
    csat_responses = EXCLUDED.csat_responses, csat_satisfied = EXCLUDED.csat_satisfied,
    refunds_count = EXCLUDED.refunds_count, refunds_amount = EXCLUDED.refunds_amount,
    sentiment_sum = EXCLUDED.sentiment_sum, sentiment_n = EXCLUDED.sentiment_n, latency_ms = EXCLUDED.latency_ms,
    latency_packed = EXCLUDED.latency_packed, computed_at = now()
"""


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


def today() -> date:
    return datetime.now(timezone.utc).date()


async def compute_day(conn: asyncpg.Connection, day: date) -> None:
    """Replace the day's rows ('all' and one per channel, zeros included) from the live tables."""
    since, until = day_bounds(day)
    rows: dict[str, dict[str, Any]] = {c: {} for c in ("all", *CHANNELS)}
    unattributed = b""
    for sql in (CONVERSATIONS_SQL, MESSAGES_SQL, FEEDBACK_SQL, OPENED_SQL, HISTORY_SQL, LATENCY_SAMPLES_SQL):
        for r in await conn.fetch(sql, since, until, None):
            key = "all" if r["is_total"] else r["channel"]
            if key in rows:
                rows[key].update({k: v for k, v in r.items() if k not in ("channel", "is_total")})
            elif "latency_packed" in r:
                unattributed = r["latency_packed"]
    # The 'all' row's packed latencies are those of no channel: a total is the channels' plus these,
    # so a range reads each sample once (migration 0014).
    rows["all"]["latency_packed"] = unattributed
    refunds = await conn.fetchrow(REFUNDS_SQL, since, until)
    values = []
    for channel, r in rows.items():
        n = lambda k: int(r.get(k) or 0)  # noqa: E731
        s_n = n("sentiment_n")
        values.append((
            day, channel, n("conversations"), n("messages_in"), n("messages_out"), n("tickets_opened"),
            n("tickets_resolved"), n("tickets_escalated"), (r["sentiment_sum"] / s_n) if s_n else None, r.get("frt_median"),
            n("csat_n"), n("csat_satisfied"), refunds["refunds_count"] if channel == "all" else 0,
            refunds["refunds_amount"] if channel == "all" else 0, float(r.get("sentiment_sum") or 0.0), s_n,
            list(r.get("latency_ms") or []), r.get("latency_packed") or b""))
    await conn.executemany(UPSERT_SQL, values)
    await ticket_cohorts.compute_cells(conn, day, since, until)


async def compute_days(crm: Crm, days: list[date]) -> dict[str, Any]:
    """Compute `days` in one transaction under the roll-up lock; skipped if another process holds it."""
    async with crm.tx() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", ANALYTICS_LOCK_KEY):
            return {"computed": 0, "skipped": "another process is computing the roll-up"}
        # The job reads days of history: no statement timeout meant for interactive calls.
        await conn.execute("SET LOCAL statement_timeout = 0")
        for day in days:
            await compute_day(conn, day)
    return {"computed": len(days), "first": days[0] if days else None, "last": days[-1] if days else None}


async def _first_data_day(conn: asyncpg.Connection) -> date | None:
    first = await conn.fetchval(
        """SELECT least((SELECT min(created_at) FROM messages), (SELECT min(started_at) FROM conversations),
                        (SELECT min(created_at) FROM tickets), (SELECT min(created_at) FROM feedback))""")
    return first.astimezone(timezone.utc).date() if first else None


async def refresh(crm: Crm) -> dict[str, Any]:
    """The periodic job: days never computed up to yesterday, and the last RECOMPUTE_DAYS again."""
    yesterday = today() - timedelta(days=1)
    async with crm.pool.acquire() as conn:
        last = await conn.fetchval("SELECT max(day) FROM analytics_daily WHERE channel = 'all'")
        start = (last - timedelta(days=RECOMPUTE_DAYS - 1)) if last else await _first_data_day(conn)
    if start is None:
        return {"computed": 0}
    start = max(start, yesterday - timedelta(days=FIRST_RUN_MAX_DAYS - 1))
    return await compute_days(crm, _days(start, yesterday))


async def backfill(crm: Crm, since: date) -> dict[str, Any]:
    """`crm-mcp analytics backfill --since DATE`: every day from since to yesterday, recomputed."""
    return await compute_days(crm, _days(since, today() - timedelta(days=1)))


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)] if first <= last else []
