"""Lease scoping for the agent role: an agent may touch only the customer of a conversation it
holds a lease on (claim_inbound records the holder). Called by the guard for every agent-role
tool call, after the role check and before the handler runs.

Each agent tool declares once what its arguments name (roles.AGENT_SCOPE); the values are read
from the call's arguments after the tool's own validation (so 'tkt-7' and 'TKT-0007' are the same
ticket) and resolved here in SQL. The rules:
- no declaration: refused (fail closed); UNSCOPED: allowed.
- a scoped call needs a live lease (holder = the caller, within the lease it claimed) and must name
  at least one customer, conversation, ticket or order; each one named must belong to a held
  conversation's customer. A writing tool may name only a held conversation, and a ticket of one
  (or a ticket of that customer with no conversation).
- message (the turn record): the message's conversation was claimed last by the caller; its lease
  may have ended already (the reply ends it), as long as nobody has claimed the conversation since.

A refusal names the caller's own conversations and what the call named, nothing of whoever the
named ids belong to: an id that exists for another customer and one that does not exist are
refused alike."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from pydantic import BaseModel

from .roles import AGENT_SCOPE, ScopeKind

HELD_SQL = """
SELECT id AS conversation_id, customer_id FROM conversations
WHERE agent_lease_holder = $1 AND agent_scope_until > now()
ORDER BY agent_scope_until DESC
LIMIT 20
"""

# kind -> rows of (customer_id, conversation_id) the value names; no row = unknown (refused alike).
RESOLVE_SQL: dict[ScopeKind, str] = {
    "customer": "SELECT id AS customer_id, NULL::uuid AS conversation_id FROM customers WHERE id = $1::uuid",
    "conversation": "SELECT customer_id, id AS conversation_id FROM conversations WHERE id = $1::uuid",
    "ticket": "SELECT customer_id, conversation_id FROM tickets WHERE ticket_number = $1",
    "order": "SELECT customer_id, NULL::uuid AS conversation_id FROM orders WHERE order_number = $1 OR external_order_id = $1",
    "message": "SELECT m.customer_id, m.conversation_id, v.agent_lease_holder = $2 AS held_last "
               "FROM messages m JOIN conversations v ON v.id = m.conversation_id WHERE m.id = $1::uuid",
}


@dataclass(frozen=True)
class Held:
    conversation_id: uuid.UUID
    customer_id: uuid.UUID


async def check(pool: asyncpg.Pool | None, *, holder: str, tool: str, writes: bool,
                args: Callable[[], BaseModel | None]) -> str | None:
    """None when the call is within the caller's leases; else the one-line refusal.

    args gives the call's validated input, or None when the arguments do not validate: then the
    tool itself rejects them (same validation), so nothing is resolved here. Unscoped tools need
    neither the validation nor a connection."""
    scope = AGENT_SCOPE.get(tool)
    if scope is None:
        return (f"Permission denied: {tool} declares no lease scope, so the agent role may not call it "
                "(server/roles.py AGENT_SCOPE). Nothing was changed.")
    if not scope:
        return None
    validated = args()
    if validated is None:
        return None
    assert pool is not None
    async with pool.acquire() as conn:
        return await _check(conn, holder=holder, tool=tool, writes=writes, scope=scope, args=validated)


async def _check(conn: asyncpg.Connection, *, holder: str, tool: str, writes: bool, scope: dict[str, ScopeKind],
                 args: BaseModel) -> str | None:
    named = [(arg, kind, getattr(args, arg, None)) for arg, kind in scope.items()]
    named = [(arg, kind, value) for arg, kind, value in named if value not in (None, "")]
    if any(kind == "message" for _, kind, _ in named):
        return await _check_turn(conn, holder=holder, tool=tool, named=named)
    held = [Held(r["conversation_id"], r["customer_id"]) for r in await conn.fetch(HELD_SQL, holder)]
    if not held:
        return (f"Permission denied: this agent holds no conversation lease; {tool} acts only on the customer of a "
                "conversation claimed with claim_inbound. Claim one first. Nothing was changed.")
    holds = "; ".join(f"conversation {h.conversation_id} (customer {h.customer_id})" for h in held[:3])
    if not named:
        return (f"Permission denied: this agent holds {holds}; {tool} named no customer, conversation or ticket "
                f"({', '.join(scope)}). Nothing was changed.")
    customers = {h.customer_id for h in held}
    conversations = {h.conversation_id for h in held}
    for arg, kind, value in named:
        rows = await conn.fetch(RESOLVE_SQL[kind], str(value))
        ok = bool(rows) and all(r["customer_id"] in customers for r in rows)
        if ok and writes and kind in ("conversation", "ticket"):
            # A write stays on the held conversation and its ticket.
            ok = all(r["conversation_id"] is None or r["conversation_id"] in conversations for r in rows)
            which = "that conversation or its ticket"
        else:
            which = "of that customer"
        if not ok:
            return (f"Permission denied: this agent holds {holds}; {tool} named {arg} {value}, "
                    f"which is not {which}. Nothing was changed.")
    return None


async def _check_turn(conn: asyncpg.Connection, *, holder: str, tool: str,
                      named: list[tuple[str, ScopeKind, Any]]) -> str | None:
    for arg, kind, value in named:
        if kind != "message":
            continue
        row = await conn.fetchrow(RESOLVE_SQL["message"], str(value), holder)
        if row is None or not row["held_last"]:
            return (f"Permission denied: {tool} named {arg} {value}, a message of a conversation this agent "
                    "did not claim last (claim_inbound). Nothing was changed.")
    return None


Validate = Callable[[str, dict[str, Any]], BaseModel | None]  # a tool's arguments through its input model
