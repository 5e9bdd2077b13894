"""Read-only queries shared by the resources, prompts and completions.

Every loader raises crm_mcp.tools.plumbing.errors.UserError (NotFound for unknown ids) for anything the
caller got wrong; the MCP layer (templates.py, prompts.py) turns that into the protocol's error."""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import asyncpg
from pydantic import BaseModel

from crm_mcp.tools.agent_turns import turn_rows
from crm_mcp.tools.customers import load_summaries
from crm_mcp.tools.models import MessageView
from crm_mcp.tools.plumbing.params import parse_uuid
from crm_mcp.tools.vocabulary import CHANNELS
from crm_mcp.tools.plumbing.errors import NotFound
from crm_mcp.tools.engines.formatting import untrusted, untrusted_field
from crm_mcp.tools.tickets import fetch_ticket, ticket_view



def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, Decimal):
        return float(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_json(data: Any) -> str:
    return json.dumps(data, default=_default, indent=2, ensure_ascii=False)


def message_view(r: asyncpg.Record) -> dict[str, Any]:
    return MessageView.from_row(r).model_dump()


def _ticket_brief(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "ticket_number": r["ticket_number"],
        "status": r["status"],
        "priority": r["priority"],
        "category": r["category"],
        "subject": untrusted(r["subject"], source=r["source_channel"]),
        "source_channel": r["source_channel"],
        "created_at": r["created_at"],
        "sla_due_at": r["sla_due_at"],
    }


def _conversation_brief(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "conversation_id": str(r["id"]),
        "status": r["status"],
        "initial_channel": r["initial_channel"],
        "current_channel": r["current_channel"],
        "message_count": r["message_count"],
        "sentiment": r["sentiment"],
        "started_at": r["started_at"],
        "last_activity_at": r["last_activity_at"],
    }


async def customer_data(conn: asyncpg.Connection, customer_id: str) -> dict[str, Any]:
    cid = parse_uuid(customer_id, "customer_id", "find_customer")
    summaries = await load_summaries(conn, [cid])
    if not summaries:
        raise NotFound(f"No customer with id {cid}.")
    tickets = await conn.fetch(
        "SELECT * FROM tickets WHERE customer_id = $1 AND status NOT IN ('resolved', 'closed') "
        "ORDER BY created_at DESC LIMIT 20", cid)
    convs = await conn.fetch(
        "SELECT * FROM conversations WHERE customer_id = $1 ORDER BY last_activity_at DESC LIMIT 10", cid)
    return {
        "customer": summaries[0],
        "open_tickets": [_ticket_brief(t) for t in tickets],
        "recent_conversations": [_conversation_brief(c) for c in convs],
    }


async def ticket_data(conn: asyncpg.Connection, ticket_number: str, *, messages: int = 20) -> dict[str, Any]:
    row = await fetch_ticket(conn, ticket_number)
    events = await conn.fetch("SELECT * FROM ticket_events WHERE ticket_id = $1 ORDER BY id", row["id"])
    msgs = await conn.fetch(
        "SELECT * FROM (SELECT * FROM messages WHERE ticket_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2) m "
        "ORDER BY created_at, id", row["id"], messages)
    cust = await conn.fetchrow("SELECT id, name, plan FROM customers WHERE id = $1", row["customer_id"])
    return {
        "ticket": ticket_view(row),
        "customer": {"customer_id": str(cust["id"]), "name": untrusted_field(cust["name"], source="customer.name"), "plan": cust["plan"]},
        "history": [
            {"kind": e["kind"], "from_value": e["from_value"], "to_value": e["to_value"], "note": e["note"],
             "actor": e["actor"], "at": e["created_at"]}
            for e in events
        ],
        "recent_messages": [message_view(m) for m in msgs],
    }


async def conversation_data(conn: asyncpg.Connection, conversation_id: str, *, messages: int = 50) -> dict[str, Any]:
    cid = parse_uuid(conversation_id, "conversation_id", "get_customer_history")
    conv = await conn.fetchrow("SELECT * FROM conversations WHERE id = $1", cid)
    if conv is None:
        raise NotFound(f"No conversation {cid}.")
    msgs = await conn.fetch(
        "SELECT * FROM (SELECT * FROM messages WHERE conversation_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2) m "
        "ORDER BY created_at, id", cid, messages)
    tickets = [r["ticket_number"] for r in await conn.fetch(
        "SELECT ticket_number FROM tickets WHERE conversation_id = $1 ORDER BY created_at", cid)]
    out = _conversation_brief(conv)
    out.update({
        "customer_id": str(conv["customer_id"]),
        "channel_switches": conv["channel_switches"],
        "escalation_reason": conv["escalation_reason"],
        "ticket_numbers": tickets,
        "messages": [message_view(m) for m in msgs],
    })
    return out


async def channel_config(conn: asyncpg.Connection, channel: str) -> dict[str, Any]:
    if channel not in CHANNELS:
        raise NotFound(f"No channel {channel!r}; channels are {', '.join(CHANNELS)}.")
    r = await conn.fetchrow("SELECT * FROM channel_configs WHERE channel = $1", channel)
    if r is None:
        raise NotFound(f"Channel {channel} has no configuration.")
    return {
        "channel": r["channel"],
        "enabled": r["is_enabled"],
        "tone": r["tone"],
        "max_response_length": r["max_response_length"],
        "split_long_replies": r["split_long_replies"],
        "response_template": r["response_template"],
        "updated_at": r["updated_at"],
    }


# Point-in-time figures that get_metrics (a period's activity) does not report.
EXTRAS_SQL = """
SELECT (SELECT count(*) FROM tickets WHERE sla_breached_at >= $1 AND sla_breached_at < $2) AS sla_breaches,
       (SELECT count(*) FROM tickets WHERE status NOT IN ('resolved', 'closed')) AS open_tickets_now
"""


async def figures(conn: asyncpg.Connection, start: datetime, end: datetime) -> dict[str, Any]:
    """Support figures for [start, end), with get_metrics' definitions (tools/metrics.py)."""
    from crm_mcp.tools.metrics import compute

    m = await compute(conn, start, end)
    total = next(c for c in m.channels if c.channel == "total")
    extras = await conn.fetchrow(EXTRAS_SQL, start, end)
    return {
        "window": {"start": start, "end": end},
        "conversations_started": total.conversations,
        "messages_in": total.messages_in,
        "messages_out": total.messages_out,
        "tickets_opened": total.tickets_opened,
        "tickets_resolved": total.tickets_resolved,
        "tickets_escalated_in_period": total.tickets_escalated_in_period,
        "opened_tickets_escalation_rate": total.opened_tickets_escalation_rate.model_dump(),
        "sla_breaches": extras["sla_breaches"],
        "average_sentiment": total.avg_sentiment,
        "median_first_response_seconds": total.first_response_s.median,
        "ai_resolution_rate": total.ai_resolution_rate.value,
        "csat": total.csat.value,
        "open_tickets_now": extras["open_tickets_now"],
        "by_channel": {
            c.channel: {"messages_in": c.messages_in, "messages_out": c.messages_out}
            for c in m.channels if c.channel != "total" and (c.messages_in or c.messages_out)
        },
    }


async def last_24h(conn: asyncpg.Connection) -> dict[str, Any]:
    end = datetime.now(timezone.utc)
    return await figures(conn, end - timedelta(hours=24), end)


async def agent_turns(conn: asyncpg.Connection, conversation_id: str) -> dict[str, Any]:
    conv = parse_uuid(conversation_id, "conversation_id", "get_customer_history") if conversation_id else None
    return {"conversation_id": conv, "turns": await turn_rows(conn, conv)}
