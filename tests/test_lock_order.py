"""Conversation and ticket rows are locked in one order on every path (conversation first, as the
intake does), so customer messages arriving while staff reply, escalate, report failed deliveries
and the SLA sweep runs never deadlock.

The server runs a deadlock victim again (tools/plumbing/registry.py), so a deadlock would not show
as a failed call: PostgreSQL's own count (pg_stat_database.deadlocks) is what is checked."""

from __future__ import annotations

import time
from typing import Any

import anyio
import asyncpg
import pytest

from crm_mcp.server.app import open_crm
from crm_mcp.server.config import load_settings
from crm_mcp.tools.tickets import sla_sweep

from .conftest import call, mcp_client

pytestmark = pytest.mark.anyio

CONVERSATIONS = 4
ROUNDS = 30


async def _deadlocks(conn: asyncpg.Connection) -> int:
    # Outside a transaction every read sees the shared counters as flushed so far.
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return await conn.fetchval("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")


async def _settled_deadlocks(conn: asyncpg.Connection) -> int:
    """The count once every other session on this database has ended: a backend flushes its
    pending statistics when it exits, so nothing is left unflushed after that."""
    deadline = time.monotonic() + 15
    while await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"):
        assert time.monotonic() < deadline, "the servers' database sessions did not end within 15 s"
        await anyio.sleep(0.05)
    return await _deadlocks(conn)


