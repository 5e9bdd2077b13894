"""A database that is down, locked or frozen: tools, prompts and completions answer within the
stated timeout with the clear "temporarily unavailable, retry" error; identity completions need a
prefix of at least three characters."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import anyio
import asyncpg
import psutil
import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import PromptReference

from .conftest import call, mcp_client
from .test_faults import _forget_pgserver_handle

pytestmark = pytest.mark.anyio

FAST = {"CRM_STATEMENT_TIMEOUT_MS": "1000"}  # the deadline is then 2 s
BRIEF = PromptReference(name="customer_brief")


async def _values(client, value: str) -> list[str]:
    return (await client.complete(BRIEF, {"name": "customer", "value": value})).completion.values


async def test_identity_completion_needs_three_characters(db_dsn: str) -> None:
    async with mcp_client(db_dsn) as client:
        await call(client, "ingest_message", channel="whatsapp", channel_message_id="c1",
                   sender={"whatsapp": "+12025550143", "email": "zoe@example.com"}, content="Hello")
        assert await _values(client, "z") == []
        assert await _values(client, "zo") == []
        assert await _values(client, "+1") == []
        assert await _values(client, "zoe") == ["zoe@example.com"]
        assert await _values(client, "+1202") == ["+12025550143"]


async def _timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.monotonic()
    try:
        out: object = await fn(*args, **kwargs)
    except MCPError as exc:
        out = exc
    return time.monotonic() - start, out


async def _assert_all_unavailable(client, *, within: float) -> None:
    took, res = await _timed(client.call_tool, "find_customer", {"query": "zoe@example.com"})
    assert took < within, f"find_customer took {took:.1f} s"
    text = " ".join(getattr(c, "text", "") for c in res.content)  # type: ignore[attr-defined]
    assert res.is_error and "temporarily unavailable" in text and "Retry" in text, text  # type: ignore[attr-defined]

    took, res = await _timed(client.get_prompt, "customer_brief", {"customer": "zoe@example.com"})
    assert took < within, f"customer_brief took {took:.1f} s"
    assert isinstance(res, MCPError) and "temporarily unavailable" in str(res) and "Retry" in str(res), res

    took, res = await _timed(client.complete, BRIEF, {"name": "customer", "value": "zoe@"})
    assert took < within, f"completion took {took:.1f} s"
    assert isinstance(res, MCPError) and "temporarily unavailable" in str(res), res

    took, res = await _timed(client.read_resource, "crm://metrics/summary")
    assert took < within, f"resource read took {took:.1f} s"
    assert isinstance(res, MCPError) and "temporarily unavailable" in str(res) and "Retry" in str(res), res


async def test_locked_tables_answer_within_the_timeout(db_dsn: str) -> None:
    async with mcp_client(db_dsn, **FAST) as client:
        await call(client, "ingest_message", channel="email", channel_message_id="l1",
                   sender={"email": "zoe@example.com"}, content="Hello")
        locker = await asyncpg.connect(db_dsn)
        try:
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE customers, customer_identifiers, tickets IN ACCESS EXCLUSIVE MODE")
            await _assert_all_unavailable(client, within=2.5)
            await tx.rollback()
        finally:
            await locker.close()
        found = await call(client, "find_customer", query="zoe@example.com")  # recovers at once
        assert found["matches"]


@pytest.mark.skipif(bool(os.environ.get("CRM_TEST_DATABASE_URL") or os.environ.get("CRM_TEST_DOCKER")),
                    reason="needs the local embedded PostgreSQL to SIGSTOP its backends")
async def test_frozen_backend_answers_within_the_timeout(db_dsn: str) -> None:
    async with mcp_client(db_dsn, CRM_POOL_MAX_SIZE="2", **FAST) as client:
        await call(client, "ingest_message", channel="email", channel_message_id="f1",
                   sender={"email": "zoe@example.com"}, content="Hello")
        admin = await asyncpg.connect(db_dsn)
        frozen: list[int] = []
        try:
            # Freeze the postmaster (no new connection gets through) and the server's backends.
            async def freeze() -> None:
                while True:
                    pids = [r["pid"] for r in await admin.fetch(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'crm-mcp'")]
                    if not frozen and pids:
                        pids.insert(0, psutil.Process(pids[0]).ppid())
                    for pid in pids:
                        if pid not in frozen:
                            os.kill(pid, signal.SIGSTOP)
                            frozen.append(pid)
                    await anyio.sleep(0.05)

            async with anyio.create_task_group() as tg:
                tg.start_soon(freeze)
                await anyio.sleep(0.3)
                assert frozen
                await _assert_all_unavailable(client, within=3.0)
                tg.cancel_scope.cancel()
        finally:
            for pid in frozen:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            await admin.close()
        with anyio.fail_after(30):
            while True:  # the server recovers once the backends run again
                res = await client.call_tool("find_customer", {"query": "zoe@example.com"})
                if not res.is_error:
                    break
                await anyio.sleep(0.5)


async def test_database_down_prompts_and_completions_say_so() -> None:
    from crm_mcp.server.config import load_settings
    from crm_mcp.server.db import embedded_pgdata, start_embedded, stop_embedded

    tmp = Path(tempfile.mkdtemp(prefix="crm-down-"))
    settings = load_settings(data_dir=tmp)
    pgdata = embedded_pgdata(settings)
    try:
        dsn = await anyio.to_thread.run_sync(start_embedded, settings)
        async with mcp_client(dsn, **FAST) as client:
            await call(client, "ingest_message", channel="email", channel_message_id="d1",
                       sender={"email": "zoe@example.com"}, content="Hello")
            await anyio.to_thread.run_sync(stop_embedded, pgdata)
            await _assert_all_unavailable(client, within=5.0)
    finally:
        await anyio.to_thread.run_sync(stop_embedded, pgdata)
        _forget_pgserver_handle(pgdata)
        shutil.rmtree(tmp, ignore_errors=True)
