"""Migrations, schema constraints, configuration, the embedded database shared by several
processes, and the HTTP transport with its Origin check."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import asyncpg
import httpx
import pytest
from mcp import Client

from crm_mcp.server.migrate import Migration, MigrationError, load_migrations, migrate
from crm_mcp.tools.engines.formatting import untrusted

from .conftest import REPO, call, server_env

pytestmark = pytest.mark.anyio


async def test_migrations_from_empty_then_rerun_is_noop(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        first = await migrate(conn)
        assert [m.version for m in first] == [m.version for m in load_migrations()]
        again = await migrate(conn)
        assert again == []
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
        assert [r["checksum"] for r in rows] == [m.checksum for m in load_migrations()]
        # the channel seed rows and the ticket counter came with the schema
        assert await conn.fetchval("SELECT count(*) FROM channel_configs") == 3
    finally:
        await conn.close()


async def test_edited_applied_migration_is_an_error(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        migs = load_migrations()
        await migrate(conn, migs)
        edited = [Migration(m.version, m.name, m.sql + "\n-- edited\n") if m.version == 1 else m for m in migs]
        with pytest.raises(MigrationError, match="edited after it was applied"):
            await migrate(conn, edited)
    finally:
        await conn.close()


async def test_failed_migration_leaves_nothing_behind(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        migs = load_migrations()
        bad = Migration(9999, "broken", "CREATE TABLE half_done (id int); SELECT * FROM no_such_table;")
        with pytest.raises(asyncpg.UndefinedTableError):
            await migrate(conn, [*migs, bad])
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(migs)
    finally:
        await conn.close()


async def test_two_concurrent_migrate_commands_apply_each_file_once(empty_dsn: str) -> None:
    """Two `crm-mcp migrate` processes started at the same moment both succeed."""
    env = server_env(empty_dsn)
    cmd = [sys.executable, "-m", "crm_mcp.server.cli", "migrate"]
    procs = [subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs

    conn = await asyncpg.connect(empty_dsn)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [m.version for m in load_migrations()]
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO customers (plan) VALUES ('gold')",
        "INSERT INTO customer_identifiers (customer_id, kind, value) SELECT id, 'email', 'Upper@Example.com' FROM customers LIMIT 1",
        "INSERT INTO customer_identifiers (customer_id, kind, value) SELECT id, 'phone', '555-0100' FROM customers LIMIT 1",
        "INSERT INTO customer_identifiers (customer_id, kind, value) SELECT id, 'fax', '+12025550100' FROM customers LIMIT 1",
        "INSERT INTO tickets (customer_id, subject, source_channel, status) SELECT id, 's', 'email', 'resolved' FROM customers LIMIT 1",
        "INSERT INTO tickets (customer_id, subject, source_channel, category) SELECT id, 's', 'email', 'misc' FROM customers LIMIT 1",
        "INSERT INTO tickets (customer_id, subject, source_channel) SELECT id, 's', 'telegram' FROM customers LIMIT 1",
        "INSERT INTO conversations (customer_id, initial_channel, current_channel) SELECT id, 'email', 'email' FROM customers LIMIT 1; "
        "INSERT INTO conversations (customer_id, initial_channel, current_channel) SELECT id, 'email', 'email' FROM customers LIMIT 1",
        "INSERT INTO feedback (rating, ticket_id) VALUES (6, NULL)",
        "INSERT INTO kb_chunks (article_id, chunk_index, category, content, tsv) VALUES (gen_random_uuid(), 0, 'faq', 'x', ''::tsvector)",
    ],
    ids=["plan", "email-case", "phone-format", "identifier-kind", "resolved-without-notes", "category",
         "channel", "two-open-conversations", "rating", "orphan-chunk"],
)
async def test_schema_constraints_reject_bad_rows(db_dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute("INSERT INTO customers (name) VALUES ('Test')")
        with pytest.raises((asyncpg.IntegrityConstraintViolationError, asyncpg.CheckViolationError)):
            await conn.execute(sql)
    finally:
        await conn.close()


async def test_message_dedup_and_ticket_numbers_are_constraints(db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        cid = await conn.fetchval("INSERT INTO customers (name) VALUES ('T') RETURNING id")
        conv = await conn.fetchval(
            "INSERT INTO conversations (customer_id, initial_channel, current_channel) VALUES ($1, 'email', 'email') RETURNING id", cid)
        ins = ("INSERT INTO messages (conversation_id, customer_id, channel, direction, role, content, channel_message_id) "
               "VALUES ($1, $2, 'email', 'inbound', 'customer', 'hi', 'gmail-1')")
        await conn.execute(ins, conv, cid)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(ins, conv, cid)
        # gapless numbering: a rolled-back ticket does not use up a number
        tx = conn.transaction()
        await tx.start()
        assert await conn.fetchval(
            "INSERT INTO tickets (customer_id, subject, source_channel) VALUES ($1, 's', 'email') RETURNING ticket_number", cid) == "TKT-0001"
        await tx.rollback()
        assert await conn.fetchval(
            "INSERT INTO tickets (customer_id, subject, source_channel) VALUES ($1, 's', 'email') RETURNING ticket_number", cid) == "TKT-0001"
    finally:
        await conn.close()


def test_bad_configuration_fails_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env["CRM_DEFAULT_REGION"] = "Narnia"
    out = subprocess.run([sys.executable, "-m", "crm_mcp.server.cli", "migrate"], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0, out.stderr
    assert "CRM_DEFAULT_REGION" in out.stderr


def test_http_refuses_non_loopback_bind() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env["CRM_DATABASE_URL"] = "postgresql://127.0.0.1:1/none"
    out = subprocess.run([sys.executable, "-m", "crm_mcp.server.cli", "serve", "--http", "--host", "0.0.0.0", "--no-auth"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "loopback" in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_http_transport_and_origin_check(db_dsn: str) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "crm_mcp.server.cli", "serve", "--http", "--no-auth", "--port", str(port)],
        env=server_env(db_dsn), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                try:
                    await http.get(url, timeout=0.5)
                    break
                except httpx.TransportError:
                    await anyio.sleep(0.05)
            init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                    "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                               "clientInfo": {"name": "t", "version": "0"}}}
            headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
            evil = await http.post(url, json=init, headers={**headers, "Origin": "http://evil.example"})
            assert evil.status_code == 403
            rebinding = await http.post(url, json=init, headers={**headers, "Host": "evil.example"})
            assert rebinding.status_code in (403, 421)
        for mode in ("auto", "legacy"):
            async with Client(url, mode=mode) as client:  # type: ignore[arg-type]
                names = [t.name for t in (await client.list_tools()).tools]
                assert "find_customer" in names
                made = await call(client, "upsert_customer", email=f"http-{mode}@example.com")
                found = await call(client, "find_customer", query=f"http-{mode}@example.com")
                assert found["matches"][0]["customer_id"] == made["customer"]["customer_id"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:] if proc.stderr else ""


def test_embedded_data_dir_shared_by_several_processes() -> None:
    """Three of our processes use one embedded data dir at once; data persists between runs and
    the server stops when the last one exits."""
    with tempfile.TemporaryDirectory(prefix="crm-shared-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
        env.update({"CRM_DATA_DIR": tmp, "CRM_LOG_LEVEL": "WARNING"})
        script = (
            "import anyio, sys\n"
            "from crm_mcp.server.config import load_settings\n"
            "from crm_mcp.server.app import open_crm\n"
            "async def main():\n"
            "    async with open_crm(load_settings()) as crm:\n"
            "        async with crm.pool.acquire() as c:\n"
            "            await c.execute(\"INSERT INTO customers (name) VALUES ($1)\", sys.argv[1])\n"
            "        await anyio.sleep(1.5)\n"
            "        async with crm.pool.acquire() as c:\n"
            "            print(await c.fetchval('SELECT count(*) FROM customers'))\n"
            "anyio.run(main)\n"
        )
        procs = [subprocess.Popen([sys.executable, "-c", script, f"p{i}"], env=env, cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], outs
        assert max(int(o[0].strip()) for o in outs) == 3
        pgdata = Path(tmp) / "pgdata"
        # the last process out stopped the server
        deadline = time.monotonic() + 10
        while (pgdata / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not (pgdata / "postmaster.pid").exists()
        # data persisted: a new process sees the three rows
        status = subprocess.run([sys.executable, "-m", "crm_mcp.server.cli", "db", "status"], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["counts"]["customers"] == 3


async def test_serve_demo_answers_both_eras(db_dsn: str) -> None:
    """`crm-mcp serve --demo`: demo data loaded once, tools/list and find_customer in both eras."""
    from .conftest import mcp_client

    demo = json.loads((REPO / "server" / "demo" / "demo_data.json").read_text())
    first = demo["customers"][0]
    email = next(i["value"] for i in first["identities"] if i["kind"] == "email")
    for mode in ("auto", "legacy"):
        async with mcp_client(db_dsn, "--demo", mode=mode) as client:
            assert len((await client.list_tools()).tools) >= 15
            found = await call(client, "find_customer", query=email)
            assert found["matches"][0]["name"] == untrusted(first["name"], source="customer.name")
            kb = await call(client, "search_knowledge_base", query="how do I reset my password")
            assert kb["results"] and not kb["nothing_relevant"]
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM customers") == len(demo["customers"])  # loaded once
        assert await conn.fetchval("SELECT count(*) FROM knowledge_base") >= 20
    finally:
        await conn.close()
