"""Stdio transport whose stdin reading can be cancelled.

The SDK reads stdin with a blocking readline in a worker thread, which no cancellation can
interrupt: on SIGTERM/SIGINT the server would hang until the client closes the pipe. Here
stdin is read through asyncio's non-blocking pipe transport, so a signal ends the server
promptly and cleanly. stdout is still claimed by the SDK (fd 1 diverted to stderr), so
nothing but MCP ever reaches the client.

Lines the SDK cannot parse are answered here with the JSON-RPC error (the SDK drops them
silently, leaving the client waiting), and lines are cut at LINE_LIMIT while streaming."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from collections.abc import AsyncIterator
from typing import Any

import anyio
import mcp_types as types
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

log = logging.getLogger(__name__)
LINE_LIMIT = 64 * 1024 * 1024  # one JSON-RPC message per line; longer lines are answered with a parse error
_CHUNK = 64 * 1024


def rejection(line: str | None) -> types.JSONRPCError | None:
    """The JSON-RPC error answering a line the SDK cannot take as a message, or None when the
    line is a message (or blank, which is no message at all and gets no answer).

    The SDK parses lines with the same adapter and drops the failures silently, which leaves
    the client waiting forever; JSON-RPC 2.0 wants -32700 for text that is not JSON (invalid
    UTF-8 escapes, numbers or nesting beyond the parser's limits included) and -32600 for JSON
    that is not a request (a batch array: MCP has no batches)."""
    if line is None:
        return _error(None, types.PARSE_ERROR, "Parse error", f"message longer than {LINE_LIMIT} bytes")
    if not line.strip():
        return None
    try:
        types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        return None
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            return _error(None, types.PARSE_ERROR, "Parse error", "the line is not valid JSON")
    except ValueError:
        return _error(None, types.PARSE_ERROR, "Parse error", "the line is not valid JSON")
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, list):
        return _error(None, types.INVALID_REQUEST, "Invalid Request", "batches are not supported; send one message per line")
    rid = value.get("id") if isinstance(value, dict) else None
    if isinstance(rid, bool) or not isinstance(rid, (int, str)):
        rid = None
    return _error(rid, types.INVALID_REQUEST, "Invalid Request", "not a JSON-RPC 2.0 request, notification or response")


def _error(rid: int | str | None, code: int, message: str, data: str) -> types.JSONRPCError:
    return types.JSONRPCError(jsonrpc="2.0", id=rid, error=types.ErrorData(code=code, message=message, data=data))


async def bounded_lines(reader: asyncio.StreamReader, limit: int = LINE_LIMIT) -> AsyncIterator[bytes | None]:
    """Lines (without the newline) from `reader`; None for a line longer than `limit`, which is
    discarded as it streams in: never more than `limit` bytes plus one chunk are held."""
    buf = bytearray()
    discarding = False
    while True:
        chunk = await reader.read(_CHUNK)
        if not chunk:
            if discarding:
                yield None
            elif buf:
                yield bytes(buf)
            return
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            if not discarding and len(buf) + len(piece) > limit:
                discarding = True
                buf.clear()
            if not discarding:
                buf += piece
            if nl < 0:
                break
            if discarding:
                discarding = False
                yield None
            else:
                yield bytes(buf)
                buf.clear()
            start = nl + 1


class _PipeLines:
    """Async iterator of text lines from fd 0, read without threads. `closed` is set at EOF.

    Lines that are not JSON-RPC messages are answered here (through `replies`, the SDK's own
    stdout writer, so stdout still carries nothing but MCP) and never reach the SDK."""

    def __init__(self) -> None:
        self.closed = anyio.Event()
        self._ready = anyio.Event()
        self._replies: Any = None

    def attach(self, write_stream: Any) -> None:
        self._replies = write_stream
        self._ready.set()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        pipe = os.fdopen(os.dup(0), "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        try:
            async for raw in bounded_lines(reader):
                line = None if raw is None else raw.decode("utf-8", errors="replace")
                error = rejection(line)
                if error is None:
                    if line is not None and line.strip():
                        yield line + "\n"
                    continue
                log.warning("answered an unreadable stdin line with %s %s", error.error.code, error.error.data)
                await self._ready.wait()
                await self._replies.send(SessionMessage(error))
        finally:
            transport.close()
            self.closed.set()


def _stdin_is_pipe() -> bool:
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


async def run_stdio(server: Any, *, grace_s: float = 2.0) -> None:
    """Serve an MCPServer over stdio until stdin closes or the task is cancelled.

    When the client goes away (EOF on stdin), calls still in flight get `grace_s` seconds to
    finish, then are cancelled: a vanished client must not keep the server running."""
    stdin = _PipeLines() if _stdin_is_pipe() else None
    async with anyio.create_task_group() as tg:

        async def serve() -> None:
            async with stdio_server(stdin=stdin) as (read_stream, write_stream):  # type: ignore[arg-type]
                if stdin is not None:
                    stdin.attach(write_stream)
                low = server._lowlevel_server
                await low.run(read_stream, write_stream, low.create_initialization_options())
            tg.cancel_scope.cancel()

        async def reap() -> None:
            assert stdin is not None
            await stdin.closed.wait()
            await anyio.sleep(grace_s)
            log.info("client disconnected; cancelling calls still running")
            tg.cancel_scope.cancel()

        tg.start_soon(serve)
        if stdin is not None:
            tg.start_soon(reap)
