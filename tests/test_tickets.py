"""Tickets over stdio: state machine, queue filters and cursors, notes, SLA auto-escalation."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from .conftest import call, call_error, mcp_client

pytestmark = pytest.mark.anyio


async def _ticket(client, cmid: str, content: str = "The Slack integration stopped posting", email: str = "t@example.com") -> dict:
    return await call(client, "ingest_message", channel="email", channel_message_id=cmid,
                      sender={"email": email}, content=content)


async def test_state_machine_legal_and_illegal_moves(client) -> None:
    r = await _ticket(client, "g1")
    n = r["ticket"]["ticket_number"]
    err = await call_error(client, "update_ticket", ticket_number=n, status="closed")
    assert "open to closed" in err and "in_progress, waiting, escalated, resolved" in err
    err = await call_error(client, "update_ticket", ticket_number=n, status="resolved")
    assert "resolution_notes" in err
    w = await call(client, "update_ticket", ticket_number=n, status="waiting", note="asked for screenshot")
    assert w["ticket"]["status"] == "waiting"
    # a customer reply moves waiting -> in_progress
    again = await call(client, "ingest_message", channel="email", channel_message_id="g2", sender={"email": "t@example.com"},
                       content="here is the screenshot")
    assert again["ticket"]["status"] == "in_progress" and again["ticket"]["ticket_number"] == n
    res = await call(client, "update_ticket", ticket_number=n, status="resolved", resolution_notes="Reconnected Slack app")
    assert res["ticket"]["status"] == "resolved" and res["ticket"]["legal_next_statuses"] == ["closed", "open"]
    closed = await call(client, "update_ticket", ticket_number=n, status="closed")
    assert closed["ticket"]["status"] == "closed"
    err = await call_error(client, "update_ticket", ticket_number=n, status="open")
    assert "closed is final" in err
    # a later message opens a new ticket
    later = await call(client, "ingest_message", channel="email", channel_message_id="g3", sender={"email": "t@example.com"},
                       content="one more question about exports")
    assert later["ticket"]["is_new"] and later["ticket"]["ticket_number"] != n
    detail = await call(client, "get_ticket", ticket_number=n, response_format="detailed")
    kinds = [e["kind"] for e in detail["history"]]
    assert kinds[0] == "created" and "note" in kinds
    assert [e["to_value"] for e in detail["history"] if e["kind"] == "status"] == ["waiting", "in_progress", "resolved", "closed"]


async def test_unknown_and_malformed_ticket_numbers(client) -> None:
    assert "No ticket TKT-0999" in await call_error(client, "get_ticket", ticket_number="TKT-999")
    assert "TKT-0042" in await call_error(client, "get_ticket", ticket_number="42; DROP tickets")
    assert "nothing to update" in await call_error(client, "update_ticket", ticket_number="TKT-0001")


async def test_list_tickets_filters_and_cursor(client) -> None:
    for i in range(7):
        await _ticket(client, f"q{i}", content=f"Question {i} about exports", email=f"q{i}@example.com")
    await _ticket(client, "crit", content="Production down: all users get a 500 error, data loss!", email="ops@example.com")
    first = await call(client, "list_tickets", limit=3)
    assert first["tickets"][0]["priority"] == "critical"
    seen = [t["ticket_number"] for t in first["tickets"]]
    cursor = first["next_cursor"]
    while cursor:
        page = await call(client, "list_tickets", limit=3, cursor=cursor)
        seen += [t["ticket_number"] for t in page["tickets"]]
        cursor = page["next_cursor"]
    assert len(seen) == 8 and len(set(seen)) == 8
    crit = await call(client, "list_tickets", priority=["critical"])
    assert [t["priority"] for t in crit["tickets"]] == ["critical"]
    assert (await call(client, "list_tickets", channel="whatsapp"))["tickets"] == []
    assert "cursor" in await call_error(client, "list_tickets", cursor="not-a-cursor")
    assert "cursor" in await call_error(client, "list_tickets", cursor="eyJhIjoxfQ")  # valid base64 JSON, wrong shape


async def test_twenty_concurrent_updates_leave_a_legal_state_and_intact_history(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        r = await _ticket(client, "c1")
        n = r["ticket"]["ticket_number"]
        statuses = ["in_progress", "waiting", "resolved", "open", "closed"] * 4
        outcomes: list[bool] = []

        async def one(s: str) -> None:
            res = await client.call_tool("update_ticket", {"ticket_number": n, "status": s, "resolution_notes": "done"})
            outcomes.append(not res.is_error)

        async with anyio.create_task_group() as tg:
            for s in statuses:
                tg.start_soon(one, s)
        assert len(outcomes) == 20 and any(outcomes)
    conn = await asyncpg.connect(db_dsn)
    try:
        final = await conn.fetchval("SELECT status FROM tickets WHERE ticket_number = $1", n)
        events = await conn.fetch(
            "SELECT from_value, to_value FROM ticket_events e JOIN tickets t ON t.id = e.ticket_id "
            "WHERE t.ticket_number = $1 AND kind = 'status' ORDER BY e.id", n)
        # the history is a chain of legal moves ending in the stored status
        from crm_mcp.tools.tickets import TRANSITIONS
        prev = "open"
        for e in events:
            assert e["from_value"] == prev and e["to_value"] in TRANSITIONS[prev]
            prev = e["to_value"]
        assert prev == final
    finally:
        await conn.close()


async def test_sla_breach_auto_escalates_once(db_dsn: str) -> None:
    async with mcp_client(db_dsn, CRM_SLA_HOURS_MEDIUM="0.0003", CRM_SLA_HOURS_LOW="0.0003", CRM_SLA_CHECK_INTERVAL_S="0.2") as client:
        r = await _ticket(client, "sla1", content="How do I add a teammate?")
        n = r["ticket"]["ticket_number"]
        for _ in range(50):
            t = await call(client, "get_ticket", ticket_number=n)
            if t["ticket"]["status"] == "escalated":
                break
            await anyio.sleep(0.2)
        assert t["ticket"]["status"] == "escalated" and t["ticket"]["sla_breached"]
        await anyio.sleep(0.6)  # more sweeps run: still one breach, one escalation metric
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ticket_events WHERE kind = 'sla_breach'") == 1
        assert await conn.fetchval("SELECT count(*) FROM agent_metrics WHERE metric_type = 'escalation'") == 1
    finally:
        await conn.close()
