"""What the answering agent did, one record per turn: record_agent_turn (written by the agent after
each turn), turn_rows (read by the staff resource crm://agent/turns) and the figures get_metrics
reports from them.

A turn is one claim of a customer message (message_id, attempt = claim_inbound's attempt); a record
of the same turn again changes nothing. Only the agent that claimed the conversation last may
record its turns: the reply or escalation has ended the lease by then, so the check is on the
holder claim_inbound kept (tools/plumbing/context.CALLER.holder), not on a live lease."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from crm_mcp.tools.models import Out
from crm_mcp.tools.plumbing.context import CALLER, Crm
from crm_mcp.tools.plumbing.errors import Conflict, NotFound, UserError
from crm_mcp.tools.plumbing.params import ArticleId, MessageId
from crm_mcp.tools.plumbing.registry import crm_tool
from crm_mcp.tools.vocabulary import AgentDecision

class RecordTurnInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message_id: MessageId = Field(description="The claimed customer message (claim_inbound's message_id).")
    attempt: int = Field(ge=1, le=10_000, description="claim_inbound's attempt.")
    decision: AgentDecision = Field(
        description="answered; or escalated by a rule, for want of a KB answer, on a tool error or on a model failure.")
    reason: str | None = Field(default=None, max_length=500, description="Why it escalated (for staff).")
    tools_called: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=100, description="Tool names, in call order.")
    article_ids: list[ArticleId] = Field(default_factory=list, max_length=20, description="Knowledge-base articles the reply used.")
    model: str = Field(min_length=1, max_length=200, description="Model name; 'offline' for the offline agent.")
    prompt_tokens: int = Field(default=0, ge=0, le=100_000_000, description="Model input tokens (0 offline).")
    completion_tokens: int = Field(default=0, ge=0, le=100_000_000, description="Model output tokens (0 offline).")
    latency_ms: int = Field(ge=0, le=86_400_000, description="Claim to last call of the turn, ms.")


class AgentTurn(Out):
    turn_id: str
    message_id: str
    attempt: int
    conversation_id: str
    customer_id: str
    ticket_number: str | None
    decision: AgentDecision
    reason: str | None
    tools_called: list[str]
    article_ids: list[str]
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    created_at: datetime


class RecordTurnResult(Out):
    turn: AgentTurn
    recorded: bool = Field(description="False when this turn was recorded before (nothing changed).")


TURN_COLS = """a.id, a.message_id, a.attempt, a.conversation_id, a.customer_id, t.ticket_number, a.decision, a.reason,
a.tools_called, a.article_ids, a.model, a.prompt_tokens, a.completion_tokens, a.latency_ms, a.created_at, a.holder"""

# The message must be a customer message of a conversation the caller claimed last.
INSERT_SQL = """
INSERT INTO agent_turns (message_id, attempt, conversation_id, customer_id, ticket_id, holder, decision, reason,
                         tools_called, article_ids, model, prompt_tokens, completion_tokens, latency_ms)
SELECT m.id, $2, m.conversation_id, m.customer_id,
       coalesce(m.ticket_id, (SELECT id FROM tickets WHERE conversation_id = m.conversation_id ORDER BY created_at DESC LIMIT 1)),
       $3, $4, $5, $6::jsonb, $7::uuid[], $8, $9, $10, $11
