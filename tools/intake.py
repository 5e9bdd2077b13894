"""ingest_message: one inbound channel message in, in one transaction.

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
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from crm_mcp.tools.plumbing.context import Crm
from crm_mcp.tools.vocabulary import Channel, TicketCategory, TicketPriority, TicketStatus
from crm_mcp.tools.models import Out
from crm_mcp.tools.plumbing.params import Email, Phone, Text
from crm_mcp.tools.plumbing.registry import crm_tool
from crm_mcp.tools.engines.formatting import untrusted_field
from crm_mcp.tools.engines.rules import EscalationCode, classify, escalation_reasons, score_sentiment
from crm_mcp.tools.customers import LikelyDuplicate, likely_duplicates
from crm_mcp.tools.tickets import insert_ticket

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
    cmid = args.channel_message_id
    received = args.received_at or datetime.now(timezone.utc)
    # Scoring is pure CPU; done before the transaction so locks are held briefly.
    sentiment = score_sentiment(content)
    started = time.perf_counter()
    for attempt in range(4):
        try:
            return await _ingest_once(crm, args, wanted, content, subject, name, cmid, received, sentiment, started)
        except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
            # A concurrent first contact or conversation start won the race; the retry sees it.
            if attempt == 3:
                raise
    raise AssertionError("unreachable")


async def _lock_all(conn: asyncpg.Connection, keys: list[str]) -> None:
    """Transaction-scoped advisory locks, taken in the given order, in one round trip."""
    await conn.execute(
        """SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0)))
           FROM (SELECT k FROM unnest($1::text[]) WITH ORDINALITY AS u(k, i) ORDER BY i) s""", keys)


# Dedup check and identity lookup in one statement (run after the locks, so it sees every
# committed message and identity of the same keys).
LOOKUP_SQL = """
SELECT 'dup' AS what, m.id AS message_id, m.sentiment, c.id AS customer_id, c.name, m.conversation_id,
       t.ticket_number, t.status, t.priority, t.category, NULL AS kind, NULL AS value, NULL::uuid AS merged_into
