"""MCP resources, resource templates, prompts and completions for the CRM.

Resource templates (JSON):
    crm://customers/{customer_id}          customer summary, identities, open tickets, recent conversations
    crm://tickets/{ticket_number}          ticket with history and recent messages
    crm://conversations/{conversation_id}  conversation with its last 50 messages, oldest first
    crm://channels/{channel}/config        channel settings: tone, max length, template, enabled
Resource:
    crm://metrics/summary                  the last 24 hours in figures

Unknown or malformed ids are ResourceNotFoundError (the protocol's not-found, -32602), never a
crash. Customer-written text is wrapped with untrusted(). Prompts live in prompts.py."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp_types import Completion, CompletionArgument, CompletionContext, PromptReference, ResourceTemplateReference

from crm_mcp.tools.context import Crm
from crm_mcp.tools.errors import UserError

from . import data, prompts

log = logging.getLogger(__name__)

JSON = "application/json"
MAX_COMPLETIONS = 20
MIN_IDENTITY_PREFIX = 3


@asynccontextmanager
async def _reading(crm: Crm) -> AsyncIterator[asyncpg.Connection]:
    """A connection for one resource read; caller mistakes become not-found, an unreachable
    database a (non-crash) resource error."""
    try:
        async with crm.pool.acquire() as conn:
            yield conn
    except UserError as exc:
        raise ResourceNotFoundError(str(exc)) from None
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError) as exc:
        log.warning("resource read failed: database unavailable", exc_info=True)
        raise ResourceError("The CRM database is temporarily unavailable; retry in a few seconds.") from exc


async def _read(crm: Crm, loader: Callable[..., Awaitable[Any]], *args: Any) -> str:
    async with _reading(crm) as conn:
        result = await loader(conn, *args)
    return data.to_json(result)


def register(server: Any, crm: Crm) -> None:
    @server.resource(
        "crm://customers/{customer_id}",
        name="customer",
        title="Customer",
        description="One customer as JSON: profile, identities (email/phone/WhatsApp), plan, sentiment trend, "
        "open tickets and the 10 most recent conversations. customer_id is the UUID from find_customer.",
        mime_type=JSON,
    )
    async def customer_resource(customer_id: str) -> str:
        return await _read(crm, data.customer_data, customer_id)

    @server.resource(
        "crm://tickets/{ticket_number}",
        name="ticket",
        title="Ticket",
        description="One ticket as JSON: status, priority, category, SLA, its full history (status changes, "
        "assignments, internal notes) and its 20 most recent messages, oldest first. ticket_number like TKT-0042.",
        mime_type=JSON,
    )
    async def ticket_resource(ticket_number: str) -> str:
        return await _read(crm, data.ticket_data, ticket_number)

    @server.resource(
        "crm://conversations/{conversation_id}",
        name="conversation",
        title="Conversation",
        description="One conversation as JSON: channels and switches, status, sentiment, its tickets and its "
        "last 50 messages, oldest first. conversation_id is a UUID.",
        mime_type=JSON,
    )
    async def conversation_resource(conversation_id: str) -> str:
        return await _read(crm, data.conversation_data, conversation_id)

    @server.resource(
        "crm://channels/{channel}/config",
        name="channel_config",
        title="Channel configuration",
        description="Reply settings of a channel (email, whatsapp or web_form) as JSON: tone, maximum reply "
        "length, whether long replies are split, the reply template, and whether the channel is enabled.",
        mime_type=JSON,
    )
    async def channel_config_resource(channel: str) -> str:
        return await _read(crm, data.channel_config, channel)

    @server.resource(
        "crm://metrics/summary",
        name="metrics_summary",
        title="Support metrics (last 24 h)",
        description="The last 24 hours as JSON: conversations started, messages in and out, tickets opened, "
        "resolved and escalated, SLA breaches, average inbound sentiment, per-channel message counts.",
        mime_type=JSON,
    )
    async def metrics_resource() -> str:
        return await _read(crm, data.last_24h)

    prompts.register(server, crm)

    @server.completion()
    async def complete(
        ref: PromptReference | ResourceTemplateReference, argument: CompletionArgument, context: CompletionContext | None
    ) -> Completion | None:
        name, value = argument.name, (argument.value or "")[:100]
        if name == "ticket_number":
            return await complete_ticket_numbers(crm, value)
        if name == "channel":
            matches = [c for c in data.CHANNELS if c.startswith(value.strip().lower())]
            return Completion(values=matches, total=len(matches), has_more=False)
        if name in ("customer_id", "conversation_id"):
            table = "customers" if name == "customer_id" else "conversations"
            return await complete_uuids(crm, table, value)
        if name == "customer":  # customer_brief: a ticket number, a customer id, or an email/phone prefix
            v = value.strip()
            if _ticket_prefix(v) is not None and (v[:1].upper() == "T" or not v):
                return await complete_ticket_numbers(crm, v)
            if re.fullmatch(r"[0-9a-fA-F-]+", v) and not v.startswith("+"):
                return await complete_uuids(crm, "customers", v)
            return await complete_identities(crm, v)
        return None


_TICKET_PREFIX = re.compile(r"^(?:T(?:K(?:T-?)?)?)?(\d{0,9})$")


def _ticket_prefix(value: str) -> str | None:
    """The digits of a ticket-number prefix ('TKT-00' -> '00', '42' -> '42', 'tk' -> ''), or None."""
    m = _TICKET_PREFIX.match(value.strip().upper())
    return None if m is None else m.group(1)


async def complete_ticket_numbers(crm: Crm, value: str) -> Completion:
    """Ticket numbers starting with the prefix, most recent first. Bare digits also match the
    number without its leading zeros ('42' finds TKT-0042)."""
    digits = _ticket_prefix(value)
    if digits is None:
        return Completion(values=[], total=0, has_more=False)
    async with crm.pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT ticket_number, count(*) OVER () AS total FROM tickets
               WHERE ticket_number LIKE 'TKT-' || $1 || '%'
                  OR ($2 <> '' AND ltrim(substr(ticket_number, 5), '0') LIKE $2 || '%')
               ORDER BY created_at DESC, ticket_number DESC LIMIT $3""",
            digits, digits.lstrip("0"), MAX_COMPLETIONS)
    total = rows[0]["total"] if rows else 0
    return Completion(values=[r["ticket_number"] for r in rows], total=total, has_more=total > len(rows))


