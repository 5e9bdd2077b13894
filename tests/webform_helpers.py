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


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, 20 s to exit, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# The CRM's HTTP door needs a token: each server started here gets a `bridge` token, minted with
# the real CLI, which the bridges under test present (CRM_TOKEN / CrmTarget.token).
TOKENS: dict[tuple[str, str], str] = {}  # (database, MCP URL) -> token


def bridge_token(dsn: str, name: str) -> str:
    out = subprocess.run([sys.executable, "-m", "crm_mcp.server.cli", "token", "create", "--role", "bridge", "--name", name],
                         env=server_env(dsn), cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@contextmanager
def crm_http(dsn: str, tmp: Path, port: int | None = None) -> Iterator[str]:
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    if (dsn, url) not in TOKENS:
        TOKENS[dsn, url] = bridge_token(dsn, f"test-bridge-{port}")
    log = open(tmp / f"crm-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "crm_mcp.server.cli", "serve", "--http", "--port", str(port)],
                            env=server_env(dsn), cwd=str(REPO), stdout=log, stderr=log)
    try:
        # the MCP endpoint answers a bare GET with an error status: any answer means it is up
        _wait_http(url, proc, ok=range(200, 500))
        yield url
    finally:
        stop_process(proc)
        log.close()


def start_webform(server_url: str | None, dsn: str, tmp: Path, *, refresh: int = 1, port: int | None = None,
                  **env: str) -> tuple[subprocess.Popen, str]:
    port = port or free_port()
    args = [sys.executable, "-m", "crm_mcp.server.cli", "bridge", "webform", "--port", str(port), "--refresh", str(refresh)]
    if server_url:
        args += ["--server", server_url]
    log = open(tmp / f"webform-{port}.log", "ab")
    if server_url and (dsn, server_url) in TOKENS:
        env.setdefault("CRM_TOKEN", TOKENS[dsn, server_url])
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
        stop_process(proc)


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
