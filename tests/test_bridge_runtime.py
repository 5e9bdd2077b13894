"""The bridge runtime (channel_bridges): it talks MCP only, survives the CRM going away, retries
transient channel failures honouring Retry-After, marks permanent ones failed, and a bridge
killed mid-delivery loses nothing and sends nothing twice."""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import asyncpg
import pytest

from crm_mcp.channel_bridges.connection import CrmTarget
from crm_mcp.channel_bridges.delivery import (Delivered, OutboundPart, PermanentDeliveryError, TransientDeliveryError,
                                              http_failure)
from crm_mcp.channel_bridges.retry import Backoff, parse_retry_after
from crm_mcp.channel_bridges.runtime import Bridge

from .conftest import REPO, call, mcp_client, server_env
from .webform_helpers import TOKENS, bridge_token, crm_http, free_port

pytestmark = pytest.mark.anyio

# A bridge process whose "channel" is a log file: `start <id>` when a send begins, `sent <id>`
# when the provider accepted it. Delivery takes DELAY seconds, so a test can kill it mid-send.
CHILD = r"""
import os, sys, anyio
from crm_mcp.channel_bridges.connection import CrmTarget
from crm_mcp.channel_bridges.delivery import Delivered
from crm_mcp.channel_bridges.logs import configure
from crm_mcp.channel_bridges.runtime import Bridge

LOG = os.environ["CHANNEL_LOG"]

def note(line):
    with open(LOG, "a") as f:
        f.write(line + "\n"); f.flush(); os.fsync(f.fileno())

async def deliver(part):
    note(f"start {part.message_id}")
    await anyio.sleep(float(os.environ["DELAY"]))
    note(f"sent {part.message_id}")
    return Delivered(provider_message_id="prov-" + part.message_id, status="sent")

configure("INFO")
bridge = Bridge(channel="web_form", deliver=deliver, target=CrmTarget.from_env(), lease_s=5, wait_s=2, batch=int(os.environ.get("BATCH", "10")))
anyio.run(bridge.run)
"""


def test_channel_bridges_import_nothing_of_the_server_or_the_tools() -> None:
    root = REPO / "channel_bridges"
    offenders = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names
                          if n.startswith(("crm_mcp.server", "crm_mcp.tools", "crm_mcp.resources", "server", "tools"))]
    assert not offenders, offenders
    assert (root / "runtime.py").is_file() and (root / "webform" / "app.py").is_file()


def test_backoff_and_retry_after() -> None:
    b = Backoff(base_s=1, cap_s=8)
    for attempt in range(10):
        d = b.delay(attempt)
        assert 0.5 <= d <= min(8, 2 ** attempt)
    assert len({round(b.delay(5), 6) for _ in range(20)}) > 1, "jittered"
    assert b.delay(3, retry_after_s=7) == 7
    assert parse_retry_after("120") == 120.0
    assert 59 <= parse_retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))) <= 61
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert isinstance(http_failure(429, "Too Many Requests", "3"), TransientDeliveryError)
    assert http_failure(429, "x", "3").retry_after_s == 3.0
    assert isinstance(http_failure(503, "Unavailable"), TransientDeliveryError)
    assert isinstance(http_failure(400, "invalid number"), PermanentDeliveryError)


async def _queue_replies(dsn: str, n: int) -> list[str]:
    async with mcp_client(dsn) as agent:
        ing = await call(agent, "ingest_message", channel="web_form", channel_message_id="rt-1",
                         sender={"email": "kim@example.com", "name": "Kim"}, content="Is my refund on its way?")
        ids = []
        for i in range(n):
            sent = await call(agent, "send_response", ticket_number=ing["ticket"]["ticket_number"], body=f"Update {i}")
            ids.append(sent["parts"][0]["message_id"])
    return ids


async def test_transient_failures_retry_honouring_retry_after_and_permanent_ones_fail_with_a_note(db_dsn: str) -> None:
    ok_id, bad_id = await _queue_replies(db_dsn, 2)
    tries: dict[str, list[float]] = {ok_id: [], bad_id: []}

    async def deliver(part: OutboundPart) -> Delivered:
        tries[part.message_id].append(time.monotonic())
        if part.message_id == bad_id:
            raise PermanentDeliveryError("HTTP 400: 21211 invalid 'To' number")
        if len(tries[ok_id]) == 1:
            raise TransientDeliveryError("HTTP 429: slow down", retry_after_s=1.5)
        if len(tries[ok_id]) == 2:
            raise TimeoutError("provider timed out")
        return Delivered(provider_message_id="prov-1", status="sent")

    bridge = Bridge(channel="web_form", deliver=deliver, target=CrmTarget(env=server_env(db_dsn)), wait_s=1,
                    backoff=Backoff(base_s=0.2, cap_s=1))
    async with bridge.connected(), anyio.create_task_group() as tg:
        tg.start_soon(bridge.delivery_loop)
        with anyio.fail_after(60):
            while bridge.stats.delivered + bridge.stats.failed < 2:
                await anyio.sleep(0.1)
        bridge.stop()
    t = tries[ok_id]
    assert len(t) == 3 and t[1] - t[0] >= 1.45, "the second try waited for Retry-After"
    assert len(tries[bad_id]) == 1, "a permanent failure is not retried"
    assert bridge.stats.retried == 2
    conn = await asyncpg.connect(db_dsn)
    try:
        rows = {str(r["id"]): r for r in await conn.fetch("SELECT id, delivery_status, channel_message_id, delivery_error FROM messages "
                                                          "WHERE direction = 'outbound'")}
        notes = await conn.fetch("SELECT note FROM ticket_events WHERE kind = 'note'")
    finally:
        await conn.close()
    assert rows[ok_id]["delivery_status"] == "sent" and rows[ok_id]["channel_message_id"] == "prov-1"
    assert rows[bad_id]["delivery_status"] == "failed" and "21211" in rows[bad_id]["delivery_error"]
    assert len(notes) == 1 and "21211 invalid 'To' number" in notes[0]["note"]