async def test_intake_replies_escalations_and_sla_sweep_at_once_never_deadlock(db_dsn: str) -> None:
    admin = await asyncpg.connect(db_dsn)
    try:
        dbname = await admin.fetchval("SELECT current_database()")
        # A deadlock is then broken (and counted) after 50 ms instead of 1 s: the same cycles, sooner.
        await admin.execute(f"ALTER DATABASE {dbname} SET deadlock_timeout = '50ms'")
        before = await _deadlocks(admin)
        calls: dict[str, int] = {"ingest": 0, "reply": 0, "escalated": 0, "failed_report": 0}
        breached = 0
        async with mcp_client(db_dsn) as inbound, mcp_client(db_dsn) as staff, \
                open_crm(load_settings(database_url=db_dsn), background=False) as crm:
            tickets: list[str] = []
            convs: list[str] = []
            for i in range(CONVERSATIONS):
                first = await call(inbound, "ingest_message", channel="email", channel_message_id=f"c{i}-0",
                                   sender={"email": f"c{i}@example.com", "name": f"Customer {i}"},
                                   content="The CSV export fails for our team.")
                tickets.append(first["ticket"]["ticket_number"])
                convs.append(first["conversation"]["conversation_id"])
            last_reply: list[str | None] = [None] * CONVERSATIONS

            async def ingest(r: int, i: int) -> None:
                out = await call(inbound, "ingest_message", channel="email", channel_message_id=f"c{i}-{r}",
                                 sender={"email": f"c{i}@example.com"}, content=f"Any news on the export? ({r})")
                assert out["ticket"]["ticket_number"] == tickets[i] and out["conversation"]["conversation_id"] == convs[i]
                calls["ingest"] += 1

            async def reply(r: int, i: int) -> None:
                out = await call(staff, "send_response", ticket_number=tickets[i], body=f"We are on it ({r}).")
                assert out["ticket_number"] == tickets[i] and len(out["parts"]) == 1
                last_reply[i] = out["parts"][0]["message_id"]
                calls["reply"] += 1

            async def reply_on_conversation(r: int, i: int) -> None:
                # conversation, then ticket, with a round trip between: what an inverted sweep would meet
                out = await call(staff, "send_response", conversation_id=convs[i], body=f"One more thing ({r}).")
                assert out["ticket_number"] == tickets[i] and len(out["parts"]) == 1
                calls["reply"] += 1

            async def escalate_or_take_back(r: int, i: int) -> None:
                if r % 2:
                    await call(staff, "update_ticket", ticket_number=tickets[i], status="in_progress")
                else:
                    out = await call(staff, "escalate_to_human", ticket_number=tickets[i], reason="Customer keeps asking")
                    calls["escalated"] += not out["already_escalated"]

            async def report_failed(message_id: str) -> None:
                out = await call(staff, "update_delivery_status", message_id=message_id, status="failed",
                                 error="mailbox full", escalate=True)
                assert out["changed"]
                calls["failed_report"] += 1

            async def sweep(r: int) -> None:
                nonlocal breached
                await anyio.sleep(0.002 * (r % 8))  # at a different point of each round
                try:
                    breached += len(await sla_sweep(crm))
                except asyncpg.DeadlockDetectedError:
                    pass  # as the background loop does (it sweeps again next round); counted below

            with anyio.fail_after(60):
                for r in range(1, ROUNDS + 1):
                    # Half the tickets are past their deadline again, for the sweep to escalate.
                    await admin.execute(
                        "UPDATE tickets SET sla_due_at = now() - interval '1 minute', sla_breached_at = NULL "
                        "WHERE ticket_number = ANY($1::text[])", tickets[r % 2::2])
                    async with anyio.create_task_group() as tg:
                        for i in range(CONVERSATIONS):
                            tg.start_soon(ingest, r, i)
                            tg.start_soon(reply, r, i)
                            tg.start_soon(reply_on_conversation, r, i)
                            tg.start_soon(escalate_or_take_back, r, i)
                            if last_reply[i] is not None:
                                tg.start_soon(report_failed, last_reply[i])
                        tg.start_soon(sweep, r)

        after = await _settled_deadlocks(admin)
        n = CONVERSATIONS * ROUNDS
        assert (calls["ingest"], calls["reply"], calls["failed_report"]) == (n, 2 * n, n - CONVERSATIONS)
        counts: dict[str, Any] = dict(await admin.fetchrow(
            """SELECT count(*) FILTER (WHERE direction = 'inbound') AS inbound,
                      count(*) FILTER (WHERE role = 'agent') AS replies,
                      count(*) FILTER (WHERE role = 'agent' AND delivery_status = 'pending') AS outbox,
                      count(*) FILTER (WHERE role = 'agent' AND delivery_status = 'failed') AS failed,
                      count(*) FILTER (WHERE role = 'system') AS escalation_notes
               FROM messages"""))
        events: dict[str, int] = {r["kind"]: r["n"] for r in await admin.fetch(
            "SELECT kind, count(*) AS n FROM ticket_events GROUP BY kind")}
        message_counts = await admin.fetch("SELECT message_count FROM conversations ORDER BY id")
    finally:
        await admin.close()
    assert after - before == 0, f"PostgreSQL counted {after - before} deadlock(s)"
    # Nothing written twice (a victim's transaction is rolled back before it runs again).
    assert counts == {"inbound": CONVERSATIONS * (ROUNDS + 1), "replies": 2 * n, "outbox": n + CONVERSATIONS,
                      "failed": n - CONVERSATIONS, "escalation_notes": events["escalation"]}
    print(f"escalations: {events['escalation']} ({calls['escalated']} by escalate_to_human), SLA breaches: {breached}")
    assert events["escalation"] >= calls["escalated"] and events["escalation"] > 0
    assert events["sla_breach"] == breached > 0
    assert events.get("created") == CONVERSATIONS
    # every inbound message and every reply part counted once on its conversation
    assert sum(r["message_count"] for r in message_counts) == counts["inbound"] + 2 * n


PAIRS, WAVE = 30, 10
CHANNEL = {"p": "email", "d": "whatsapp"}


def _sender(side: str, i: int) -> dict[str, str]:
    return {"email": f"p{i}@example.com"} if side == "p" else {"phone": f"+1415555{i:04d}"}


