"""Lease scoping of the agent role over real HTTP with tokens: an agent acts only on the customer of
a conversation it claimed; calls naming another customer, conversation or ticket are refused and
change nothing; without a lease every scoped call is refused; a second agent token cannot use the
first one's lease. Then the turn records (record_agent_turn) and what get_metrics makes of them."""

from __future__ import annotations

import json

import asyncpg
import pytest
from mcp.shared.exceptions import MCPError

from crm_mcp.server import lease_scope
from crm_mcp.server.roles import AGENT_SCOPE, EXTRA_ROLES

from .conftest import call, call_error, mcp_client
from .http_server import bearer_client, http_server, make_token, tool_names

pytestmark = pytest.mark.anyio

B_NAME, B_EMAIL, B_PHONE = "Beatrix Quillfeather", "bea.quill@example.com", "+447700900321"


async def _ask(client, email: str, name: str, content: str, n: str, phone: str | None = None) -> dict:
    sender = {"email": email, "name": name} | ({"phone": phone} if phone else {})
    return await call(client, "ingest_message", channel="web_form", channel_message_id=f"scope-{n}",
                      sender=sender, content=content)


async def _state(dsn: str, customer_id: str) -> tuple:
    """Everything a call could change about a customer: messages, tickets and their history, conversations."""
    conn = await asyncpg.connect(dsn)
    try:
        return (
            await conn.fetchval("SELECT count(*) FROM messages WHERE customer_id = $1::uuid", customer_id),
            tuple(await conn.fetch("SELECT ticket_number, status, priority, escalation_reason FROM tickets "
                                   "WHERE customer_id = $1::uuid ORDER BY ticket_number", customer_id)),
            await conn.fetchval("SELECT count(*) FROM ticket_events e JOIN tickets t ON t.id = e.ticket_id "
                                "WHERE t.customer_id = $1::uuid", customer_id),
            tuple(await conn.fetch("SELECT id, status FROM conversations WHERE customer_id = $1::uuid ORDER BY id", customer_id)),
        )
    finally:
        await conn.close()


def _calls_on(who: dict) -> list[tuple[str, dict]]:
    """Every scoped agent tool, aimed at one ingested customer message's customer, conversation and ticket."""
    cid, conv, tkt = who["customer"]["customer_id"], who["conversation"]["conversation_id"], who["ticket"]["ticket_number"]
    return [
        ("get_customer_history", {"customer_id": cid}),
        ("get_conversation", {"conversation_id": conv}),
        ("get_ticket", {"ticket_number": tkt}),
        ("send_response", {"conversation_id": conv, "body": "Here is the answer."}),
        ("send_response", {"ticket_number": tkt.lower().replace("tkt-000", "tkt-"), "body": "Here is the answer."}),
        ("escalate_to_human", {"ticket_number": tkt, "reason": "needs a person"}),
        ("update_ticket", {"ticket_number": tkt, "priority": "critical", "note": "raised"}),
        ("create_ticket", {"customer_id": cid, "subject": "Follow-up", "channel": "web_form"}),
        ("create_ticket", {"customer_id": cid, "subject": "Follow-up", "channel": "web_form", "conversation_id": conv}),
    ]


def test_every_agent_tool_declares_its_scope_and_undeclared_ones_are_refused() -> None:
    agent_tools = {name for name, roles in EXTRA_ROLES.items() if "agent" in roles}
    assert agent_tools <= set(AGENT_SCOPE), agent_tools - set(AGENT_SCOPE)
    # no merges, knowledge-base writes, tokens or metrics for the agent
    for forbidden in ("merge_customers", "upsert_customer", "upsert_kb_article", "get_metrics", "record_feedback",
                      "list_tickets", "find_customer", "ingest_message", "claim_outbox"):
        assert forbidden not in agent_tools


async def test_an_undeclared_tool_is_refused_to_the_agent() -> None:
    # Fail closed before any lookup: a tool added without its scope line.
    text = await lease_scope.check(None, holder="token:x", tool="a_future_tool", writes=False, args=lambda: None)
    assert text and text.startswith("Permission denied: a_future_tool declares no lease scope")


