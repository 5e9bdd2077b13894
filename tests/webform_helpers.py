"""Processes the web form tests run: the CRM over plain Streamable HTTP (`crm-mcp serve --http`)
and the web form bridge (`crm-mcp bridge webform --server URL`), each a real subprocess."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from .conftest import REPO, server_env

SECRET = "test-webform-secret-0123456789"
TOKEN_RE = re.compile(r'name="form_token" value="([^"]+)"')
STATUS_RE = re.compile(r'id="status-link" href="([^"]+)"')
TICKET_RE = re.compile(r'id="ticket-number">(TKT-\d+)<')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0, ok=(200,)) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            if httpx.get(url, timeout=2).status_code in ok:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


def _stop(proc: subprocess.Popen, log: Path | None = None) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def crm_http(dsn: str, tmp: Path, port: int | None = None) -> Iterator[str]:
    port = port or free_port()
    log = open(tmp / f"crm-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "crm_mcp.server.cli", "serve", "--http", "--port", str(port)],
                            env=server_env(dsn), cwd=str(REPO), stdout=log, stderr=log)
    try:
        # the MCP endpoint answers a bare GET with an error status: any answer means it is up
        _wait_http(f"http://127.0.0.1:{port}/mcp", proc, ok=range(200, 500))
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        _stop(proc)
        log.close()


def start_webform(server_url: str | None, dsn: str, tmp: Path, *, refresh: int = 1, port: int | None = None,
                  **env: str) -> tuple[subprocess.Popen, str]:
    port = port or free_port()
    args = [sys.executable, "-m", "crm_mcp.server.cli", "bridge", "webform", "--port", str(port), "--refresh", str(refresh)]
    if server_url:
        args += ["--server", server_url]
    log = open(tmp / f"webform-{port}.log", "ab")
    proc = subprocess.Popen(args, env=server_env(dsn, CRM_WEBFORM_SECRET=SECRET, **env), cwd=str(REPO),
                            stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    _wait_http(f"{base}/healthz", proc)
    return proc, base


@contextmanager
def webform(server_url: str | None, dsn: str, tmp: Path, **kw) -> Iterator[str]:
    proc, base = start_webform(server_url, dsn, tmp, **kw)
    try:
        yield base
    finally:
        _stop(proc)


def open_form(client: httpx.Client, base: str) -> str:
    page = client.get(f"{base}/")
    assert page.status_code == 200, page.text
    return TOKEN_RE.search(page.text).group(1)


def good_form(token: str, **over: str) -> dict[str, str]:
    data = {"form_token": token, "name": "Ana Lima", "email": "ana@example.com", "subject": "CSV export fails",
            "message": "Every CSV export stops at 99%. What can I do?", "category": "technical", "order_number": "",
            "website": ""}
    data.update(over)
    return data
