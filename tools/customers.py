"""Customers and cross-channel identity: find_customer, upsert_customer, merge_customers and
get_customer_history."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, model_validator

from crm_mcp.tools.plumbing.context import Crm
from crm_mcp.tools.plumbing.errors import Conflict, NotFound, UserError
from crm_mcp.tools.engines.formatting import untrusted, untrusted_field
from crm_mcp.tools.engines.identity import identity_lock_keys, looks_like_email, looks_like_phone, normalize_email, normalize_phone
from crm_mcp.tools.models import CustomerSummary, Identity, Out, SentimentSummary
from crm_mcp.tools.plumbing.paging import aware, bounded, decode_cursor, encode_cursor
from crm_mcp.tools.plumbing.params import TICKET_NUMBER, Cursor, CustomerId, Email, Phone, normalize_ticket_number, parse_uuid
from crm_mcp.tools.plumbing.registry import crm_tool
from crm_mcp.tools.plumbing.sql import like_escape
from crm_mcp.tools.vocabulary import Channel, Plan

# One statement builds every summary: identities, open tickets and sentiment trend per customer.
SUMMARY_SQL = """
SELECT c.id, c.name, c.company, c.plan, c.last_contact_at, c.total_interactions, c.sentiment_avg,
       c.merged_into,
       coalesce((SELECT jsonb_agg(jsonb_build_object('kind', i.kind, 'value', i.value, 'verified', i.verified)
                                  ORDER BY i.kind, i.created_at)
                 FROM customer_identifiers i WHERE i.customer_id = c.id), '[]') AS identities,
       (SELECT count(*) FROM tickets t WHERE t.customer_id = c.id AND t.status NOT IN ('resolved', 'closed')) AS open_tickets,
       s.recent, s.previous, s.samples