async def test_an_agent_acts_only_on_the_customer_of_the_conversation_it_holds(db_dsn: str) -> None:
    tokens = {n: await make_token(db_dsn, f"scope-{n}", r) for n, r in
              (("admin", "admin"), ("agent1", "agent"), ("agent2", "agent"))}
    async with http_server(db_dsn) as srv:
        async with bearer_client(srv.url, tokens["admin"]) as admin:
            a = await _ask(admin, "ana.scope@example.com", "Ana", "How do I export my forms to CSV?", "a")
            b = await _ask(admin, B_EMAIL, B_NAME, "Where do I change my billing address?", "b", phone=B_PHONE)
        a_cid, b_cid = a["customer"]["customer_id"], b["customer"]["customer_id"]
        a_conv, a_tkt = a["conversation"]["conversation_id"], a["ticket"]["ticket_number"]
        before_a, before_b = await _state(db_dsn, a_cid), await _state(db_dsn, b_cid)
        async with bearer_client(srv.url, tokens["agent1"]) as ag1, bearer_client(srv.url, tokens["agent2"]) as ag2:
            tools = await tool_names(ag1)
            assert not tools & {"merge_customers", "upsert_kb_article", "get_metrics", "record_feedback"}
            assert (await ag1.list_resources()).resources == [] and (await ag1.list_prompts()).prompts == []
            # no lease: every scoped call is refused; the knowledge base is open
            for tool, args in _calls_on(a) + _calls_on(b):
                text = await call_error(ag1, tool, **args)
                assert text.startswith("Permission denied: this agent holds no conversation lease"), (tool, text)
                assert "Nothing was changed." in text
            await call(ag1, "search_knowledge_base", query="export forms")
            await call(ag1, "search_products", query="export")
            assert await _state(db_dsn, a_cid) == before_a and await _state(db_dsn, b_cid) == before_b

            w1 = (await call(ag1, "claim_inbound", lease_s=60))["work"]
            w2 = (await call(ag2, "claim_inbound", lease_s=60))["work"]
            assert (w1["customer_id"], w2["customer_id"]) == (a_cid, b_cid)
            # agent 1 holds A: everything naming B (or a ticket that does not exist) is refused, and says
            # nothing about B; agent 2 holds B: everything naming A is refused
            for agent, holds, other in ((ag1, (a_conv, a_cid), b), (ag2, (w2["conversation_id"], b_cid), a)):
                for tool, args in _calls_on(other) + [("get_ticket", {"ticket_number": "TKT-9999"})]:
                    text = await call_error(agent, tool, **args)
                    assert text.startswith(f"Permission denied: this agent holds conversation {holds[0]} (customer {holds[1]}); "
                                           f"{tool} named "), (tool, text)
                    assert text.endswith("Nothing was changed."), text
                    for secret in (B_NAME, B_EMAIL, B_PHONE, "Ana", "ana.scope", "billing address", "export"):
                        assert secret not in text, (tool, secret, text)
            # mixing: agent 1's own customer with B's conversation
            text = await call_error(ag1, "create_ticket", customer_id=a_cid, subject="x", channel="web_form",
                                    conversation_id=b["conversation"]["conversation_id"])
            assert "named conversation_id" in text
            assert await _state(db_dsn, a_cid) == before_a and await _state(db_dsn, b_cid) == before_b

            # within its lease agent 1 may read and act on A
            assert (await call(ag1, "get_customer_history", customer_id=a_cid))["customer"]["customer_id"] == a_cid
            assert (await call(ag1, "get_conversation", conversation_id=a_conv))["customer_id"] == a_cid
            assert (await call(ag1, "get_ticket", ticket_number=a_tkt.lower()))["ticket"]["ticket_number"] == a_tkt
            await call(ag1, "update_ticket", ticket_number=a_tkt, note="agent looked at it")
            extra = await call(ag1, "create_ticket", customer_id=a_cid, subject="Follow-up call", channel="web_form")
            await call(ag1, "update_ticket", ticket_number=extra["ticket"]["ticket_number"], note="own customer's ticket")
            await call(ag1, "send_response", conversation_id=a_conv, body="Use Export.", idempotency_key=f"agent:{w1['message_id']}")
            # the reply ended the lease, yet the turn goes on: the escalation and the turn record
            await call(ag1, "escalate_to_human", ticket_number=a_tkt, reason="customer asked for a call back")
            rec = await call(ag1, "record_agent_turn", message_id=w1["message_id"], attempt=w1["attempt"], decision="answered",
                             tools_called=["search_knowledge_base", "send_response"], model="offline", latency_ms=40)
            assert rec["recorded"] is True and rec["turn"]["customer_id"] == a_cid and rec["turn"]["ticket_number"] == a_tkt
            # agent 2 may not record agent 1's turn, nor agent 1 agent 2's
            text = await call_error(ag2, "record_agent_turn", message_id=w1["message_id"], attempt=w1["attempt"],
                                    decision="answered", model="offline", latency_ms=1)
            assert text.startswith("Permission denied:") and "did not claim last" in text
            text = await call_error(ag1, "record_agent_turn", message_id=w2["message_id"], attempt=w2["attempt"],
                                    decision="answered", model="offline", latency_ms=1)
            assert text.startswith("Permission denied:") and "did not claim last" in text
            # B is untouched by all of this; agent 2 still acts on it
            assert await _state(db_dsn, b_cid) == before_b
            await call(ag2, "get_ticket", ticket_number=b["ticket"]["ticket_number"])
        # the lease scope is over once another agent claims the conversation
        async with bearer_client(srv.url, tokens["admin"]) as admin:
            await call(admin, "update_ticket", ticket_number=a_tkt, status="in_progress", note="back to the queue")
            conn = await asyncpg.connect(db_dsn)
            try:
                await conn.execute("UPDATE conversations SET status = 'active' WHERE id = $1::uuid", a_conv)
            finally:
                await conn.close()
            await _ask(admin, "ana.scope@example.com", "Ana", "And to Excel?", "a2")
        async with bearer_client(srv.url, tokens["agent2"]) as ag2, bearer_client(srv.url, tokens["agent1"]) as ag1:
            assert (await call(ag2, "claim_inbound"))["work"]["conversation_id"] == a_conv
            text = await call_error(ag1, "get_customer_history", customer_id=a_cid)
            assert text.startswith("Permission denied: this agent holds no conversation lease"), text
            await call(ag2, "get_customer_history", customer_id=a_cid)