async def test_merging_customers_while_their_messages_and_reports_arrive_never_deadlocks(db_dsn: str) -> None:
    """merge_customers locks both customers' conversations before the customers' rows (and those
    FOR NO KEY UPDATE, which the inserts' foreign-key checks do not wait for); a failed-delivery
    report that escalates locks the conversation before the message. Merges, customer messages on
    both records, replies and escalating failure reports run at once: no deadlock, nothing lost,
    and no message or conversation left on a merged record (the merge holds the identities' locks
    that the intake takes, so a message arriving meanwhile resolves to the primary)."""
    admin = await asyncpg.connect(db_dsn)
    try:
        dbname = await admin.fetchval("SELECT current_database()")
        await admin.execute(f"ALTER DATABASE {dbname} SET deadlock_timeout = '50ms'")
        before = await _deadlocks(admin)
        async with mcp_client(db_dsn) as inbound, mcp_client(db_dsn) as staff:
            pairs: list[dict[str, Any]] = []
            for i in range(PAIRS):
                rec: dict[str, Any] = {}
                for side in ("p", "d"):  # one record by email, the duplicate by WhatsApp: no verified clash
                    out = await call(inbound, "ingest_message", channel=CHANNEL[side], channel_message_id=f"{side}{i}-0",
                                     sender=_sender(side, i) | {"name": f"Pat Doe {i}"}, content="Where is my refund?")
                    rec[side] = out["customer"]["customer_id"]
                    rec[f"{side}_ticket"] = out["ticket"]["ticket_number"]
                    sent = await call(staff, "send_response", ticket_number=rec[f"{side}_ticket"], body="Looking into it.")
                    rec[f"{side}_reply"] = sent["parts"][0]["message_id"]
                pairs.append(rec)

            async def merge(rec: dict[str, Any]) -> None:
                out = await call(staff, "merge_customers", primary_id=rec["p"], duplicate_id=rec["d"], reason="same person")
                assert not out["already_merged"]

            async def ingest(i: int, side: str) -> None:
                await call(inbound, "ingest_message", channel=CHANNEL[side], channel_message_id=f"{side}{i}-1",
                           sender=_sender(side, i), content="Any news?")

            async def fail(message_id: str) -> None:
                out = await call(staff, "update_delivery_status", message_id=message_id, status="failed",
                                 error="mailbox full", escalate=True)
                assert out["changed"]

            async def reply(ticket: str) -> None:
                await call(staff, "send_response", ticket_number=ticket, body="Still on it.")

            with anyio.fail_after(60):
                for w in range(0, PAIRS, WAVE):
                    async with anyio.create_task_group() as tg:
                        for i in range(w, w + WAVE):
                            rec = pairs[i]
                            tg.start_soon(merge, rec)
                            tg.start_soon(ingest, i, "d")
                            tg.start_soon(ingest, i, "p")
                            tg.start_soon(fail, rec["d_reply"])
                            tg.start_soon(fail, rec["p_reply"])
                            tg.start_soon(reply, rec["p_ticket"])
        after = await _settled_deadlocks(admin)
        counts = dict(await admin.fetchrow(
            """SELECT (SELECT count(*) FROM customer_merges) AS merges,
                      (SELECT count(*) FROM customers WHERE merged_into IS NOT NULL) AS merged,
                      (SELECT count(*) FROM messages WHERE direction = 'inbound') AS inbound,
                      (SELECT count(*) FROM messages WHERE role = 'agent' AND delivery_status = 'failed') AS failed,
                      (SELECT count(*) FROM messages WHERE role = 'agent') AS replies,
                      (SELECT count(*) FROM messages m JOIN customers c ON c.id = m.customer_id
                        WHERE c.merged_into IS NOT NULL) AS messages_on_merged,
                      (SELECT count(*) FROM conversations v JOIN customers c ON c.id = v.customer_id
                        WHERE c.merged_into IS NOT NULL) AS conversations_on_merged"""))
    finally:
        await admin.close()
    assert after - before == 0, f"PostgreSQL counted {after - before} deadlock(s)"
    assert counts == {"merges": PAIRS, "merged": PAIRS, "inbound": 4 * PAIRS, "failed": 2 * PAIRS,
                      "replies": 3 * PAIRS, "messages_on_merged": 0, "conversations_on_merged": 0}, counts
