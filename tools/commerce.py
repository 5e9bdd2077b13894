"""Commerce (seed 001, issue 18): orders synced from the store, actions on them that may need a
person's approval, and customer preferences.

    find_orders               an order by number, or a customer's recent orders (status, items, tracking)
    request_action            refund / discount / replacement / cancellation / order change / credit;
                              applied at once or left pending_approval by the policy below
    decide_action             approve or reject a pending action (staff and admin only: server/roles.py)
    list_actions              pending first; filters by status, type, customer
    get_customer_preferences  sizes, style, preferred channel, language, marketing consent
    set_customer_preferences
    upsert_order              the store bridge's write (toolset store_sync)

Both toolsets are opt-in (CRM_TOOLSETS=all,store[,store_sync]): a desk that sells enables them.

Approval policy: an action waits for a person when its amount is above its type's threshold
(settings.approval_thresholds over DEFAULT_THRESHOLDS; a negative threshold means always), and every
refund the agent role asks for waits whatever its amount. "Applied" means recorded as done in the CRM:
moving money in the store is the store's own admin (or a later bridge), not this server."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import asyncpg
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from crm_mcp.tools.engines.formatting import untrusted, untrusted_field
from crm_mcp.tools.engines.identity import normalize_email, normalize_phone
from crm_mcp.tools.models import Out
from crm_mcp.tools.plumbing.context import CALLER, Crm
from crm_mcp.tools.plumbing.errors import Conflict, NotFound, UserError
from crm_mcp.tools.plumbing.paging import aware, bounded, decode_cursor, encode_cursor
from crm_mcp.tools.plumbing.params import ConversationId, Cursor, CustomerId, Text
from crm_mcp.tools.plumbing.registry import crm_tool
from crm_mcp.tools.replies import SendResponseInput, send_response
from crm_mcp.tools.tickets import add_event
from crm_mcp.tools.vocabulary import Channel

ActionType = Literal["refund", "discount", "replacement", "cancellation", "order_change", "credit"]
ActionStatus = Literal["pending_approval", "applied", "rejected"]
DEFAULT_THRESHOLDS: dict[str, float] = {t: 50.0 for t in ("refund", "discount", "replacement", "cancellation",
                                                         "order_change", "credit")}
ORDER_NUMBER_HINT = "Use find_orders with the customer's customer_id to list their order numbers."


def normalize_order_number(raw: str) -> str:
    """'#1001', ' 1001 ' -> '#1001' (Shopify's display form); other shapes pass through trimmed."""
    s = raw.strip()
    return "#" + s if s.isdigit() else s


# Normalised on input, so the lease check (server/lease_scope.py) and the tool see the same number.
OrderNumber = Annotated[str, StringConstraints(min_length=1, max_length=40), AfterValidator(normalize_order_number)]


# find_orders ----------------------------------------------------------------------------------


class FindOrdersInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_number: OrderNumber | None = Field(default=None, description="The store's order number (#1001 or 1001). Or customer_id.")
    customer_id: CustomerId | None = Field(default=None, description="A customer's recent orders, newest first (find_customer).")
    limit: int = Field(default=5, ge=1, le=20)
    cursor: Cursor

    @model_validator(mode="after")
    def _one(self) -> FindOrdersInput:
        if (self.order_number is None) == (self.customer_id is None):
            raise ValueError("give exactly one of order_number or customer_id")
        return self


class Tracking(Out):
    number: str | None
    url: str | None
    company: str | None


class OrderView(Out):
    order_id: str
    order_number: str | None
    customer_id: str | None
    status: Literal["pending", "paid", "fulfilled", "cancelled", "refunded"]
    financial_status: str | None
    fulfillment_status: str | None
    total: str = Field(description="Amount and currency, e.g. '84.00 EUR'.")
    refunded: str | None = Field(description="Refunded so far, when any.")
    items: list[str] = Field(description="'quantity x title (variant)' per line item.")
    tracking: list[Tracking]
    placed_at: datetime
    updated_at: datetime = Field(description="When the store last changed the order.")


class FindOrdersResult(Out):
    orders: list[OrderView]
    next_cursor: str | None


def _money(amount: Decimal | float | None, currency: str) -> str:
    return f"{Decimal(amount or 0):.2f} {currency}"


def _item_line(item: dict[str, Any]) -> str:
    title = str(item.get("title") or "item")
    variant = item.get("variant")
    return f"{item.get('quantity', 1)} x {title}" + (f" ({variant})" if variant else "")


def order_view(r: asyncpg.Record) -> OrderView:
    return OrderView(
        order_id=str(r["id"]), order_number=r["order_number"],
        customer_id=str(r["customer_id"]) if r["customer_id"] else None, status=r["status"],
        financial_status=r["financial_status"], fulfillment_status=r["fulfillment_status"],
        total=_money(r["total_price"], r["currency"]),
        refunded=_money(r["refunded_amount"], r["currency"]) if r["refunded_amount"] else None,
        items=[_item_line(i) for i in r["items"][:50]],
        tracking=[Tracking(number=t.get("number"), url=t.get("url"), company=t.get("company")) for t in r["tracking"][:10]],
        placed_at=r["placed_at"], updated_at=r["store_updated_at"] or r["updated_at"])


@crm_tool(name="find_orders", title="Find orders", toolset="store", read_only=True, destructive=False, idempotent=True)
async def find_orders(crm: Crm, args: FindOrdersInput) -> FindOrdersResult:
    """Orders synced from the store: one by order_number (#1001), or a customer's recent orders
    (customer_id, newest first, paged). Each shows status, items, totals, fulfilment and tracking
    numbers and links, ready to quote. To refund or change an order: request_action."""
    async with crm.pool.acquire() as conn:
        if args.order_number is not None:
            rows = await conn.fetch("SELECT * FROM orders WHERE order_number = $1 ORDER BY placed_at DESC LIMIT 5",
                                    normalize_order_number(args.order_number))
            if not rows:
                raise NotFound(f"No order {normalize_order_number(args.order_number)}.", hint=ORDER_NUMBER_HINT)
            return FindOrdersResult(orders=[order_view(r) for r in rows], next_cursor=None)
        after = decode_cursor(args.cursor, lambda d: (aware(d["t"]), uuid.UUID(bounded(d["i"])))) if args.cursor else None
        rows = await conn.fetch(
            """SELECT * FROM orders WHERE customer_id = $1
                 AND ($2::timestamptz IS NULL OR (placed_at, id) < ($2, $3))
               ORDER BY placed_at DESC, id DESC LIMIT $4""",
            args.customer_id, after[0] if after else None, after[1] if after else None, args.limit + 1)
    more = len(rows) > args.limit
    rows = rows[: args.limit]
    cursor = encode_cursor({"t": rows[-1]["placed_at"].isoformat(), "i": str(rows[-1]["id"])}) if more else None
    return FindOrdersResult(orders=[order_view(r) for r in rows], next_cursor=cursor)


# actions ---------------------------------------------------------------------------------------


class ActionView(Out):
    action_id: str
    action_type: ActionType
    status: ActionStatus
    order_number: str | None
    order_id: str | None
    customer_id: str | None
    conversation_id: str | None
    amount: str | None = Field(description="Amount and currency, when the action has one.")
    reason: str | None = Field(description="Why it was asked for (wrapped: may quote the customer).")
    details: str | None
    requested_by: str | None
    requested_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    decision_note: str | None


ACTION_SQL = """
SELECT a.*, o.order_number FROM agent_actions a LEFT JOIN orders o ON o.id = a.order_id
"""


def _status(r: asyncpg.Record) -> ActionStatus:
    return {"pending": "pending_approval", "rejected": "rejected"}.get(r["approval_status"], "applied")  # type: ignore[return-value]


def action_view(r: asyncpg.Record) -> ActionView:
    s = lambda v: str(v) if v is not None else None  # noqa: E731
    return ActionView(
        action_id=str(r["id"]), action_type=r["action_type"], status=_status(r), order_number=r["order_number"],
        order_id=s(r["order_id"]), customer_id=s(r["customer_id"]), conversation_id=s(r["conversation_id"]),
        amount=_money(r["amount"], r["currency"]) if r["amount"] is not None else None,
        reason=untrusted_field(r["reason"], source="action_reason"),
        details=untrusted_field(r["details"].get("description"), source="action_details"),
        requested_by=r["requested_by"], requested_at=r["created_at"], decided_by=r["decided_by"],
        decided_at=r["decided_at"], decision_note=r["decision_note"])


class RequestActionInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_number: OrderNumber = Field(description="The store's order number, e.g. #1001.")
    action_type: ActionType
    amount: Decimal | None = Field(default=None, ge=0, le=1_000_000, decimal_places=2,
                                   description="In the order's currency; required for refund, discount and credit.")
    reason: Text = Field(min_length=1, max_length=2000, description="Why, in a sentence (shown to the approver).")
    details: Text | None = Field(default=None, max_length=1000, description="For replacement / order_change: what changes.")
    conversation_id: ConversationId | None = Field(
        default=None, description="The conversation it came from; default: the customer's latest.")
    idempotency_key: str = Field(min_length=1, max_length=200,
                                 description="Unique per request; a retry with the same key returns the first action.")

    @model_validator(mode="after")
    def _amount(self) -> RequestActionInput:
        if self.action_type in ("refund", "discount", "credit") and self.amount is None:
            raise ValueError(f"a {self.action_type} needs an amount")
        return self


class RequestActionResult(Out):
    action: ActionView
    replayed: bool = Field(description="True when the idempotency_key was used before: the first action, nothing new.")
    next_step: str


def thresholds(crm: Crm) -> dict[str, float]:
    return {**DEFAULT_THRESHOLDS, **(getattr(crm.settings, "approval_thresholds", None) or {})}


def needs_approval(crm: Crm, action_type: str, amount: Decimal | None, role: str | None) -> bool:
    if action_type == "refund" and role == "agent":
        return True
    limit = thresholds(crm).get(action_type, 0.0)
    return limit < 0 or float(amount or 0) > limit


async def _order(conn: asyncpg.Connection, number: str) -> asyncpg.Record:
    rows = await conn.fetch("SELECT * FROM orders WHERE order_number = $1 ORDER BY placed_at DESC LIMIT 2 FOR UPDATE", number)
    if not rows:
        raise NotFound(f"No order {number}.", hint=ORDER_NUMBER_HINT)
    return rows[0]


@crm_tool(name="request_action", title="Request order action", toolset="store", read_only=False, destructive=False, idempotent=True)
async def request_action(crm: Crm, args: RequestActionInput) -> RequestActionResult:
    """Ask for a refund, discount, replacement, cancellation, order change or credit on an order
    (order_number from find_orders). Small ones are applied at once; larger ones, and every refund
    the AI agent asks for, wait as pending_approval until staff decide (decide_action): then tell
    the customer a person will confirm. idempotency_key makes retries safe."""
    caller = CALLER.get()
    number = normalize_order_number(args.order_number)
    async with crm.tx() as conn:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('action:' || $1, 0))", args.idempotency_key)
        prev = await conn.fetchrow(ACTION_SQL + "WHERE a.idempotency_key = $1", args.idempotency_key)
        if prev is not None:
            if prev["order_number"] != number or prev["action_type"] != args.action_type or prev["amount"] != args.amount:
                raise Conflict("This idempotency_key was already used for a different action.",
                               hint="Use a new idempotency_key for a new request.")
            return RequestActionResult(action=action_view(prev), replayed=True, next_step=_next_step(prev))
        order = await _order(conn, number)
        if order["status"] == "cancelled" and args.action_type in ("cancellation", "order_change", "replacement"):
            raise Conflict(f"Order {number} is cancelled.", hint="A refund or credit can still be requested.")
        if args.action_type == "refund":
            left = order["total_price"] - order["refunded_amount"] - await conn.fetchval(
                """SELECT coalesce(sum(amount), 0) FROM agent_actions WHERE order_id = $1 AND action_type = 'refund'
                   AND approval_status IN ('pending', 'approved', 'not_required')""", order["id"])
            if args.amount is not None and args.amount > left:
                raise UserError(f"A refund of {_money(args.amount, order['currency'])} is more than the "
                                f"{_money(max(left, 0), order['currency'])} left to refund on {number} "
                                "(total minus refunds done or pending).", hint="Lower the amount.")
        conv = args.conversation_id or await conn.fetchval(
            "SELECT id FROM conversations WHERE customer_id = $1 ORDER BY last_activity_at DESC NULLS LAST LIMIT 1",
            order["customer_id"])
        pending = needs_approval(crm, args.action_type, args.amount, caller.role if caller else None)
        row_id = await conn.fetchval(
            """INSERT INTO agent_actions (customer_id, conversation_id, order_id, action_type, details, amount, currency,
                   approval_status, result, idempotency_key, reason, requested_by, requested_role)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id""",
            order["customer_id"], conv, order["id"], args.action_type,
            {"description": args.details} if args.details else {}, args.amount,
            order["currency"] if args.amount is not None else None,
            "pending" if pending else "not_required", "pending" if pending else "success", args.idempotency_key,
            args.reason, caller.actor if caller else "system", caller.role if caller else None)
        if not pending:
            await _apply(conn, row_id)
        row = await conn.fetchrow(ACTION_SQL + "WHERE a.id = $1", row_id)
    return RequestActionResult(action=action_view(row), replayed=False, next_step=_next_step(row))


