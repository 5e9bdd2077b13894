"""Tickets: one state machine, TKT-0001 numbers, history, escalation and the SLA sweep.

The state machine is TRANSITIONS below, the one place it is written: the update_ticket
description, its refusals and the README are generated from it. Setting the current status again
is a no-op. A customer reply moves a waiting ticket to in_progress and reopens a resolved one;
after closed, the customer's next message opens a new ticket.

`resolved` needs resolution notes; `escalated` needs a reason. Internal notes are ticket events
and are never sent to the customer.

Lock order: a conversation's row, then its ticket's row. The intake (crm_ingest in
migrations/0011_intake_function.sql), the hot path, takes them in that order, so every path that
locks or updates both does too; the reverse order deadlocks against it. A path that starts from a
ticket reads the ticket without a lock, locks its conversation, then locks the ticket and makes
its checks on the row read under that lock (lock_ticket). update_delivery_status, when it may
escalate, locks the conversation before the message and the ticket; merge_customers locks both
customers' conversations before the customers' rows."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, model_validator

from crm_mcp.tools.plumbing.context import Crm
from crm_mcp.tools.vocabulary import TICKET_PRIORITIES, Channel, TicketCategory, TicketPriority, TicketStatus
from crm_mcp.tools.plumbing.errors import Conflict, NotFound, UserError
from crm_mcp.tools.engines.formatting import untrusted, untrusted_field
from crm_mcp.tools.models import MessageView, Out
from crm_mcp.tools.plumbing.paging import aware, decode_cursor, encode_cursor
from crm_mcp.tools.plumbing.params import TICKET_NUMBER, ConversationId, Cursor, CustomerId, Text, TicketNumber, normalize_ticket_number
from crm_mcp.tools.plumbing.registry import crm_tool

TRANSITIONS: dict[str, tuple[str, ...]] = {
    "open": ("in_progress", "waiting", "escalated", "resolved"),
    "in_progress": ("waiting", "escalated", "resolved"),
    "waiting": ("in_progress", "escalated", "resolved"),
    "escalated": ("in_progress", "resolved"),
    "resolved": ("closed", "open"),
    "closed": (),
}


def transitions_text() -> str:
    """TRANSITIONS in one line, for the update_ticket description."""
    moves = [f"{status} -> {' | '.join(legal)}" for status, legal in TRANSITIONS.items() if legal]
    final = [status for status, legal in TRANSITIONS.items() if not legal]
    return "; ".join([*moves, f"{' and '.join(final)} is final"])


def _with_state_machine(fn: Any) -> Any:
    # A tool's docstring is its description; this writes the state machine into it from TRANSITIONS.
    fn.__doc__ = (fn.__doc__ or "").replace("{state_machine}", transitions_text())
    return fn

UNFINISHED = ("open", "in_progress", "waiting", "escalated")
# Priorities are listed low..critical in the vocabulary; their rank is their position there.
PRIORITY_RANK = {p: i for i, p in enumerate(TICKET_PRIORITIES)}
PRIORITY_RANK_SQL = "(CASE t.priority " + " ".join(f"WHEN '{p}' THEN {r}" for p, r in PRIORITY_RANK.items()) + " END)"


def check_transition(current: str, new: str) -> None:
    if new != current and new not in TRANSITIONS[current]:
        legal = ", ".join(TRANSITIONS[current]) or "none (closed is final; a new message opens a new ticket)"
        raise UserError(f"A ticket cannot go from {current} to {new}. Legal next statuses from {current}: {legal}.")


async def add_event(
    conn: asyncpg.Connection, ticket_id: uuid.UUID, kind: str, *, from_value: str | None = None,
    to_value: str | None = None, note: str | None = None, actor: str | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO ticket_events (ticket_id, kind, from_value, to_value, note, actor) VALUES ($1, $2, $3, $4, $5, $6)",
        ticket_id, kind, from_value, to_value, note, actor,
    )


INSERT_TICKET_SQL = """
WITH t AS (
    INSERT INTO tickets (customer_id, conversation_id, subject, category, priority, source_channel, sla_due_at, created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    RETURNING *
), ev AS (
    INSERT INTO ticket_events (ticket_id, kind, to_value, actor) SELECT id, 'created', 'open', $9 FROM t
), m AS (
    INSERT INTO agent_metrics (metric_type, channel, value, ticket_id) SELECT 'ticket_opened', $6, 1, id FROM t
)
SELECT * FROM t
"""


async def insert_ticket(
    conn: asyncpg.Connection, crm: Crm, *, customer_id: uuid.UUID, conversation_id: uuid.UUID | None,
    subject: str, category: str, priority: str, channel: str, created_at: datetime, actor: str,
) -> asyncpg.Record:
    """A new ticket with its 'created' event and 'ticket_opened' metric, in one statement."""
    due = created_at + timedelta(hours=crm.settings.sla_hours(priority))
    return await conn.fetchrow(
        INSERT_TICKET_SQL, customer_id, conversation_id, subject[:500], category, priority, channel, due, created_at, actor)


async def fetch_ticket(conn: asyncpg.Connection, ticket_number: str, *, for_update: bool = False) -> asyncpg.Record:
    """The ticket; for_update: locked, its conversation first (lock_ticket)."""
    number = normalize_ticket_number(ticket_number)
    row = await conn.fetchrow("SELECT * FROM tickets WHERE ticket_number = $1", number)
    if row is None:
        raise NotFound(f"No ticket {number}.", hint="Use list_tickets to browse tickets or find_customer with the ticket number.")
    return await lock_ticket(conn, row) if for_update else row


async def lock_conversation(conn: asyncpg.Connection, conversation_id: uuid.UUID) -> None:
    """Lock a conversation's row: the first lock of any path that goes on to its ticket or messages."""
    await conn.execute("SELECT FROM conversations WHERE id = $1 FOR UPDATE", conversation_id)


async def lock_ticket(conn: asyncpg.Connection, ticket: asyncpg.Record, *, conversation_locked: bool = False) -> asyncpg.Record:
    """`ticket`, read without a lock, read again FOR UPDATE after its conversation's row is
    locked (the lock order in the module docstring); conversation_locked: the caller has locked
    it already. Decide on the row returned, not on `ticket`."""
    if ticket["conversation_id"] is not None and not conversation_locked:
        await lock_conversation(conn, ticket["conversation_id"])
    row = await conn.fetchrow("SELECT * FROM tickets WHERE id = $1 FOR UPDATE", ticket["id"])
    if row is None or row["conversation_id"] != ticket["conversation_id"]:
        # Tickets are neither deleted nor moved today; if they ever are, the lock above was the wrong one.
        raise Conflict(f"{ticket['ticket_number']} changed while this call ran; nothing was changed.", hint="Call again.")
    return row


# Output models --------------------------------------------------------------------------------


class TicketEvent(Out):
    kind: str
    from_value: str | None
    to_value: str | None
    note: str | None = Field(description="Internal note: never shown to the customer.")
    actor: str | None
    at: datetime


class TicketView(Out):
    ticket_number: str
    status: TicketStatus
    priority: TicketPriority
    category: TicketCategory
    subject: str = Field(description="May contain customer-written text (wrapped as untrusted).")
    source_channel: str
    customer_id: str
    conversation_id: str | None
    assigned_to: str | None
    escalation_reason: str | None
    resolution_notes: str | None
    created_at: datetime
    updated_at: datetime
    first_response_at: datetime | None
    resolved_at: datetime | None
    sla_due_at: datetime | None
    sla_breached: bool
    legal_next_statuses: list[str]


def ticket_view(row: asyncpg.Record, *, subject_is_customer_text: bool = True) -> TicketView:
    subject = row["subject"]
    return TicketView(
        ticket_number=row["ticket_number"],
        status=row["status"],
        priority=row["priority"],
        category=row["category"],
        subject=untrusted(subject, source=row["source_channel"]) if subject_is_customer_text else subject,
        source_channel=row["source_channel"],
        customer_id=str(row["customer_id"]),
        conversation_id=str(row["conversation_id"]) if row["conversation_id"] else None,
        assigned_to=row["assigned_to"],
        escalation_reason=row["escalation_reason"],
        resolution_notes=row["resolution_notes"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        first_response_at=row["first_response_at"],
        resolved_at=row["resolved_at"],
        sla_due_at=row["sla_due_at"],
        sla_breached=row["sla_breached_at"] is not None,
        legal_next_statuses=list(TRANSITIONS[row["status"]]),
    )


# create_ticket --------------------------------------------------------------------------------


class CreateTicketInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: CustomerId = Field(description="UUID of the customer (find_customer gives it).")
    subject: str = Field(min_length=1, max_length=500, description="Short summary of the problem.")
    channel: Channel = Field(description="Channel the request came from.")
    category: TicketCategory = Field(default="general", description="Ticket category.")
    priority: TicketPriority = Field(default="medium", description="Priority; sets the SLA deadline.")
    conversation_id: ConversationId | None = Field(default=None, description="Attach to this conversation (UUID), optional.")
    note: str | None = Field(default=None, max_length=5000, description="Internal note recorded on creation (never sent to the customer).")
    assigned_to: str | None = Field(default=None, min_length=1, max_length=200, description="Staff member to assign.")


class TicketResult(Out):
    ticket: TicketView
    changed: bool = Field(description="False when the call changed nothing (already in that state).")
    message: str | None = None


@crm_tool(name="create_ticket", title="Create ticket", toolset="tickets", read_only=False, destructive=False, idempotent=False)
async def create_ticket(crm: Crm, args: CreateTicketInput) -> TicketResult:
    """Open a ticket by hand (a phone call, an internal report, a follow-up). Inbound channel
    messages do not need it: ingest_message opens the ticket. A conversation has at most one
    unfinished ticket; if it has one, this is refused and names it. Returns the TKT-0042 number
    and the SLA deadline set by the priority."""
    from crm_mcp.tools.customers import require_customer  # customers imports tickets' helpers

    async with crm.tx() as conn:
        cid = await require_customer(conn, args.customer_id)
        conv_id = args.conversation_id
        if conv_id:
            conv = await conn.fetchrow("SELECT customer_id FROM conversations WHERE id = $1 FOR UPDATE", conv_id)
            if conv is None or conv["customer_id"] != cid:
                raise NotFound("No such conversation for this customer.", hint="Use get_customer_history to find conversation ids.")
            existing = await conn.fetchval(
                "SELECT ticket_number FROM tickets WHERE conversation_id = $1 AND status <> ALL($2::text[])",
                conv_id, ["resolved", "closed"])
            if existing:
                raise Conflict(f"Conversation already has unfinished ticket {existing}.", hint="Use update_ticket on it instead.")
        row = await insert_ticket(
            conn, crm, customer_id=cid, conversation_id=conv_id, subject=args.subject,
            category=args.category, priority=args.priority, channel=args.channel,
            created_at=datetime.now(timezone.utc), actor="create_ticket",
        )
        if args.assigned_to:
            await conn.execute("UPDATE tickets SET assigned_to = $2 WHERE id = $1", row["id"], args.assigned_to)
            await add_event(conn, row["id"], "assignment", to_value=args.assigned_to, actor="create_ticket")
        if args.note:
            await add_event(conn, row["id"], "note", note=args.note, actor="create_ticket")
        row = await conn.fetchrow("SELECT * FROM tickets WHERE id = $1", row["id"])
    return TicketResult(ticket=ticket_view(row), changed=True)


# get_ticket -----------------------------------------------------------------------------------


class GetTicketInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ticket_number: TicketNumber = Field(description="Ticket number such as TKT-0042.")
    response_format: Literal["concise", "detailed"] = Field(
        default="concise", description="'concise': ticket and last 5 messages; 'detailed': full history and up to 50 messages."
    )


class GetTicketResult(Out):
    ticket: TicketView
    customer_name: str | None
    history: list[TicketEvent]
    messages: list[MessageView]


@crm_tool(name="get_ticket", title="Get ticket", toolset="tickets", read_only=True, destructive=False, idempotent=True)
async def get_ticket(crm: Crm, args: GetTicketInput) -> GetTicketResult:
    """One ticket: status, priority, category, SLA, assignee, history (status changes, assignments,
    internal notes) and its conversation's latest messages. Find tickets with list_tickets; change
    one with update_ticket."""
    async with crm.pool.acquire() as conn:
        row = await fetch_ticket(conn, args.ticket_number)
        name = await conn.fetchval("SELECT name FROM customers WHERE id = $1", row["customer_id"])
        n_events, n_msgs = (200, 50) if args.response_format == "detailed" else (10, 5)
        events = await conn.fetch(
            "SELECT * FROM (SELECT * FROM ticket_events WHERE ticket_id = $1 ORDER BY id DESC LIMIT $2) e ORDER BY id",
            row["id"], n_events)
        msgs = []
        if row["conversation_id"]:
            msgs = await conn.fetch(
                "SELECT * FROM (SELECT * FROM messages WHERE conversation_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2) m "
                "ORDER BY created_at, id", row["conversation_id"], n_msgs)
    return GetTicketResult(
        ticket=ticket_view(row),
        customer_name=untrusted_field(name, source="customer.name"),
        history=[TicketEvent(kind=e["kind"], from_value=e["from_value"], to_value=e["to_value"], note=e["note"],
                             actor=e["actor"], at=e["created_at"]) for e in events],
        messages=[MessageView.from_row(m) for m in msgs],
    )


# list_tickets ---------------------------------------------------------------------------------


class ListTicketsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: list[TicketStatus] | None = Field(
        default=None, max_length=6, description="Only these statuses. Default: unfinished ones (open, in_progress, waiting, escalated)."
    )
    priority: list[TicketPriority] | None = Field(default=None, max_length=4, description="Only these priorities.")
    channel: Channel | None = Field(default=None, description="Only tickets from this channel.")
    category: TicketCategory | None = Field(default=None, description="Only this category.")
    assigned_to: str | None = Field(default=None, max_length=200, description="Only tickets assigned to this person; '' for unassigned.")
    customer_id: CustomerId | None = Field(default=None, description="Only this customer's tickets (UUID).")
    breached_sla: bool | None = Field(default=None, description="True: only tickets past their SLA deadline; False: only within it.")
    limit: int = Field(default=20, ge=1, le=100, description="Page size (1-100).")
    cursor: Cursor = None


class TicketRow(Out):
    ticket_number: str
    status: str
    priority: str
    category: str
    subject: str
    source_channel: str
    customer_id: str
    customer_name: str | None
    assigned_to: str | None
    created_at: datetime
    sla_due_at: datetime | None
    sla_breached: bool


class ListTicketsResult(Out):
    tickets: list[TicketRow]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last page.")


@crm_tool(name="list_tickets", title="List tickets (queue)", toolset="tickets", read_only=True, destructive=False, idempotent=True)
async def list_tickets(crm: Crm, args: ListTicketsInput) -> ListTicketsResult:
    """The ticket queue, highest priority then oldest first; filter by status (default: unfinished),
    priority, channel, category, assignee, customer or breached SLA; page with next_cursor. One
    ticket's details: get_ticket."""
    statuses = list(args.status) if args.status else list(UNFINISHED)
    conds = ["t.status = ANY($1::text[])"]
    params: list[Any] = [statuses]

    def add(cond: str, value: Any) -> None:
        params.append(value)
        conds.append(cond.replace("?", f"${len(params)}"))

    if args.priority:
        add("t.priority = ANY(?::text[])", list(args.priority))
    if args.channel:
        add("t.source_channel = ?", args.channel)
    if args.category:
        add("t.category = ?", args.category)
    if args.assigned_to is not None:
        if args.assigned_to == "":
            conds.append("t.assigned_to IS NULL")
        else:
            add("t.assigned_to = ?", args.assigned_to)
    if args.customer_id:
        add("t.customer_id = ?", args.customer_id)
    if args.breached_sla is True:
        conds.append("(t.sla_breached_at IS NOT NULL OR (t.sla_due_at < now() AND t.status NOT IN ('resolved','closed')))")
    elif args.breached_sla is False:
        conds.append("NOT (t.sla_breached_at IS NOT NULL OR (t.sla_due_at < now() AND t.status NOT IN ('resolved','closed')))")
    rank = PRIORITY_RANK_SQL
    if args.cursor:
        def parse(c: dict[str, Any]) -> tuple[int, datetime, str]:
            r, n = int(c["r"]), str(c["n"])
            if not (0 <= r <= 3 and TICKET_NUMBER.fullmatch(n)):
                raise ValueError("out of range")
            return r, aware(c["t"]), n

        r, ts, n = decode_cursor(args.cursor, parse)
        params.extend([r, ts, n])
        k = len(params)
        conds.append(f"({rank} < ${k - 2} OR ({rank} = ${k - 2} AND (t.created_at, t.ticket_number) > (${k - 1}, ${k})))")
    params.append(args.limit + 1)
    sql = f"""
        SELECT t.*, c.name AS customer_name, {rank} AS rank
        FROM tickets t JOIN customers c ON c.id = t.customer_id
        WHERE {' AND '.join(conds)}
        ORDER BY {rank} DESC, t.created_at, t.ticket_number
        LIMIT ${len(params)}
    """
    async with crm.pool.acquire() as conn:
        rows = await conn.fetch(sql, *params)
    more = len(rows) > args.limit
    rows = rows[: args.limit]
    now = datetime.now(timezone.utc)
    out = [
        TicketRow(
            ticket_number=r["ticket_number"], status=r["status"], priority=r["priority"], category=r["category"],
            subject=untrusted(r["subject"], source=r["source_channel"]), source_channel=r["source_channel"],
            customer_id=str(r["customer_id"]), customer_name=untrusted_field(r["customer_name"], source="customer.name"), assigned_to=r["assigned_to"],
            created_at=r["created_at"], sla_due_at=r["sla_due_at"],
            sla_breached=r["sla_breached_at"] is not None
            or (r["sla_due_at"] is not None and r["sla_due_at"] < now and r["status"] not in ("resolved", "closed")),
        )
        for r in rows
    ]
    nxt = None
    if more and rows:
        last = rows[-1]
        nxt = encode_cursor({"r": last["rank"], "t": last["created_at"].isoformat(), "n": last["ticket_number"]})
    return ListTicketsResult(tickets=out, next_cursor=nxt)


# update_ticket --------------------------------------------------------------------------------


class UpdateTicketInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ticket_number: TicketNumber = Field(description="Ticket number such as TKT-0042.")
    status: TicketStatus | None = Field(default=None, description="New status; must be a legal move (see get_ticket's legal_next_statuses).")
    priority: TicketPriority | None = Field(default=None, description="New priority.")
    category: TicketCategory | None = Field(default=None, description="New category.")
    assigned_to: str | None = Field(default=None, max_length=200, description="Assign to this staff member; '' to unassign.")
    note: str | None = Field(default=None, min_length=1, max_length=5000, description="Internal note (never sent to the customer).")
    resolution_notes: str | None = Field(default=None, min_length=1, max_length=5000, description="How it was resolved; required to resolve.")
    escalation_reason: Text | None = Field(default=None, min_length=1, max_length=500, description="Required when setting status to escalated.")
    actor: str | None = Field(default=None, max_length=200, description="Who makes the change (for the history).")

    @model_validator(mode="after")
    def _something(self) -> UpdateTicketInput:
        if all(getattr(self, f) is None for f in ("status", "priority", "category", "assigned_to", "note", "resolution_notes")):
            raise ValueError("nothing to update: give at least one of status, priority, category, assigned_to, note, resolution_notes")
        return self


@crm_tool(name="update_ticket", title="Update ticket", toolset="tickets", read_only=False, destructive=False, idempotent=True)
@_with_state_machine
async def update_ticket(crm: Crm, args: UpdateTicketInput) -> TicketResult:
    """Change a ticket's status, priority, category or assignee, or add an internal note (never
    sent to the customer). Legal moves: {state_machine}. Resolving needs resolution_notes;
    escalating needs escalation_reason and does what escalate_to_human does. An illegal move is
    refused with the legal ones listed."""
    actor = args.actor or "update_ticket"
    if args.escalation_reason is not None and args.status != "escalated":
        raise UserError("escalation_reason is only used with status='escalated'; nothing was changed.",
                        hint="Put other remarks in note.")
    async with crm.tx() as conn:
        row = await fetch_ticket(conn, args.ticket_number, for_update=True)
        tid = row["id"]
        changed = False
        sets: dict[str, Any] = {}
        if args.status == "escalated" and row["status"] != "escalated":
            check_transition(row["status"], "escalated")
            if not args.escalation_reason:
                raise UserError("Escalating a ticket needs escalation_reason (why a human is needed); nothing was changed.",
                                hint="Call update_ticket again with escalation_reason, or use escalate_to_human with reason.")
            changed = await escalate(conn, row, args.escalation_reason, None, actor)
            row = await conn.fetchrow("SELECT * FROM tickets WHERE id = $1", tid)
        elif args.status is not None and args.status != row["status"]:
            check_transition(row["status"], args.status)
            if args.status == "resolved" and not (args.resolution_notes or row["resolution_notes"]):
                raise UserError("Resolving a ticket needs resolution_notes (what was done for the customer).")
            sets["status"] = args.status
            if args.status == "resolved":
                sets["resolved_at"] = datetime.now(timezone.utc)
            if args.status == "closed":
                sets["closed_at"] = datetime.now(timezone.utc)
            if args.status == "open":  # reopened
                sets["resolved_at"] = None
            await add_event(conn, tid, "status", from_value=row["status"], to_value=args.status, actor=actor)
        if args.resolution_notes is not None:
            sets["resolution_notes"] = args.resolution_notes
        if args.priority is not None and args.priority != row["priority"]:
            sets["priority"] = args.priority
            sets["sla_due_at"] = row["created_at"] + timedelta(hours=crm.settings.sla_hours(args.priority))
            await add_event(conn, tid, "priority", from_value=row["priority"], to_value=args.priority, actor=actor)
        if args.category is not None and args.category != row["category"]:
            sets["category"] = args.category
            await add_event(conn, tid, "category", from_value=row["category"], to_value=args.category, actor=actor)
        if args.assigned_to is not None:
            new = args.assigned_to or None
            if new != row["assigned_to"]:
                sets["assigned_to"] = new
                await add_event(conn, tid, "assignment", from_value=row["assigned_to"], to_value=new, actor=actor)
        if args.note:
            await add_event(conn, tid, "note", note=args.note, actor=actor)
            changed = True
        if sets:
            cols = list(sets)
            await conn.execute(
                f"UPDATE tickets SET {', '.join(f'{c} = ${i + 2}' for i, c in enumerate(cols))} WHERE id = $1",
                tid, *sets.values())
            changed = True
            if sets.get("status") == "resolved":
                await conn.execute(
                    "INSERT INTO agent_metrics (metric_type, channel, value, ticket_id) VALUES ('ticket_resolved', $1, "
                    "extract(epoch FROM now() - $2::timestamptz), $3)", row["source_channel"], row["created_at"], tid)
        row = await conn.fetchrow("SELECT * FROM tickets WHERE id = $1", tid)
    return TicketResult(ticket=ticket_view(row), changed=changed)


# escalate_to_human ----------------------------------------------------------------------------


class EscalateInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ticket_number: TicketNumber = Field(description="Ticket number such as TKT-0042.")
    reason: str = Field(min_length=3, max_length=500, description="Why a human is needed (shown to staff, not to the customer).")
    priority: TicketPriority | None = Field(default=None, description="Raise the priority at the same time (never lowers it).")


class EscalateResult(Out):
    ticket: TicketView
    already_escalated: bool
    message: str


async def escalate(conn: asyncpg.Connection, row: asyncpg.Record, reason: str, priority: str | None, actor: str) -> bool:
    """Escalate a ticket row from lock_ticket (its conversation, updated here too, is locked
    first); False when it already was (idempotent)."""
    if row["status"] == "escalated":
        return False
    check_transition(row["status"], "escalated")
    new_priority = row["priority"]
    if priority and PRIORITY_RANK[priority] > PRIORITY_RANK[row["priority"]]:
        new_priority = priority
    await conn.execute(
        "UPDATE tickets SET status = 'escalated', escalation_reason = $2, escalated_at = now(), priority = $3 WHERE id = $1",
        row["id"], reason, new_priority)
    await add_event(conn, row["id"], "escalation", from_value=row["status"], to_value="escalated", note=reason, actor=actor)
    if row["conversation_id"]:
        await conn.execute(
            "UPDATE conversations SET status = 'escalated', escalation_reason = $2 WHERE id = $1 AND status <> 'closed'",
            row["conversation_id"], reason)
        await conn.execute(
            """INSERT INTO messages (conversation_id, customer_id, ticket_id, channel, direction, role, content)
               SELECT id, customer_id, $2, current_channel, 'outbound', 'system', $3 FROM conversations WHERE id = $1""",
            row["conversation_id"], row["id"], f"Ticket {row['ticket_number']} escalated to human support.")
    await conn.execute(
        "INSERT INTO agent_metrics (metric_type, channel, value, ticket_id, metadata) VALUES ('escalation', $1, 1, $2, $3) "
        "ON CONFLICT DO NOTHING", row["source_channel"], row["id"], {"actor": actor})
    return True


@crm_tool(name="escalate_to_human", title="Escalate to human", toolset="tickets", read_only=False, destructive=False, idempotent=True)
async def escalate_to_human(crm: Crm, args: EscalateInput) -> EscalateResult:
    """Hand a ticket to human support: ticket and conversation become 'escalated', a system note
    is added and the escalation counted once. Use it when escalation is suggested, the customer asks
    for a person, or the knowledge base has no answer. Repeating it changes nothing; a resolved or
    closed ticket must be reopened (update_ticket) first."""
    async with crm.tx() as conn:
        row = await fetch_ticket(conn, args.ticket_number, for_update=True)
        done = await escalate(conn, row, args.reason, args.priority, "escalate_to_human")
        row = await conn.fetchrow("SELECT * FROM tickets WHERE id = $1", row["id"])
    msg = "Escalated to human support." if done else "Already escalated; nothing changed."
    return EscalateResult(ticket=ticket_view(row), already_escalated=not done, message=msg)


# SLA sweep --------------------------------------------------------------------------------------

# The sweep updates tickets and then their conversations in one statement, so the conversations
# are locked first, in a statement of their own (lock order: module docstring), in id order, and
# only tickets whose conversation is locked (or that have none) are escalated: a ticket that became
# due in between waits for the next sweep. now() is the transaction's time, the same in both.
SLA_LOCK_SQL = """
SELECT array_agg(c.id) FROM (
    SELECT c.id FROM conversations c
    WHERE c.id IN (SELECT t.conversation_id FROM tickets t
                   WHERE t.sla_due_at < now() AND t.sla_breached_at IS NULL AND t.status IN ('open', 'in_progress', 'waiting'))
    ORDER BY c.id
    FOR UPDATE OF c
) c
"""

SLA_SWEEP_SQL = """
WITH breached AS (
    UPDATE tickets t
    SET status = 'escalated', sla_breached_at = now(), escalated_at = now(),
        escalation_reason = 'SLA breached: unresolved past the ' || t.priority || ' priority deadline'
    WHERE t.sla_due_at < now() AND t.sla_breached_at IS NULL AND t.status IN ('open', 'in_progress', 'waiting')
      AND (t.conversation_id IS NULL OR t.conversation_id = ANY($1::uuid[]))
    RETURNING t.id, t.ticket_number, t.conversation_id, t.source_channel, t.status
), ev AS (
    INSERT INTO ticket_events (ticket_id, kind, to_value, note, actor)
    SELECT id, 'sla_breach', 'escalated', 'Auto-escalated: SLA deadline passed', 'sla' FROM breached
), conv AS (
    UPDATE conversations c SET status = 'escalated', escalation_reason = 'SLA breached'
    FROM breached b WHERE c.id = b.conversation_id AND c.status = 'active'
), m AS (
    INSERT INTO agent_metrics (metric_type, channel, value, ticket_id)
    SELECT 'sla_breach', source_channel, 1, id FROM breached
    ON CONFLICT DO NOTHING
), m2 AS (
    INSERT INTO agent_metrics (metric_type, channel, value, ticket_id, metadata)
    SELECT 'escalation', source_channel, 1, id, '{"actor": "sla"}'::jsonb FROM breached
    ON CONFLICT DO NOTHING
)
SELECT ticket_number FROM breached
"""

CLOSE_IDLE_SQL = """
UPDATE conversations SET status = 'closed', ended_at = now(),
       resolution_type = CASE WHEN status = 'escalated' THEN 'escalated' ELSE 'abandoned' END
WHERE status <> 'closed' AND last_activity_at < now() - make_interval(secs => $1)
  AND NOT EXISTS (SELECT 1 FROM tickets t WHERE t.conversation_id = conversations.id AND t.status IN ('open', 'in_progress', 'waiting', 'escalated'))
RETURNING id
"""


async def sla_sweep(crm: Crm) -> list[str]:
    """Auto-escalate tickets past their SLA deadline, each at most once (sla_breached_at is
    set in the same statement), and close conversations idle past the window whose tickets
    are done. Safe to run from several processes at once."""
    async with crm.tx() as conn:
        locked = await conn.fetchval(SLA_LOCK_SQL)
        rows = await conn.fetch(SLA_SWEEP_SQL, locked or [])
        await conn.fetch(CLOSE_IDLE_SQL, crm.settings.conversation_window_hours * 3600)
    return [r["ticket_number"] for r in rows]