async def test_turn_records_are_idempotent_and_feed_the_metrics(db_dsn: str) -> None:
    tokens = {n: await make_token(db_dsn, f"turns-{n}", r) for n, r in (("admin", "admin"), ("agent", "agent"), ("staff", "staff"))}
    plan = [  # (message, decision, reason, latency_ms)
        ("How do I export to CSV?", "answered", None, 100),
        ("How do I reset my password?", "answered", None, 200),
        ("Where is the API key?", "answered", None, 300),
        ("I want a refund now.", "escalated_rule", "Agent escalation by rule (refund_or_pricing_negotiation)", 400),
        ("My lawyer will call.", "escalated_rule", "Agent escalation by rule (legal_threat)", 500),
        ("Another refund please.", "escalated_rule", "Agent escalation by rule (refund_or_pricing_negotiation)", 600),
        ("Something odd happened.", "escalated_no_answer", "Agent found no relevant knowledge-base answer", 700),
        ("Model gave up.", "escalated_model_failure", "model timed out", 10_000),
    ]
    async with http_server(db_dsn) as srv:
        async with bearer_client(srv.url, tokens["admin"]) as admin:
            for i, (text, *_rest) in enumerate(plan):
                await _ask(admin, f"turns{i}@example.com", f"Turn {i}", text, f"t{i}")
            kb = await call(admin, "upsert_kb_article", title="Exporting", content="Use Export > CSV.", category="faq")
        async with bearer_client(srv.url, tokens["agent"]) as agent:
            recorded = []
            for _, decision, reason, latency in plan:
                w = (await call(agent, "claim_inbound"))["work"]
                args = dict(message_id=w["message_id"], attempt=w["attempt"], decision=decision, reason=reason,
                            tools_called=["search_knowledge_base", "send_response"],
                            article_ids=[kb["article_id"]] if decision == "answered" else [],
                            model="offline", prompt_tokens=0, completion_tokens=0, latency_ms=latency)
                first = await call(agent, "record_agent_turn", **args)
                again = await call(agent, "record_agent_turn", **{**args, "latency_ms": 1})
                assert first["recorded"] is True and again["recorded"] is False and again["turn"] == first["turn"]
                recorded.append(first["turn"])
                await call(agent, "send_response", conversation_id=w["conversation_id"], body="Thanks, noted.",
                           idempotency_key=f"agent:{w['message_id']}")
            bad = await call_error(agent, "record_agent_turn", message_id=recorded[0]["message_id"], attempt=1,
                                   decision="maybe", model="offline", latency_ms=1)
            assert "decision" in bad and "answered" in bad
        async with bearer_client(srv.url, tokens["staff"]) as staff:
            m = (await call(staff, "get_metrics", window="1h"))["agent"]
            assert m["turns"] == 8 and m["answered"] == 3 and m["resolution_rate"] == round(3 / 8, 4)
            assert m["escalations"][0] == {"decision": "escalated_rule", "reason": plan[3][2], "count": 2}
            assert {(e["decision"], e["count"]) for e in m["escalations"]} == {
                ("escalated_rule", 2), ("escalated_rule", 1), ("escalated_no_answer", 1), ("escalated_model_failure", 1)}
            lat = m["latency_ms"]
            # PostgreSQL's percentile_cont over 100..700, 10000: interpolated
            assert lat["samples"] == 8 and lat["p50"] == 450.0 and lat["p95"] == pytest.approx(6745.0)
            email_only = (await call(staff, "get_metrics", window="1h", channel="email"))["agent"]
            assert email_only["turns"] == 0 and email_only["resolution_rate"] is None and email_only["latency_ms"]["p50"] is None
            # staff read the records; the agent may not
            conv = recorded[0]["conversation_id"]
            res = await staff.read_resource(f"crm://agent/turns?conversation_id={conv}")
            turns = json.loads(res.contents[0].text)["turns"]
            assert [t["turn_id"] for t in turns] == [recorded[0]["turn_id"]]
            assert turns[0]["article_ids"] == [kb["article_id"]] and turns[0]["model"] == "offline"
            every = json.loads((await staff.read_resource("crm://agent/turns")).contents[0].text)["turns"]
            assert len(every) == 8
        async with bearer_client(srv.url, tokens["agent"]) as agent:
            with pytest.raises(MCPError, match="role 'agent' may not read"):
                await agent.read_resource("crm://agent/turns")


async def test_two_stdio_agents_each_hold_only_their_own_lease(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as admin:
        await _ask(admin, "stdio-a@example.com", "Ann", "How do I export my forms?", "sa")
        await _ask(admin, "stdio-b@example.com", "Bob", "How do I import contacts?", "sb")
    # one stdio server process per agent: each process is its own lease holder
    async with mcp_client(db_dsn, "--role", "agent") as one, mcp_client(db_dsn, "--role", "agent") as two:
        w1 = (await call(one, "claim_inbound"))["work"]
        w2 = (await call(two, "claim_inbound"))["work"]
        assert w1["customer_id"] != w2["customer_id"]
        await call(one, "get_customer_history", customer_id=w1["customer_id"])
        text = await call_error(two, "get_customer_history", customer_id=w1["customer_id"])
        assert text.startswith(f"Permission denied: this agent holds conversation {w2['conversation_id']}"), text
        text = await call_error(one, "escalate_to_human", ticket_number=w2["ticket_number"], reason="not mine")
        assert text.startswith(f"Permission denied: this agent holds conversation {w1['conversation_id']}"), text
