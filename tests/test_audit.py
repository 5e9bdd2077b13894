"""The audit trail of writes: who, tool, ids, argument digest (never the arguments), outcome;
append-only; printed by `crm-mcp audit`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import asyncpg
import pytest

from .conftest import REPO, call, mcp_client, server_env
from .http_server import bearer_client, http_server, make_token

pytestmark = pytest.mark.anyio


def _digest(args: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


async def _rows(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("SELECT * FROM audit_log ORDER BY id")
    finally:
        await conn.close()


async def test_audit_trail_of_writes_over_http(db_dsn: str) -> None:
    staff = await make_token(db_dsn, "desk-bob", "staff")
    ro = await make_token(db_dsn, "viewer", "readonly")
    args = {"email": "audit-me@example.com", "name": "Audit Me"}
    async with http_server(db_dsn) as srv:
        async with bearer_client(srv.url, staff) as client:
            made = await call(client, "upsert_customer", **args)
            await call(client, "find_customer", query="audit-me@example.com")  # reads are not audited
            ticket = await call(client, "create_ticket", customer_id=made["customer"]["customer_id"],
                                subject="Cannot log in", channel="email")
            failed = await client.call_tool("update_ticket", {"ticket_number": "TKT-9999", "status": "resolved",
                                                              "resolution_notes": "x"})
            assert failed.is_error
        async with bearer_client(srv.url, ro) as client:
            assert (await client.call_tool("upsert_customer", {"email": "no@example.com"})).is_error
    rows = await _rows(db_dsn)
    assert [(r["actor"], r["role"], r["tool"], r["outcome"]) for r in rows] == [
        ("desk-bob", "staff", "upsert_customer", "ok"),
        ("desk-bob", "staff", "create_ticket", "ok"),
        ("desk-bob", "staff", "update_ticket", "error:not_found"),
        ("viewer", "readonly", "upsert_customer", "error:denied"),
    ]
    ids0 = rows[0]["ids"] if isinstance(rows[0]["ids"], dict) else json.loads(rows[0]["ids"])
    assert ids0["customer_id"] == [made["customer"]["customer_id"]]
    ids1 = json.loads(rows[1]["ids"]) if isinstance(rows[1]["ids"], str) else rows[1]["ids"]
    assert ids1["ticket_number"] == [ticket["ticket"]["ticket_number"]]
    assert ids1["customer_id"] == [made["customer"]["customer_id"]]
    assert rows[0]["args_sha256"] == _digest(args)
    dump = " ".join(str(dict(r)) for r in rows)
    assert "audit-me@example.com" not in dump and "Audit Me" not in dump and "Cannot log in" not in dump
    # append-only
    conn = await asyncpg.connect(db_dsn)
    try:
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("UPDATE audit_log SET outcome = 'ok'")
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("DELETE FROM audit_log")
    finally:
        await conn.close()
    # the CLI prints it, newest first
    out = subprocess.run([sys.executable, "-m", "crm_mcp.server.cli", "audit", "--json", "--limit", "2"],
                         env=server_env(db_dsn), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert [p["tool"] for p in printed] == ["upsert_customer", "update_ticket"]
    text = subprocess.run([sys.executable, "-m", "crm_mcp.server.cli", "audit"], env=server_env(db_dsn), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert "desk-bob (staff)  create_ticket  ok" in text.stdout


async def test_stdio_writes_are_audited_as_stdio(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        await call(client, "upsert_customer", email="stdio-audit@example.com")
        entries = json.loads((await client.read_resource("crm://audit")).contents[0].text)
    assert entries[0]["actor"] == "stdio" and entries[0]["role"] == "admin" and entries[0]["tool"] == "upsert_customer"
    assert [r["actor"] for r in await _rows(db_dsn)] == ["stdio"]
