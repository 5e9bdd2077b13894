"""The audit trail of writes: who, which tool, which ids, a digest of the arguments (never the
arguments: they carry customer text), the outcome and the time. Rows are append-only (a trigger
refuses UPDATE and DELETE, migrations/0004_auth.sql).

Recorded by the guard middleware after each write-tool call, allowed or denied, in its own
statement after the tool's transaction: a crash between the two loses the audit row, never the
write (logged as an error when the insert fails)."""

from __future__ import annotations

import hashlib
import json
import logging
from contextvars import ContextVar
from typing import Any

import asyncpg
from mcp.server.mcpserver.exceptions import ToolError

log = logging.getLogger(__name__)

# Keys whose values in a tool's structured result name what the call touched.
ID_KEYS = ("ticket_number", "customer_id", "conversation_id", "message_id", "article_id", "feedback_id",
           "merged_into", "source_customer_id", "target_customer_id", "order_id", "product_id", "action_id")
_MAX_IDS = 20

# The failure of the tool call in flight, noted by CrmServer.call_tool where the exception's
# class is still known (the SDK turns it into plain text afterwards).
_failure: ContextVar[list[str] | None] = ContextVar("crm_tool_failure", default=None)


def start_call() -> list[str]:
    cell: list[str] = []
    _failure.set(cell)
    return cell


def note_failure(exc: BaseException) -> None:
    cell = _failure.get()
    if cell is not None:
        cell.append(failure_kind(exc))


def failure_kind(exc: BaseException) -> str:
    from crm_mcp.tools.plumbing.errors import Conflict, InvalidArguments, NotFound, Unavailable, UserError

    # Tools raise these unwrapped (server/registration.py CrmTool.run), so the class says it all.
    for kind, name in ((InvalidArguments, "invalid_arguments"), (NotFound, "not_found"), (Conflict, "conflict"),
                       (Unavailable, "unavailable"), (UserError, "user_error"), (ToolError, "tool_error")):
        if isinstance(exc, kind):
            return name
    return "internal"


def args_digest(arguments: Any) -> str:
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def touched_ids(result: Any, depth: int = 0, found: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Ids named in a structured result, at most three levels deep, in order of appearance."""
    found = {} if found is None else found
    if depth > 3:
        return found
    if isinstance(result, dict):
        for key, value in result.items():
            if key in ID_KEYS and isinstance(value, (str, int)) and value != "":
                vals = found.setdefault(key, [])
                if str(value) not in vals and sum(map(len, found.values())) < _MAX_IDS:
                    vals.append(str(value))
            elif isinstance(value, (dict, list)):
                touched_ids(value, depth + 1, found)
    elif isinstance(result, list):
        for item in result[:50]:
            touched_ids(item, depth + 1, found)
    return found


async def record(pool: asyncpg.Pool, *, actor: str, role: str, tool: str, ids: dict[str, list[str]],
                 digest: str, outcome: str) -> None:
    try:
        await pool.execute(
            "INSERT INTO audit_log (actor, role, tool, ids, args_sha256, outcome) VALUES ($1, $2, $3, $4, $5, $6)",
            actor, role, tool, ids, digest, outcome)
    except Exception as exc:  # the write already happened; say loudly that its trail is missing
        log.error("audit: could not record %s by %s (%s): %s", tool, actor, outcome, type(exc).__name__)


async def recent(conn: asyncpg.Connection, limit: int = 50) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, at, actor, role, tool, ids, args_sha256, outcome FROM audit_log ORDER BY id DESC LIMIT $1",
        limit)
    out = []
    for r in rows:
        d = dict(r)
        if isinstance(d["ids"], str):  # a plain connection has no jsonb codec
            d["ids"] = json.loads(d["ids"])
        d["at"] = d["at"].isoformat()
        out.append(d)
    return out


def register_resource(server: Any, crm: Any) -> None:
    """crm://audit: the last 100 entries, newest first (admin only: roles.RESOURCE_ROLES)."""

    @server.resource("crm://audit", name="audit_log", title="Audit log (last 100 writes)",
                     description="Who wrote what: actor, role, tool, ids touched, argument digest, outcome, time. "
                     "Newest first. Admin only.", mime_type="application/json")
    async def audit_resource() -> str:
        async with crm.pool.acquire() as conn:
            return json.dumps(await recent(conn, 100), default=str)
