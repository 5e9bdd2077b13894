"""The ticket figures of get_metrics for a run of whole past days, from count cells and the values
percentiles need, which the daily roll-up keeps (analytics_ticket_cells, migration 0014; values
sorted and packed by float8send), with the definitions of tools/metrics.py's OPENED_SQL and
HISTORY_SQL exactly.

Those definitions are cohorts of the whole period, so no day holds a figure. A range [A, B) of
whole days (and the live ends of a period around it) is answered from cells that record the days
a range has to compare. A cell belongs to the latest day it depends on (its `day`), so a later
event never changes an earlier day's cells and re-running a day gives the same rows:

    opened_escalated  tickets by day opened (d1) whose first escalation is on `day`, or before it when
                      `day` is the day opened. Opened in [A, B) and escalated by B: d1 in [A, B), day < B.
    first_response    the same for the first reply, with the sorted created -> first reply seconds.
    escalated         tickets escalated on `day`, d1 = their previous day with an escalation (or NULL).
                      Escalated in [A, B), once each: day in [A, B) and d1 before A or NULL.
    resolved          tickets resolved on `day`, d1 = their previous day with a resolution, vals = the
                      seconds from creation to the day's last resolution. Counted once as above; the
                      resolution time of a ticket in [A, B) is that of its last day in it: all vals of
                      days in [A, B) minus those superseded by a later day in the range, which are...
    superseded        ...the previous resolution day's values (d1), kept by the later day `day`.
                      Removed when day in [A, B) and d1 >= A.
    resolved_conv     the `resolved` tickets that have a conversation (the AI-resolution candidates).
    human_resolved    a resolution day d1 (d2 = the previous one) of a ticket whose conversation has a
                      staff reply; it belongs to the later of d1 and the day of the first staff reply,
                      so a reply to a ticket resolved long ago lands in the day it was sent. Staff
                      replies after the last rolled-up day are found live (few: today's).

The live parts: tickets opened and ticket history in the partial days at either end of the
period (per ticket, so that a ticket also counted in [A, B) is counted once, with its last
resolution), and the block's tickets whose first escalation or reply falls after B but before
the period's end. Percentiles are computed with PostgreSQL's percentile_cont arithmetic
(tools/engines/percentiles.py)."""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from crm_mcp.tools.engines.percentiles import concat, packed, percentile_cont, remove
from crm_mcp.tools.vocabulary import CHANNELS

log = logging.getLogger(__name__)

ESCALATION = "kind IN ('escalation', 'sla_breach')"
RESOLUTION = "kind = 'status' AND to_value = 'resolved'"
STAFF_REPLY = "direction = 'outbound' AND role = 'human'"