FROM messages m
JOIN customers c ON c.id = m.customer_id
LEFT JOIN tickets t ON t.id = m.ticket_id
WHERE m.channel = $1 AND m.channel_message_id = $2
UNION ALL
SELECT 'id', NULL, NULL, i.customer_id, c.name, NULL, NULL, NULL, NULL, NULL, i.kind, i.value, c.merged_into
FROM customer_identifiers i JOIN customers c ON c.id = i.customer_id
WHERE i.value = ANY($3::text[])
"""


def _duplicate(row: asyncpg.Record) -> IngestResult:
    return IngestResult(
        duplicate=True,
        message_id=str(row["message_id"]),
        customer=IngestCustomer(customer_id=str(row["customer_id"]), name=untrusted_field(row["name"], source="customer.name"), is_new=False),
        conversation=IngestConversation(conversation_id=str(row["conversation_id"]), is_new=False, channel_switched=False, previous_channel=None),
        ticket=IngestTicket(ticket_number=row["ticket_number"], status=row["status"], priority=row["priority"],
                            category=row["category"], is_new=False, reopened=False),
        sentiment=row["sentiment"] or 0.0,
        escalation_suggested=False,
        escalation_reasons=[],
        identity_conflicts=[],
        next_step="Duplicate delivery: this message was already ingested; do not reply to it again.",
    )


# Step 5 and 6 in one statement: the message, the conversation and customer roll-ups, the
# sentiment history and the metrics; returns the message id and the unanswered-question count.
RECORD_SQL = """
WITH msg AS (
    INSERT INTO messages (conversation_id, customer_id, ticket_id, channel, direction, role, content, subject,
                          channel_message_id, thread_ref, sentiment, processing_latency_ms, metadata, created_at)
    VALUES ($1, $2, $3, $4, 'inbound', 'customer', $5, $6, $7, $8, $9, $10, $11, $12)
    RETURNING id
), prior AS (
    SELECT coalesce(sum(sentiment), 0) AS s, count(sentiment) AS n,
           count(*) FILTER (WHERE direction = 'inbound' AND created_at > coalesce(
               (SELECT max(created_at) FROM messages WHERE conversation_id = $1 AND direction = 'outbound'
                  AND role IN ('agent', 'human')), '-infinity')) AS unanswered
    FROM messages WHERE conversation_id = $1 AND direction = 'inbound'
), conv AS (
    UPDATE conversations SET message_count = message_count + 1,
           sentiment = ((SELECT s FROM prior) + $9) / ((SELECT n FROM prior) + 1),
           last_activity_at = greatest(last_activity_at, $12), thread_ref = coalesce(thread_ref, $8)
    WHERE id = $1
), hist AS (
    INSERT INTO customer_sentiment (customer_id, message_id, channel, score, recorded_at)
    SELECT $2, id, $4, $9, $12 FROM msg
), cust AS (
    UPDATE customers SET total_interactions = total_interactions + 1,
           sentiment_avg = ((coalesce(sentiment_avg, 0) * total_interactions) + $9) / (total_interactions + 1),
           last_contact_at = greatest(coalesce(last_contact_at, $12), $12),
           first_contact_at = least(coalesce(first_contact_at, $12), $12),
           name = coalesce(name, $13)
    WHERE id = $2
), metrics AS (
    INSERT INTO agent_metrics (metric_type, channel, value, message_id)
    SELECT 'message_volume', $4, 1, id FROM msg UNION ALL SELECT 'sentiment', $4, $9, id FROM msg
)
SELECT (SELECT id FROM msg) AS message_id, (SELECT unanswered FROM prior) + 1 AS unanswered
"""


async def _ingest_once(
    crm: Crm, args: IngestInput, wanted: list[tuple[str, str]], content: str, subject: str | None, name: str | None,
    cmid: str, received: datetime, sentiment: float, started: float,
) -> IngestResult:
    channel = args.channel
    settings = crm.settings
    async with crm.tx() as conn:
        # 1. dedup, and 2. identity: the message key first, then the identities in sorted order
        # (every caller takes them in this order, so no deadlock); then one lookup for both.
        await _lock_all(conn, [_lock_key("msg", channel, cmid)] + [_lock_key("id", k, v) for k, v in sorted(wanted)])
        rows = await conn.fetch(LOOKUP_SQL, channel, cmid, [v for _, v in wanted])
        for r in rows:
            if r["what"] == "dup":
                return _duplicate(r)
        owner = {(r["kind"], r["value"]): (r["merged_into"] or r["customer_id"]) for r in rows}
        names = {r["customer_id"]: r["name"] for r in rows}
        order = [(k, v) for k, v in wanted if k == channel] + [(k, v) for k, v in wanted if k == "email" and k != channel] + \
                [(k, v) for k, v in wanted if k in ("phone", "whatsapp") and k != channel]
        customer_id: uuid.UUID | None = None
        for k, v in order:
            cid = owner.get((k, v))
            if cid is None and k in ("phone", "whatsapp"):
                # the same number registered under the other kind is the same person
                cid = owner.get(("whatsapp" if k == "phone" else "phone", v))
            if cid is not None:
                customer_id = cid
                break
        is_new_customer = customer_id is None
        if customer_id is None:
            customer_id = await conn.fetchval(
                "INSERT INTO customers (name, first_contact_at) VALUES ($1, $2) RETURNING id", name, received)
        # A known person writing from a new channel becomes a new record: say who it may be.
        duplicates = await likely_duplicates(conn, [customer_id]) if is_new_customer and name else []
        conflicts: list[str] = []
        new_ids: list[tuple[str, str, bool]] = []
        for k, v in wanted:
            o = owner.get((k, v))
            if o is not None and o != customer_id:
                conflicts.append(f"{k}:{v}")
            elif o is None:
                # The channel itself vouches for the address it delivered from.
                new_ids.append((k, v, (k == "email" and channel == "email") or (k == "whatsapp" and channel == "whatsapp")))
        if new_ids:
            await conn.execute(
                """INSERT INTO customer_identifiers (customer_id, kind, value, verified, source_channel)
                   SELECT $1, k, v, ver, $5 FROM unnest($2::text[], $3::text[], $4::bool[]) AS u(k, v, ver)""",
                customer_id, [k for k, _, _ in new_ids], [v for _, v, _ in new_ids], [b for _, _, b in new_ids], channel)

        # 3. conversation
        window = timedelta(hours=settings.conversation_window_hours)
        conv = None
        if not is_new_customer:
            # A threaded reply (the thread id, or a message id it quotes) keeps its conversation past the window.
            conv = await conn.fetchrow(
                """SELECT v.id, v.current_channel, v.last_activity_at,
                          EXISTS (SELECT 1 FROM tickets t WHERE t.conversation_id = v.id
                                  AND t.status IN ('open', 'in_progress', 'waiting', 'escalated')) AS has_open_ticket,
                          (v.thread_ref IS NOT NULL AND v.thread_ref = $2)
                          OR EXISTS (SELECT 1 FROM messages m WHERE m.channel = $3 AND m.channel_message_id = ANY($4::text[])
                                     AND m.conversation_id = v.id) AS threaded
                   FROM conversations v WHERE customer_id = $1 AND status <> 'closed' FOR UPDATE""",
                customer_id, args.thread_ref, channel, args.in_reply_to or [])
        switched = False
        previous_channel = None
        conv_is_new = False
        if conv is not None and not (conv["last_activity_at"] >= received - window or conv["has_open_ticket"] or conv["threaded"]):
            await conn.execute(
                "UPDATE conversations SET status = 'closed', ended_at = now(), resolution_type = coalesce(resolution_type, 'resolved') WHERE id = $1",
                conv["id"])
            conv = None
        if conv is None:
            conv_id = await conn.fetchval(
                """WITH v AS (
                       INSERT INTO conversations (customer_id, initial_channel, current_channel, thread_ref, started_at, last_activity_at)
                       VALUES ($1, $2, $2, $3, $4, $4) RETURNING id
                   ), m AS (
                       INSERT INTO agent_metrics (metric_type, channel, value) VALUES ('conversation_count', $2, 1)
                   )
                   SELECT id FROM v""", customer_id, channel, args.thread_ref, received)
            conv_is_new = True
        else:
            conv_id = conv["id"]
            if conv["current_channel"] != channel:
                switched = True
                previous_channel = conv["current_channel"]
                switch = {"from": previous_channel, "to": channel, "at": received.isoformat()}
                await conn.execute(
                    "UPDATE conversations SET current_channel = $2, channel_switches = channel_switches || $3::jsonb WHERE id = $1",
                    conv_id, channel, [switch])

        # 4. ticket before response
        ticket = None
        if not conv_is_new:
            ticket = await conn.fetchrow(
                "SELECT * FROM tickets WHERE conversation_id = $1 ORDER BY created_at DESC LIMIT 1 FOR UPDATE", conv_id)
        ticket_is_new = reopened = False
        if ticket is not None and ticket["status"] in ("waiting", "resolved"):
            reopened = ticket["status"] == "resolved"
            new_status, note = ("open", "reopened by customer reply") if reopened else ("in_progress", "customer replied")
            ticket = await conn.fetchrow(
                """WITH t AS (UPDATE tickets SET status = $2, resolved_at = CASE WHEN $2 = 'open' THEN NULL ELSE resolved_at END
                              WHERE id = $1 RETURNING *),
                        e AS (INSERT INTO ticket_events (ticket_id, kind, from_value, to_value, note, actor)
                              VALUES ($1, 'status', $3, $2, $4, 'ingest_message'))
                   SELECT * FROM t""", ticket["id"], new_status, ticket["status"], note)
        elif ticket is None or ticket["status"] == "closed":
            cls = classify(content, subject, sentiment=sentiment)
            ticket = await insert_ticket(
                conn, crm, customer_id=customer_id, conversation_id=conv_id,
                subject=subject or _subject_from(content), category=cls.category, priority=cls.priority,
                channel=channel, created_at=received, actor="ingest_message")
            ticket_is_new = True

        # 5 and 6. the message, sentiment folded in, counts and metrics (a duplicate returned above)
        latency_ms = int((time.perf_counter() - started) * 1000)
        rec = await conn.fetchrow(
            RECORD_SQL, conv_id, customer_id, ticket["id"], channel, content, subject, cmid, args.thread_ref, sentiment,
            latency_ms, args.metadata or {}, received, name)
        message_id, unanswered = rec["message_id"], rec["unanswered"]
    reasons = escalation_reasons(
        content if not subject else f"{subject}\n{content}", sentiment=sentiment, unanswered_inbound=unanswered,
        threshold=settings.escalation_sentiment_threshold, repeat_limit=settings.repeat_question_limit)
    already = ticket["status"] == "escalated"
    suggested = bool(reasons) and not already
    if already:
        next_step = f"Ticket {ticket['ticket_number']} is already with human support; acknowledge briefly with send_response or wait."
    elif suggested:
        next_step = f"Escalation suggested: call escalate_to_human for {ticket['ticket_number']}, then tell the customer with send_response."
    else:
        next_step = f"Search the knowledge base (search_knowledge_base), then answer with send_response on {ticket['ticket_number']}."
    if duplicates:
        next_step += " This new customer shares a name with an existing record (likely_duplicates): if they are one person, merge_customers."
    return IngestResult(
        duplicate=False,
        message_id=str(message_id),
        customer=IngestCustomer(customer_id=str(customer_id), name=untrusted_field(names.get(customer_id) or name, source="customer.name"),
                                is_new=is_new_customer),
        conversation=IngestConversation(conversation_id=str(conv_id), is_new=conv_is_new, channel_switched=switched, previous_channel=previous_channel),
        ticket=IngestTicket(ticket_number=ticket["ticket_number"], status=ticket["status"], priority=ticket["priority"],
                            category=ticket["category"], is_new=ticket_is_new, reopened=reopened),
        sentiment=sentiment,
        escalation_suggested=suggested,
        escalation_reasons=[Escalation(code=r.code, detail=r.detail) for r in reasons],
        identity_conflicts=conflicts,
        likely_duplicates=duplicates,
        next_step=next_step,
    )


def _subject_from(content: str) -> str:
    first = " ".join(content.split())
    return first if len(first) <= 80 else first[:77].rsplit(" ", 1)[0] + "..."
