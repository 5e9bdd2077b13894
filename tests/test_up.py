"""`crm-mcp up`: one command runs the desk. It mints tokens, starts the MCP HTTP server (locked:
401 without a token) and the web form, prints where each listens, restarts a component that dies,
and on SIGINT stops everything and revokes the tokens it minted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import asyncpg
import httpx
import pytest

from .conftest import REPO, server_env
from .shopify_fake import sign, webhook_order
from .webform_helpers import SECRET, TICKET_RE, free_port, good_form, open_form

SHOPIFY_SECRET = "shopify-app-secret-for-up"
pytestmark = pytest.mark.anyio
LISTEN = re.compile(r"crm-mcp up: (\S+)\s+(http://\S+)")


def _children_matching(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmd:
                pids.append(int(entry.name))
    return pids


def _read_until(proc: subprocess.Popen, want: dict[str, str], names: set[str], timeout: float, lines: list[str]) -> None:
    deadline = time.monotonic() + timeout
    while not names <= set(want):
        assert time.monotonic() < deadline, f"components not up in {timeout:.0f} s: {lines}"
        assert proc.poll() is None, f"crm-mcp up exited: {lines}"
        line = proc.stdout.readline()  # type: ignore[union-attr]
        lines.append(line.rstrip())
        if m := LISTEN.search(line):
            want[m.group(1)] = m.group(2)


def _up(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "crm_mcp.server.cli", "up", *args], env=env, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C, as a person stops the desk; the whole group is killed only if up does not stop in time."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


async def test_up_runs_the_desk_restarts_a_dead_component_and_stops_cleanly(db_dsn: str) -> None:
    port, wf_port = free_port(), free_port()
    env = server_env(db_dsn, CRM_WEBFORM_SECRET=SECRET, CRM_LOG_LEVEL="WARNING")
    proc = _up(env, "--port", str(port), "--webform-port", str(wf_port))
    lines: list[str] = []
    try:
        urls: dict[str, str] = {}
        _read_until(proc, urls, {"mcp-server", "webform"}, 120, lines)
        assert any(re.search(r"crm-mcp up: agent\s+answering through http://127\.0\.0\.1:%d/mcp" % port, ln) for ln in lines), lines
        assert urls["mcp-server"] == f"http://127.0.0.1:{port}/mcp"
        with httpx.Client(timeout=30) as browser:
            # the MCP door is locked: no token, 401 with the metadata pointer
            locked = browser.post(urls["mcp-server"], json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
            assert locked.status_code == 401 and "resource_metadata" in locked.headers["www-authenticate"]
            # the web form reaches the CRM with the token up minted for it
            base = urls["webform"].rstrip("/")
            done = browser.post(f"{base}/", data=good_form(open_form(browser, base)))
            assert done.status_code == 200 and TICKET_RE.search(done.text), done.text
            # the desk's agent (its own minted token, role agent) answers the customer
            number = TICKET_RE.search(done.text).group(1)
            conn = await asyncpg.connect(db_dsn)
            try:
                deadline = time.monotonic() + 60
                while not await conn.fetchval(
                        "SELECT count(*) FROM messages m JOIN tickets t ON t.conversation_id = m.conversation_id "
                        "WHERE t.ticket_number = $1 AND m.role = 'agent'", number):
                    assert time.monotonic() < deadline, f"the desk's agent did not answer {number}: {lines}"
                    await anyio.sleep(0.2)
            finally:
                await conn.close()

            # kill the web form: the supervisor starts it again
            [victim] = _children_matching(f"webform --host 127.0.0.1 --port {wf_port}")
            os.kill(victim, signal.SIGKILL)
            again: dict[str, str] = {}
            _read_until(proc, again, {"webform"}, 90, lines)
            assert any("restart 1" in ln for ln in lines[-3:]), lines
            assert browser.get(f"{base}/healthz").status_code == 200
    finally:
        _stop(proc)
    assert proc.returncode == 0, lines
    assert not _children_matching(f"--port {wf_port}") and not _children_matching(f"--port {port}"), "children left running"
    conn = await asyncpg.connect(db_dsn)
    try:
        tokens = await conn.fetch("SELECT name, role, revoked_at FROM api_tokens WHERE name LIKE 'up-%'")
    finally:
        await conn.close()
    # each component's token has the least role it needs: bridge for the form, agent for the agent
    assert tokens and all(t["role"] == ("agent" if t["name"].startswith("up-agent-") else "bridge")
                          and t["revoked_at"] is not None for t in tokens), tokens
    assert {t["role"] for t in tokens} == {"bridge", "agent"}, tokens


async def test_up_starts_the_bridges_whose_settings_are_present(db_dsn: str) -> None:
    """WhatsApp settings present: `up` runs the WhatsApp bridge with a token of its own (Meta's
    verification handshake answers through it). Shopify settings present: `up` runs the webhook
    bridge and gives the server the store_sync toolset it needs (a signed order webhook is
    stored). Email settings present but wrong: one line says why it was not started, instead of
    a bridge that exits and restarts forever."""
    port, wf_port, wa_port, em_port, sh_port = free_port(), free_port(), free_port(), free_port(), free_port()
    env = server_env(db_dsn, CRM_WEBFORM_SECRET=SECRET, CRM_LOG_LEVEL="WARNING",
                     META_APP_SECRET="app-secret-0123456789", META_VERIFY_TOKEN="verify-me", META_ACCESS_TOKEN="meta-access",
                     META_PHONE_NUMBER_ID="1234567890", META_GRAPH_BASE="http://127.0.0.1:9",
                     CRM_SUPPORT_ADDRESS="not-an-address", SHOPIFY_WEBHOOK_SECRET=SHOPIFY_SECRET)
    proc = _up(env, "--port", str(port), "--webform-port", str(wf_port), "--whatsapp-port", str(wa_port),
               "--email-port", str(em_port), "--shopify-port", str(sh_port))
    lines: list[str] = []
    try:
        urls: dict[str, str] = {}
        _read_until(proc, urls, {"mcp-server", "webform", "whatsapp", "shopify"}, 120, lines)
        assert urls["whatsapp"] == f"http://127.0.0.1:{wa_port}/"
        assert urls["shopify"] == f"http://127.0.0.1:{sh_port}/"
        assert any("email not started: CRM_SUPPORT_ADDRESS='not-an-address'" in ln for ln in lines), lines
        assert not _children_matching(f"--port {em_port}")
        with httpx.Client(timeout=30) as client:
            meta = f"http://127.0.0.1:{wa_port}/meta"
            ok = client.get(meta, params={"hub.mode": "subscribe", "hub.verify_token": "verify-me", "hub.challenge": "4711"})
            assert ok.status_code == 200 and ok.text == "4711"
            assert client.get(meta, params={"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"}).status_code == 403
            order = webhook_order(41, "2026-11-30T09:00:00Z")
            body = json.dumps(order).encode()
            stored = client.post(f"http://127.0.0.1:{sh_port}/shopify/webhooks", content=body, headers={
                "X-Shopify-Topic": "orders/create", "X-Shopify-Webhook-Id": "up-1", "Content-Type": "application/json",
                "X-Shopify-Hmac-Sha256": sign(body, SHOPIFY_SECRET)})
            assert stored.status_code == 200 and stored.json()["outcome"] == "created", stored.text
    finally:
        _stop(proc)
    assert proc.returncode == 0, lines
    assert not _children_matching(f"--port {wa_port}"), "the WhatsApp bridge was left running"
    assert not _children_matching(f"--port {sh_port}"), "the Shopify bridge was left running"
    conn = await asyncpg.connect(db_dsn)
    try:
        [wa] = await conn.fetch("SELECT role, revoked_at FROM api_tokens WHERE name LIKE 'up-whatsapp-%'")
        [sh] = await conn.fetch("SELECT role, revoked_at FROM api_tokens WHERE name LIKE 'up-shopify-%'")
        assert not await conn.fetchval("SELECT count(*) FROM api_tokens WHERE name LIKE 'up-email-%'")
        assert await conn.fetchval("SELECT count(*) FROM orders WHERE order_number = '#1041'") == 1
    finally:
        await conn.close()
    assert wa["role"] == "bridge" and wa["revoked_at"] is not None
    assert sh["role"] == "bridge" and sh["revoked_at"] is not None