# Cells of the day [$1, $2) ($3: that day as a date). Each statement returns (kind, channel, d1, d2, n, vals).
CELL_QUERIES = (
    f"""
WITH cand AS (
    SELECT ticket_id AS id FROM ticket_events WHERE {ESCALATION} AND created_at >= $1 AND created_at < $2
    UNION
    SELECT id FROM tickets WHERE created_at >= $1 AND created_at < $2
)
SELECT 'opened_escalated' AS kind, t.source_channel AS channel, (t.created_at AT TIME ZONE 'UTC')::date AS d1,
       NULL::date AS d2, count(*)::int AS n, NULL::bytea AS vals
FROM cand JOIN tickets t ON t.id = cand.id,
     LATERAL (SELECT min(e.created_at) AS first_at FROM ticket_events e WHERE e.ticket_id = t.id AND e.{ESCALATION}) f
WHERE f.first_at IS NOT NULL AND greatest(f.first_at, t.created_at) >= $1 AND greatest(f.first_at, t.created_at) < $2
GROUP BY t.source_channel, 3
""",
    """
WITH r AS (
    SELECT source_channel, (created_at AT TIME ZONE 'UTC')::date AS opened,
           extract(epoch FROM first_response_at - created_at)::float8 AS v
    FROM tickets
    WHERE (first_response_at >= $1 AND first_response_at < $2 OR created_at >= $1 AND created_at < $2)
      AND greatest(first_response_at, created_at) >= $1 AND greatest(first_response_at, created_at) < $2
      AND first_response_at IS NOT NULL
)
SELECT 'first_response', source_channel, opened, NULL::date, count(*)::int, string_agg(float8send(v), ''::bytea ORDER BY v)
FROM r GROUP BY source_channel, opened
""",
    f"""
SELECT 'escalated', t.source_channel, p.prev, NULL::date, count(*)::int, NULL::bytea
FROM (SELECT DISTINCT ticket_id FROM ticket_events WHERE {ESCALATION} AND created_at >= $1 AND created_at < $2) e
JOIN tickets t ON t.id = e.ticket_id,
LATERAL (SELECT (max(x.created_at) AT TIME ZONE 'UTC')::date AS prev FROM ticket_events x
         WHERE x.ticket_id = e.ticket_id AND x.{ESCALATION} AND x.created_at < $1) p
GROUP BY t.source_channel, p.prev
""",
    f"""
WITH r AS (
    SELECT ticket_id, max(created_at) AS last_at FROM ticket_events
    WHERE {RESOLUTION} AND created_at >= $1 AND created_at < $2
    GROUP BY ticket_id
), x AS (
    SELECT t.source_channel AS channel, t.conversation_id IS NOT NULL AS has_conv,
           extract(epoch FROM r.last_at - t.created_at)::float8 AS v,
           (p.prev_at AT TIME ZONE 'UTC')::date AS prev, extract(epoch FROM p.prev_at - t.created_at)::float8 AS prev_v
    FROM r JOIN tickets t ON t.id = r.ticket_id,
    LATERAL (SELECT max(q.created_at) AS prev_at FROM ticket_events q
             WHERE q.ticket_id = r.ticket_id AND q.{RESOLUTION} AND q.created_at < $1) p
)
SELECT 'resolved', channel, prev, NULL::date, count(*)::int, string_agg(float8send(v), ''::bytea ORDER BY v) FROM x GROUP BY channel, prev
UNION ALL
SELECT 'resolved_conv', channel, prev, NULL::date, count(*)::int, NULL::bytea FROM x WHERE has_conv GROUP BY channel, prev
UNION ALL
SELECT 'superseded', channel, prev, NULL::date, count(*)::int, string_agg(float8send(prev_v), ''::bytea ORDER BY prev_v)
FROM x WHERE prev IS NOT NULL GROUP BY channel, prev
""",
    f"""
WITH resolved_today AS (
    SELECT DISTINCT e.ticket_id FROM ticket_events e JOIN tickets t ON t.id = e.ticket_id
    WHERE e.{RESOLUTION} AND e.created_at >= $1 AND e.created_at < $2
      AND EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = t.conversation_id AND m.{STAFF_REPLY} AND m.created_at < $2)
), first_staff_reply AS (
    SELECT DISTINCT m.conversation_id FROM messages m
    WHERE m.{STAFF_REPLY} AND m.created_at >= $1 AND m.created_at < $2
      AND NOT EXISTS (SELECT 1 FROM messages h WHERE h.conversation_id = m.conversation_id AND h.{STAFF_REPLY} AND h.created_at < $1)
), earlier AS (
    SELECT t.id FROM first_staff_reply f JOIN tickets t ON t.conversation_id = f.conversation_id
), days AS (
    SELECT DISTINCT e.ticket_id, (e.created_at AT TIME ZONE 'UTC')::date AS d
    FROM (SELECT ticket_id FROM resolved_today UNION SELECT id FROM earlier) s
    JOIN ticket_events e ON e.ticket_id = s.ticket_id
    WHERE e.{RESOLUTION} AND e.created_at < $2
), pairs AS (
    SELECT ticket_id, d, lag(d) OVER (PARTITION BY ticket_id ORDER BY d) AS prev FROM days
)
SELECT 'human_resolved', t.source_channel, p.d, p.prev, count(*)::int, NULL::bytea
FROM pairs p JOIN tickets t ON t.id = p.ticket_id
WHERE (p.d = $3 AND p.ticket_id IN (SELECT ticket_id FROM resolved_today))
   OR (p.d < $3 AND p.ticket_id IN (SELECT id FROM earlier))
GROUP BY t.source_channel, p.d, p.prev
""",
)