async def _apply(conn: asyncpg.Connection, action_id: uuid.UUID) -> None:
    """What applying means for the cached order: refunds count against it, cancellations cancel it."""
    a = await conn.fetchrow("SELECT * FROM agent_actions WHERE id = $1", action_id)
    if a["action_type"] == "refund":
        await conn.execute(
            """UPDATE orders SET refunded_amount = refunded_amount + $2,
                   status = CASE WHEN refunded_amount + $2 >= total_price THEN 'refunded' ELSE status END WHERE id = $1""",
            a["order_id"], a["amount"])
    elif a["action_type"] == "cancellation":
        await conn.execute("UPDATE orders SET status = 'cancelled' WHERE id = $1", a["order_id"])


def _next_step(r: asyncpg.Record) -> str:
    status = _status(r)
    if status == "pending_approval":
        return "Waiting for a person's approval: tell the customer a person will confirm; do not promise the outcome."
    if status == "rejected":
        return "Rejected: explain to the customer, or escalate_to_human if they disagree."
    return "Applied: confirm it to the customer."


class DecideActionInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action_id: uuid.UUID = Field(description="From list_actions or request_action.")
    decision: Literal["approve", "reject"]
    note: Text = Field(min_length=1, max_length=2000, description="Why; kept as an internal note (never sent).")
    reply: Text | None = Field(default=None, min_length=1, max_length=2000,
                               description="On approval, the message queued to the customer; default: a short confirmation.")


