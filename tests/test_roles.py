"""Roles enforced by the server over real HTTP (and stdio --role): what each role sees in
tools/list and what it may call, read, prompt and complete; a refused call changes nothing."""

from __future__ import annotations

import asyncpg
import pytest
from mcp.shared.exceptions import MCPError

from crm_mcp.server.registration import selected_specs

from .conftest import call, mcp_client
from .http_server import bearer_client, http_server, make_token, result_text, tool_names

pytestmark = pytest.mark.anyio

DEFAULT = selected_specs("all", read_only=False)  # what a server publishes without opt-in toolsets
ALL = {s.name for s in DEFAULT}
READ = {s.name for s in DEFAULT if s.annotations.read_only_hint}
AGENT = {"get_customer_history", "get_conversation", "get_ticket", "search_knowledge_base", "search_products",
         "send_response", "create_ticket", "update_ticket", "escalate_to_human", "claim_inbound", "record_agent_turn"}
BRIDGE = {"ingest_message", "update_delivery_status", "claim_outbox", "get_ticket_updates", "bridge_checkpoint"}
EXPECTED = {"admin": ALL, "staff": ALL, "agent": AGENT, "bridge": BRIDGE, "readonly": READ}


async def _count(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def test_each_role_sees_and_calls_only_its_tools(db_dsn: str) -> None:
    tokens = {role: await make_token(db_dsn, f"t-{role}", role) for role in EXPECTED}
    async with http_server(db_dsn) as srv:
        async with bearer_client(srv.url, tokens["admin"]) as admin:
            made = await call(admin, "upsert_customer", email="role-test@example.com", name="Role Test")
        cid = made["customer"]["customer_id"]
        for role, expected in EXPECTED.items():
            for mode in ("auto", "legacy"):
                async with bearer_client(srv.url, tokens[role], mode=mode) as client:
                    assert await tool_names(client) == expected, (role, mode)
        customers = await _count(db_dsn, "SELECT count(*) FROM customers")
        async with bearer_client(srv.url, tokens["readonly"]) as ro:
            await call(ro, "find_customer", query="role-test@example.com")
            res = await ro.call_tool("upsert_customer", {"email": "nope@example.com"})
            assert res.is_error
            text = result_text(res)
            assert "role 'readonly' may not call upsert_customer" in text and "admin, staff" in text
        async with bearer_client(srv.url, tokens["bridge"]) as bridge:
            for tool, args in (("find_customer", {"query": "role-test@example.com"}),
                               ("get_customer_history", {"customer_id": cid}),
                               ("upsert_kb_article", {"title": "x", "content": "y", "category": "faq"})):
                res = await bridge.call_tool(tool, args)
                assert res.is_error and "role 'bridge' may not call" in result_text(res), tool
            assert "agent" in result_text(await bridge.call_tool("get_customer_history", {"customer_id": cid}))
            # no resources, prompts or completions for a bridge
            assert (await bridge.list_resources()).resources == []
            assert (await bridge.list_resource_templates()).resource_templates == []
            assert (await bridge.list_prompts()).prompts == []
            with pytest.raises(MCPError, match="role 'bridge' may not read"):
                await bridge.read_resource(f"crm://customers/{cid}")
            with pytest.raises(MCPError, match="may not use prompts"):
                await bridge.get_prompt("customer_brief", {"customer": cid})
            from mcp.types import ResourceTemplateReference
            with pytest.raises(MCPError, match="may not use completions"):
                await bridge.complete(ResourceTemplateReference(type="ref/resource", uri="crm://customers/{customer_id}"),
                                      {"name": "customer_id", "value": cid[:4]})
        async with bearer_client(srv.url, tokens["admin"]) as admin:
            # An agent reads a customer only within a conversation it claimed (tests/test_lease_scope.py).
            await call(admin, "ingest_message", channel="web_form", channel_message_id="role-test-1",
                       sender={"email": "role-test@example.com"}, content="Where do I find my invoices?")
        async with bearer_client(srv.url, tokens["agent"]) as agent:
            res = await agent.call_tool("merge_customers", {"source_customer_id": cid, "target_customer_id": cid})
            assert res.is_error and "role 'agent' may not call merge_customers" in result_text(res)
            assert (await call(agent, "claim_inbound"))["work"]["customer_id"] == cid
            history = await call(agent, "get_customer_history", customer_id=cid)
            assert history
        async with bearer_client(srv.url, tokens["readonly"]) as ro:
            from mcp.types import PromptReference
            brief = PromptReference(type="ref/prompt", name="customer_brief")
            for short in ("r", "ro"):  # no listing of identities from a letter or two
                assert (await ro.complete(brief, {"name": "customer", "value": short})).completion.values == []
            got = (await ro.complete(brief, {"name": "customer", "value": "role-"})).completion.values
            assert got == ["role-test@example.com"]
        assert await _count(db_dsn, "SELECT count(*) FROM customers") == customers  # nothing changed
        # the audit log is an admin-only resource
        async with bearer_client(srv.url, tokens["staff"]) as staff:
            assert "crm://audit" not in {str(r.uri) for r in (await staff.list_resources()).resources}
            with pytest.raises(MCPError, match="Allowed role: admin"):
                await staff.read_resource("crm://audit")
            await staff.read_resource(f"crm://customers/{cid}")
        async with bearer_client(srv.url, tokens["admin"]) as admin:
            assert "crm://audit" in {str(r.uri) for r in (await admin.list_resources()).resources}
            await admin.read_resource("crm://audit")


async def test_stdio_role_restricts(db_dsn: str) -> None:
    async with mcp_client(db_dsn, "--role", "readonly") as client:
        assert {t.name for t in (await client.list_tools()).tools} == READ
        res = await client.call_tool("upsert_customer", {"email": "stdio-ro@example.com"})
        assert res.is_error and "role 'readonly'" in result_text(res)
    assert await _count(db_dsn, "SELECT count(*) FROM customers") == 0
    async with mcp_client(db_dsn) as client:  # default: admin, everything
        assert {t.name for t in (await client.list_tools()).tools} == ALL