async def complete_uuids(crm: Crm, table: str, value: str) -> Completion:
    prefix = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f-]{0,36}", prefix):
        return Completion(values=[], total=0, has_more=False)
    order = "last_contact_at DESC NULLS LAST, created_at DESC" if table == "customers" else "last_activity_at DESC"
    where = "AND merged_into IS NULL" if table == "customers" else ""
    async with crm.pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT id::text AS id, count(*) OVER () AS total FROM {table} WHERE id::text LIKE $1 || '%' {where} "
            f"ORDER BY {order} LIMIT $2", prefix, MAX_COMPLETIONS)
    total = rows[0]["total"] if rows else 0
    return Completion(values=[r["id"] for r in rows], total=total, has_more=total > len(rows))


async def complete_identities(crm: Crm, value: str) -> Completion:
    prefix = value.strip().lower()
    if len(prefix) < MIN_IDENTITY_PREFIX:  # a letter or two would list everyone's email and phone
        return Completion(values=[], total=0, has_more=False)
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    async with crm.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT value, count(*) OVER () AS total FROM customer_identifiers WHERE value LIKE $1 || '%' "
            "ORDER BY created_at DESC LIMIT $2", escaped, MAX_COMPLETIONS)
    total = rows[0]["total"] if rows else 0
    return Completion(values=[r["value"] for r in rows], total=total, has_more=total > len(rows))