class DecideActionResult(Out):
    action: ActionView
    replayed: bool = Field(description="True when the same decision was already recorded: nothing new.")
    reply_message_id: str | None = Field(description="The reply queued to the customer on approval.")
    reply_problem: str | None = Field(description="Why no reply could be queued (the decision still stands).")


@crm_tool(name="decide_action", title="Decide action", toolset="store", read_only=False, destructive=False, idempotent=True)
async def decide_action(crm: Crm, args: DecideActionInput) -> DecideActionResult:
    """Approve or reject a pending_approval action (list_actions) with a note. Staff and admin only.
    The customer's conversation gets an internal note; on approval the action is applied and a
    reply is queued (reply, or a short confirmation). Deciding the same way again changes nothing."""
    caller = CALLER.get()
    who = caller.actor if caller else "system"
    wanted = "approved" if args.decision == "approve" else "rejected"
    async with crm.tx() as conn:
        row = await conn.fetchrow(ACTION_SQL + "WHERE a.id = $1 FOR UPDATE OF a", args.action_id)
        if row is None:
            raise NotFound(f"No action {args.action_id}.", hint="Use list_actions to find pending actions.")
        if row["approval_status"] != "pending":
            if row["approval_status"] == wanted:
                return DecideActionResult(action=action_view(row), replayed=True, reply_message_id=None, reply_problem=None)
            raise Conflict(f"Action {args.action_id} is already {_status(row)}"
                           + (f" (by {row['decided_by']})." if row["decided_by"] else "."),
                           hint="Only pending_approval actions can be decided; request a new action if needed.")
        await conn.execute(
            """UPDATE agent_actions SET approval_status = $2, decided_by = $3, decided_at = now(), decision_note = $4,
                   result = CASE WHEN $2 = 'approved' THEN 'success' ELSE 'pending' END WHERE id = $1""",
            args.action_id, wanted, who, args.note)
        if wanted == "approved":
            await _apply(conn, args.action_id)
        what = f"{row['action_type']}" + (f" of {_money(row['amount'], row['currency'])}" if row["amount"] is not None else "")
        on = f" on order {row['order_number']}" if row["order_number"] else ""
        if row["conversation_id"] is not None:
            note = f"Action {what}{on} {wanted} by {who}: {args.note}"
            await conn.execute(
                """INSERT INTO messages (conversation_id, customer_id, channel, direction, role, content, metadata)
                   SELECT id, customer_id, current_channel, 'outbound', 'system', $2, $3 FROM conversations WHERE id = $1""",
                row["conversation_id"], note, {"internal": True, "action_id": str(args.action_id)})
            ticket = await conn.fetchval(
                "SELECT id FROM tickets WHERE conversation_id = $1 ORDER BY created_at DESC LIMIT 1", row["conversation_id"])
            if ticket is not None:
                await add_event(conn, ticket, "note", note=note, actor=f"decide_action:{who}")
        row = await conn.fetchrow(ACTION_SQL + "WHERE a.id = $1", args.action_id)
    reply_id = problem = None
    if wanted == "approved":
        if row["conversation_id"] is None:
            problem = "The action has no conversation to reply in; contact the customer another way."
        else:
            body = args.reply or f"Good news: your {what}{on} has been approved."
            try:
                sent = await send_response(crm, SendResponseInput(
                    conversation_id=row["conversation_id"], body=body, author="human",
                    idempotency_key=f"decide_action:{args.action_id}"))
                reply_id = sent.parts[0].message_id
            except UserError as exc:  # e.g. no address on the channel: the decision stands, say why
                problem = str(exc)
    return DecideActionResult(action=action_view(row), replayed=False, reply_message_id=reply_id, reply_problem=problem)


class ListActionsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: ActionStatus | None = None
    action_type: ActionType | None = None
    customer_id: CustomerId | None = None
    limit: int = Field(default=20, ge=1, le=100)
    cursor: Cursor


class ListActionsResult(Out):
    actions: list[ActionView]
    next_cursor: str | None


_DB_STATUS = {"pending_approval": ["pending"], "applied": ["approved", "not_required"], "rejected": ["rejected"]}


@crm_tool(name="list_actions", title="List order actions", toolset="store", read_only=True, destructive=False, idempotent=True)
async def list_actions(crm: Crm, args: ListActionsInput) -> ListActionsResult:
    """Order actions (refunds, discounts, replacements...), pending_approval first (oldest first:
    the approval queue), then the rest newest first; filter by status, action_type, customer_id.
    Decide with decide_action; ask for one with request_action."""
    after = decode_cursor(args.cursor, lambda d: (int(d["p"]), aware(d["t"]), uuid.UUID(bounded(d["i"])))) if args.cursor else None
    # Sort key: pending rows by created_at ascending, others by created_at descending, in one keyset:
    # (rank, signed epoch, id).
    rows = await crm.pool.fetch(
        ACTION_SQL + """, LATERAL (SELECT CASE WHEN a.approval_status = 'pending' THEN 0 ELSE 1 END AS p,
                                         CASE WHEN a.approval_status = 'pending' THEN 1 ELSE -1 END
                                           * extract(epoch FROM a.created_at) AS k) s
        WHERE ($1::text[] IS NULL OR a.approval_status = ANY($1)) AND ($2::text IS NULL OR a.action_type = $2)
          AND ($3::uuid IS NULL OR a.customer_id = $3)
          AND ($4::int IS NULL OR (s.p, s.k, a.id) > ($4, (CASE WHEN $4 = 0 THEN 1 ELSE -1 END) * extract(epoch FROM $5::timestamptz), $6))
        ORDER BY s.p, s.k, a.id LIMIT $7""",
        _DB_STATUS[args.status] if args.status else None, args.action_type, args.customer_id,
        after[0] if after else None, after[1] if after else None, after[2] if after else None, args.limit + 1)
    more = len(rows) > args.limit
    rows = rows[: args.limit]
    cursor = None
    if more:
        last = rows[-1]
        cursor = encode_cursor({"p": 0 if last["approval_status"] == "pending" else 1,
                                "t": last["created_at"].isoformat(), "i": str(last["id"])})
    return ListActionsResult(actions=[action_view(r) for r in rows], next_cursor=cursor)


