"""Read-only queries shared by the resources, prompts and completions.

Every loader raises crm_mcp.tools.errors.UserError (NotFound for unknown ids) for anything the
caller got wrong; the MCP layer (catalog.py, prompts.py) turns that into the protocol's error."""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import asyncpg
from pydantic import BaseModel

from crm_mcp.tools.customers import load_summaries, parse_uuid
from crm_mcp.tools.errors import NotFound
from crm_mcp.tools.formatting import untrusted
from crm_mcp.tools.tickets import fetch_ticket, ticket_view

CHANNELS = ("email", "whatsapp", "web_form")


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
    customer = r["role"] == "customer"
    return {
        "message_id": str(r["id"]),
        "at": r["created_at"],
        "channel": r["channel"],
        "direction": r["direction"],
        "role": r["role"],
        "subject": (untrusted(r["subject"], source=r["channel"]) if customer else r["subject"]) if r["subject"] else None,
        "content": untrusted(r["content"], source=r["channel"]) if customer else r["content"],
        "delivery_status": r["delivery_status"],
        "sentiment": r["sentiment"],
    }


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
        "customer": {"customer_id": str(cust["id"]), "name": cust["name"], "plan": cust["plan"]},
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


FIGURES_SQL = """
SELECT
  (SELECT count(*) FROM conversations WHERE started_at >= $1 AND started_at < $2) AS conversations_started,
  (SELECT count(*) FROM messages WHERE direction = 'inbound' AND created_at >= $1 AND created_at < $2) AS messages_in,
  (SELECT count(*) FROM messages WHERE direction = 'outbound' AND role IN ('agent', 'human')
      AND created_at >= $1 AND created_at < $2) AS messages_out,
  (SELECT count(*) FROM tickets WHERE created_at >= $1 AND created_at < $2) AS tickets_opened,
  (SELECT count(*) FROM tickets WHERE resolved_at >= $1 AND resolved_at < $2) AS tickets_resolved,
  (SELECT count(*) FROM tickets WHERE escalated_at >= $1 AND escalated_at < $2) AS tickets_escalated,
  (SELECT count(*) FROM tickets WHERE sla_breached_at >= $1 AND sla_breached_at < $2) AS sla_breaches,
  (SELECT avg(sentiment) FROM messages WHERE direction = 'inbound' AND sentiment IS NOT NULL
      AND created_at >= $1 AND created_at < $2) AS average_sentiment,
  (SELECT avg(extract(epoch FROM first_response_at - created_at)) FROM tickets
      WHERE first_response_at >= $1 AND first_response_at < $2) AS avg_first_response_s,
  (SELECT count(*) FROM tickets WHERE status NOT IN ('resolved', 'closed')) AS open_tickets_now
"""

BY_CHANNEL_SQL = """
SELECT channel, count(*) FILTER (WHERE direction = 'inbound') AS messages_in,
       count(*) FILTER (WHERE direction = 'outbound' AND role IN ('agent', 'human')) AS messages_out
FROM messages WHERE created_at >= $1 AND created_at < $2 GROUP BY channel ORDER BY channel
"""


async def figures(conn: asyncpg.Connection, start: datetime, end: datetime) -> dict[str, Any]:
    """Support figures for [start, end). Messages out counts agent and human replies (not system notes)."""
    r = await conn.fetchrow(FIGURES_SQL, start, end)
    by_channel = {x["channel"]: {"messages_in": x["messages_in"], "messages_out": x["messages_out"]}
                  for x in await conn.fetch(BY_CHANNEL_SQL, start, end)}
    avg = r["average_sentiment"]
    frt = r["avg_first_response_s"]
    return {
        "window": {"start": start, "end": end},
        "conversations_started": r["conversations_started"],
        "messages_in": r["messages_in"],
        "messages_out": r["messages_out"],
        "tickets_opened": r["tickets_opened"],
        "tickets_resolved": r["tickets_resolved"],
        "tickets_escalated": r["tickets_escalated"],
        "sla_breaches": r["sla_breaches"],
        "average_sentiment": None if avg is None else round(float(avg), 3),
        "average_first_response_seconds": None if frt is None else round(float(frt), 1),
        "open_tickets_now": r["open_tickets_now"],
        "by_channel": by_channel,
    }


async def last_24h(conn: asyncpg.Connection) -> dict[str, Any]:
    end = datetime.now(timezone.utc)
    return await figures(conn, end - timedelta(hours=24), end)