async def test_ingest_waits_out_an_unreachable_crm_and_reconnects(db_dsn: str, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    TOKENS[db_dsn, url] = token = bridge_token(db_dsn, f"test-bridge-{port}")  # minted before the server is up
    bridge = Bridge(channel="web_form", deliver=lambda p: None, target=CrmTarget(server_url=url, token=token),  # type: ignore[arg-type,return-value]
                    ingest_timeout_s=90, backoff=Backoff(base_s=0.2, cap_s=1))
    result: dict = {}
    async with bridge.connected():
        assert bridge.crm is not None

        async def send() -> None:
            result.update(await bridge.ingest(channel_message_id="offline-1", sender={"email": "lee@example.com"},
                                              content="Hello from while the CRM was down"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            await anyio.sleep(2)
            assert not bridge.crm.connected and bridge.health()["status"] == "unavailable" and not result
            with crm_http(db_dsn, tmp_path, port=port):
                with anyio.fail_after(60):
                    while not result:
                        await anyio.sleep(0.1)
                assert bridge.health()["status"] == "ok"
    assert result["duplicate"] is False and result["ticket"]["ticket_number"].startswith("TKT-")


def _lines(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()) for line in path.read_text().splitlines()] if path.exists() else []  # type: ignore[misc]


def _child(url: str, dsn: str, log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD], cwd=str(REPO),
                            env=server_env(dsn, CRM_SERVER_URL=url, CRM_TOKEN=TOKENS[dsn, url], CHANNEL_LOG=str(log), **env),
                            stdout=subprocess.DEVNULL, stderr=open(log.with_suffix(".stderr"), "ab"))


async def _wait_for(pred, timeout: float = 60) -> None:
    with anyio.fail_after(timeout):
        while not pred():
            await anyio.sleep(0.05)


async def test_a_bridge_killed_mid_delivery_loses_nothing_and_sends_nothing_twice(db_dsn: str, tmp_path: Path) -> None:
    ids = await _queue_replies(db_dsn, 4)
    log = tmp_path / "channel.log"
    with crm_http(db_dsn, tmp_path) as url:
        first = _child(url, db_dsn, log, DELAY="3")
        try:
            await _wait_for(lambda: any(kind == "start" for kind, _ in _lines(log)))
            first.send_signal(signal.SIGKILL)  # mid-send: started, not yet accepted by the channel
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
        killed = _lines(log)
        assert killed == [("start", ids[0])], killed
        second = _child(url, db_dsn, log, DELAY="0.1")
        try:
            await _wait_for(lambda: {i for kind, i in _lines(log) if kind == "sent"} == set(ids), timeout=90)
            await anyio.sleep(1)  # a second send would show up here
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(20)
    sent = [i for kind, i in _lines(log) if kind == "sent"]
    assert sorted(sent) == sorted(ids), "every reply sent exactly once"
    conn = await asyncpg.connect(db_dsn)
    try:
        rows = {str(r["id"]): r for r in await conn.fetch(
            "SELECT id, delivery_status, channel_message_id, delivery_attempts, lease_until FROM messages WHERE direction = 'outbound'")}
    finally:
        await conn.close()
    assert all(r["delivery_status"] == "sent" and r["channel_message_id"] == f"prov-{i}" and r["lease_until"] is None
               for i, r in rows.items()), rows
    assert rows[ids[0]]["delivery_attempts"] == 2, "the killed bridge's claim lapsed and was claimed again"


async def test_sigterm_lets_the_delivery_in_hand_finish_and_leaves_the_rest_pending(db_dsn: str, tmp_path: Path) -> None:
    ids = await _queue_replies(db_dsn, 3)
    log = tmp_path / "channel.log"
    with crm_http(db_dsn, tmp_path) as url:
        proc = _child(url, db_dsn, log, DELAY="2", BATCH="3")
        try:
            await _wait_for(lambda: bool(_lines(log)))
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert _lines(log) == [("start", ids[0]), ("sent", ids[0])]
    conn = await asyncpg.connect(db_dsn)
    try:
        status = {str(r["id"]): r["delivery_status"] for r in await conn.fetch("SELECT id, delivery_status FROM messages WHERE direction = 'outbound'")}
    finally:
        await conn.close()
    assert status == {ids[0]: "sent", ids[1]: "pending", ids[2]: "pending"}
