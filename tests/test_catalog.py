"""The tool catalog as clients see it: annotations on every tool, structured output schemas,
read-only mode and toolsets, and clean shutdown of the stdio server. The schema snapshots are in
test_contracts.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from .conftest import REPO, mcp_client, server_env

pytestmark = pytest.mark.anyio


async def test_every_tool_is_annotated_described_and_structured(db_dsn: str, mode: str) -> None:
    async with mcp_client(db_dsn, mode=mode) as client:
        tools = (await client.list_tools()).tools
    assert 10 <= len(tools) <= 25
    for t in tools:
        a = t.annotations
        assert a is not None, t.name
        for hint in (a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint):
            assert hint is not None, f"{t.name} misses an annotation"
        assert len(t.description or "") >= 120, f"{t.name}: description too thin"
        assert t.output_schema and t.output_schema.get("type") == "object", t.name
        props = t.input_schema.get("properties", {})
        for pname, p in props.items():
            assert p.get("description"), f"{t.name}.{pname} has no description"
    names = [t.name for t in tools]
    assert all(n.count("_") >= 1 and n == n.lower() for n in names)  # verb_noun


async def test_read_only_mode_wins_over_toolsets(db_dsn: str) -> None:
    async with mcp_client(db_dsn, "--read-only", "--toolsets", "customers,tickets") as client:
        tools = (await client.list_tools()).tools
        names = {t.name for t in tools}
        assert "find_customer" in names and "list_tickets" in names
        assert all(t.annotations.read_only_hint for t in tools)
        assert "upsert_customer" not in names and "ingest_message" not in names
        res = await client.call_tool("upsert_customer", {"email": "a@example.com"})
        assert res.is_error
    async with mcp_client(db_dsn, CRM_TOOLSETS="tickets") as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names and all(n in {"create_ticket", "get_ticket", "list_tickets", "update_ticket", "escalate_to_human"} for n in names)


def _wait(proc: subprocess.Popen, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return proc.returncode
        time.sleep(0.05)
    return None


@pytest.mark.parametrize("how", ["stdin-closed", "SIGTERM", "SIGINT"])
async def test_stdio_server_shuts_down_cleanly(db_dsn: str, how: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "crm_mcp.server.cli", "serve"], env=server_env(db_dsn, CRM_LOG_LEVEL="INFO"),
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
        assert proc.stdin and proc.stdout
        proc.stdin.write((json.dumps(init) + "\n").encode())
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert json.loads(line)["id"] == 1  # the first and only thing on stdout is MCP
        if how == "stdin-closed":
            proc.stdin.close()
        else:
            proc.send_signal(getattr(signal, how))
        code = _wait(proc, 15)
        assert code == 0, proc.stderr.read().decode()[-2000:] if proc.stderr else code
        assert proc.stdout.read() == b""  # nothing but MCP ever went to stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_tool_errors_carry_one_prefix_and_no_caller_values(db_dsn: str) -> None:
    """Validation happens once (the input model), so the message is ours alone: no "Error
    executing tool ..." stacked on "Invalid arguments for ...", and never the rejected value."""
    async with mcp_client(db_dsn) as client:
        res = await client.call_tool("get_metrics", {"window": "fortnight-SECRET"})
        text = " ".join(getattr(c, "text", "") for c in res.content)
        assert res.is_error
        assert text.startswith("Invalid arguments for get_metrics: `window`"), text
        assert "Error executing tool" not in text and "SECRET" not in text
        res = await client.call_tool("get_ticket", {"ticket_number": "banana"})
        text = " ".join(getattr(c, "text", "") for c in res.content)
        assert res.is_error and text.startswith("ticket_number must look like TKT-0042"), text