# preferences -----------------------------------------------------------------------------------

PREFERENCE_KEYS = ("sizes", "style", "preferred_channel", "language", "marketing_consent")
_FREE_TEXT = ("sizes", "style")


class GetPreferencesInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: CustomerId


class Preference(Out):
    key: Literal["sizes", "style", "preferred_channel", "language", "marketing_consent"]
    value: str = Field(description="sizes and style are customer words (wrapped as untrusted).")
    learned_from: Literal["conversation", "purchase_history", "explicit"]
    source: str | None = Field(description="Where it was given (e.g. web_form, checkout); for consent, its proof.")
    updated_at: datetime = Field(description="When it was last set; for marketing_consent, the consent's time.")


class PreferencesResult(Out):
    customer_id: str
    preferences: list[Preference]


async def _preferences(conn: asyncpg.Connection, cid: uuid.UUID) -> PreferencesResult:
    rows = await conn.fetch(
        "SELECT * FROM customer_preferences WHERE customer_id = $1 AND key = ANY($2::text[]) ORDER BY key", cid, list(PREFERENCE_KEYS))
    return PreferencesResult(customer_id=str(cid), preferences=[
        Preference(key=r["key"], value=untrusted(r["value"], source="preference") if r["key"] in _FREE_TEXT else r["value"],
                   learned_from=r["learned_from"], source=r["source"], updated_at=r["updated_at"]) for r in rows])


