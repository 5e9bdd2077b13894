"""The agent's work queue (claim_inbound) over stdio against a real database: what a claim hands
over, leases (exclusive, lapsing, ended by a reply or an escalation), concurrency and the long-poll."""

from __future__ import annotations

import time

import anyio
import asyncpg
import pytest

from .conftest import call, call_error, mcp_client

pytestmark = pytest.mark.anyio


async def _ask(client, email: str, content: str, n: int = 0) -> dict:
    return await call(client, "ingest_message", channel="web_form", channel_message_id=f"q-{email}-{n}",
                      sender={"email": email, "name": "Ana"}, content=content)


async def test_a_claim_hands_over_the_waiting_message_and_a_reply_ends_the_lease(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        ing = await _ask(client, "ana@example.com", "How do I export my forms to CSV?")
        got = await call(client, "claim_inbound", lease_s=60)
        w = got["work"]
        assert w["message_id"] == ing["message_id"]
        assert w["conversation_id"] == ing["conversation"]["conversation_id"]
        assert w["ticket_number"] == ing["ticket"]["ticket_number"]
        assert w["customer_id"] == ing["customer"]["customer_id"]
        assert w["channel"] == "web_form" and w["attempt"] == 1 and w["waiting_messages"] == 1
        assert w["text"].startswith("<untrusted-customer-content") and "export my forms to CSV" in w["text"]
        assert w["escalation_suggested"] is False and w["escalation_reasons"] == []
        assert got["lease_until"]
        # leased: nobody else gets it
        assert (await call(client, "claim_inbound"))["work"] is None
        await call(client, "send_response", conversation_id=w["conversation_id"], body="Use Export.",
                   idempotency_key=f"agent:{w['message_id']}")
        assert (await call(client, "claim_inbound"))["work"] is None, "an answered message is not work"
        # the reply ended the lease: the customer's next message is claimable at once
        nxt = await _ask(client, "ana@example.com", "And to Excel?", n=1)
        again = (await call(client, "claim_inbound"))["work"]
        assert again["message_id"] == nxt["message_id"] and again["attempt"] == 2
        assert "Excel" in again["text"] and "CSV" not in again["text"]
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT agent_lease_until FROM conversations WHERE id = $1::uuid",
                                   w["conversation_id"]) is not None
    finally:
        await conn.close()


async def test_rules_verdict_and_escalation_end_the_lease(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        await _ask(client, "lee@example.com", "This is unacceptable, my lawyer will be in touch about this.")
        w = (await call(client, "claim_inbound"))["work"]
        assert w["escalation_suggested"] is True
        assert "legal_threat" in {r["code"] for r in w["escalation_reasons"]}
        await call(client, "escalate_to_human", ticket_number=w["ticket_number"], reason="legal threat")
    conn = await asyncpg.connect(db_dsn)
    try:
        lease = await conn.fetchval("SELECT agent_lease_until FROM conversations WHERE id = $1::uuid", w["conversation_id"])
    finally:
        await conn.close()
    assert lease is None
    async with mcp_client(db_dsn) as client:
        assert (await call(client, "claim_inbound"))["work"] is None, "an escalated conversation is a person's work"
        assert "wait_s" in await call_error(client, "claim_inbound", wait_s=60)


async def test_two_concurrent_claimers_never_get_the_same_message(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as a, mcp_client(db_dsn) as b:
        for i in range(10):
            await _ask(a, f"c{i}@example.com", f"Question number {i} about exports")
        seen: dict[str, list[str]] = {"a": [], "b": []}

        async def drain(name: str, client) -> None:
            while True:
                got = await call(client, "claim_inbound", lease_s=60)
                if got["work"] is None:
                    return
                seen[name].append(got["work"]["message_id"])

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(drain, "a", a)
                tg.start_soon(drain, "b", b)
    everything = seen["a"] + seen["b"]
    assert len(everything) == 10 and len(set(everything)) == 10, seen
    assert seen["a"] and seen["b"], "one claimer got everything: the test did not exercise concurrency"


async def test_a_lapsed_lease_returns_the_work_to_a_waiting_claimer(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        ing = await _ask(client, "dee@example.com", "How do I reset my password?")
        first = await call(client, "claim_inbound", lease_s=5)
        assert first["work"]["message_id"] == ing["message_id"]
        # the agent "dies": it never answers; a waiting claimer gets the work when the lease lapses
        t0 = time.monotonic()
        again = await call(client, "claim_inbound", wait_s=10)
        waited = time.monotonic() - t0
        assert again["work"]["message_id"] == ing["message_id"] and again["work"]["attempt"] == 2
        assert 3 < waited < 7, f"a lapsed lease was noticed after {waited:.1f} s (lease 5 s)"


async def test_an_idle_claimer_wakes_within_200_ms_of_a_new_message(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as agent, mcp_client(db_dsn) as bridge:
        await call(agent, "claim_inbound")  # warm the server (pool, imports)
        latencies = []
        for i in range(3):
            result: dict = {}

            async def wait_for_work() -> None:
                result["got"] = await call(agent, "claim_inbound", wait_s=20)
                result["returned_at"] = time.monotonic()

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_work)
                await anyio.sleep(1.0)  # the agent is idle, parked in LISTEN
                ing = await _ask(bridge, f"idle{i}@example.com", "Is there an API?")
                ingested_at = time.monotonic()
            assert result["got"]["work"]["message_id"] == ing["message_id"]
            latencies.append(result["returned_at"] - ingested_at)
    # ingest commits before it returns: measured from its return, each wake-up is within 200 ms
    assert max(latencies) < 0.2, f"idle agent got new messages {latencies} s after ingest returned"