async def compute_cells(conn: asyncpg.Connection, day: date, since: datetime, until: datetime) -> None:
    """Replace the cells that belong to `day` ([since, until)) from the live tables."""
    await conn.execute("DELETE FROM analytics_ticket_cells WHERE day = $1", day)
    rows = []
    for sql in CELL_QUERIES:
        args = (since, until, day) if "$3" in sql else (since, until)
        rows += [(day, *r.values()) for r in await conn.fetch(sql, *args)]
    await conn.executemany(
        "INSERT INTO analytics_ticket_cells (day, kind, channel, d1, d2, n, vals) VALUES ($1, $2, $3, $4, $5, $6, $7)", rows)


# Reading a block of days [$1, $2); human_resolved cells up to the end of the rolled-up run ($3).
COUNTS_SQL = """
SELECT channel,
       sum(n) FILTER (WHERE kind = 'opened_escalated' AND d1 >= $1 AND day < $2) AS opened_escalated,
       sum(n) FILTER (WHERE kind = 'escalated' AND day < $2 AND (d1 IS NULL OR d1 < $1)) AS tickets_escalated,
       sum(n) FILTER (WHERE kind = 'resolved' AND day < $2 AND (d1 IS NULL OR d1 < $1)) AS tickets_resolved,
       sum(n) FILTER (WHERE kind = 'resolved_conv' AND day < $2 AND (d1 IS NULL OR d1 < $1)) AS resolved_conv,
       sum(n) FILTER (WHERE kind = 'human_resolved' AND d1 >= $1 AND d1 < $2 AND (d2 IS NULL OR d2 < $1)) AS human_resolved,
       NULL::bigint AS tickets_opened
FROM analytics_ticket_cells
WHERE day >= $1 AND day < $3 AND ($4::text IS NULL OR channel = $4)
GROUP BY channel
UNION ALL
SELECT channel, NULL, NULL, NULL, NULL, NULL, sum(tickets_opened)
FROM analytics_daily
WHERE day >= $1 AND day < $2 AND channel <> 'all' AND ($4::text IS NULL OR channel = $4)
GROUP BY channel
"""

VALUES_SQL = """
SELECT channel, kind, string_agg(vals, ''::bytea) AS vals FROM analytics_ticket_cells
WHERE day >= $1 AND day < $2 AND ($3::text IS NULL OR channel = $3)
  AND (kind = 'resolved' OR (kind IN ('first_response', 'superseded') AND d1 >= $1))
GROUP BY channel, kind
"""

# The end of the unbroken run of rolled-up days that starts at $1 (NULL: $1 is not rolled up).
RUN_END_SQL = """
SELECT max(day) FROM (
    SELECT day, day - (row_number() OVER (ORDER BY day))::int AS start FROM analytics_daily WHERE channel = 'all' AND day >= $1
) s WHERE start = $1::date - 1
"""

# Tickets opened in the live ends [$1, $2) and [$3, $4) of a period ending at $5: OPENED_SQL's figures.
OPENED_EDGE_SQL = f"""
SELECT t.source_channel AS channel, count(*) AS tickets_opened,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM ticket_events e
                                      WHERE e.ticket_id = t.id AND e.{ESCALATION} AND e.created_at < $5)) AS opened_escalated,
       array_agg(extract(epoch FROM t.first_response_at - t.created_at)::float8)
           FILTER (WHERE t.first_response_at < $5) AS frt
FROM tickets t
WHERE ((t.created_at >= $1 AND t.created_at < $2) OR (t.created_at >= $3 AND t.created_at < $4))
  AND ($6::text IS NULL OR t.source_channel = $6)
GROUP BY t.source_channel
"""