FROM customers c
LEFT JOIN LATERAL (
    SELECT avg(score) FILTER (WHERE rn <= 5) AS recent,
           avg(score) FILTER (WHERE rn > 5) AS previous,
           (SELECT count(*) FROM customer_sentiment x WHERE x.customer_id = c.id) AS samples
    FROM (SELECT score, row_number() OVER (ORDER BY recorded_at DESC, id DESC) AS rn
          FROM customer_sentiment WHERE customer_id = c.id ORDER BY recorded_at DESC, id DESC LIMIT 10) z
) s ON true
WHERE {where}
"""
BY_IDS = "c.id = ANY($1::uuid[])"
# One round trip for the common lookup: identity probe and summary together.
BY_IDENTITY = "c.id IN (SELECT customer_id FROM customer_identifiers WHERE kind = ANY($1::text[]) AND value = $2)"


def _trend(recent: float | None, previous: float | None) -> str:
    if recent is None or previous is None:
        return "unknown"
    delta = recent - previous
    if delta > 0.15:
        return "improving"
    if delta < -0.15:
        return "declining"
    return "stable"


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 3)


async def load_summaries(conn: asyncpg.Connection, ids: list[uuid.UUID]) -> list[CustomerSummary]:
    """Summaries in the order of `ids`."""
    rows = {r["id"]: r for r in await conn.fetch(SUMMARY_SQL.format(where=BY_IDS), ids)}
    return [_summary(rows[cid]) for cid in ids if cid in rows]


async def summaries_by_identity(conn: asyncpg.Connection, kinds: list[str], value: str) -> list[CustomerSummary]:
    rows = await conn.fetch(SUMMARY_SQL.format(where=BY_IDENTITY) + " ORDER BY c.last_contact_at DESC NULLS LAST", kinds, value)
    return [_summary(r) for r in rows]


def _summary(r: asyncpg.Record) -> CustomerSummary:
    return CustomerSummary(
        customer_id=str(r["id"]),
        name=untrusted_field(r["name"], source="customer.name"),
        company=untrusted_field(r["company"], source="customer.company"),
        plan=r["plan"],
        identities=[Identity(**i) for i in r["identities"]],
        open_tickets=r["open_tickets"],
        last_contact_at=r["last_contact_at"],
        total_interactions=r["total_interactions"],
        sentiment=SentimentSummary(
            average=_r(r["sentiment_avg"]),
            recent=_r(r["recent"]),
            trend=_trend(r["recent"], r["previous"]),  # type: ignore[arg-type]
            samples=r["samples"] or 0,
        ),
        merged_into=str(r["merged_into"]) if r["merged_into"] else None,
    )


async def require_customer(conn: asyncpg.Connection, customer_id: uuid.UUID | str) -> uuid.UUID:
    cid = parse_uuid(customer_id, "customer_id", "find_customer")
    row = await conn.fetchrow("SELECT id, merged_into FROM customers WHERE id = $1", cid)
    if row is None:
        raise NotFound(f"No customer with id {cid}.", hint="Use find_customer to look the customer up by email, phone or name.")
    return row["id"]


# likely duplicates ----------------------------------------------------------------------------


class LikelyDuplicate(Out):
    customer_id: str = Field(description="Another customer record that may be the same person.")
    duplicate_of: str = Field(description="The customer it may duplicate.")
    name: str | None = Field(description="Customer-written: wrapped as untrusted.")
    company: str | None = Field(description="Wrapped as untrusted.")
    last_contact_at: datetime | None
    why: list[str] = Field(description="What they share, e.g. 'same name', 'same company'.")


# The rule lives in one place, crm_likely_duplicates() of migrations/0011_intake_function.sql,
# which intake (crm_ingest) calls too: same name, case-insensitively, at most 3 in all, best first.
# The planner inlines that one-SELECT SQL function, so customers_name_idx still serves the lookup
# and its ORDER BY gives the rows' order (WITH ORDINALITY or an outer ORDER BY would stop the
# inlining or restate the rule).
LIKELY_DUPLICATES_SQL = """
SELECT duplicate_of, id, name, company, last_contact_at, same_company
FROM crm_likely_duplicates($1::uuid[])
"""


async def likely_duplicates(conn: asyncpg.Connection, ids: list[uuid.UUID]) -> list[LikelyDuplicate]:
    """Other records that look like the same people as `ids`, for a person or agent to merge."""
    if not ids:
        return []
    rows = await conn.fetch(LIKELY_DUPLICATES_SQL, ids)
    return [
        LikelyDuplicate(
            customer_id=str(r["id"]), duplicate_of=str(r["duplicate_of"]),
            name=untrusted(r["name"], source="customer") if r["name"] else None,
            company=untrusted(r["company"], source="customer") if r["company"] else None,
            last_contact_at=r["last_contact_at"],
            why=["same name"] + (["same company"] if r["same_company"] else []),
        )
        for r in rows
    ]


# find_customer --------------------------------------------------------------------------------

SearchKind = Literal["auto", "email", "phone", "whatsapp", "name", "customer_id", "ticket_number"]


class FindCustomerInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(
        min_length=1,
        max_length=320,
        description=(
            "Email, phone or WhatsApp number (any format), customer id, ticket number (TKT-0042) or part of a name."
        ),
    )
    kind: SearchKind = Field(
        default="auto",
        description="How to read query; 'auto' detects the kind, else searches names.",
    )
    limit: int = Field(default=5, ge=1, le=25, description="Maximum number of matches to return (1-25).")


class FindCustomerResult(Out):
    matched_by: SearchKind = Field(description="How the query was interpreted.")
    normalized_query: str = Field(description="The query after normalisation (E.164 phone, lower-case email).")
    matches: list[CustomerSummary]
    likely_duplicates: list[LikelyDuplicate] = Field(
        default_factory=list,
        description="Other records with the same name (at most 3): if one is the same person, merge_customers.")
    note: str | None = Field(default=None, description="Guidance when nothing or many things matched.")


def _detect(query: str) -> SearchKind:
    q = query.strip()
    if TICKET_NUMBER.match(q):
        return "ticket_number"
    try:
        uuid.UUID(q)
        return "customer_id"
    except ValueError:
        pass
    if q.lower().startswith("whatsapp:"):
        return "whatsapp"
    if looks_like_email(q):
        return "email"
    if looks_like_phone(q):
        return "phone"
    return "name"


@crm_tool(name="find_customer", title="Find customer", toolset="customers", read_only=True, destructive=False, idempotent=True)
async def find_customer(crm: Crm, args: FindCustomerInput) -> FindCustomerResult:
    """Look a customer up by email, phone/WhatsApp number (any format), customer id, ticket number
    (TKT-0042) or part of a name; use it first whenever a message mentions a customer. Matches come
    with identities, plan, open tickets, last contact and sentiment trend. To create or change a
    customer: upsert_customer; their timeline: get_customer_history."""
    q = args.query.replace("\x00", "").strip()
    if not q:
        raise UserError("query is empty.", hint="Pass an email, phone number, ticket number, customer id or name.")
    kind = _detect(q) if args.kind == "auto" else args.kind
    region = crm.settings.default_region
    async with crm.pool.acquire() as conn:
        ids: list[uuid.UUID] = []
        matches: list[CustomerSummary] | None = None
        if kind == "email":
            norm = normalize_email(q)
            matches = await summaries_by_identity(conn, ["email"], norm)
        elif kind in ("phone", "whatsapp"):
            norm = normalize_phone(q, region)
            # The same number is one person whether they used it for calls/SMS or WhatsApp.
            matches = await summaries_by_identity(conn, ["phone", "whatsapp"], norm)
        elif kind == "customer_id":
            cid = parse_uuid(q, "query", "find_customer with an email or name")
            norm = str(cid)
            ids = [r["id"] for r in await conn.fetch("SELECT id FROM customers WHERE id = $1", cid)]
        elif kind == "ticket_number":
            norm = normalize_ticket_number(q)
            ids = [r["customer_id"] for r in await conn.fetch(
                "SELECT customer_id FROM tickets WHERE ticket_number = $1", norm)]
        else:
            norm = q.lower()
            ids = [r["id"] for r in await conn.fetch(
                "SELECT id FROM customers WHERE lower(name) LIKE '%' || $1 || '%' AND merged_into IS NULL "
                "ORDER BY last_contact_at DESC NULLS LAST, created_at DESC LIMIT $2",
                like_escape(norm), args.limit)]
        if matches is None:
            matches = await load_summaries(conn, ids[: args.limit])
        matches = matches[: args.limit]
        duplicates = await likely_duplicates(conn, [uuid.UUID(m.customer_id) for m in matches])
    note = None
    if not matches:
        note = (
            f"No customer matches this {kind.replace('_', ' ')}. Try another identifier or a name fragment; "
            "to create the customer use upsert_customer."
        )
    elif any(m.merged_into for m in matches):
        note = "A match was merged into another customer (see merged_into); use that customer id."
    elif duplicates:
        note = "Some matches share a name with another record (likely_duplicates); if they are one person, use merge_customers."
    return FindCustomerResult(matched_by=kind, normalized_query=norm, matches=matches, likely_duplicates=duplicates, note=note)


# upsert_customer ------------------------------------------------------------------------------


class UpsertCustomerInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: CustomerId | None = Field(
        default=None,
        description="Customer to update (find_customer). Omit to find or create by the identities given.",
    )
    name: str | None = Field(default=None, min_length=1, max_length=200, description="Full name.")
    company: str | None = Field(default=None, min_length=1, max_length=200, description="Company name.")
    plan: Plan | None = Field(default=None, description="Subscription plan.")
    preferred_language: str | None = Field(
        default=None, pattern=r"^[a-z]{2}(-[A-Z]{2})?$", description="Language tag such as 'en' or 'pt-BR'."
    )
    email: Email | None = Field(default=None, description="Email address to link (lower-cased).")
    phone: Phone | None = Field(default=None, description="Phone number to link, normalised to E.164.")
    whatsapp: Phone | None = Field(
        default=None, description="WhatsApp number to link ('+14155550123' or 'whatsapp:+14155550123')."
    )
    verified: bool = Field(default=False, description="Mark the identities linked by this call as verified.")
    metadata: dict[str, Any] | None = Field(
        default=None, description="Extra attributes merged into the customer's metadata (a flat JSON object, < 8 KB)."
    )

    @model_validator(mode="after")
    def _something(self) -> UpsertCustomerInput:
        if self.customer_id is None and not (self.email or self.phone or self.whatsapp):
            # Creating needs a way to reach the person; it also keeps repeated calls idempotent.
            raise ValueError("give customer_id to update, or at least one of email, phone or whatsapp to find or create")
        if self.metadata is not None:
            if len(json.dumps(self.metadata, default=str)) > 8192:
                raise ValueError("metadata is larger than 8 KB")
        return self


class UpsertCustomerResult(Out):
    created: bool = Field(description="True when a new customer record was created.")
    updated_fields: list[str]
    linked_identities: list[Identity] = Field(description="Identities newly linked by this call.")
    customer: CustomerSummary


async def link_identity(
    conn: asyncpg.Connection, customer_id: uuid.UUID, kind: str, value: str, *, verified: bool, source_channel: str | None
) -> bool:
    """Link an identity; True when new. An identity owned by someone else is a Conflict."""
    row = await conn.fetchrow(
        """
        INSERT INTO customer_identifiers (customer_id, kind, value, verified, source_channel)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (kind, value) DO UPDATE SET verified = customer_identifiers.verified OR EXCLUDED.verified
        RETURNING customer_id, (xmax = 0) AS inserted
        """,
        customer_id, kind, value, verified, source_channel,
    )
    if row["customer_id"] != customer_id:
        raise Conflict(
            f"The {kind} you passed already belongs to another customer ({row['customer_id']}).",
            hint="If both records are the same person, use merge_customers; otherwise leave this identity off.",
        )
    return bool(row["inserted"])


@crm_tool(name="upsert_customer", title="Create or update customer", toolset="customers", read_only=False, destructive=False, idempotent=True)
async def upsert_customer(crm: Crm, args: UpsertCustomerInput) -> UpsertCustomerResult:
    """Create or update a customer and link email / phone / WhatsApp identities.
    With customer_id: update the given fields. Without: find the owner of any given identity or
    create one (safe to repeat). Omitted fields are unchanged. An identity that belongs to another
    customer is refused: use merge_customers if they are the same person. Ids: find_customer."""
    wanted = [(kind, value) for kind, value in (("email", args.email), ("phone", args.phone), ("whatsapp", args.whatsapp)) if value]

    for attempt in range(3):
        try:
            return await _upsert_once(crm, args, wanted)
        except asyncpg.UniqueViolationError:
            # Two calls created the same identity at once; the loser retries and finds it.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def _upsert_once(crm: Crm, args: UpsertCustomerInput, wanted: list[tuple[str, str]]) -> UpsertCustomerResult:
    async with crm.tx() as conn:
        created = False
        if args.customer_id is not None:
            cid = await require_customer(conn, args.customer_id)
        else:
            owners = {
                r["customer_id"]
                for r in await conn.fetch(
                    "SELECT customer_id FROM customer_identifiers WHERE (kind, value) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
                    [k for k, _ in wanted], [v for _, v in wanted],
                )
            }
            if len(owners) > 1:
                raise Conflict(
                    f"These identities belong to {len(owners)} different customers: {', '.join(sorted(map(str, owners)))}.",
                    hint="Use merge_customers to combine them, or call upsert_customer with one customer_id.",
                )
            if owners:
                cid = owners.pop()
            else:
                cid = await conn.fetchval(
                    "INSERT INTO customers (name, first_contact_at) VALUES ($1, NULL) RETURNING id", args.name
                )
                created = True
        merged_into = await conn.fetchval("SELECT merged_into FROM customers WHERE id = $1", cid)
        if merged_into is not None:
            raise Conflict(
                f"Customer {cid} was merged into {merged_into}.", hint=f"Update customer {merged_into} instead."
            )
        fields = {
            k: getattr(args, k)
            for k in ("name", "company", "plan", "preferred_language")
            if getattr(args, k) is not None
        }
        updated: list[str] = []
        if fields or args.metadata:
            sets = [f"{k} = ${i + 2}" for i, k in enumerate(fields)]
            values: list[Any] = list(fields.values())
            if args.metadata:
                sets.append(f"metadata = metadata || ${len(values) + 2}::jsonb")
                values.append(args.metadata)
            await conn.execute(f"UPDATE customers SET {', '.join(sets)} WHERE id = $1", cid, *values)
            updated = list(fields) + (["metadata"] if args.metadata else [])
        linked: list[Identity] = []
        for kind, value in wanted:
            if await link_identity(conn, cid, kind, value, verified=args.verified, source_channel=None):
                linked.append(Identity(kind=kind, value=value, verified=args.verified))  # type: ignore[arg-type]
        [summary] = await load_summaries(conn, [cid])
    return UpsertCustomerResult(created=created, updated_fields=[] if created else updated, linked_identities=linked, customer=summary)


# merge_customers ------------------------------------------------------------------------------


class MergeCustomersInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    primary_id: CustomerId = Field(description="UUID of the customer record to keep.")
    duplicate_id: CustomerId = Field(description="UUID of the duplicate record to fold into the primary.")
    reason: str | None = Field(default=None, max_length=500, description="Why they are the same person (kept in the audit record).")
    merged_by: str | None = Field(default=None, max_length=200, description="Who decided the merge (audit).")


class MergeCustomersResult(Out):
    already_merged: bool = Field(description="Merged before: nothing changed.")
    moved: dict[str, int] = Field(description="Rows re-pointed from the duplicate to the primary, per table.")
    customer: CustomerSummary


# Each statement re-points one table; the counts go to the audit record.
_MOVES = (
    ("identities", "UPDATE customer_identifiers SET customer_id = $1 WHERE customer_id = $2"),
    ("conversations", "UPDATE conversations SET customer_id = $1 WHERE customer_id = $2"),
    ("messages", "UPDATE messages SET customer_id = $1 WHERE customer_id = $2"),
    ("tickets", "UPDATE tickets SET customer_id = $1 WHERE customer_id = $2"),
    ("orders", "UPDATE orders SET customer_id = $1 WHERE customer_id = $2"),
    ("feedback", "UPDATE feedback SET customer_id = $1 WHERE customer_id = $2"),
    ("agent_actions", "UPDATE agent_actions SET customer_id = $1 WHERE customer_id = $2"),
    ("sentiment_history", "UPDATE customer_sentiment SET customer_id = $1 WHERE customer_id = $2"),
    ("preferences", """INSERT INTO customer_preferences (customer_id, key, value, confidence, learned_from)
                       SELECT $1, key, value, confidence, learned_from FROM customer_preferences WHERE customer_id = $2
                       ON CONFLICT (customer_id, key) DO NOTHING"""),
)


def _count(status: str) -> int:
    parts = status.split()
    return int(parts[-1]) if parts and parts[-1].isdigit() else 0


@crm_tool(name="merge_customers", title="Merge duplicate customers", toolset="customers", read_only=False, destructive=True, idempotent=True)
async def merge_customers(crm: Crm, args: MergeCustomersInput) -> MergeCustomersResult:
    """Fold a duplicate customer into the primary in one audited transaction (identities,
    conversations, messages, tickets, orders, feedback move over; the duplicate is marked
    merged_into). Destructive. Use when one person shows up under two records (identity_conflicts,
    likely_duplicates). Refused when both hold different verified identities of one kind. Repeating
    a finished merge changes nothing."""
    p, d = args.primary_id, args.duplicate_id
    if p == d:
        raise UserError("primary_id and duplicate_id are the same customer.")
    async with crm.tx() as conn:
        # The intake locks a message's identities before it resolves the customer: holding every
        # identity of both records (a number under both phone and whatsapp, as the intake treats
        # them as one) makes a message that arrives meanwhile wait, then resolve through
        # merged_into to the primary instead of landing on the duplicate.
        idents = {(r["kind"], r["value"]) for r in await conn.fetch(
            "SELECT kind, value FROM customer_identifiers WHERE customer_id = ANY($1::uuid[])", [p, d])}
        idents |= {("whatsapp" if k == "phone" else "phone", v) for k, v in idents if k in ("phone", "whatsapp")}
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest($1::text[]) WITH ORDINALITY AS u(k, i) "
                           "ORDER BY i", identity_lock_keys(idents))
        # Lock order (tools/tickets.py): the two customers' conversations first, as the intake and
        # the replies take a conversation before they touch its customer; then the customers' rows
        # FOR NO KEY UPDATE, which the foreign-key checks of those paths' inserts do not wait for.
        await conn.execute("SELECT FROM conversations WHERE customer_id = ANY($1::uuid[]) ORDER BY id FOR UPDATE", [p, d])
        rows = {r["id"]: r for r in await conn.fetch(
            "SELECT * FROM customers WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE", [p, d])}
        for cid, label in ((p, "primary_id"), (d, "duplicate_id")):
            if cid not in rows:
                raise NotFound(f"No customer with {label} {cid}.", hint="Use find_customer to look both records up.")
        if rows[d]["merged_into"] == p:
            [summary] = await load_summaries(conn, [p])
            return MergeCustomersResult(already_merged=True, moved={}, customer=summary)
        if rows[d]["merged_into"] is not None or rows[p]["merged_into"] is not None:
            raise Conflict("One of these customers was already merged into another record.",
                           hint="Use the record named in merged_into (find_customer shows it).")
        clash = await conn.fetch(
            """SELECT a.kind FROM customer_identifiers a JOIN customer_identifiers b ON a.kind = b.kind
               WHERE a.customer_id = $1 AND b.customer_id = $2 AND a.verified AND b.verified AND a.value <> b.value""", p, d)
        if clash:
            kinds = sorted({r["kind"] for r in clash})
            raise Conflict(
                f"Both customers have different verified {', '.join(kinds)} identities; refusing to merge what may be two people.",
                hint="Check with the customer; if they really are one person, un-verify one identity first.")
        # One open conversation per customer: close the duplicate's if both have one.
        await conn.execute(
            """UPDATE conversations SET status = 'closed', ended_at = now(), resolution_type = 'abandoned',
                      metadata = metadata || '{"closed_by": "merge_customers"}'
               WHERE customer_id = $2 AND status <> 'closed'
                 AND EXISTS (SELECT 1 FROM conversations WHERE customer_id = $1 AND status <> 'closed')""", p, d)
        moved: dict[str, int] = {}
        for label, sql in _MOVES:
            moved[label] = _count(await conn.execute(sql, p, d))
        await conn.execute("DELETE FROM customer_preferences WHERE customer_id = $1", d)
        dup = rows[d]
        await conn.execute(
            """UPDATE customers SET
                   name = coalesce(name, $2), company = coalesce(company, $3),
                   total_interactions = total_interactions + $4,
                   first_contact_at = least(first_contact_at, $5), last_contact_at = greatest(last_contact_at, $6),
                   sentiment_avg = (SELECT avg(score) FROM customer_sentiment WHERE customer_id = $1)
               WHERE id = $1""", p, dup["name"], dup["company"], dup["total_interactions"], dup["first_contact_at"], dup["last_contact_at"])
        await conn.execute(
            "UPDATE customers SET merged_into = $1, total_interactions = 0, sentiment_avg = NULL WHERE id = $2", p, d)
        await conn.execute(
            "INSERT INTO customer_merges (primary_id, duplicate_id, moved, reason, merged_by) VALUES ($1, $2, $3, $4, $5)",
            p, d, moved, args.reason, args.merged_by)
        [summary] = await load_summaries(conn, [p])
    return MergeCustomersResult(already_merged=False, moved=moved, customer=summary)


# get_customer_history -------------------------------------------------------------------------


class HistoryInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: CustomerId = Field(description="Customer UUID (find_customer gives it).")
    channel: Channel | None = Field(default=None, description="Only events on this channel.")
    since: datetime | None = Field(default=None, description="Only events at or after this time (ISO 8601 with time zone).")
    until: datetime | None = Field(default=None, description="Only events before this time.")
    limit: int = Field(default=20, ge=1, le=100, description="Events per page (1-100).")
    cursor: Cursor = None
    response_format: Literal["concise", "detailed"] = Field(
        default="concise", description="'concise': text cut to 200 characters; 'detailed': up to 4,000, plus sentiment and delivery status."
    )


class HistoryEvent(Out):
    kind: Literal["message", "ticket", "conversation"]
    at: datetime
    channel: str
    ref: str = Field(description="Message id, ticket number or conversation id.")
    conversation_id: str | None
    ticket_number: str | None
    direction: str | None = None
    role: str | None = None
    status: str | None = None
    text: str | None = Field(default=None, description="Message text or ticket subject; customer-written text is wrapped as untrusted.")
    sentiment: float | None = None
    delivery_status: str | None = None


class HistoryResult(Out):
    customer: CustomerSummary
    events: list[HistoryEvent] = Field(description="Newest first.")
    next_cursor: str | None


HISTORY_SQL = """
SELECT * FROM (
    SELECT 'message' AS kind, m.created_at AS at, m.id::text AS ref, m.channel, m.conversation_id, t.ticket_number,
           m.direction, m.role, NULL AS status, m.content AS text, m.sentiment, m.delivery_status
    FROM messages m LEFT JOIN tickets t ON t.id = m.ticket_id WHERE m.customer_id = $1
    UNION ALL
    SELECT 'ticket', t.created_at, t.ticket_number, t.source_channel, t.conversation_id, t.ticket_number,
           NULL, NULL, t.status, t.subject, NULL, NULL
    FROM tickets t WHERE t.customer_id = $1
    UNION ALL
    SELECT 'conversation', v.started_at, v.id::text, v.initial_channel, v.id, NULL,
           NULL, NULL, v.status, NULL, v.sentiment, NULL
    FROM conversations v WHERE v.customer_id = $1
) e
WHERE ($2::text IS NULL OR e.channel = $2)
  AND ($3::timestamptz IS NULL OR e.at >= $3)
  AND ($4::timestamptz IS NULL OR e.at < $4)
  AND ($5::timestamptz IS NULL OR (e.at, e.kind, e.ref) < ($5, $6, $7))