async def _customer(conn: asyncpg.Connection, cid: uuid.UUID) -> None:
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM customers WHERE id = $1)", cid):
        raise NotFound(f"No customer {cid}.", hint="Use find_customer to look up the customer_id.")


@crm_tool(name="get_customer_preferences", title="Get customer preferences", toolset="store", read_only=True,
          destructive=False, idempotent=True)
async def get_customer_preferences(crm: Crm, args: GetPreferencesInput) -> PreferencesResult:
    """A customer's shopping preferences: sizes, style, preferred channel, language, and marketing
    consent with when and where it was given. Set them with set_customer_preferences."""
    async with crm.pool.acquire() as conn:
        await _customer(conn, args.customer_id)
        return await _preferences(conn, args.customer_id)


class SetPreferencesInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: CustomerId
    sizes: Text | None = Field(default=None, min_length=1, max_length=200, description="e.g. 'tops M, jeans 32/32'.")
    style: Text | None = Field(default=None, min_length=1, max_length=500)
    preferred_channel: Channel | None = None
    language: str | None = Field(default=None, pattern=r"^[a-z]{2,3}(-[A-Z]{2})?$", description="e.g. en, fr, pt-BR.")
    marketing_consent: bool | None = Field(default=None, description="Given (true) or withdrawn (false); needs source.")
    learned_from: Literal["conversation", "purchase_history", "explicit"] = "explicit"
    source: Text | None = Field(default=None, min_length=1, max_length=100,
                                description="Where it was given (web_form, email, checkout, phone call).")
    clear: list[Literal["sizes", "style", "preferred_channel", "language"]] = Field(
        default_factory=list, max_length=4, description="Preferences to forget.")

    @model_validator(mode="after")
    def _something(self) -> SetPreferencesInput:
        if self.marketing_consent is not None and self.source is None:
            raise ValueError("marketing_consent needs source (where the customer gave or withdrew it)")
        if all(getattr(self, k) is None for k in PREFERENCE_KEYS) and not self.clear:
            raise ValueError(f"nothing to set: give at least one of {', '.join(PREFERENCE_KEYS)}, or clear")
        return self


@crm_tool(name="set_customer_preferences", title="Set customer preferences", toolset="store", read_only=False,
          destructive=False, idempotent=True)
