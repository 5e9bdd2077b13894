"""Logs name ids, never personal data: a server at DEBUG ingests, looks up, replies and fails on
a distinctive customer, and none of the customer's email, phone, name or words reach stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from .conftest import REPO, server_env
from .test_stdio_errors import RawServer, _initialize, _stop

pytestmark = pytest.mark.anyio

EMAIL = "quintessa.vandermolen@example.org"
PHONE = "+12025550177"
NAME = "Quintessa Vandermolen"
WORDS = "zebrafish marmalade invoice"


async def _tool(server: RawServer, rid: str, tool: str, args: dict) -> dict:
    await server.send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                                  "params": {"name": tool, "arguments": args}}).encode())
    reply = await server.recv(timeout=60)
    assert reply["id"] == rid
    return reply


async def test_debug_logs_carry_no_personal_data(db_dsn: str, tmp_path: Path) -> None:
    err = tmp_path / "server.stderr"
    with err.open("wb") as errfile:
        proc = await anyio.open_process(
            [sys.executable, "-m", "crm_mcp.server.cli", "serve"], env=server_env(db_dsn, CRM_LOG_LEVEL="DEBUG"),
            cwd=str(REPO), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errfile)
        server = RawServer(proc)
        try:
            await _initialize(server)
            calls = [
                ("ingest_message", {"channel": "email", "channel_message_id": "pii-1", "content": f"My {WORDS} is missing",
                                    "sender": {"email": EMAIL, "phone": PHONE, "name": NAME}}),
                ("find_customer", {"query": EMAIL}),
                ("find_customer", {"query": PHONE}),
                ("upsert_customer", {"email": EMAIL, "name": NAME, "company": NAME + " Ltd"}),
                ("list_tickets", {}),
                # a failing call too: validation errors must not echo the values either
                ("upsert_customer", {"email": EMAIL, "phone": "not a phone " + NAME}),
            ]
            replies = []
            for i, (tool, args) in enumerate(calls):
                await server.send(json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                              "params": {"name": tool, "arguments": args}}).encode())
                reply = await server.recv(timeout=60)
                assert reply["id"] == i
                replies.append(reply)
                if tool == "list_tickets":  # an identity conflict: another customer claims the email
                    other = await _tool(server, "other", "upsert_customer", {"email": "someone.else@example.net"})
                    conflict = await _tool(server, "conflict", "upsert_customer",
                                           {"customer_id": other["result"]["structuredContent"]["customer"]["customer_id"], "email": EMAIL})
                    assert conflict["result"]["isError"] and "already belongs" in conflict["result"]["content"][0]["text"]
            await server.send(json.dumps({"jsonrpc": "2.0", "id": "c", "method": "completion/complete", "params": {
                "ref": {"type": "ref/prompt", "name": "customer_brief"},
                "argument": {"name": "customer", "value": EMAIL[:10]}}}).encode())
            assert (await server.recv())["id"] == "c"
        finally:
            await _stop(proc)
    log = err.read_text(errors="replace")
    assert "DEBUG" in log  # the level took effect: there is something to search
    lowered = log.lower()
    for secret in (EMAIL, EMAIL.split("@")[0], PHONE, PHONE[2:], NAME, "Vandermolen", "zebrafish"):
        assert secret.lower() not in lowered, f"{secret!r} found in the server log"