ORDER BY e.at DESC, e.kind DESC, e.ref DESC
LIMIT $8
"""


@crm_tool(name="get_customer_history", title="Customer history", toolset="customers", read_only=True, destructive=False, idempotent=True)
async def get_customer_history(crm: Crm, args: HistoryInput) -> HistoryResult:
    """One timeline of a customer across all channels, newest first: conversations, messages in
    and out, tickets (with current status). Filter by channel and time; page with next_cursor.
    'concise' trims message text; 'detailed' adds sentiment and delivery status. Get the
    customer_id from find_customer; read one conversation in order with get_conversation."""
    cur_at = cur_kind = cur_ref = None
    if args.cursor:
        def parse(c: dict[str, Any]) -> tuple[datetime, str, str]:
            if c["k"] not in ("message", "ticket", "conversation"):
                raise ValueError("unknown kind")
            return aware(c["t"]), str(c["k"]), bounded(c["r"])

        cur_at, cur_kind, cur_ref = decode_cursor(args.cursor, parse)
    if args.since and args.until and args.since >= args.until:
        raise UserError("since must be earlier than until.")
    detailed = args.response_format == "detailed"
    cap = 4000 if detailed else 200
    async with crm.pool.acquire() as conn:
        cid = await require_customer(conn, args.customer_id)
        [summary] = await load_summaries(conn, [cid])
        rows = await conn.fetch(HISTORY_SQL, cid, args.channel, args.since, args.until, cur_at, cur_kind, cur_ref, args.limit + 1)
    more = len(rows) > args.limit
    rows = rows[: args.limit]
    events = []
    for r in rows:
        text = r["text"]
        if text is not None:
            if len(text) > cap:
                text = text[:cap] + "…"
            if r["kind"] == "ticket" or r["role"] == "customer":
                text = untrusted(text, source=r["channel"])
        events.append(HistoryEvent(
            kind=r["kind"], at=r["at"], channel=r["channel"], ref=r["ref"],
            conversation_id=str(r["conversation_id"]) if r["conversation_id"] else None,
            ticket_number=r["ticket_number"], direction=r["direction"], role=r["role"], status=r["status"], text=text,
            sentiment=r["sentiment"] if detailed else None, delivery_status=r["delivery_status"] if detailed else None))
    nxt = None
    if more and rows:
        last = rows[-1]
        nxt = encode_cursor({"t": last["at"].isoformat(), "k": last["kind"], "r": last["ref"]})
    return HistoryResult(customer=summary, events=events, next_cursor=nxt)
