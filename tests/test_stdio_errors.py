"""Raw stdio: every line the server cannot take as a JSON-RPC message gets the JSON-RPC error
answer (-32700 Parse error / -32600 Invalid Request, id null) instead of silence, and a normal
request still works afterwards. Lines are written straight to a server subprocess's stdin."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from crm_mcp.server.stdio import LINE_LIMIT

from .conftest import REPO, server_env

pytestmark = pytest.mark.anyio

PARSE = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}
INVALID = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid Request"}}

CASES = {
    "not json": (b"hello there", PARSE),
    "truncated json": (b'{"jsonrpc": "2.0", "id": 1, "method": "ping"', PARSE),
    "lone surrogate escape": (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"\\ud800"}}', PARSE),
    "invalid utf-8 then junk": (b"\xff\xfe\x00junk", PARSE),
    "batch array": (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', INVALID),
    "5000-digit integer": (b'{"jsonrpc":"2.0","id":' + b"9" * 5000 + b',"method":"ping"}', PARSE),
    "50k-deep nesting": (b"[" * 50_000 + b"]" * 50_000, PARSE),
    "object that is no message": (b'{"hello": "world"}', INVALID),
}


class RawServer:
    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self.buf = b""

    async def send(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send(line + b"\n")

    async def recv(self, timeout: float = 20) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with anyio.fail_after(timeout):
            while b"\n" not in self.buf:
                self.buf += await self.proc.stdout.receive()
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


async def _initialize(server: RawServer) -> None:
    await server.send(json.dumps({"jsonrpc": "2.0", "id": "init", "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}).encode())
    reply = await server.recv()
    assert reply["id"] == "init" and "result" in reply, reply
    await server.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')


async def _still_works(server: RawServer, rid: int) -> None:
    await server.send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/list"}).encode())
    reply = await server.recv()
    assert reply["id"] == rid and any(t["name"] == "find_customer" for t in reply["result"]["tools"]), reply


async def _raw_server(dsn: str):
    return await anyio.open_process(
        [sys.executable, "-m", "crm_mcp.server.cli", "serve"], env=server_env(dsn), cwd=str(REPO),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


async def _stop(proc: Process) -> None:
    assert proc.stdin is not None
    await proc.stdin.aclose()
    with anyio.move_on_after(10):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def test_unparseable_lines_get_json_rpc_errors(db_dsn: str) -> None:
    proc = await _raw_server(db_dsn)
    server = RawServer(proc)
    try:
        await _initialize(server)
        for n, (name, (line, expected)) in enumerate(CASES.items()):
            await server.send(line)
            reply = await server.recv()
            reply["error"].pop("data", None)
            assert reply == expected, name
            await _still_works(server, n)
        # an invalid request whose id can be read is answered with that id
        await server.send(b'{"jsonrpc":"2.0","id":41,"method":7}')
        reply = await server.recv()
        assert reply["id"] == 41 and reply["error"]["code"] == -32600
        # blank lines are not messages: no answer, and the next request is answered normally
        await server.send(b"   ")
        await _still_works(server, 99)
    finally:
        await _stop(proc)


async def test_line_over_64_mib_is_answered_and_skipped(db_dsn: str) -> None:
    proc = await _raw_server(db_dsn)
    server = RawServer(proc)
    try:
        await _initialize(server)
        big = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"x" * LINE_LIMIT + b'"}}'
        assert proc.stdin is not None

        async def write() -> None:
            # in pieces, with the newline, then straight away a normal request on the next line
            for i in range(0, len(big), 1 << 20):
                await proc.stdin.send(big[i:i + (1 << 20)])
            await proc.stdin.send(b"\n" + json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).encode() + b"\n")

        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            reply = await server.recv(timeout=60)
        assert reply["id"] is None and reply["error"]["code"] == -32700, reply
        reply = await server.recv()
        assert reply["id"] == 2 and "result" in reply, reply
    finally:
        await _stop(proc)
