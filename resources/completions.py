"""Completions for prompt and resource-template arguments: ticket numbers, customer and
conversation ids, channels, and (for customer_brief) email or phone prefixes of at least
MIN_IDENTITY_PREFIX characters: a shorter prefix would list customers' contact details to
anyone who types one letter.

A database that is down or not answering is a protocol error with the tools' clear "temporarily
unavailable, retry" message, not an empty list: an empty list would wrongly say nothing matches."""

from __future__ import annotations

import re
from typing import Any

from mcp_types import Completion, CompletionArgument, CompletionContext, PromptReference, ResourceTemplateReference

from crm_mcp.tools.plumbing.context import Crm
from crm_mcp.tools.plumbing.sql import like_escape

from . import data
from .database import answering

MAX_COMPLETIONS = 20
MIN_IDENTITY_PREFIX = 3


def register(server: Any, crm: Crm) -> None:
    @server.completion()
    async def complete(
        ref: PromptReference | ResourceTemplateReference, argument: CompletionArgument, context: CompletionContext | None
    ) -> Completion | None:
        async with answering(crm):
            return await _complete(argument)

    async def _complete(argument: CompletionArgument) -> Completion | None:
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
    if len(prefix) < MIN_IDENTITY_PREFIX:
        return Completion(values=[], total=0, has_more=False)
    escaped = like_escape(prefix)
    async with crm.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT value, count(*) OVER () AS total FROM customer_identifiers WHERE value LIKE $1 || '%' "
            "ORDER BY created_at DESC LIMIT $2", escaped, MAX_COMPLETIONS)
    total = rows[0]["total"] if rows else 0
    return Completion(values=[r["value"] for r in rows], total=total, has_more=total > len(rows))