FROM messages m JOIN conversations v ON v.id = m.conversation_id
WHERE m.id = $1 AND m.direction = 'inbound' AND m.role = 'customer' AND v.agent_lease_holder = $3
ON CONFLICT (message_id, attempt) DO NOTHING
RETURNING id
"""


def turn_view(r: asyncpg.Record) -> AgentTurn:
    tools = r["tools_called"]
    return AgentTurn(
        turn_id=str(r["id"]), message_id=str(r["message_id"]), attempt=r["attempt"], conversation_id=str(r["conversation_id"]),
        customer_id=str(r["customer_id"]), ticket_number=r["ticket_number"], decision=r["decision"], reason=r["reason"],
        tools_called=list(tools),  # the pool decodes jsonb (server/db.py)
        article_ids=[str(a) for a in r["article_ids"]], model=r["model"], prompt_tokens=r["prompt_tokens"],
        completion_tokens=r["completion_tokens"], latency_ms=r["latency_ms"], created_at=r["created_at"])


async def _turn(conn: asyncpg.Connection, where: str, *args: Any) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {TURN_COLS} FROM agent_turns a LEFT JOIN tickets t ON t.id = a.ticket_id WHERE {where}", *args)


@crm_tool(name="record_agent_turn", title="Record agent turn", toolset="conversations", read_only=False, destructive=False, idempotent=True)
async def record_agent_turn(crm: Crm, args: RecordTurnInput) -> RecordTurnResult:
    """For the answering agent, after each turn (answer or escalation): record what it did for
    staff review and get_metrics. One record per (message_id, attempt) from claim_inbound; a
    repeat returns the first record unchanged. Only the agent that claimed the conversation last
    may record it."""
    caller = CALLER.get()
    holder = caller.holder if caller else None
    if not holder:
        raise UserError("record_agent_turn needs the caller that claimed the conversation (claim_inbound); nothing was changed.")
    async with crm.tx() as conn:
        new = await conn.fetchval(
            INSERT_SQL, args.message_id, args.attempt, holder, args.decision, args.reason,
            args.tools_called, [uuid.UUID(str(a)) for a in args.article_ids], args.model,
            args.prompt_tokens, args.completion_tokens, args.latency_ms)
        if new is not None:
            row = await _turn(conn, "a.id = $1", new)
            return RecordTurnResult(turn=turn_view(row), recorded=True)
        row = await _turn(conn, "a.message_id = $1 AND a.attempt = $2", args.message_id, args.attempt)
        if row is not None:
            if row["holder"] != holder:
                raise Conflict(f"Attempt {args.attempt} of message {args.message_id} was recorded by another agent; nothing was changed.",
                               hint="Use the attempt claim_inbound gave you.")
            return RecordTurnResult(turn=turn_view(row), recorded=False)
        msg = await conn.fetchrow(
            "SELECT m.direction, m.role, v.agent_lease_holder = $2 AS held FROM messages m "
            "JOIN conversations v ON v.id = m.conversation_id WHERE m.id = $1", args.message_id, holder)
    if msg is None:
        raise NotFound(f"No message {args.message_id}.", hint="Pass claim_inbound's message_id.")
    if msg["direction"] != "inbound" or msg["role"] != "customer":
        raise UserError(f"Message {args.message_id} is not a customer message; pass claim_inbound's message_id. Nothing was changed.")
    raise UserError("Permission denied: this caller did not claim that conversation last (claim_inbound); nothing was changed.")


MAX_TURNS = 100


async def turn_rows(conn: asyncpg.Connection, conversation_id: uuid.UUID | None, limit: int = MAX_TURNS) -> list[AgentTurn]:
    """The latest turns, newest first; of one conversation when given."""
    rows = await conn.fetch(
        f"SELECT {TURN_COLS} FROM agent_turns a LEFT JOIN tickets t ON t.id = a.ticket_id "
        "WHERE $1::uuid IS NULL OR a.conversation_id = $1 ORDER BY a.created_at DESC, a.id LIMIT $2", conversation_id, limit)
    return [turn_view(r) for r in rows]


# get_metrics: the agent's figures ---------------------------------------------------------------


class Percentiles(Out):
    p50: float | None
    p95: float | None
    samples: int


class ReasonCount(Out):
    decision: AgentDecision
    reason: str | None
    count: int


class AgentFigures(Out):
    turns: int
    answered: int  # turns answered without escalation
    resolution_rate: float | None  # answered / turns
    escalations: list[ReasonCount]  # the top 10 (decision, reason)
    latency_ms: Percentiles


# A turn belongs to the channel of the customer message it answered.
FIGURES_SQL = """
SELECT count(*) AS turns, count(*) FILTER (WHERE a.decision = 'answered') AS answered,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY a.latency_ms) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY a.latency_ms) AS p95
FROM agent_turns a JOIN messages m ON m.id = a.message_id
WHERE a.created_at >= $1 AND a.created_at < $2 AND ($3::text IS NULL OR m.channel = $3)
"""

REASONS_SQL = """
SELECT a.decision, a.reason, count(*) AS n
FROM agent_turns a JOIN messages m ON m.id = a.message_id
WHERE a.created_at >= $1 AND a.created_at < $2 AND ($3::text IS NULL OR m.channel = $3) AND a.decision <> 'answered'
GROUP BY a.decision, a.reason
ORDER BY n DESC, a.decision, a.reason
LIMIT 10
"""


async def figures(conn: asyncpg.Connection, since: datetime, until: datetime, channel: str | None) -> AgentFigures:
    row = await conn.fetchrow(FIGURES_SQL, since, until, channel)
    reasons = await conn.fetch(REASONS_SQL, since, until, channel)
    turns, answered = int(row["turns"]), int(row["answered"])

    def ms(v: Any) -> float | None:
        return None if v is None else round(float(v), 1)

    return AgentFigures(
        turns=turns, answered=answered, resolution_rate=round(answered / turns, 4) if turns else None,
        escalations=[ReasonCount(decision=r["decision"], reason=r["reason"], count=r["n"]) for r in reasons],
        latency_ms=Percentiles(p50=ms(row["p50"]), p95=ms(row["p95"]), samples=turns))
