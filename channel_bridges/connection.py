"""The bridge's MCP connection to the CRM, kept open and re-opened with backoff.

Two ways in: `--server URL --token TOKEN` (or CRM_SERVER_URL / CRM_TOKEN) speaks Streamable HTTP
with the token as a bearer header; with neither, `crm-mcp serve` is started over stdio on the
local data directory (the embedded default needs no setup). Either way this module only speaks
MCP: a tool error the caller can fix is CrmRejected; the CRM being unreachable, restarting or
saying its database is unavailable is CrmUnavailable, which callers retry."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from .logs import event
from .retry import Backoff

log = logging.getLogger("crm_mcp.bridge.connection")

# The CRM's own wording for a retryable failure (tools/plumbing/errors.py Unavailable).
UNAVAILABLE_MARK = "temporarily unavailable"


class CrmUnavailable(Exception):
    """Could not reach the CRM or it could not serve the call now; nothing was changed or the call is safe to repeat."""


class CrmRejected(Exception):
    """The CRM refused the call (bad arguments, unknown ticket, no permission): retrying will not help."""


@dataclass(frozen=True)
class CrmTarget:
    server_url: str | None = None
    token: str | None = None
    # For the stdio mode: extra arguments for `crm-mcp serve` and the environment it gets.
    serve_args: tuple[str, ...] = ()
    env: dict[str, str] | None = None

    @classmethod
    def from_env(cls, server_url: str | None = None, token: str | None = None) -> CrmTarget:
        return cls(server_url=server_url or os.environ.get("CRM_SERVER_URL") or None,
                   token=token or os.environ.get("CRM_TOKEN") or None)

    @property
    def mode(self) -> str:
        return "http" if self.server_url else "stdio"


@dataclass
class CrmConnection:
    """Use as `async with CrmConnection(target) as crm: await crm.call(...)`. The connection is
    opened in the background and re-opened after any transport failure, with backoff."""

    target: CrmTarget
    backoff: Backoff = field(default_factory=lambda: Backoff(base_s=0.5, cap_s=15.0))
    call_timeout_s: float = 60.0
    connected: bool = False
    last_error: str | None = None
    _client: Client | None = None
    _ready: anyio.Event = field(default_factory=anyio.Event)
    _broken: anyio.Event = field(default_factory=anyio.Event)
    _stack: AsyncExitStack | None = None

    async def __aenter__(self) -> CrmConnection:
        self._stack = AsyncExitStack()
        tg = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.callback(tg.cancel_scope.cancel)
        tg.start_soon(self._keep_connected)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._stack is not None
        await self._stack.aclose()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Client]:
        t = self.target
        if t.server_url:
            headers = {"Authorization": f"Bearer {t.token}"} if t.token else {}
            async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0)) as http:
                transport = streamable_http_client(t.server_url, http_client=http)
                async with Client(transport, read_timeout_seconds=self.call_timeout_s) as client:
                    yield client
            return
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "crm_mcp.server.cli", "serve", *t.serve_args],
            env=t.env if t.env is not None else dict(os.environ))
        async with Client(params, read_timeout_seconds=self.call_timeout_s) as client:
            yield client

    async def _keep_connected(self) -> None:
        attempt = 0
        while True:
            try:
                async with self._open() as client:
                    self._client, self.connected, self.last_error = client, True, None
                    self._broken = anyio.Event()
                    self._ready.set()
                    event(log, "crm_connected", mode=self.target.mode, attempt=attempt + 1)
                    attempt = 0
                    await self._broken.wait()
            except Exception as exc:  # every way a transport can fail ends in a reconnect
                self.last_error = _describe(exc)
            finally:
                self._client, self.connected = None, False
                if self._ready.is_set():  # callers already waiting hold the unset one: it is set on reconnect
                    self._ready = anyio.Event()
            delay = self.backoff.delay(attempt)
            event(log, "crm_unreachable", logging.WARNING, mode=self.target.mode, error=self.last_error,
                  retry_in_s=round(delay, 2))
            attempt += 1
            await anyio.sleep(delay)

    async def wait_connected(self, timeout_s: float) -> bool:
        with anyio.move_on_after(timeout_s):
            await self._ready.wait()
            return True
        return False

    async def call(self, tool: str, timeout_s: float | None = None, **arguments: Any) -> dict[str, Any]:
        """Call a tool and return its structured result. Waits up to `timeout_s` for a connection."""
        limit = timeout_s if timeout_s is not None else self.call_timeout_s
        if not await self.wait_connected(limit):
            raise CrmUnavailable(f"no connection to the CRM ({self.last_error or 'connecting'})")
        client = self._client
        assert client is not None
        try:
            result = await client.call_tool(tool, arguments, read_timeout_seconds=limit)
        except Exception as exc:
            self.last_error = _describe(exc)
            self._broken.set()
            raise CrmUnavailable(f"{tool}: {self.last_error}") from None
        text = " ".join(getattr(c, "text", "") for c in result.content)
        if result.is_error:
            if UNAVAILABLE_MARK in text:
                raise CrmUnavailable(f"{tool}: {text}")
            raise CrmRejected(text)
        if result.structured_content is None:
            raise CrmRejected(f"{tool} returned no structured content")
        return result.structured_content


    async def list_tools(self, timeout_s: float | None = None) -> list[Any]:
        """The tools this token may call (tools/list, every page)."""
        limit = timeout_s if timeout_s is not None else self.call_timeout_s
        if not await self.wait_connected(limit):
            raise CrmUnavailable(f"no connection to the CRM ({self.last_error or 'connecting'})")
        client = self._client
        assert client is not None
        tools: list[Any] = []
        cursor: str | None = None
        try:
            with anyio.fail_after(limit):
                while True:
                    page = await client.list_tools(cursor=cursor)
                    tools += page.tools
                    cursor = page.next_cursor
                    if not cursor:
                        return tools
        except Exception as exc:
            self.last_error = _describe(exc)
            self._broken.set()
            raise CrmUnavailable(f"tools/list: {self.last_error}") from None


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:300]
