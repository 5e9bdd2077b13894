"""Metrics: get_metrics (support figures for a period, per channel and in total) and
record_feedback (a customer's 1-5 rating of a reply or of a ticket's handling).

Figures are computed from the live tables at call time (messages, conversations, tickets,
ticket_events, feedback, agent_metrics), except that whole past days already rolled up
(tools/analytics.py, with these same queries) are read from the roll-up: analytics_daily for the
figures that add up by day, analytics_ticket_cells for the ticket cohorts (tools/ticket_cohorts.py);
the result is the same either way (tests/test_analytics.py). A period is half-open: since <= t < until.

Definitions (channel = the conversation's initial channel, the message's channel, the ticket's
source channel, the metric's channel or the rated message's / ticket's channel):

    conversations        conversations started in the period
    messages_in          inbound customer messages in the period
    messages_out         outbound replies in the period, role agent (AI) or human; system notices excluded
    tickets_opened       tickets created in the period
    tickets_resolved     tickets moved to resolved in the period (ticket history; counted once per ticket)
    tickets_escalated_in_period      tickets that entered escalated during the period, whenever they
                                     were opened (escalate_to_human, update_ticket or the SLA sweep; once per ticket)
    opened_tickets_escalation_rate   of the tickets opened in the period, the share escalated by its end
                                     (a cohort: a ticket opened earlier and escalated now is not in it)
    avg_sentiment        mean sentiment of inbound messages in the period, -1..1
    first_response_s     created -> first reply, seconds, for tickets opened in the period that got a reply by its end
    resolution_s         created -> resolved (last resolution in the period), seconds, for tickets resolved in the period
    response_latency_ms  latest inbound message -> reply, ms, for replies sent in the period (agent_metrics)
    ai_resolution_rate   of the tickets resolved in the period, the share whose conversation never had a human reply
    csat                 share of feedback ratings of 4 or 5 among the ratings given in the period
    agent                the answering agent's turns recorded in the period (agent_turns, channel = the
                         answered message's): turns, answered without escalation / turns, escalation
                         decisions and reasons with counts, turn latency p50/p95 (tools/agent_turns.py)
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, model_validator

from crm_mcp.tools.plumbing.context import Crm
from crm_mcp.tools.vocabulary import CHANNELS, Channel
from crm_mcp.tools.plumbing.errors import NotFound, UserError
from crm_mcp.tools.engines.formatting import untrusted
from crm_mcp.tools.models import Out
from crm_mcp.tools.plumbing.params import MessageId, Text, TicketNumber
from crm_mcp.tools.plumbing.registry import crm_tool
from crm_mcp.tools.tickets import fetch_ticket
from crm_mcp.tools.agent_turns import AgentFigures, figures as agent_figures
from crm_mcp.tools import ticket_cohorts
from crm_mcp.tools.engines.percentiles import concat, packed, percentile_cont

WINDOWS: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
MAX_SPAN = timedelta(days=366)

# get_metrics ----------------------------------------------------------------------------------


class GetMetricsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    window: Literal["1h", "24h", "7d", "30d"] | None = Field(
        default=None,
        description="Rolling period ending now (default 24h); not with since/until.",
    )
    since: datetime | None = Field(
        default=None, description="Start of a custom period (inclusive; ISO 8601 with zone). Instead of window."
    )
    until: datetime | None = Field(
        default=None, description="End of a custom period (exclusive; ISO 8601 with zone). Only with since; default now."
    )
    channel: Channel | None = Field(default=None, description="Only this channel. Default: every channel plus the total.")

    @model_validator(mode="after")
    def _period(self) -> GetMetricsInput:
        if self.window is not None and (self.since is not None or self.until is not None):
            raise ValueError("give either window or since/until, not both")
        if self.until is not None and self.since is None:
            raise ValueError("until needs since (or use window for a period ending now)")
        for name in ("since", "until"):
            v = getattr(self, name)
            if v is not None and v.tzinfo is None:
                raise ValueError(f"{name} needs a time zone, e.g. 2026-01-31T12:00:00Z")
        if self.since is not None:
            until = self.until or datetime.now(timezone.utc)
            if self.since >= until:
                raise ValueError("since must be earlier than until")
            if until - self.since > MAX_SPAN:
                raise ValueError("the period is longer than 366 days; split it into several calls")
        return self


class Rate(Out):
    value: float | None = Field(description="numerator / denominator, 0..1; null when the denominator is 0.")
    numerator: int
    denominator: int


class Spread(Out):
    median: float | None
    p90: float | None
    samples: int = Field(description="Values behind median and p90; 0: no data (both null).")


class ChannelMetrics(Out):
    channel: Channel | Literal["total"]
    conversations: int = Field(description="Conversations started in the period.")
    messages_in: int = Field(description="Inbound customer messages.")
    messages_out: int = Field(description="Replies by the agent or staff (no system notices).")
    tickets_opened: int
    tickets_resolved: int = Field(description="Tickets resolved in the period (once each).")
    tickets_escalated_in_period: int = Field(
        description="Tickets escalated during the period, whenever they were opened (once each).")
    opened_tickets_escalation_rate: Rate = Field(
        description="Share of the tickets opened in the period escalated by its end.")
    avg_sentiment: float | None = Field(description="Mean sentiment of inbound messages, -1..1.")
    first_response_s: Spread = Field(description="Seconds from ticket creation to first reply (tickets opened in the period).")
    resolution_s: Spread = Field(description="Seconds from ticket creation to resolution, tickets resolved in the period.")
    response_latency_ms: Spread = Field(description="ms from the customer's latest message to the reply, replies in the period.")
    ai_resolution_rate: Rate = Field(
        description="Resolved tickets with no staff reply / tickets resolved in the period.")
    csat: Rate = Field(description="Ratings of 4 or 5 / all ratings given in the period (record_feedback).")


class MetricsResult(Out):
    since: datetime = Field(description="Start of the period (inclusive).")
    until: datetime = Field(description="End of the period (exclusive).")
    channels: list[ChannelMetrics] = Field(description="One entry per channel, then 'total' (all channels together).")
    agent: AgentFigures = Field(description="The AI agent's turns; resolution_rate = answered (not escalated) / turns; top 10 escalations.")


# Each query groups by ROLLUP(channel): one row per channel plus a total row (is_total).
# $1 = since, $2 = until, $3 = channel filter or NULL.

CONVERSATIONS_SQL = """
SELECT initial_channel AS channel, GROUPING(initial_channel) = 1 AS is_total,
       count(*) AS conversations
