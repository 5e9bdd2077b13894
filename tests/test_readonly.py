"""--read-only holds at the database layer: no writing background job, every pooled connection
read-only, no migrations, no demo load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import asyncpg
import pytest

from .conftest import REPO, call, mcp_client, server_env

pytestmark = pytest.mark.anyio


async def test_sla_sweep_does_not_run_in_read_only_mode(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        r = await call(client, "ingest_message", channel="email", channel_message_id="ro1",
                       sender={"email": "ro@example.com"}, content="How do I add a teammate?")
    n = r["ticket"]["ticket_number"]
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute("UPDATE tickets SET sla_due_at = now() - interval '2 hours' WHERE ticket_number = $1", n)
        before = await conn.fetchval("SELECT count(*) FROM ticket_events")
        async with mcp_client(db_dsn, "--read-only", CRM_SLA_CHECK_INTERVAL_S="0.2") as client:
            await anyio.sleep(1.5)  # several sweep intervals
            t = await call(client, "get_ticket", ticket_number=n)
        assert t["ticket"]["status"] == "open"
        row = await conn.fetchrow("SELECT status, sla_breached_at FROM tickets WHERE ticket_number = $1", n)
        assert row["status"] == "open" and row["sla_breached_at"] is None
        assert await conn.fetchval("SELECT count(*) FROM ticket_events") == before
        assert await conn.fetchval("SELECT count(*) FROM agent_metrics WHERE metric_type = 'escalation'") == 0
    finally:
        await conn.close()


async def test_read_only_pool_refuses_writes(db_dsn: str) -> None:
    from crm_mcp.server.config import load_settings
    from crm_mcp.server.db import create_pool

    pool = await create_pool(load_settings(database_url=db_dsn, read_only=True), db_dsn)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM customers") == 0  # reads work
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await conn.execute("INSERT INTO customers (name) VALUES ('x')")
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                async with conn.transaction():
                    await conn.execute("UPDATE channel_configs SET is_enabled = false")
    finally:
        await pool.close()


def _serve(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crm_mcp.server.cli", "serve", *args], env=env, cwd=str(REPO),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def test_read_only_demo_is_refused_before_creating_anything(tmp_path: Path) -> None:
    env = server_env("", CRM_DATA_DIR=str(tmp_path / "data"))
    del env["CRM_DATABASE_URL"]
    proc = _serve("--read-only", "--demo", env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--read-only" in lines[0] and "seed-demo" in lines[0], proc.stderr
    assert not (tmp_path / "data").exists()


def test_read_only_does_not_create_an_embedded_database(tmp_path: Path) -> None:
    env = server_env("", CRM_DATA_DIR=str(tmp_path / "data"))
    del env["CRM_DATABASE_URL"]
    proc = _serve("--read-only", env=env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "crm-mcp migrate" in lines[0], proc.stderr
    assert not (tmp_path / "data" / "pgdata").exists()


async def test_read_only_refuses_a_missing_schema_instead_of_migrating(empty_dsn: str) -> None:
    proc = await anyio.to_thread.run_sync(lambda: _serve("--read-only", env=server_env(empty_dsn)))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "crm-mcp migrate" in lines[0] and "not applied" in lines[0], proc.stderr
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await conn.close()


async def test_read_only_refuses_a_schema_behind(db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute("DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM schema_migrations)")
    finally:
        await conn.close()
    proc = await anyio.to_thread.run_sync(lambda: _serve("--read-only", env=server_env(db_dsn)))
    assert proc.returncode == 1 and "crm-mcp migrate" in proc.stderr, proc.stderr


def test_unreachable_database_is_one_line() -> None:
    proc = _serve(env=server_env("postgresql://crm:secret@127.0.0.1:1/crm"))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to PostgreSQL" in lines[0] and "CRM_DATABASE_URL" in lines[0], proc.stderr
    assert "secret" not in proc.stderr