# Tickets opened in the block [$1, $2) whose first escalation or first reply is in [$2, $3).
COHORT_LATE_SQL = f"""
SELECT t.source_channel AS channel, count(*) AS opened_escalated, NULL::float8[] AS frt
FROM (SELECT DISTINCT ticket_id FROM ticket_events e
      WHERE e.{ESCALATION} AND e.created_at >= $2 AND e.created_at < $3
        AND NOT EXISTS (SELECT 1 FROM ticket_events p WHERE p.ticket_id = e.ticket_id AND p.{ESCALATION} AND p.created_at < $2)) l
JOIN tickets t ON t.id = l.ticket_id
WHERE t.created_at >= $1 AND t.created_at < $2 AND ($4::text IS NULL OR t.source_channel = $4)
GROUP BY t.source_channel
UNION ALL
SELECT source_channel, 0, array_agg(extract(epoch FROM first_response_at - created_at)::float8)
FROM tickets
WHERE first_response_at >= $2 AND first_response_at < $3 AND created_at >= $1 AND created_at < $2
  AND ($4::text IS NULL OR source_channel = $4)
GROUP BY source_channel
"""

# Tickets with history in the live ends [$1, $2) and [$3, $4) of the period [$1, $4), block [$2, $3):
# HISTORY_SQL's per-ticket figures over the whole period, and what the block counted of each.
EDGE_HISTORY_SQL = f"""
WITH edge AS (
    SELECT DISTINCT ticket_id FROM ticket_events
    WHERE ((created_at >= $1 AND created_at < $2) OR (created_at >= $3 AND created_at < $4))
      AND ({ESCALATION} OR ({RESOLUTION}))
), per AS (
    SELECT x.ticket_id,
           max(x.created_at) FILTER (WHERE x.{RESOLUTION}) AS resolved_at,
           max(x.created_at) FILTER (WHERE x.{RESOLUTION} AND x.created_at >= $2 AND x.created_at < $3) AS block_resolved_at,
           bool_or(x.{ESCALATION}) AS escalated,
           bool_or(x.{ESCALATION} AND x.created_at >= $2 AND x.created_at < $3) AS block_escalated
    FROM ticket_events x JOIN edge USING (ticket_id)
    WHERE x.created_at >= $1 AND x.created_at < $4 AND (x.{ESCALATION} OR (x.{RESOLUTION}))
    GROUP BY x.ticket_id
)
SELECT t.source_channel AS channel, p.resolved_at IS NOT NULL AS resolved, p.block_resolved_at IS NOT NULL AS in_block,
       p.resolved_at <> p.block_resolved_at AS resolved_later, p.escalated, p.block_escalated,
       extract(epoch FROM p.resolved_at - t.created_at)::float8 AS resolution_s,
       extract(epoch FROM p.block_resolved_at - t.created_at)::float8 AS block_resolution_s,
       p.resolved_at IS NOT NULL AND t.conversation_id IS NOT NULL AND NOT EXISTS (
           SELECT 1 FROM messages m WHERE m.conversation_id = t.conversation_id AND m.{STAFF_REPLY}) AS ai_resolved
FROM per p JOIN tickets t ON t.id = p.ticket_id
WHERE $5::text IS NULL OR t.source_channel = $5
"""

# Block tickets ([$2, $3)) with a conversation whose first staff reply is at or after $1 (the end
# of the rolled-up run): the cells still count them as resolved by the AI.
STAFF_LATE_SQL = f"""
SELECT t.source_channel AS channel, count(DISTINCT t.id) AS n
FROM (SELECT DISTINCT conversation_id FROM messages m
      WHERE m.{STAFF_REPLY} AND m.created_at >= $1
        AND NOT EXISTS (SELECT 1 FROM messages h WHERE h.conversation_id = m.conversation_id AND h.{STAFF_REPLY}
                        AND h.created_at < $1)) c
JOIN tickets t ON t.conversation_id = c.conversation_id
WHERE EXISTS (SELECT 1 FROM ticket_events e WHERE e.ticket_id = t.id AND e.{RESOLUTION} AND e.created_at >= $2 AND e.created_at < $3)
  AND ($4::text IS NULL OR t.source_channel = $4)
GROUP BY t.source_channel
"""

COUNT_KEYS = ("tickets_opened", "opened_escalated", "tickets_resolved", "tickets_escalated", "ai_resolved")