FROM conversations
WHERE started_at >= $1 AND started_at < $2 AND ($3::text IS NULL OR initial_channel = $3)
GROUP BY ROLLUP (initial_channel)
"""

MESSAGES_SQL = """
SELECT channel, GROUPING(channel) = 1 AS is_total,
       count(*) FILTER (WHERE direction = 'inbound') AS messages_in,
       count(*) FILTER (WHERE direction = 'outbound' AND role IN ('agent', 'human')) AS messages_out,
       sum(sentiment::float8) FILTER (WHERE direction = 'inbound') AS sentiment_sum,
       count(sentiment) FILTER (WHERE direction = 'inbound') AS sentiment_n
FROM messages
WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR channel = $3)
GROUP BY ROLLUP (channel)
"""

# Tickets opened in the period: escalation cohort and first response time.
OPENED_SQL = """
WITH opened AS (
    SELECT t.source_channel AS channel,
           EXISTS (SELECT 1 FROM ticket_events e
                   WHERE e.ticket_id = t.id AND e.kind IN ('escalation', 'sla_breach') AND e.created_at < $2) AS escalated,
           CASE WHEN t.first_response_at < $2 THEN extract(epoch FROM t.first_response_at - t.created_at) END AS first_response_s
    FROM tickets t
    WHERE t.created_at >= $1 AND t.created_at < $2 AND ($3::text IS NULL OR t.source_channel = $3)
)
SELECT channel, GROUPING(channel) = 1 AS is_total,
       count(*) AS tickets_opened,
       count(*) FILTER (WHERE escalated) AS opened_escalated,
       count(first_response_s) AS frt_n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY first_response_s) AS frt_median,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY first_response_s) AS frt_p90
