"""ingest_message, send_response, update_delivery_status and get_conversation over stdio."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import anyio
import asyncpg
import pytest

from .conftest import call, call_error, mcp_client

pytestmark = pytest.mark.anyio


def msg(cmid: str, content: str = "Hi, how do I export my form responses to CSV?", channel: str = "email", **sender: str) -> dict:
    if not sender:
        sender = {"email": "ana@example.com", "name": "Ana Silva"}
    return {"channel": channel, "channel_message_id": cmid, "sender": sender, "content": content}


async def test_first_message_creates_customer_conversation_and_ticket(client) -> None:
    r = await call(client, "ingest_message", **msg("gmail-1"), subject="Export question")
    assert r["duplicate"] is False
    assert r["customer"]["is_new"] and r["conversation"]["is_new"] and r["ticket"]["is_new"]
    assert r["ticket"]["ticket_number"] == "TKT-0001" and r["ticket"]["status"] == "open"
    assert r["ticket"]["category"] == "how_to"
    assert r["escalation_suggested"] is False
    # second message in the same conversation reuses the ticket
    r2 = await call(client, "ingest_message", **msg("gmail-2", "Also, can I schedule it weekly?"))
    assert r2["customer"]["customer_id"] == r["customer"]["customer_id"]
    assert r2["conversation"]["conversation_id"] == r["conversation"]["conversation_id"]
    assert r2["ticket"]["ticket_number"] == "TKT-0001" and not r2["ticket"]["is_new"]
    found = await call(client, "find_customer", query="ana@example.com")
    assert found["matches"][0]["open_tickets"] == 1
    assert found["matches"][0]["total_interactions"] == 2


async def test_same_webhook_20_times_concurrently_is_one_message_one_ticket(db_dsn: str) -> None:
    results: list[dict] = []
    async with mcp_client(db_dsn) as client:
        async def deliver() -> None:
            results.append(await call(client, "ingest_message", **msg("SM-dup-1", channel="whatsapp",
                                                                        whatsapp="whatsapp:+12025550111", name="Wes")))
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(deliver)
    assert len(results) == 20
    assert sum(not r["duplicate"] for r in results) == 1
    assert len({r["message_id"] for r in results}) == 1
    assert len({r["ticket"]["ticket_number"] for r in results}) == 1
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 1
        assert await conn.fetchval("SELECT count(*) FROM tickets") == 1
        assert await conn.fetchval("SELECT count(*) FROM customers") == 1
        assert await conn.fetchval("SELECT count(*) FROM agent_metrics WHERE metric_type = 'message_volume'") == 1
        assert await conn.fetchval("SELECT total_interactions FROM customers") == 1
    finally:
        await conn.close()


async def test_email_then_whatsapp_linked_by_web_form_is_one_conversation_with_switch(client) -> None:
    a = await call(client, "ingest_message", **msg("form-1", "My invoice shows the wrong VAT number", channel="web_form",
                                                    email="lee@example.org", phone="+1 202 555 0177", name="Lee"))
    b = await call(client, "ingest_message", **msg("gmail-9", "Following up on the invoice", email="LEE@example.org"))
    c = await call(client, "ingest_message", **msg("SM-9", "any news on my invoice?", channel="whatsapp", whatsapp="+12025550177"))
    ids = {x["customer"]["customer_id"] for x in (a, b, c)}
    assert len(ids) == 1
    assert {x["conversation"]["conversation_id"] for x in (a, b, c)} == {a["conversation"]["conversation_id"]}
    assert b["conversation"]["channel_switched"] and b["conversation"]["previous_channel"] == "web_form"
    assert c["conversation"]["channel_switched"] and c["conversation"]["previous_channel"] == "email"
    assert c["ticket"]["ticket_number"] == a["ticket"]["ticket_number"]
    conv = await call(client, "get_conversation", conversation_id=a["conversation"]["conversation_id"])
    assert [s["to"] for s in conv["channel_switches"]] == ["email", "whatsapp"]
    assert [m["channel"] for m in conv["messages"]] == ["web_form", "email", "whatsapp"]
    assert conv["messages"][0]["content"].startswith("<untrusted-customer-content")


async def test_send_response_formats_splits_and_marks_first_response(client) -> None:
    r = await call(client, "ingest_message", **msg("SM-long", "How do webhooks retry?", channel="whatsapp",
                                                    whatsapp="+12025550188", name="Kim"))
    long_body = " ".join(f"Sentence number {i} explains one more detail about webhook retries." for i in range(60))
    sent = await call(client, "send_response", ticket_number=r["ticket"]["ticket_number"], body=long_body)
    assert sent["channel"] == "whatsapp" and sent["recipient"] == "+12025550188"
    assert len(sent["parts"]) >= 2
    assert all(len(p["text"]) <= 1600 for p in sent["parts"])
    words = " ".join(p["text"] for p in sent["parts"]).split()
    assert all(w in long_body.split() or w.startswith("(") for w in words)
    t = await call(client, "get_ticket", ticket_number=r["ticket"]["ticket_number"])
    assert t["ticket"]["first_response_at"] is not None
    assert t["ticket"]["status"] == "in_progress"
    # email: template with the customer's name
    e = await call(client, "ingest_message", **msg("gmail-x", "Where is my receipt?", email="kim@example.com", name="Kim Lee"))
    reply = await call(client, "send_response", ticket_number=e["ticket"]["ticket_number"], body="Your receipt is attached.", channel="email")
    assert reply["formatted_text"].startswith("Hi Kim")
    assert "Your receipt is attached." in reply["formatted_text"]
    # over the email limit: refused, nothing queued
    err = await call_error(client, "send_response", ticket_number=e["ticket"]["ticket_number"], body="word " * 1000, channel="email")
    assert "limit" in err and "Shorten" in err


async def test_send_response_idempotency_key(client) -> None:
    r = await call(client, "ingest_message", **msg("gmail-idem"))
    a = await call(client, "send_response", ticket_number=r["ticket"]["ticket_number"], body="Here you go.", idempotency_key="k1")
    b = await call(client, "send_response", ticket_number=r["ticket"]["ticket_number"], body="Here you go.", idempotency_key="k1")
    assert b["replayed"] is True and [p["message_id"] for p in a["parts"]] == [p["message_id"] for p in b["parts"]]


async def test_delivery_status_is_monotonic(client) -> None:
    r = await call(client, "ingest_message", **msg("gmail-d"))
    sent = await call(client, "send_response", ticket_number=r["ticket"]["ticket_number"], body="Done.")
    mid = sent["parts"][0]["message_id"]
    s1 = await call(client, "update_delivery_status", message_id=mid, status="sent", channel_message_id="gm-out-1")
    assert s1["changed"] and s1["delivery_status"] == "sent"
    s2 = await call(client, "update_delivery_status", channel="email", channel_message_id="gm-out-1", status="read")
    assert s2["changed"] and s2["delivery_status"] == "read"
    late = await call(client, "update_delivery_status", message_id=mid, status="delivered")
    assert late["changed"] is False and late["delivery_status"] == "read"
    fail = await call(client, "update_delivery_status", message_id=mid, status="failed", error="bounce")
    assert fail["changed"] is False  # read is final
    err = await call_error(client, "update_delivery_status", message_id=r["message_id"], status="sent")
    assert "inbound" in err


async def test_escalation_rules_and_tool(client) -> None:
    calm = await call(client, "ingest_message", **msg("g-hello", "Hello! What an ideal product. I pay by credit card.",
                                                       email="calm@example.com"))
    assert calm["escalation_suggested"] is False, calm["escalation_reasons"]
    angry = await call(client, "ingest_message", **msg("g-angry", "This is unacceptable. I want to speak to a human "
                                                        "or my lawyer will hear about it.", email="angry@example.com"))
    codes = {x["code"] for x in angry["escalation_reasons"]}
    assert angry["escalation_suggested"] and {"human_requested", "legal_threat"} <= codes
    assert all("lawyer" not in x["detail"] for x in angry["escalation_reasons"])  # never echoes customer text
    number = angry["ticket"]["ticket_number"]
    e1 = await call(client, "escalate_to_human", ticket_number=number, reason="Legal threat", priority="high")
    assert e1["already_escalated"] is False and e1["ticket"]["status"] == "escalated" and e1["ticket"]["priority"] == "high"
    e2 = await call(client, "escalate_to_human", ticket_number=number, reason="again")
    assert e2["already_escalated"] is True
    conv = await call(client, "get_conversation", conversation_id=angry["conversation"]["conversation_id"])
    assert conv["status"] == "escalated"
    assert any(m["role"] == "system" for m in conv["messages"])


async def test_bad_ingest_input_is_clean_and_changes_nothing(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        err = await call_error(client, "ingest_message", channel="telegram", channel_message_id="x", sender={"email": "a@example.com"}, content="hi")
        assert "channel" in err and "'whatsapp'" in err
        err = await call_error(client, "ingest_message", channel="email", channel_message_id="x", sender={"phone": "+12025550100"}, content="hi")
        assert "sender.email" in err
        err = await call_error(client, "ingest_message", channel="email", channel_message_id="x", sender={"email": "bad@"}, content="hi")
        assert "email" in err.lower()
        err = await call_error(client, "ingest_message", **msg("x", "x" * 60_000))
        assert "content" in err
        err = await call_error(client, "ingest_message", **msg("x", "\x00\x01\x02"))
        assert "content" in err  # nothing but control characters: empty once they are stripped
        nested: dict = {}
        cur = nested
        for _ in range(20):
            cur["a"] = {}
            cur = cur["a"]
        err = await call_error(client, "ingest_message", **msg("x"), metadata=nested)
        assert "nested" in err
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM customers") == 0
        assert await conn.fetchval("SELECT value FROM counters WHERE name = 'ticket'") == 0
    finally:
        await conn.close()


async def test_a_threaded_reply_continues_its_conversation_past_the_window(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        old = datetime.now(timezone.utc) - timedelta(days=3)
        first = await call(client, "ingest_message", channel="email", channel_message_id="<a1@x.example>",
                           sender={"email": "cy@example.com"}, subject="Sync", content="Sync fails.", received_at=old.isoformat())
        await conn_set_old(db_dsn, old)  # resolved, and three days quiet
        threaded = await call(client, "ingest_message", channel="email", channel_message_id="<a2@x.example>",
                              sender={"email": "cy@example.com"}, subject="Re: Sync", content="It fails again.",
                              in_reply_to=["<zz@elsewhere.example>", "<a1@x.example>"])
        assert threaded["conversation"]["conversation_id"] == first["conversation"]["conversation_id"]
        assert threaded["ticket"]["reopened"]
        await conn_set_old(db_dsn, old)
        fresh = await call(client, "ingest_message", channel="email", channel_message_id="<a3@x.example>",
                           sender={"email": "cy@example.com"}, subject="New topic", content="Another question.")
        assert fresh["conversation"]["is_new"]
        err = await call_error(client, "ingest_message", channel="email", channel_message_id="<a4@x.example>",
                               sender={"email": "cy@example.com"}, content="x", in_reply_to=["<r@x>"] * 21)
        assert "in_reply_to" in err


async def conn_set_old(dsn: str, when: datetime) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE conversations SET last_activity_at = $1", when)
        await conn.execute("UPDATE tickets SET status = 'resolved', resolved_at = $1, resolution_notes = 'done'", when)
    finally:
        await conn.close()
