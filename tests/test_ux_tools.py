"""One contract per word, found by using the tools as a new user would: update_ticket escalates
the way escalate_to_human does, the two escalation figures carry names that cannot be confused,
kb import says what it decided, and a second record of the same person comes with a hint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from .conftest import REPO, call, call_error, mcp_client, server_env

pytestmark = pytest.mark.anyio


async def _ticket(client, cmid: str, email: str, content: str = "The Slack integration stopped posting") -> dict:
    return await call(client, "ingest_message", channel="email", channel_message_id=cmid,
                      sender={"email": email, "name": "Ana Silva"}, content=content)


async def _escalation_trace(conn: asyncpg.Connection, number: str) -> tuple:
    t = await conn.fetchrow("SELECT id, status, escalation_reason, escalated_at IS NOT NULL AS at, conversation_id "
                            "FROM tickets WHERE ticket_number = $1", number)
    events = [tuple(r) for r in await conn.fetch(
        "SELECT kind, from_value, to_value, note FROM ticket_events WHERE ticket_id = $1 AND kind <> 'created' ORDER BY id", t["id"])]
    conv = await conn.fetchval("SELECT status FROM conversations WHERE id = $1", t["conversation_id"])
    system = await conn.fetchval("SELECT count(*) FROM messages WHERE ticket_id = $1 AND role = 'system'", t["id"])
    metric = await conn.fetchval("SELECT count(*) FROM agent_metrics WHERE ticket_id = $1 AND metric_type = 'escalation'", t["id"])
    return t["status"], t["escalation_reason"], t["at"], events, conv, system, metric


async def test_update_ticket_escalates_exactly_like_escalate_to_human(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        a = (await _ticket(client, "u1", "a@example.com"))["ticket"]["ticket_number"]
        b = (await _ticket(client, "u2", "b@example.com"))["ticket"]["ticket_number"]
        err = await call_error(client, "update_ticket", ticket_number=a, status="escalated")
        assert "escalation_reason" in err and "nothing was changed" in err
        err = await call_error(client, "update_ticket", ticket_number=a, note="x", escalation_reason="why")
        assert "only used with status='escalated'" in err
        r = await call(client, "update_ticket", ticket_number=a, status="escalated", escalation_reason="Customer asked for a person")
        assert r["changed"] is True and r["ticket"]["status"] == "escalated"
        assert r["ticket"]["escalation_reason"] == "Customer asked for a person"
        await call(client, "escalate_to_human", ticket_number=b, reason="Customer asked for a person")
        again = await call(client, "update_ticket", ticket_number=a, status="escalated", escalation_reason="again")
        assert again["changed"] is False  # already escalated: nothing changes, as with escalate_to_human
    conn = await asyncpg.connect(db_dsn)
    try:
        via_update, via_escalate = await _escalation_trace(conn, a), await _escalation_trace(conn, b)
        assert via_update == via_escalate
        assert via_update[0] == "escalated" and via_update[4] == "escalated" and via_update[5:] == (1, 1)
        actors = {r["actor"] for r in await conn.fetch("SELECT actor FROM ticket_events WHERE kind = 'escalation'")}
        assert actors == {"update_ticket", "escalate_to_human"}
    finally:
        await conn.close()


async def test_escalation_figures_have_distinct_names_and_definitions(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        old = (await _ticket(client, "m1", "old@example.com"))["ticket"]["ticket_number"]
        conn = await asyncpg.connect(db_dsn)
        try:  # opened three days ago, escalated today
            await conn.execute("UPDATE tickets SET created_at = now() - interval '3 days' WHERE ticket_number = $1", old)
            await conn.execute("UPDATE ticket_events SET created_at = now() - interval '3 days'")
        finally:
            await conn.close()
        await call(client, "escalate_to_human", ticket_number=old, reason="Customer asked for a person")
        await _ticket(client, "m2", "new@example.com")
        total = next(c for c in (await call(client, "get_metrics"))["channels"] if c["channel"] == "total")
        assert "tickets_escalated" not in total and "escalation_rate" not in total
        assert total["tickets_escalated_in_period"] == 1
        assert total["opened_tickets_escalation_rate"] == {"value": 0.0, "numerator": 0, "denominator": 1}
        tools = {t.name: t for t in (await client.list_tools()).tools}
        props = tools["get_metrics"].output_schema["properties"]["channels"]["items"]["properties"]
        assert "whenever they were opened" in props["tickets_escalated_in_period"]["description"]
        assert "opened in the period" in props["opened_tickets_escalation_rate"]["description"]
        summary = json.loads((await client.read_resource("crm://metrics/summary")).contents[0].text)
        assert summary["tickets_escalated_in_period"] == 1
        assert summary["opened_tickets_escalation_rate"] == {"value": 0.0, "numerator": 0, "denominator": 1}
        report = (await client.get_prompt("daily_report")).messages[0].content.text
        assert "Tickets escalated during the day (whenever they were opened): 1" in report
        assert "Of the tickets opened this day, escalated by its end: 0 of 1 (0%)" in report
        assert "Escalation rate" not in report


async def test_kb_import_says_what_it_did(tmp_path: Path, db_dsn: str) -> None:
    kb = tmp_path / "kb"
    (kb / "billing").mkdir(parents=True)
    (kb / "howtos").mkdir()
    (kb / ".git").mkdir()
    (kb / "billing" / "refunds.md").write_text("# Refunds\n\nAnnual plans are refunded pro rata.\n")
    (kb / "billing" / "odd.md").write_text("---\ncategory: pricing\n---\n# Odd\n\nFront matter names no real category.\n")
    (kb / "howtos" / "export.md").write_text("# Export\n\nUse Export > CSV.\n")
    (kb / "notitle.md").write_text("Text without a heading.\n")
    (kb / "billing" / "VAT-and_invoices.txt").write_text("Invoices carry your VAT number.\n")
    (kb / "billing" / "scan.pdf").write_bytes(b"%PDF-1.4")
    (kb / "latin1.md").write_bytes("# Caf\xe9\n\nna\xefve".encode("latin-1"))
    (kb / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    out = subprocess.run([sys.executable, "-m", "crm_mcp.server.cli", "kb", "import", str(kb)], env=server_env(db_dsn),
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["created"], summary["files"], summary["mapped_to_general"], summary["untitled"]) == (5, 5, 2, 2)
    assert summary["skipped"] == [{"path": "billing/scan.pdf", "reason": "not Markdown (.md) or plain text (.txt) but .pdf"},
                                  {"path": "latin1.md", "reason": "not UTF-8 text"}]
    warnings = [line for line in out.stderr.splitlines() if line.startswith("crm-mcp: warning: ")]
    assert len(warnings) == 6 and "Traceback" not in out.stderr, out.stderr
    said = "\n".join(warnings)
    assert "howtos/export.md: folder name 'howtos' is not a knowledge base category" in said
    assert "billing/odd.md: front matter category 'pricing'" in said
    assert "notitle.md: no '# ' heading and no title in front matter; titled 'Notitle' from the file name" in said
    assert "billing/VAT-and_invoices.txt: plain text has no heading; titled 'VAT and invoices'" in said
    assert "billing/scan.pdf: skipped" in said and ".git" not in said


async def test_kb_import_txt_is_searchable(db_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "faq").mkdir()
    (tmp_path / "faq" / "parrot-mode.txt").write_text("Parrot mode repeats every answer back before submission.\n")
    out = subprocess.run([sys.executable, "-m", "crm_mcp.server.cli", "kb", "import", str(tmp_path)], env=server_env(db_dsn),
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    async with mcp_client(db_dsn) as client:
        r = await call(client, "search_knowledge_base", query="does parrot mode repeat answers?", category="faq")
        assert r["results"][0]["title"] == "Parrot mode"


async def test_same_name_on_a_new_channel_comes_with_likely_duplicates(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        first = await call(client, "ingest_message", channel="email", channel_message_id="d1",
                           sender={"email": "maya@nordvik.example", "name": "Maya Lindqvist"}, content="Where is my invoice?")
        assert first["customer"]["is_new"] and first["likely_duplicates"] == []
        cid = first["customer"]["customer_id"]
        await call(client, "upsert_customer", customer_id=cid, company="Nordvik Logistics")
        other = await call(client, "ingest_message", channel="email", channel_message_id="d0",
                           sender={"email": "maya@elsewhere.example", "name": "Maya Lindqvist"}, content="hello")
        second = await call(client, "ingest_message", channel="whatsapp", channel_message_id="d2",
                            sender={"whatsapp": "+46701740605", "name": "maya lindqvist"}, content="Any news on the invoice?")
        assert second["customer"]["is_new"] and second["customer"]["customer_id"] != cid
        dups = second["likely_duplicates"]
        assert [d["customer_id"] for d in dups] == [other["customer"]["customer_id"], cid]  # most recent contact first
        assert all(d["duplicate_of"] == second["customer"]["customer_id"] and d["why"] == ["same name"] for d in dups)
        assert dups[1]["name"].startswith("<untrusted-customer-content") and "Maya Lindqvist" in dups[1]["name"]
        assert dups[1]["company"].startswith("<untrusted-customer-content") and dups[1]["last_contact_at"]
        assert "merge_customers" in second["next_step"]
        # a known customer writing again gets no hint
        again = await call(client, "ingest_message", channel="whatsapp", channel_message_id="d3",
                           sender={"whatsapp": "+46701740605", "name": "Maya Lindqvist"}, content="Thanks")
        assert again["customer"]["is_new"] is False and again["likely_duplicates"] == []

        found = await call(client, "find_customer", query="maya@nordvik.example")
        assert [m["customer_id"] for m in found["matches"]] == [cid]
        assert {d["customer_id"] for d in found["likely_duplicates"]} == {second["customer"]["customer_id"], other["customer"]["customer_id"]}
        assert "merge_customers" in found["note"]
        by_name = await call(client, "find_customer", query="Maya", limit=5)
        assert len(by_name["matches"]) == 3
        assert 1 <= len(by_name["likely_duplicates"]) <= 3  # bounded, and each pair listed once
        pairs = {frozenset((d["customer_id"], d["duplicate_of"])) for d in by_name["likely_duplicates"]}
        assert len(pairs) == len(by_name["likely_duplicates"])
        # once merged, the duplicate no longer shows up
        await call(client, "merge_customers", primary_id=cid, duplicate_id=second["customer"]["customer_id"])
        left = (await call(client, "find_customer", query="maya@nordvik.example"))["likely_duplicates"]
        assert [d["customer_id"] for d in left] == [other["customer"]["customer_id"]]


async def test_duplicate_lookup_uses_the_name_index(db_dsn: str) -> None:
    from crm_mcp.tools.customers import LIKELY_DUPLICATES_SQL

    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute("INSERT INTO customers (name) SELECT 'Person ' || g FROM generate_series(1, 20000) g")
        await conn.execute("ANALYZE customers")
        cid = await conn.fetchval("SELECT id FROM customers WHERE name = 'Person 77'")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + LIKELY_DUPLICATES_SQL.replace("$1::uuid[]", f"ARRAY['{cid}']::uuid[]")))
        assert "customers_name_idx" in plan, plan
    finally:
        await conn.close()
