"""The outbox as bridges drive it (claim_outbox, update_delivery_status) and the customer-facing
read for status pages (get_ticket_updates), over stdio with the SDK client against a real database."""

from __future__ import annotations

import time

import anyio
import asyncpg
import pytest

from .conftest import call, call_error, mcp_client

pytestmark = pytest.mark.anyio


async def _ticket_with_reply(client, n: int = 1, email: str = "ana@example.com") -> dict:
    ing = await call(client, "ingest_message", channel="web_form", channel_message_id=f"form-{email}",
                     sender={"email": email, "name": "Ana"}, subject="Export broken", content="The CSV export fails <b>always</b>.")
    replies = [await call(client, "send_response", ticket_number=ing["ticket"]["ticket_number"], body=f"Reply {i}")
               for i in range(n)]
    return {"ingest": ing, "replies": replies}


async def test_claim_gives_each_part_with_what_to_deliver_and_the_report_releases_it(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        t = await _ticket_with_reply(client)
        got = await call(client, "claim_outbox", channel="web_form", lease_s=30)
        assert len(got["parts"]) == 1
        p = got["parts"][0]
        assert p["message_id"] == t["replies"][0]["parts"][0]["message_id"]
        assert p["recipient"] == "ana@example.com" and "Reply 0" in p["text"]
        assert p["ticket_number"] == t["ingest"]["ticket"]["ticket_number"]
        assert p["conversation_id"] == t["ingest"]["conversation"]["conversation_id"]
        assert p["attempt"] == 1 and got["lease_until"]
        # claimed: nobody else gets it while the lease holds
        assert (await call(client, "claim_outbox", channel="web_form"))["parts"] == []
        assert (await call(client, "claim_outbox", channel="email"))["parts"] == []
        await call(client, "update_delivery_status", message_id=p["message_id"], status="delivered", channel_message_id="wf-1")
    conn = await asyncpg.connect(db_dsn)
    try:
        row = await conn.fetchrow("SELECT delivery_status, lease_until, channel_message_id FROM messages WHERE id = $1::uuid",
                                  p["message_id"])
    finally:
        await conn.close()
    assert dict(row) == {"delivery_status": "delivered", "lease_until": None, "channel_message_id": "wf-1"}


async def test_a_lapsed_lease_returns_the_part_with_the_attempt_counted(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        t = await _ticket_with_reply(client)
        first = await call(client, "claim_outbox", channel="web_form", lease_s=5)
        assert len(first["parts"]) == 1
        assert (await call(client, "claim_outbox", channel="web_form"))["parts"] == []
        # the "crashed" bridge never reports; a waiting claimer gets it when the lease lapses
        started = time.monotonic()
        again = await call(client, "claim_outbox", channel="web_form", wait_s=10)
        waited = time.monotonic() - started
        assert [p["message_id"] for p in again["parts"]] == [t["replies"][0]["parts"][0]["message_id"]]
        assert again["parts"][0]["attempt"] == 2
        assert waited < 7, f"a lapsed lease was noticed after {waited:.1f} s (lease 5 s)"


async def test_two_concurrent_claimers_never_get_the_same_part(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as a, mcp_client(db_dsn) as b:
        await _ticket_with_reply(a, n=12)
        seen: dict[str, list[str]] = {"a": [], "b": []}

        async def drain(name: str, client) -> None:
            while True:
                got = await call(client, "claim_outbox", channel="web_form", limit=2, lease_s=60)
                if not got["parts"]:
                    return
                seen[name] += [p["message_id"] for p in got["parts"]]

        async with anyio.create_task_group() as tg:
            for _ in range(3):  # several claims in flight on each server process too
                tg.start_soon(drain, "a", a)
                tg.start_soon(drain, "b", b)
    everything = seen["a"] + seen["b"]
    assert len(everything) == 12 and len(set(everything)) == 12, seen
    assert seen["a"] and seen["b"], "one claimer got everything: the test did not exercise concurrency"


async def test_a_waiting_claim_wakes_within_a_second_of_a_new_reply(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as bridge, mcp_client(db_dsn) as agent:
        ing = await call(agent, "ingest_message", channel="web_form", channel_message_id="f-1",
                         sender={"email": "bo@example.com"}, content="Where is my invoice?")
        result: dict = {}

        async def wait_for_work() -> None:
            t0 = time.monotonic()
            result["got"] = await call(bridge, "claim_outbox", channel="web_form", wait_s=20)
            result["returned_at"] = time.monotonic()
            result["waited"] = time.monotonic() - t0

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_work)
            await anyio.sleep(2)  # the bridge is idle, parked in LISTEN
            queued_at = time.monotonic()
            await call(agent, "send_response", ticket_number=ing["ticket"]["ticket_number"], body="Attached.")
    assert len(result["got"]["parts"]) == 1
    assert result["waited"] >= 1.5, "the claim returned before the reply existed"
    latency = result["returned_at"] - queued_at
    assert latency < 1.0, f"the idle bridge got the reply {latency:.2f} s after it was queued"


async def test_wait_returns_empty_at_the_deadline(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        t0 = time.monotonic()
        got = await call(client, "claim_outbox", channel="whatsapp", wait_s=1.5)
        assert got["parts"] == [] and 1.3 < time.monotonic() - t0 < 5
        err = await call_error(client, "claim_outbox", channel="web_form", wait_s=60)
        assert "wait_s" in err


async def test_failed_delivery_adds_a_note_once_and_a_retried_report_changes_nothing(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        t = await _ticket_with_reply(client)
        number = t["ingest"]["ticket"]["ticket_number"]
        part = (await call(client, "claim_outbox", channel="web_form"))["parts"][0]
        first = await call(client, "update_delivery_status", message_id=part["message_id"], status="failed",
                           error="550 mailbox unavailable")
        again = await call(client, "update_delivery_status", message_id=part["message_id"], status="failed",
                           error="550 mailbox unavailable")
        assert first["changed"] is True and again["changed"] is False
        ticket = await call(client, "get_ticket", ticket_number=number)
    conn = await asyncpg.connect(db_dsn)
    try:
        notes = await conn.fetch(
            "SELECT note, actor FROM ticket_events e JOIN tickets t ON t.id = e.ticket_id "
            "WHERE t.ticket_number = $1 AND e.kind = 'note'", number)
        status = await conn.fetchrow("SELECT delivery_status, delivery_error, lease_until FROM messages WHERE id = $1::uuid",
                                     part["message_id"])
    finally:
        await conn.close()
    assert len(notes) == 1, notes
    assert "550 mailbox unavailable" in notes[0]["note"] and notes[0]["actor"] == "update_delivery_status"
    assert dict(status) == {"delivery_status": "failed", "delivery_error": "550 mailbox unavailable", "lease_until": None}
    assert "550 mailbox unavailable" in str(ticket), "the staff view of the ticket shows the note"
    # a failed part is never claimed again
    async with mcp_client(db_dsn) as client:
        assert (await call(client, "claim_outbox", channel="web_form"))["parts"] == []


async def test_a_retried_delivered_report_is_idempotent(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        await _ticket_with_reply(client)
        part = (await call(client, "claim_outbox", channel="web_form"))["parts"][0]
        for expected in (True, False, False):
            res = await call(client, "update_delivery_status", message_id=part["message_id"], status="delivered",
                             channel_message_id="wf-9")
            assert res["changed"] is expected and res["delivery_status"] == "delivered"
        assert (await call(client, "claim_outbox", channel="web_form", wait_s=0))["parts"] == []


async def test_ticket_updates_need_both_halves_and_show_only_the_conversation(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        t = await _ticket_with_reply(client)
        other = await _ticket_with_reply(client, email="zed@example.com")
        number = t["ingest"]["ticket"]["ticket_number"]
        conv = t["ingest"]["conversation"]["conversation_id"]
        await call(client, "update_ticket", ticket_number=number, note="internal: customer is on the legacy plan")
        got = await call(client, "get_ticket_updates", ticket_number=number, conversation_id=conv)
        assert got["ticket_number"] == number and got["status"] == "in_progress"
        roles = [(m["role"], m["direction"]) for m in got["messages"]]
        assert roles == [("customer", "inbound"), ("agent", "outbound")]
        assert got["messages"][0]["content"].startswith("<untrusted-customer-content")
        assert got["messages"][1]["delivery_status"] == "pending" and "Reply 0" in got["messages"][1]["content"]
        assert "legacy plan" not in str(got) and "zed@example.com" not in str(got)
        # the conversation id of another customer does not open this ticket, nor a made-up one
        for wrong in (other["ingest"]["conversation"]["conversation_id"], "00000000-0000-4000-8000-000000000000"):
            err = await call_error(client, "get_ticket_updates", ticket_number=number, conversation_id=wrong)
            assert f"No ticket {number} in that conversation" in err
        err = await call_error(client, "get_ticket_updates", ticket_number=number)
        assert "conversation_id" in err


async def test_a_claimed_part_carries_the_customers_latest_message_for_threading(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        ing = await call(client, "ingest_message", channel="email", channel_message_id="<m1@cust.example>",
                         sender={"email": "bo@example.com"}, subject="Invoice question", content="Where is my invoice?",
                         metadata={"references": ["<m0@cust.example>"]})
        await call(client, "ingest_message", channel="email", channel_message_id="<m2@cust.example>",
                   sender={"email": "bo@example.com"}, subject="Re: Invoice question", content="Any news?")
        await call(client, "send_response", ticket_number=ing["ticket"]["ticket_number"], body="It is on its way.")
        part = (await call(client, "claim_outbox", channel="email"))["parts"][0]
        assert part["reply_to"]["channel_message_id"] == "<m2@cust.example>"
        assert part["reply_to"]["subject"] == "Re: Invoice question" and part["reply_to"]["received_at"]