async def set_customer_preferences(crm: Crm, args: SetPreferencesInput) -> PreferencesResult:
    """Record a customer's sizes, style, preferred channel, language or marketing consent (true /
    false with its source; the time is recorded). Omitted preferences are unchanged; clear forgets
    some. Returns all of them, as get_customer_preferences."""
    values = {k: getattr(args, k) for k in PREFERENCE_KEYS if getattr(args, k) is not None}
    if "marketing_consent" in values:
        values["marketing_consent"] = "granted" if values["marketing_consent"] else "withdrawn"
    async with crm.tx() as conn:
        await _customer(conn, args.customer_id)
        for key, value in values.items():
            await conn.execute(
                """INSERT INTO customer_preferences (customer_id, key, value, confidence, learned_from, source)
                   VALUES ($1, $2, $3, 1.0, $4, $5)
                   ON CONFLICT (customer_id, key) DO UPDATE SET value = EXCLUDED.value, learned_from = EXCLUDED.learned_from,
                       source = EXCLUDED.source, updated_at = now()""",
                args.customer_id, key, str(value), args.learned_from, args.source)
        if args.clear:
            await conn.execute("DELETE FROM customer_preferences WHERE customer_id = $1 AND key = ANY($2::text[])",
                               args.customer_id, list(args.clear))
        return await _preferences(conn, args.customer_id)


# upsert_order (the store bridge) ---------------------------------------------------------------


class LineItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(min_length=1, max_length=300)
    variant: str | None = Field(default=None, max_length=200)
    sku: str | None = Field(default=None, max_length=100)
    quantity: int = Field(ge=0, le=100000)
    price: Decimal | None = Field(default=None, ge=0)


class TrackingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    number: str | None = Field(default=None, max_length=200)
    url: str | None = Field(default=None, max_length=2000)
    company: str | None = Field(default=None, max_length=200)


class UpsertOrderInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    external_order_id: str = Field(min_length=1, max_length=100, description="The store's order id (gid://shopify/Order/1).")
    order_number: str = Field(min_length=1, max_length=40, description="#1001")
    updated_at: datetime = Field(description="The store's updated_at: an older one than stored is ignored.")
    placed_at: datetime
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=50)
    customer_name: str | None = Field(default=None, max_length=200)
    financial_status: str | None = Field(default=None, max_length=50)
    fulfillment_status: str | None = Field(default=None, max_length=50)
    cancelled: bool = False
    total_price: Decimal = Field(ge=0)
    refunded_amount: Decimal = Field(default=Decimal(0), ge=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    items: list[LineItem] = Field(default_factory=list, max_length=500)
    tracking: list[TrackingIn] = Field(default_factory=list, max_length=50)
    delivery_id: str | None = Field(default=None, min_length=1, max_length=200,
                                    description="The webhook's X-Shopify-Webhook-Id: a repeat is recorded once.")

    @model_validator(mode="after")
    def _zones(self) -> UpsertOrderInput:
        if self.updated_at.tzinfo is None or self.placed_at.tzinfo is None:
            raise ValueError("updated_at and placed_at need a time zone")
        return self


class UpsertOrderResult(Out):
    outcome: Literal["created", "updated", "stale", "duplicate"] = Field(
        description="stale: the stored order is as new or newer (nothing changed); duplicate: delivery_id seen before.")
    order_id: str | None
    customer_id: str | None
    customer_created: bool


def order_status(financial: str | None, fulfillment: str | None, cancelled: bool) -> str:
    f = (financial or "").lower()
    if cancelled:
        return "cancelled"
    if f == "refunded":
        return "refunded"
    if (fulfillment or "").lower() == "fulfilled":
        return "fulfilled"
    if f in ("paid", "partially_refunded", "partially_paid"):
        return "paid"
    return "pending"


def _identities(args: UpsertOrderInput, region: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for kind, raw, norm in (("email", args.email, normalize_email), ("phone", args.phone, lambda v: normalize_phone(v, region))):
        if raw:
            try:
                out.append((kind, norm(raw)))
            except (UserError, ValueError):
                pass  # a store field we cannot read as an identity attaches nothing
    return out


async def _attach(conn: asyncpg.Connection, wanted: list[tuple[str, str]], name: str | None) -> tuple[uuid.UUID | None, bool]:
    """The customer owning the first identity found (email before phone), created when none does;
    identities nobody owns yet are linked to them."""
    if not wanted:
        return None, False
    # The same lock keys as ingest_message, so a store order and a first message do not race.
    await conn.execute(
        "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) FROM unnest($1::text[]) k",
        ["\x1f".join(("id", k, v)) for k, v in sorted(wanted)])
    rows = await conn.fetch(
        """SELECT i.kind, coalesce(c.merged_into, c.id) AS cid FROM customer_identifiers i JOIN customers c ON c.id = i.customer_id
           WHERE (i.kind, i.value) IN (SELECT * FROM unnest($1::text[], $2::text[]))""",
        [k for k, _ in wanted], [v for _, v in wanted])
    owners = {r["kind"]: r["cid"] for r in rows}
    cid = next((owners[k] for k, _ in wanted if k in owners), None)
    created = cid is None
    if created:
        cid = await conn.fetchval("INSERT INTO customers (name, first_contact_at) VALUES ($1, NULL) RETURNING id",
                                  (name or "").strip()[:200] or None)
    for kind, value in wanted:
        if kind not in owners:
            await conn.execute(
                "INSERT INTO customer_identifiers (customer_id, kind, value, verified, source_channel) "
                "VALUES ($1, $2, $3, false, NULL) ON CONFLICT (kind, value) DO NOTHING", cid, kind, value)
    return cid, created


@crm_tool(name="upsert_order", title="Upsert store order", toolset="store_sync", read_only=False, destructive=False, idempotent=True)
async def upsert_order(crm: Crm, args: UpsertOrderInput) -> UpsertOrderResult:
    """For the store bridge: create or update an order from the store, attached to the customer
    with the order's email or phone (created if new). Idempotent: an update older than the stored
    one (updated_at) or a repeated delivery_id changes nothing."""
    async with crm.tx() as conn:
        if args.delivery_id is not None:
            seen = await conn.fetchval(
                "INSERT INTO processed_messages (source, external_id) VALUES ('shopify_webhook', $1) "
                "ON CONFLICT DO NOTHING RETURNING true", args.delivery_id)
            if not seen:
                return UpsertOrderResult(outcome="duplicate", order_id=None, customer_id=None, customer_created=False)
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('order:' || $1, 0))", args.external_order_id)
        current = await conn.fetchrow("SELECT id, customer_id, store_updated_at FROM orders WHERE external_order_id = $1",
                                      args.external_order_id)
        if current is not None and current["store_updated_at"] is not None and current["store_updated_at"] >= args.updated_at:
            return UpsertOrderResult(outcome="stale", order_id=str(current["id"]),
                                     customer_id=str(current["customer_id"]) if current["customer_id"] else None,
                                     customer_created=False)
        cid, created = await _attach(conn, _identities(args, crm.settings.default_region), args.customer_name)
        if cid is None and current is not None:
            cid = current["customer_id"]
        fields = (
            args.external_order_id, normalize_order_number(args.order_number), cid,
            order_status(args.financial_status, args.fulfillment_status, args.cancelled),
            args.financial_status, args.fulfillment_status, args.total_price, args.currency,
            [i.model_dump(mode="json", exclude_none=True) for i in args.items], args.placed_at, args.updated_at,
            args.email, args.phone, [t.model_dump(exclude_none=True) for t in args.tracking], args.refunded_amount)
        oid = await conn.fetchval(
            """INSERT INTO orders (external_order_id, order_number, customer_id, status, financial_status, fulfillment_status,
                   total_price, currency, items, placed_at, store_updated_at, contact_email, contact_phone, tracking,
                   refunded_amount, synced_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, now())
               ON CONFLICT (external_order_id) DO UPDATE SET order_number = EXCLUDED.order_number,
                   customer_id = EXCLUDED.customer_id, status = EXCLUDED.status, financial_status = EXCLUDED.financial_status,
                   fulfillment_status = EXCLUDED.fulfillment_status, total_price = EXCLUDED.total_price,
                   currency = EXCLUDED.currency, items = EXCLUDED.items, placed_at = EXCLUDED.placed_at,
                   store_updated_at = EXCLUDED.store_updated_at, contact_email = EXCLUDED.contact_email,
                   contact_phone = EXCLUDED.contact_phone, tracking = EXCLUDED.tracking,
                   refunded_amount = EXCLUDED.refunded_amount, updated_at = now(), synced_at = now()
               RETURNING id""", *fields)
    return UpsertOrderResult(outcome="created" if current is None else "updated", order_id=str(oid),
                             customer_id=str(cid) if cid else None, customer_created=created)
