"""ingest_message: one inbound channel message in, in one statement and one transaction.

The database work is one call of the server-side function crm_ingest
(migrations/0011_intake_function.sql): one round trip per message instead of 7-9 statements.
Validation, sentiment, classification and the escalation rules stay here (pure CPU, no locks).

Order of work (each step relies on the one before):
  1. dedup: a transaction-scoped advisory lock on (channel, channel_message_id), then a lookup;
     a repeat returns the original ids with duplicate=true and changes nothing. The UNIQUE
     (channel, channel_message_id) constraint stays the backstop.
  2. identity: exact identity of the message's own channel first, then email, then phone;
     create the customer when none matches; link the new identities the sender brings.
     Locks on each identity serialise first contacts of the same new person.
  3. conversation: the customer's open conversation is reused when its last activity is within
     the window (default 24 h), it still has an unfinished ticket, or the message is a threaded
     reply to it (thread_ref, or in_reply_to naming one of its messages), on any channel, recording
     a channel switch; otherwise it is closed and a new one starts.
  4. ticket before response: the conversation's unfinished ticket (a waiting ticket moves to
     in_progress; a resolved one reopens), or a new one classified from the text.
  5. sentiment (VADER, -1..1) on the message, folded into conversation and customer.
  6. counts and metrics, once: a duplicate never reaches this point.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from crm_mcp.tools.plumbing.context import Crm
from crm_mcp.tools.vocabulary import Channel, TicketCategory, TicketPriority, TicketStatus
from crm_mcp.tools.models import Out
from crm_mcp.tools.plumbing.params import Email, Phone, Text
from crm_mcp.tools.plumbing.registry import crm_tool
from crm_mcp.tools.engines.formatting import untrusted, untrusted_field
from crm_mcp.tools.engines.identity import identity_lock_keys
from crm_mcp.tools.engines.rules import EscalationCode, classify, escalation_reasons, score_sentiment
from crm_mcp.tools.customers import LikelyDuplicate

log = logging.getLogger(__name__)

MAX_CONTENT = 50_000
MAX_METADATA_BYTES = 16_384
MAX_METADATA_DEPTH = 6


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_METADATA_DEPTH:
        return level
    if isinstance(value, dict):
        return max([_depth(v, level + 1) for v in value.values()] or [level + 1])
    if isinstance(value, list):
        return max([_depth(v, level + 1) for v in value] or [level + 1])
    return level


class Sender(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: Email | None = Field(default=None, description="Sender's email address.")
    phone: Phone | None = Field(default=None, description="Sender's phone number, any common format.")
    whatsapp: Phone | None = Field(default=None, description="Sender's WhatsApp number ('+1...' or 'whatsapp:+1...').")
    name: Text | None = Field(default=None, max_length=200, description="Display name as the channel gave it.")


class IngestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: Channel = Field(description="Channel the message arrived on.")
    channel_message_id: Text = Field(
        min_length=1, max_length=500,
        description="The channel's message id (Gmail id, Twilio MessageSid, Meta wamid, form submission id): the dedup key.",
    )
    sender: Sender = Field(description="Who sent it: at least one of email, phone, whatsapp.")
    content: Text = Field(min_length=1, max_length=MAX_CONTENT, description=f"Message text (plain text, at most {MAX_CONTENT:,} characters).")
    subject: Text | None = Field(default=None, max_length=500, description="Email subject or web form topic.")
    thread_ref: str | None = Field(default=None, max_length=500, description="The channel's thread id (Gmail threadId), kept for replies.")
    in_reply_to: list[Annotated[str, StringConstraints(min_length=1, max_length=500)]] | None = Field(
        default=None, max_length=20,
        description="Message ids it replies to (In-Reply-To, References): continues their conversation.")
    received_at: datetime | None = Field(default=None, description="When the channel received it (ISO 8601 with time zone). Default: now.")
    metadata: dict[str, Any] | None = Field(default=None, description="Channel-specific extras (JSON object, at most 16 KB, 6 levels deep).")

    @field_validator("metadata")
    @classmethod
    def _meta(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        if _depth(v) > MAX_METADATA_DEPTH:
            raise ValueError(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
        if len(json.dumps(v, default=str)) > MAX_METADATA_BYTES:
            raise ValueError("metadata is larger than 16 KB")
        return v

    @model_validator(mode="after")
    def _who(self) -> IngestInput:
        s = self.sender
        if not (s.email or s.phone or s.whatsapp):
            raise ValueError("sender needs at least one of email, phone or whatsapp")
        if self.channel == "email" and not s.email:
            raise ValueError("an email message needs sender.email")
        if self.channel == "whatsapp" and not (s.whatsapp or s.phone):
            raise ValueError("a WhatsApp message needs sender.whatsapp")
        if self.received_at is not None:
            if self.received_at.tzinfo is None:
                raise ValueError("received_at needs a time zone, e.g. 2026-01-31T12:00:00Z")
            if self.received_at > datetime.now(timezone.utc) + timedelta(minutes=5):
                raise ValueError("received_at is in the future")
            if self.received_at < datetime(2000, 1, 1, tzinfo=timezone.utc):
                raise ValueError("received_at is before 2000-01-01; give the time the channel received the message")
        return self


class IngestCustomer(Out):
    customer_id: str
    name: str | None
    is_new: bool


class IngestConversation(Out):
    conversation_id: str
    is_new: bool
    channel_switched: bool
    previous_channel: str | None


class IngestTicket(Out):
    ticket_number: str
    status: TicketStatus
    priority: TicketPriority
    category: TicketCategory
    is_new: bool
    reopened: bool


class Escalation(Out):
    code: EscalationCode
    detail: str


class IngestResult(Out):
    duplicate: bool = Field(description="Already ingested: the original ids, nothing changed.")
    message_id: str
    customer: IngestCustomer
    conversation: IngestConversation
    ticket: IngestTicket
    sentiment: float = Field(description="-1 (very negative) .. +1 (very positive).")
    escalation_suggested: bool
    escalation_reasons: list[Escalation]
    identity_conflicts: list[str] = Field(description="Sender identities owned by another customer (not linked; consider merge_customers).")
    likely_duplicates: list[LikelyDuplicate] = Field(
        default_factory=list,
        description="For a new customer: up to 3 records with the same name; merge_customers if one is the same person.")
    next_step: str


def _lock_key(*parts: str) -> str:
    return "\x1f".join(parts)


@crm_tool(name="ingest_message", title="Ingest inbound message", toolset="conversations", read_only=False, destructive=False, idempotent=True)
async def ingest_message(crm: Crm, args: IngestInput) -> IngestResult:
    """Record one inbound channel message exactly once and get what answering it needs: customer
    (found or created), conversation (reused across channels within 24 h), ticket (opened before any
    reply), sentiment, and whether to escalate. A retry with the same channel + channel_message_id
    returns the original ids (duplicate=true). Next: search_knowledge_base and send_response, or
    escalate_to_human. Not for replies (send_response) or staff notes (update_ticket)."""
    s = args.sender  # identities arrive normalised (params.Email / params.Phone)
    wanted: list[tuple[str, str]] = []
    if s.email:
        wanted.append(("email", s.email))
    if args.channel == "whatsapp":
        wanted.append(("whatsapp", s.whatsapp or s.phone or ""))
        if s.phone and s.whatsapp:
            wanted.append(("phone", s.phone))
    else:
        if s.whatsapp:
            wanted.append(("whatsapp", s.whatsapp))
        if s.phone:
            wanted.append(("phone", s.phone))
    content = args.content
    subject = args.subject or None
    name = s.name or None
    received = args.received_at or datetime.now(timezone.utc)
    started = time.perf_counter()
    # Pure CPU, done before the database call: sentiment, and the classification a new ticket
    # would get (cheap rules; computed even when the message joins an existing ticket).
    sentiment = score_sentiment(content)
    cls = classify(content, subject, sentiment=sentiment)
    settings = crm.settings
    # The message key first, then the identities sorted: every caller takes them in this order.
    lock_keys = [_lock_key("msg", args.channel, args.channel_message_id)] + identity_lock_keys(wanted)
    params = (
        lock_keys, args.channel, args.channel_message_id, [k for k, _ in wanted], [v for _, v in wanted], name,
        content, subject, args.thread_ref, args.in_reply_to or [], received, received.isoformat(), sentiment,
        args.metadata or {}, float(settings.conversation_window_hours), cls.category, cls.priority,
        received + timedelta(hours=settings.sla_hours(cls.priority)), (subject or _subject_from(content))[:500],
    )
    for attempt in range(4):
        try:
            # One statement, its own transaction: the whole intake is crm_ingest (migration 0011).
            async with crm.pool.acquire() as conn:
                out = await conn.fetchval(INGEST_SQL, *params, int((time.perf_counter() - started) * 1000))
                if not out["duplicate"]:
                    await _wake_agents(conn)
            break
        except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
            # A concurrent first contact or conversation start won the race; the retry sees it.
            if attempt == 3:
                raise
    if out["duplicate"]:
        return _duplicate(out)
    return _result(out, content, subject, sentiment, settings)


async def _wake_agents(conn: asyncpg.Connection) -> None:
    """Wake waiting agents (claim_inbound) now that the message is committed, in a transaction of
    its own so the ingest's commit holds no database-wide NOTIFY lock. The message is stored
    whatever happens here: a failed wake only delays a waiting agent to its next poll."""
    try:
        await conn.execute("SELECT crm_wake_inbound()")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        log.warning("ingest_message: stored, but waking agents failed (%s)", type(exc).__name__)


INGEST_SQL = "SELECT crm_ingest(" + ", ".join(f"${i}" for i in range(1, 21)) + ")"


def _duplicate(row: dict[str, Any]) -> IngestResult:
    return IngestResult(
        duplicate=True,
        message_id=row["message_id"],
        customer=IngestCustomer(customer_id=row["customer_id"], name=untrusted_field(row["name"], source="customer.name"), is_new=False),
        conversation=IngestConversation(conversation_id=row["conversation_id"], is_new=False, channel_switched=False, previous_channel=None),
        ticket=IngestTicket(ticket_number=row["ticket_number"], status=row["status"], priority=row["priority"],
                            category=row["category"], is_new=False, reopened=False),
        sentiment=row["sentiment"] or 0.0,
        escalation_suggested=False,
        escalation_reasons=[],
        identity_conflicts=[],
        next_step="Duplicate delivery: this message was already ingested; do not reply to it again.",
    )


def _result(out: dict[str, Any], content: str, subject: str | None, sentiment: float, settings: Any) -> IngestResult:
    number = out["ticket_number"]
    reasons = escalation_reasons(
        content if not subject else f"{subject}\n{content}", sentiment=sentiment, unanswered_inbound=out["unanswered"],
        threshold=settings.escalation_sentiment_threshold, repeat_limit=settings.repeat_question_limit)
    already = out["status"] == "escalated"
    suggested = bool(reasons) and not already
    if already:
        next_step = f"Ticket {number} is already with human support; acknowledge briefly with send_response or wait."
    elif suggested:
        next_step = f"Escalation suggested: call escalate_to_human for {number}, then tell the customer with send_response."
    else:
        next_step = f"Search the knowledge base (search_knowledge_base), then answer with send_response on {number}."
    duplicates = [
        LikelyDuplicate(
            customer_id=d["customer_id"], duplicate_of=d["duplicate_of"],
            name=untrusted(d["name"], source="customer") if d["name"] else None,
            company=untrusted(d["company"], source="customer") if d["company"] else None,
            last_contact_at=d["last_contact_at"],
            why=["same name"] + (["same company"] if d["same_company"] else []),
        )
        for d in out["likely_duplicates"]
    ]
    if duplicates:
        next_step += " This new customer shares a name with an existing record (likely_duplicates): if they are one person, merge_customers."
    return IngestResult(
        duplicate=False,
        message_id=out["message_id"],
        customer=IngestCustomer(customer_id=out["customer_id"], name=untrusted_field(out["name"], source="customer.name"),
                                is_new=out["customer_is_new"]),
        conversation=IngestConversation(conversation_id=out["conversation_id"], is_new=out["conversation_is_new"],
                                        channel_switched=out["channel_switched"], previous_channel=out["previous_channel"]),
        ticket=IngestTicket(ticket_number=number, status=out["status"], priority=out["priority"],
                            category=out["category"], is_new=out["ticket_is_new"], reopened=out["reopened"]),
        sentiment=sentiment,
        escalation_suggested=suggested,
        escalation_reasons=[Escalation(code=r.code, detail=r.detail) for r in reasons],
        identity_conflicts=out["identity_conflicts"],
        likely_duplicates=duplicates,
        next_step=next_step,
    )


def _subject_from(content: str) -> str:
    first = " ".join(content.split())
    return first if len(first) <= 80 else first[:77].rsplit(" ", 1)[0] + "..."
