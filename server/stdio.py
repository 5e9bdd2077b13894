"""Stdio transport whose stdin reading can be cancelled.

The SDK reads stdin with a blocking readline in a worker thread, which no cancellation can
interrupt: on SIGTERM/SIGINT the server would hang until the client closes the pipe. Here
stdin is read through asyncio's non-blocking pipe transport, so a signal ends the server
promptly and cleanly. stdout is still claimed by the SDK (fd 1 diverted to stderr), so
nothing but MCP ever reaches the client."""

from __future__ import annotations

import asyncio
import logging

import os
import stat
from collections.abc import AsyncIterator
from typing import Any

import anyio
from mcp.server.stdio import stdio_server

log = logging.getLogger(__name__)
LINE_LIMIT = 64 * 1024 * 1024  # one JSON-RPC message per line; larger lines are dropped


class _PipeLines:
    """Async iterator of text lines from fd 0, read without threads. `closed` is set at EOF."""

    def __init__(self) -> None:
        self.closed = anyio.Event()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        pipe = os.fdopen(os.dup(0), "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than LINE_LIMIT: skip to the end of that line
                    log.warning("dropped an MCP message longer than %d bytes", LINE_LIMIT)
                    while True:
                        try:
                            await reader.readuntil(b"\n")
                            break
                        except asyncio.LimitOverrunError as exc:
                            await reader.readexactly(exc.consumed)
                        except asyncio.IncompleteReadError:
                            return
                    yield "{}\n"  # answered as an invalid message, so the client is not left waiting
                    continue
                if not line:
                    return
                yield line.decode("utf-8", errors="replace")
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
