"""The demo data set: Flowbase Inc., a fictional SaaS, with customers on several channels,
conversations, tickets in every state, orders, products and a product-docs knowledge base.

Loaded once per database (a marker row in processed_messages, taken under an advisory lock, so
two processes loading at once load it once). Times are relative to the moment of loading, and the
unfinished tickets' SLA deadlines lie ahead of it; `crm-mcp demo reset` reloads it when it has aged."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from crm_mcp.tools.plumbing.context import Crm
from crm_mcp.tools.engines.identity import normalize_identifier
from crm_mcp.tools.engines.rules import score_sentiment

log = logging.getLogger(__name__)
MARKER = ("demo", "flowbase-demo-v1")


def demo_dir() -> Any:
    return resources.files("crm_mcp.server") / "demo"


def _at(now: datetime, hours_ago: float) -> datetime:
    return now - timedelta(hours=float(hours_ago))


async def load_demo(crm: Crm) -> dict[str, Any]:
    data = json.loads((demo_dir() / "demo_data.json").read_text(encoding="utf-8"))
    now = datetime.now(timezone.utc)
    region = crm.settings.default_region
    async with crm.tx() as conn:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('demo-load', 0))")
        done = await conn.fetchval(
            "SELECT 1 FROM processed_messages WHERE source = $1 AND external_id = $2", *MARKER)
        if done:
            return {"loaded": False, "reason": "demo data already present"}
        customers: dict[str, Any] = {}
        for c in data["customers"]:
            cid = await conn.fetchval(
                "INSERT INTO customers (name, company, plan, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
                c["name"], c.get("company"), c.get("plan", "free"), _at(now, c.get("created_hours_ago", 1000)))
            customers[c["key"]] = cid
            for ident in c["identities"]:
                value = normalize_identifier(ident["kind"], ident["value"], region)
                await conn.execute(
                    "INSERT INTO customer_identifiers (customer_id, kind, value, verified) VALUES ($1, $2, $3, true)",
                    cid, ident["kind"], value)

        conv_ids: dict[str, Any] = {}
        ticket_ids: dict[str, Any] = {}
        open_conv: dict[Any, Any] = {}
        for v in sorted(data["conversations"], key=lambda v: -v["started_hours_ago"]):
            cid = customers[v["customer"]]
            msgs = sorted(v["messages"], key=lambda m: -m["hours_ago"])
            started = _at(now, v["started_hours_ago"])
            last = _at(now, msgs[-1]["hours_ago"]) if msgs else started
            switches = []
            prev = v["channel"]
            for m in msgs:
                if m["direction"] == "inbound" and m["channel"] != prev:
                    switches.append({"from": prev, "to": m["channel"], "at": _at(now, m["hours_ago"]).isoformat()})
                    prev = m["channel"]
            status = v["status"]
            if status != "closed" and cid in open_conv:
                # one open conversation per customer: the older one is over
                await conn.execute(
                    "UPDATE conversations SET status = 'closed', ended_at = last_activity_at WHERE id = $1", open_conv[cid])
            conv_id = await conn.fetchval(
                """INSERT INTO conversations (customer_id, initial_channel, current_channel, status, channel_switches,
                                              started_at, last_activity_at, ended_at, created_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $6) RETURNING id""",
                cid, v["channel"], prev, status, switches, started, last, last if status == "closed" else None)
            if status != "closed":
                open_conv[cid] = conv_id
            conv_ids[v["key"]] = conv_id
            t = v.get("ticket")
            tid = None
            if t:
                first_out = next((m for m in msgs if m["direction"] == "outbound" and m["role"] in ("agent", "human")), None)
                created = _at(now, msgs[0]["hours_ago"]) if msgs else started
                due = created + timedelta(hours=crm.settings.sla_hours(t["priority"]))
                if "sla_due_in_hours" in t:
                    # Older work still in the queue: its deadline lies ahead at load time, so the
                    # SLA sweep does not escalate the demo the moment the server starts.
                    due = now + timedelta(hours=float(t["sla_due_in_hours"]))
                row = await conn.fetchrow(
                    """INSERT INTO tickets (customer_id, conversation_id, subject, category, priority, status, source_channel,
                                           assigned_to, escalation_reason, resolution_notes, sla_due_at, first_response_at,
                                           escalated_at, resolved_at, closed_at, created_at)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) RETURNING id, ticket_number""",
                    cid, conv_id, t["subject"], t["category"], t["priority"], t["status"], v["channel"], t.get("assigned_to"),
                    t.get("escalation_reason"), t.get("resolution_notes"),
                    due,
                    _at(now, first_out["hours_ago"]) if first_out else None,
                    last if t["status"] == "escalated" else None,
                    last if t["status"] in ("resolved", "closed") else None,
                    last if t["status"] == "closed" else None, created)
                tid = row["id"]
                ticket_ids[v["key"]] = tid
                await conn.execute(
                    "INSERT INTO ticket_events (ticket_id, kind, to_value, actor, created_at) VALUES ($1, 'created', 'open', 'demo', $2)",
                    tid, created)
                if t["status"] != "open":
                    await conn.execute(
                        "INSERT INTO ticket_events (ticket_id, kind, from_value, to_value, actor, created_at) VALUES ($1, 'status', 'open', $2, 'demo', $3)",
                        tid, t["status"], last)
                await conn.execute(
                    "INSERT INTO agent_metrics (metric_type, channel, value, ticket_id, recorded_at) VALUES ('ticket_opened', $1, 1, $2, $3)",
                    v["channel"], tid, created)
                if t["status"] == "escalated":
                    await conn.execute(
                        "INSERT INTO agent_metrics (metric_type, channel, value, ticket_id, recorded_at) VALUES ('escalation', $1, 1, $2, $3)",
                        v["channel"], tid, last)
            for m in msgs:
                at = _at(now, m["hours_ago"])
                inbound = m["direction"] == "inbound"
                sentiment = score_sentiment(m["content"]) if inbound else None
                delivery = "delivered" if not inbound and m["role"] in ("agent", "human") else None
                mid = await conn.fetchval(
                    """INSERT INTO messages (conversation_id, customer_id, ticket_id, channel, direction, role, content, subject,
                                             channel_message_id, delivery_status, sentiment, created_at)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id""",
                    conv_id, cid, tid, m["channel"], m["direction"], m["role"], m["content"], m.get("subject"),
                    m.get("channel_message_id"), delivery, sentiment, at)
                if inbound:
                    await conn.execute(
                        "INSERT INTO customer_sentiment (customer_id, message_id, channel, score, recorded_at) VALUES ($1, $2, $3, $4, $5)",
                        cid, mid, m["channel"], sentiment, at)
                    await conn.execute(
                        "INSERT INTO agent_metrics (metric_type, channel, value, message_id, recorded_at) VALUES ('message_volume', $1, 1, $2, $3)",
                        m["channel"], mid, at)
            await conn.execute(
                """UPDATE conversations SET message_count = $2,
                       sentiment = (SELECT avg(sentiment) FROM messages WHERE conversation_id = $1 AND direction = 'inbound')
                   WHERE id = $1""", conv_id, len(msgs))
        await conn.execute(
            """UPDATE customers c SET
                   total_interactions = s.n, sentiment_avg = s.avg, first_contact_at = s.first, last_contact_at = s.last
               FROM (SELECT customer_id, count(*) AS n, avg(score) AS avg, min(recorded_at) AS first, max(recorded_at) AS last
                     FROM customer_sentiment GROUP BY customer_id) s
               WHERE s.customer_id = c.id""")
        for p in data["products"]:
            await conn.execute(
                """INSERT INTO products (external_id, title, description, category, price, currency)
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (external_id) DO NOTHING""",
                p["external_id"], p["title"], p["description"], p.get("category"), Decimal(p["price"]), p.get("currency", "USD"))
        for o in data["orders"]:
            items = [{"product": i["product"], "quantity": i["quantity"], "unit_price": i["unit_price"]} for i in o["items"]]
            await conn.execute(
                """INSERT INTO orders (external_order_id, order_number, customer_id, status, total_price, currency, items, placed_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (external_order_id) DO NOTHING""",
                o["external_order_id"], o.get("order_number"), customers[o["customer"]], o["status"],
                Decimal(o["total_price"]), o.get("currency", "USD"), items, _at(now, o.get("hours_ago", 100)))
        for f in data["feedback"]:
            conv_id = conv_ids[f["conversation"]]
            await conn.execute(
                """INSERT INTO feedback (customer_id, conversation_id, ticket_id, channel, rating, comment)
                   SELECT customer_id, id, $2, initial_channel, $3, $4 FROM conversations WHERE id = $1""",
                conv_id, ticket_ids.get(f["conversation"]), f["rating"], f.get("comment"))
        await conn.execute("INSERT INTO processed_messages (source, external_id) VALUES ($1, $2)", *MARKER)
    summary: dict[str, Any] = {
        "loaded": True,
        "customers": len(customers),
        "conversations": len(conv_ids),
        "tickets": len(ticket_ids),
        "products": len(data["products"]),
        "orders": len(data["orders"]),
    }
    from crm_mcp.tools import knowledge

    summary["knowledge_base"] = await knowledge.import_folder(crm, demo_dir() / "kb", source="product-docs")
    await knowledge.embed_products(crm)
    return summary


class DemoResetRefused(Exception):
    """The database holds data that is not the demo's; resetting would delete it."""


# Everything a user or the demo can write. TRUNCATE ... CASCADE also empties every table that
# references these (identities, conversations, messages, tickets and their events, orders, ...).
# Schema state stays: migrations, channel settings, the embedding space.
RESET_SQL = """
TRUNCATE customers, knowledge_base, products, processed_messages, agent_metrics, analytics_daily RESTART IDENTITY CASCADE;
UPDATE counters SET value = 0 WHERE name = 'ticket';
"""

# Rows the demo did not bring: customers with none of its identities, articles, products and
# orders it does not contain.
FOREIGN_ROWS_SQL = """
SELECT (SELECT count(*) FROM customers c WHERE NOT EXISTS (
            SELECT 1 FROM customer_identifiers i
            WHERE i.customer_id = c.id AND (i.kind, i.value) IN (SELECT * FROM unnest($1::text[], $2::text[])))) AS customers,
       (SELECT count(*) FROM knowledge_base WHERE source_path IS NULL OR NOT source_path = ANY($3::text[])) AS articles,
       (SELECT count(*) FROM products WHERE NOT external_id = ANY($4::text[])) AS products,
       (SELECT count(*) FROM orders WHERE NOT external_order_id = ANY($5::text[])) AS orders
"""


async def reset_demo(crm: Crm, *, force: bool = False) -> dict[str, Any]:
    """Delete all data and load the demo again. Refused when the database holds data that is
    not the demo's, unless force."""
    data = json.loads((demo_dir() / "demo_data.json").read_text(encoding="utf-8"))
    region = crm.settings.default_region
    idents = [(i["kind"], normalize_identifier(i["kind"], i["value"], region)) for c in data["customers"] for i in c["identities"]]
    kb_root = Path(str(demo_dir() / "kb"))
    articles = [p.relative_to(kb_root).as_posix() for p in kb_root.rglob("*.md")]
    async with crm.tx() as conn:
        # the loader's lock: a concurrent `serve --demo` waits instead of loading half-way through
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('demo-load', 0))")
        foreign = await conn.fetchrow(
            FOREIGN_ROWS_SQL, [k for k, _ in idents], [v for _, v in idents], articles,
            [p["external_id"] for p in data["products"]], [o["external_order_id"] for o in data["orders"]])
        other = {k: v for k, v in dict(foreign).items() if v}
        if other and not force:
            listed = ", ".join(f"{v} {k}" for k, v in other.items())
            raise DemoResetRefused(
                f"this database holds data that is not the demo's ({listed}); demo reset would delete it. "
                "Use a separate database for the demo (CRM_DATA_DIR or CRM_DATABASE_URL), or pass --force to delete everything.")
        await conn.execute(RESET_SQL)
    summary = await load_demo(crm)
    summary["deleted_other_data"] = other
    return summary