FROM opened
GROUP BY ROLLUP (channel)
"""

# Ticket history in the period: resolutions (time to resolve, AI or human) and escalations.
HISTORY_SQL = """
WITH touched AS (
    SELECT ticket_id,
           max(created_at) FILTER (WHERE kind = 'status' AND to_value = 'resolved') AS resolved_at,
           bool_or(kind IN ('escalation', 'sla_breach')) AS escalated
    FROM ticket_events
    WHERE created_at >= $1 AND created_at < $2
      AND (kind IN ('escalation', 'sla_breach') OR (kind = 'status' AND to_value = 'resolved'))
    GROUP BY ticket_id
), per_ticket AS (
    SELECT t.source_channel AS channel, h.escalated, h.resolved_at IS NOT NULL AS resolved,
           extract(epoch FROM h.resolved_at - t.created_at) AS resolution_s,
           h.resolved_at IS NOT NULL AND t.conversation_id IS NOT NULL AND NOT EXISTS (
               SELECT 1 FROM messages m
               WHERE m.conversation_id = t.conversation_id AND m.direction = 'outbound' AND m.role = 'human'
           ) AS ai_resolved
    FROM touched h JOIN tickets t ON t.id = h.ticket_id
    WHERE $3::text IS NULL OR t.source_channel = $3
)
SELECT channel, GROUPING(channel) = 1 AS is_total,
       count(*) FILTER (WHERE resolved) AS tickets_resolved,
       count(*) FILTER (WHERE escalated) AS tickets_escalated,
       count(*) FILTER (WHERE ai_resolved) AS ai_resolved,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY resolution_s) AS res_median,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY resolution_s) AS res_p90
FROM per_ticket
GROUP BY ROLLUP (channel)
"""

FEEDBACK_SQL = """
SELECT channel, GROUPING(channel) = 1 AS is_total,
       count(*) AS csat_n,
       count(*) FILTER (WHERE rating >= 4) AS csat_satisfied
FROM feedback
WHERE created_at >= $1 AND created_at < $2 AND ($3::text IS NULL OR channel = $3)
GROUP BY ROLLUP (channel)
"""

# Figures that add up day by day (summed over the roll-up and the live edges of a period) and the
# ticket cohorts of the whole period (tickets opened in it, escalated by its end...: live, or from
# the roll-up's cells by tools/ticket_cohorts.py).
ADDITIVE_QUERIES = (CONVERSATIONS_SQL, MESSAGES_SQL, FEEDBACK_SQL)
COHORT_QUERIES = (OPENED_SQL, HISTORY_SQL)

# The same sums from analytics_daily for days [$1, $2). With a channel filter the total is that
# channel's rows (as in the live queries); without, the 'all' rows (which hold rows of no channel).
ROLLUP_SQL = """
SELECT CASE WHEN channel = 'all' THEN NULL ELSE channel END AS channel, channel = 'all' AS is_total,
       sum(conversations) AS conversations, sum(messages_in) AS messages_in, sum(messages_out) AS messages_out,
       sum(sentiment_sum) AS sentiment_sum, sum(sentiment_n) AS sentiment_n,
       sum(csat_responses) AS csat_n, sum(csat_satisfied) AS csat_satisfied
FROM analytics_daily
WHERE day >= $1 AND day < $2 AND ($3::text IS NULL OR channel = $3)
GROUP BY channel
UNION ALL
SELECT NULL, true, sum(conversations), sum(messages_in), sum(messages_out), sum(sentiment_sum), sum(sentiment_n),
       sum(csat_responses), sum(csat_satisfied)