class _Channel:
    def __init__(self) -> None:
        self.counts = dict.fromkeys(COUNT_KEYS, 0)
        self.frt: list[Any] = []
        self.res: list[Any] = []
        self.res_removed: list[Any] = []


async def figures(conn: asyncpg.Connection, since: datetime, until: datetime, block: tuple[datetime, datetime],
                  channel: str | None) -> dict[str, dict[str, Any]] | None:
    """OPENED_SQL's and HISTORY_SQL's figures for [since, until) (keys as theirs), per channel and
    'total', with the whole days `block` (rolled up, before today) read from the cells. None when
    the cells contradict themselves (data changed under days the roll-up no longer recomputes):
    the caller computes live."""
    a, b = block
    da, db = a.date(), b.date()
    run_last = await conn.fetchval(RUN_END_SQL, da)
    run_end = datetime.combine(run_last + timedelta(days=1), a.timetz()) if run_last else b
    per = {c: _Channel() for c in CHANNELS}

    for r in await conn.fetch(COUNTS_SQL, da, db, max(run_end, b).date(), channel):
        c = per[r["channel"]].counts
        for k in ("tickets_opened", "opened_escalated", "tickets_resolved", "tickets_escalated"):
            c[k] += int(r[k] or 0)
        c["ai_resolved"] += int(r["resolved_conv"] or 0) - int(r["human_resolved"] or 0)
    for r in await conn.fetch(VALUES_SQL, da, db, channel):
        ch = per[r["channel"]]
        {"first_response": ch.frt, "resolved": ch.res, "superseded": ch.res_removed}[r["kind"]].append(packed(r["vals"]))
    for r in await conn.fetch(STAFF_LATE_SQL, run_end, a, b, channel):
        per[r["channel"]].counts["ai_resolved"] -= int(r["n"])

    if until > b:
        for r in await conn.fetch(COHORT_LATE_SQL, a, b, until, channel):
            ch = per[r["channel"]]
            ch.counts["opened_escalated"] += int(r["opened_escalated"])
            ch.frt.append(r["frt"] or [])
    if since < a or until > b:
        for r in await conn.fetch(OPENED_EDGE_SQL, since, a, b, until, until, channel):
            ch = per[r["channel"]]
            ch.counts["tickets_opened"] += int(r["tickets_opened"])
            ch.counts["opened_escalated"] += int(r["opened_escalated"])
            ch.frt.append(r["frt"] or [])
        for r in await conn.fetch(EDGE_HISTORY_SQL, since, a, b, until, channel):
            ch = per[r["channel"]]
            if r["escalated"] and not r["block_escalated"]:
                ch.counts["tickets_escalated"] += 1
            if not r["resolved"]:
                continue
            if not r["in_block"]:
                ch.counts["tickets_resolved"] += 1
                ch.counts["ai_resolved"] += int(r["ai_resolved"])
                ch.res.append([r["resolution_s"]])
            elif r["resolved_later"]:  # its last resolution in the period is after the block's
                ch.res_removed.append([r["block_resolution_s"]])
                ch.res.append([r["resolution_s"]])

    out: dict[str, dict[str, Any]] = {}
    names = [channel] if channel else list(CHANNELS)
    for key, members in [*((c, [per[c]]) for c in names), ("total", [per[c] for c in names])]:
        counts = {k: sum(m.counts[k] for m in members) for k in COUNT_KEYS}
        frt = concat(a for m in members for a in m.frt)
        try:
            res = remove(concat(a for m in members for a in m.res), concat(a for m in members for a in m.res_removed))
        except ValueError:
            res = None
        if res is None or res.size != counts["tickets_resolved"]:
            log.warning("analytics_ticket_cells disagree with themselves for %s..%s; computing live "
                        "(`crm-mcp analytics backfill` recomputes old days)", da, db)
            return None
        frt_median, frt_p90 = percentile_cont(frt, (0.5, 0.9))
        res_median, res_p90 = percentile_cont(res, (0.5, 0.9))
        out[key] = {**counts, "frt_n": int(frt.size), "frt_median": frt_median, "frt_p90": frt_p90,
                    "res_median": res_median, "res_p90": res_p90}
    return out
