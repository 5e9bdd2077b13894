"""Helpers for tests that drive `crm-mcp serve --http` as a subprocess over real HTTP."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg
import httpx
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from .conftest import REPO, server_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class HttpServer:
    base: str
    proc: subprocess.Popen[bytes]
    log_path: str
    kept_log: str | None = None  # the log's text once the file is gone

    @property
    def url(self) -> str:
        return self.base + "/mcp"

    def log(self) -> str:
        if self.kept_log is not None:
            return self.kept_log
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


@contextmanager
def _started(dsn: str, args: tuple[str, ...], env: dict[str, str]) -> Iterator[HttpServer]:
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="crm-http-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "crm_mcp.server.cli", "serve", "--http", "--port", str(port), *args],
        env=server_env(dsn, **env), cwd=REPO, stdout=subprocess.DEVNULL, stderr=log,
    )
    server = HttpServer(f"http://127.0.0.1:{port}", proc, log.name)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited {proc.returncode}: {server.log()[-3000:]}")
            try:
                if httpx.get(server.base + "/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server did not answer /healthz in 90 s: " + server.log()[-3000:])
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@asynccontextmanager
async def http_server(dsn: str, *args: str, tolerate: tuple[str, ...] = (), **env: str) -> AsyncIterator[HttpServer]:
    """The server for the block; it must exit cleanly and log no traceback except from the
    loggers named in `tolerate` (e.g. asyncpg's own pool maintenance while a test cuts the database)."""
    with _started(dsn, args, env) as server:
        yield server
    assert server.proc.returncode == 0, server.log()[-3000:]
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d |\{)", server.log())
    bad = [r for r in records if "Traceback" in r and not any(t in r.split("\n", 1)[0] for t in tolerate)]
    assert not bad, bad[0][-4000:]
    server.kept_log = server.log()  # tests may still read it after the block
    os.unlink(server.log_path)  # the file is kept only when the server misbehaved


async def make_token(dsn: str, name: str, role: str) -> str:
    from crm_mcp.server.auth import create_token

    conn = await asyncpg.connect(dsn)
    try:
        return await create_token(conn, name, role)
    finally:
        await conn.close()


def bearer_client(url: str, token: str | None, mode: str = "auto") -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    transport = streamable_http_client(url, http_client=create_mcp_http_client(headers=headers))
    return Client(transport, mode=mode)  # type: ignore[arg-type]


async def tool_names(client: Client) -> set[str]:
    return {t.name for t in (await client.list_tools()).tools}


def result_text(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def wait_until(pred: Any, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not await pred():
            await anyio.sleep(0.05)