FROM analytics_daily
WHERE day >= $1 AND day < $2 AND $3::text IS NOT NULL AND channel = $3
"""

# Reply latency over live edges [$1, $2) and [$4, $5) plus the roll-up's samples for days [$6, $7):
# percentile_cont over exactly the values recorded in the whole period. Used for periods with no
# rolled-up day; with one, _latency_from_rollup computes the same figures faster.
LATENCY_RANGE_SQL = """
WITH live AS (
    SELECT channel AS ch, value AS v FROM agent_metrics
    WHERE metric_type = 'response_latency' AND ($3::text IS NULL OR channel = $3)
      AND ((recorded_at >= $1 AND recorded_at < $2) OR (recorded_at >= $4 AND recorded_at < $5))
), rolled AS (
    SELECT d.channel AS ch, u.v FROM analytics_daily d, unnest(d.latency_ms) AS u(v)
    WHERE d.day >= $6 AND d.day < $7 AND ($3::text IS NULL OR d.channel IN ($3, 'all'))
)
SELECT ch AS channel, false AS is_total, count(*) AS lat_n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY v) AS lat_median,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY v) AS lat_p90
FROM (SELECT ch, v FROM live WHERE ch IS NOT NULL UNION ALL SELECT ch, v FROM rolled WHERE ch <> 'all') s
GROUP BY ch
UNION ALL
SELECT NULL, true, count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY v), percentile_cont(0.9) WITHIN GROUP (ORDER BY v)
FROM (SELECT v FROM live UNION ALL SELECT v FROM rolled WHERE ch = coalesce($3::text, 'all')) s
"""


def _round(v: Any, digits: int) -> float | None:
    return None if v is None else round(float(v), digits)


def _rate(num: int, den: int) -> Rate:
    return Rate(value=round(num / den, 4) if den else None, numerator=num, denominator=den)


def _spread(row: dict[str, Any], prefix: str, n: int, digits: int = 1) -> Spread:
    return Spread(median=_round(row.get(f"{prefix}_median"), digits), p90=_round(row.get(f"{prefix}_p90"), digits), samples=n)


def _entry(name: str, r: dict[str, Any]) -> ChannelMetrics:
    n = lambda key: int(r.get(key) or 0)  # noqa: E731
    return ChannelMetrics(
        channel=name,  # type: ignore[arg-type]
        conversations=n("conversations"),
        messages_in=n("messages_in"),
        messages_out=n("messages_out"),
        tickets_opened=n("tickets_opened"),
        tickets_resolved=n("tickets_resolved"),
        tickets_escalated_in_period=n("tickets_escalated"),
        opened_tickets_escalation_rate=_rate(n("opened_escalated"), n("tickets_opened")),
        avg_sentiment=_round(r["sentiment_sum"] / n("sentiment_n"), 3) if n("sentiment_n") else None,
        first_response_s=_spread(r, "frt", n("frt_n")),
        resolution_s=_spread(r, "res", n("tickets_resolved")),
        response_latency_ms=_spread(r, "lat", n("lat_n"), 0),
        ai_resolution_rate=_rate(n("ai_resolved"), n("tickets_resolved")),
        csat=_rate(n("csat_satisfied"), n("csat_n")),
    )


@crm_tool(name="get_metrics", title="Get support metrics", toolset="metrics", read_only=True, destructive=False, idempotent=True)
async def get_metrics(crm: Crm, args: GetMetricsInput) -> MetricsResult:
    """Support performance for a period, per channel and in total: conversations, messages in and
    out, tickets opened / resolved / escalated, the share of opened tickets escalated, sentiment,
    first-response and resolution times, reply latency, AI resolution rate and CSAT. Each field's
    description in the output schema defines it; rates give numerator and denominator, and a figure
    with no data is null. Pick a rolling window (1h, 24h, 7d, 30d; default 24h) or since/until
    (at most 366 days), not both. Per ticket: get_ticket; per customer: get_customer_history."""
    if args.since is not None:
        since, until = args.since, args.until or datetime.now(timezone.utc)
    else:
        until = datetime.now(timezone.utc)
        since = until - WINDOWS[args.window or "24h"]
    async with crm.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        return await compute(conn, since, until, args.channel)


async def compute(conn: asyncpg.Connection, since: datetime, until: datetime, channel: str | None = None,
                  *, use_rollup: bool = True) -> MetricsResult:
    """The figures of get_metrics for [since, until); also used by the metrics resource and the
    daily_report prompt, so every surface reports the same definitions.

    Whole past UTC days already rolled up (tools/analytics.py) are read from analytics_daily for
    the figures that add up day by day (conversations, messages, sentiment sums, CSAT, latency
    samples) and from its ticket cells for the ticket cohorts (tools/ticket_cohorts.py); the partial
    days at either end and today are computed live. use_rollup=False computes everything live (the
    reference the roll-up is tested against)."""
    merged: dict[str, dict[str, Any]] = {c: {} for c in (*CHANNELS, "total")}
    block = await _rollup_block(conn, since, until) if use_rollup else None
    edges = [(since, until)] if block is None else [(a, b) for a, b in ((since, block[0]), (block[1], until)) if a < b]

    def add(rows: list[asyncpg.Record]) -> None:
        for row in rows:
            key = "total" if row["is_total"] else row["channel"]
            if key in merged:  # rows with no channel recorded count only in the total
                for k, v in row.items():
                    if k not in ("channel", "is_total") and v is not None:
                        merged[key][k] = merged[key].get(k, 0) + v

    for sql in ADDITIVE_QUERIES:
        for a, b in edges:
            add(await conn.fetch(sql, a, b, channel))
    if block is not None:
        add(await conn.fetch(ROLLUP_SQL, block[0].date(), block[1].date(), channel))
    tickets = await ticket_cohorts.figures(conn, since, until, block, channel) if block is not None else None
    if tickets is not None:
        for key, figures in tickets.items():
            merged[key].update(figures)
    else:
        for sql in COHORT_QUERIES:
            for row in await conn.fetch(sql, since, until, channel):
                key = "total" if row["is_total"] else row["channel"]
                if key in merged:
                    merged[key].update({k: v for k, v in row.items() if k not in ("channel", "is_total")})
    (a1, b1), (a2, b2) = (edges + [(since, since)] * 2)[:2]
    if block is None:
        for row in await conn.fetch(LATENCY_RANGE_SQL, a1, b1, channel, a2, b2, date.min, date.min):
            key = "total" if row["is_total"] else row["channel"]
            if key in merged:
                merged[key].update({k: v for k, v in row.items() if k not in ("channel", "is_total")})
    else:
        for key, latency in (await _latency_from_rollup(conn, (a1, b1, a2, b2), block, channel)).items():
            merged[key].update(latency)
    names = [channel, "total"] if channel else [*CHANNELS, "total"]
    return MetricsResult(since=since, until=until, channels=[_entry(name, merged[name]) for name in names],
                         agent=await agent_figures(conn, since, until, channel))


async def _latency_from_rollup(conn: asyncpg.Connection, edges: tuple[datetime, ...], block: tuple[datetime, datetime],
                               channel: str | None) -> dict[str, dict[str, Any]]:
    """Median and p90 of reply latency over the roll-up's samples plus the live edges, with
    percentile_cont's own arithmetic (tools/engines/percentiles.py). A year is ~450,000 values: they
    come packed (latency_packed), one string per channel and one of the samples of no channel."""
    samples: dict[str, list[Any]] = {c: [] for c in (*CHANNELS, "total")}
    for r in await conn.fetch(
            """SELECT channel, string_agg(latency_packed, ''::bytea) AS v FROM analytics_daily
               WHERE day >= $1 AND day < $2 AND ($3::text IS NULL OR channel = $3) GROUP BY channel""",
            block[0].date(), block[1].date(), channel):
        values = packed(r["v"])
        if r["channel"] != "all":  # 'all': the samples of no channel, in the total only
            samples[r["channel"]].append(values)
        samples["total"].append(values)
    live = await conn.fetch(
        """SELECT channel, array_agg(value) AS v FROM agent_metrics
           WHERE metric_type = 'response_latency' AND ($3::text IS NULL OR channel = $3)
             AND ((recorded_at >= $1 AND recorded_at < $2) OR (recorded_at >= $4 AND recorded_at < $5))
           GROUP BY channel""", edges[0], edges[1], channel, edges[2], edges[3])
    for r in live:
        if r["channel"] is not None:
            samples[r["channel"]].append(r["v"])
        samples["total"].append(r["v"])
    out: dict[str, dict[str, Any]] = {}
    for key, arrays in samples.items():
        values = concat(arrays)
        median, p90 = percentile_cont(values, (0.5, 0.9))
        out[key] = {"lat_n": int(values.size), "lat_median": median, "lat_p90": p90}
    return out


async def _rollup_block(conn: asyncpg.Connection, since: datetime, until: datetime) -> tuple[datetime, datetime] | None:
    """The rolled-up whole UTC days inside [since, until) and before today, when they are one
    unbroken run (days before or after it are computed live with the edges; a gap: all live)."""
    midnight = lambda t: datetime.combine(t.astimezone(timezone.utc).date(), time(0), tzinfo=timezone.utc)  # noqa: E731
    first = midnight(since) if since == midnight(since) else midnight(since) + timedelta(days=1)
    last = min(midnight(until), midnight(datetime.now(timezone.utc)))
    if (last - first).days < 1:
        return None
    row = await conn.fetchrow(
        "SELECT min(day) AS lo, max(day) AS hi, count(*) AS n FROM analytics_daily WHERE channel = 'all' AND day >= $1 AND day < $2",
        first.date(), last.date())
    if not row["n"] or row["n"] != (row["hi"] - row["lo"]).days + 1:
        return None
    lo = datetime.combine(row["lo"], time(0), tzinfo=timezone.utc)
    return lo, lo + timedelta(days=row["n"])


# record_feedback ------------------------------------------------------------------------------


class RecordFeedbackInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message_id: MessageId | None = Field(
        default=None,
        description="An outbound agent or staff reply to rate (from send_response or get_conversation). Or ticket_number.",
    )
    ticket_number: TicketNumber | None = Field(
        default=None, description="Rate the handling of this ticket (TKT-0042). Give this or message_id."
    )
    rating: int = Field(ge=1, le=5, description="1 (very unhappy) to 5 (very happy); 4-5 count as satisfied.")
    comment: Text | None = Field(default=None, max_length=2000, description="The customer's own words, optional.")

    @model_validator(mode="after")
    def _target(self) -> RecordFeedbackInput:
        if (self.message_id is None) == (self.ticket_number is None):
            raise ValueError("give exactly one of message_id or ticket_number")
        return self


class FeedbackResult(Out):
    feedback_id: str
    target: Literal["message", "ticket"]
    message_id: str | None
    ticket_number: str | None
    customer_id: str | None
    conversation_id: str | None
    channel: Channel | None
    rating: int
    comment: str | None = Field(description="As stored (customer-written, wrapped as untrusted).")
    replaced: bool = Field(description="True when an earlier rating of the same target was replaced.")
    previous_rating: int | None = Field(description="The rating that was replaced, if any.")
    recorded_at: datetime


FEEDBACK_COLS = "customer_id, conversation_id, message_id, ticket_id, channel, rating, comment"

UPSERT_MESSAGE_SQL = f"""
WITH prev AS (SELECT rating FROM feedback WHERE message_id = $3)
INSERT INTO feedback ({FEEDBACK_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (message_id) WHERE message_id IS NOT NULL DO UPDATE
    SET rating = EXCLUDED.rating, comment = EXCLUDED.comment, created_at = now()
RETURNING id, created_at, xmax <> 0 AS replaced, (SELECT rating FROM prev) AS previous_rating
"""

UPSERT_TICKET_SQL = f"""
WITH prev AS (SELECT rating FROM feedback WHERE ticket_id = $4 AND message_id IS NULL)
INSERT INTO feedback ({FEEDBACK_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (ticket_id) WHERE ticket_id IS NOT NULL AND message_id IS NULL DO UPDATE
    SET rating = EXCLUDED.rating, comment = EXCLUDED.comment, created_at = now()
RETURNING id, created_at, xmax <> 0 AS replaced, (SELECT rating FROM prev) AS previous_rating
"""


async def _message_target(conn: asyncpg.Connection, mid: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow(
        """SELECT m.id AS message_id, m.customer_id, m.conversation_id, m.ticket_id, m.channel, m.direction, m.role,
                  t.ticket_number
           FROM messages m LEFT JOIN tickets t ON t.id = m.ticket_id WHERE m.id = $1""", mid)
    if row is None:
        raise NotFound(f"No message {mid}.", hint="Use get_conversation to find the message_id of the reply being rated.")
    if row["direction"] != "outbound" or row["role"] not in ("agent", "human"):
        kind = "a customer message" if row["direction"] == "inbound" else "a system notice"
        raise UserError(
            f"Message {mid} is {kind}; only replies from the AI agent or staff can be rated.",
            hint="Pass the message_id of an outbound reply, or rate the whole ticket with ticket_number.")
    return row


@crm_tool(name="record_feedback", title="Record customer feedback", toolset="metrics", read_only=False, destructive=False, idempotent=True)
async def record_feedback(crm: Crm, args: RecordFeedbackInput) -> FeedbackResult:
    """Store a customer's satisfaction rating (1-5, optional comment) for one outbound reply
    (message_id) or a whole ticket (ticket_number). Ratings 4-5 count as satisfied in get_metrics'
    CSAT. Rating the same target again replaces the earlier rating, so retries are safe. Complaints
    that need action belong in a ticket."""
    comment = args.comment or ""
    async with crm.tx() as conn:
        if args.message_id is not None:
            tgt = await _message_target(conn, args.message_id)
            target, sql = "message", UPSERT_MESSAGE_SQL
            ids = (tgt["customer_id"], tgt["conversation_id"], tgt["message_id"], tgt["ticket_id"], tgt["channel"])
            number = tgt["ticket_number"]
        else:
            t = await fetch_ticket(conn, args.ticket_number or "")
            target, sql = "ticket", UPSERT_TICKET_SQL
            ids = (t["customer_id"], t["conversation_id"], None, t["id"], t["source_channel"])
            number = t["ticket_number"]
        row = await conn.fetchrow(sql, *ids, args.rating, comment or None)

    def s(v: uuid.UUID | None) -> str | None:
        return str(v) if v is not None else None

    channel = ids[4]
    return FeedbackResult(
        feedback_id=str(row["id"]), target=target, message_id=s(ids[2]), ticket_number=number,
        customer_id=s(ids[0]), conversation_id=s(ids[1]), channel=channel, rating=args.rating,
        comment=untrusted(comment, source=channel or "feedback") if comment else None,
        replaced=row["replaced"], previous_rating=row["previous_rating"], recorded_at=row["created_at"])
