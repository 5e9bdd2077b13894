"""The HTTP service's limits and operational endpoints: sessions per token, idle timeout,
slow request heads closed, /healthz, /readyz, /metrics, JSON logs."""

from __future__ import annotations

import json
import socket
import time

import asyncpg
import httpx
import pytest

from .conftest import call
from .http_server import bearer_client, http_server, make_token

pytestmark = pytest.mark.anyio

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def _open_session(http: httpx.AsyncClient, url: str, token: str) -> httpx.Response:
    return await http.post(url, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {token}"})


async def test_sessions_capped_per_token_and_idle_timeout(db_dsn: str) -> None:
    a = await make_token(db_dsn, "greedy", "staff")
    b = await make_token(db_dsn, "other", "staff")
    async with http_server(db_dsn, CRM_MAX_SESSIONS_PER_TOKEN="2", CRM_SESSION_IDLE_MINUTES="0.05") as srv:
        async with httpx.AsyncClient() as http:
            first = await _open_session(http, srv.url, a)
            second = await _open_session(http, srv.url, a)
            assert first.status_code == second.status_code == 200
            third = await _open_session(http, srv.url, a)
            assert third.status_code == 503  # this token holds its two sessions
            assert (await _open_session(http, srv.url, b)).status_code == 200  # nobody else is crowded out
            sid = first.headers["mcp-session-id"]
            auth = {"Authorization": f"Bearer {a}", "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
            assert (await http.delete(srv.url, headers=auth)).status_code == 200
            assert (await _open_session(http, srv.url, a)).status_code == 200  # a slot was freed
            # idle timeout (3 s here): a session nobody uses is closed and its id is then unknown
            sid2 = second.headers["mcp-session-id"]
            time.sleep(4.5)
            ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
            gone = await http.post(srv.url, json=ping, headers={**HEADERS, "Authorization": f"Bearer {a}",
                                                                "Mcp-Session-Id": sid2, "MCP-Protocol-Version": "2025-11-25"})
            assert gone.status_code == 404


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def test_slow_requests_are_closed(db_dsn: str) -> None:
    async with http_server(db_dsn, "--no-auth", CRM_HTTP_READ_TIMEOUT_S="1") as srv:
        port = int(srv.base.rsplit(":", 1)[1])
        idle = socket.create_connection(("127.0.0.1", port))
        slow = socket.create_connection(("127.0.0.1", port))
        try:
            started = time.monotonic()
            slow.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            closed = False
            for _ in range(20):  # one header byte every 0.25 s: never a complete head
                try:
                    slow.sendall(b"X")
                except OSError:
                    closed = True
                    break
                if _closed_within(slow, 0.25):
                    closed = True
                    break
            assert closed and time.monotonic() - started < 4
            assert _closed_within(idle, 2)  # a connection that sends nothing at all goes too
            body = socket.create_connection(("127.0.0.1", port))
            try:  # a complete head, then a body dribbled a byte at a time
                body.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             b"Accept: application/json, text/event-stream\r\nContent-Length: 1000\r\n\r\n{")
                started = time.monotonic()
                closed = False
                for _ in range(20):
                    try:
                        body.sendall(b" ")
                    except OSError:
                        closed = True
                        break
                    data = b""
                    body.settimeout(0.25)
                    try:
                        data = body.recv(4096)
                        closed = True  # an answer or EOF: either way the server stopped waiting
                    except TimeoutError:
                        pass
                    except ConnectionResetError:
                        closed = True
                    if closed:
                        break
                assert closed and time.monotonic() - started < 4, data
            finally:
                body.close()
            # a normal request is unaffected
            assert httpx.get(srv.base + "/healthz").status_code == 200
        finally:
            idle.close()
            slow.close()


async def test_health_ready_and_metrics(db_dsn: str) -> None:
    token = await make_token(db_dsn, "scraper", "readonly")
    staff = await make_token(db_dsn, "desk", "staff")
    async with http_server(db_dsn, CRM_LOG_FORMAT="json", CRM_LOG_LEVEL="INFO") as srv:
        async with httpx.AsyncClient() as http:
            assert (await http.get(srv.base + "/healthz")).json() == {"status": "ok"}
            ready = await http.get(srv.base + "/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "ready"
            assert (await http.get(srv.base + "/metrics")).status_code == 401
        async with bearer_client(srv.url, staff) as client:
            await call(client, "find_customer", query="nobody@example.com")
            assert (await client.call_tool("merge_customers", {"source_customer_id": "x", "target_customer_id": "y"})).is_error
        async with httpx.AsyncClient() as http:
            text = (await http.get(srv.base + "/metrics", headers={"Authorization": f"Bearer {token}"})).text
            assert 'crm_tool_calls_total{outcome="ok",role="staff",tool="find_customer"} 1.0' in text
            assert 'crm_tool_calls_total{outcome="error:invalid_arguments",role="staff",tool="merge_customers"} 1.0' in text
            assert 'crm_tool_call_duration_seconds_count{tool="find_customer"} 1.0' in text
            for name in ("crm_db_pool_size", "crm_db_pool_in_use", 'crm_outbox_messages{status="pending"}',
                         'crm_outbox_messages{status="failed"}', "crm_http_sessions", "crm_database_up 1.0"):
                assert name in text, name
            # migrations not current -> not ready
            conn = await asyncpg.connect(db_dsn)
            try:
                await conn.execute("DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM schema_migrations)")
            finally:
                await conn.close()
            notready = await http.get(srv.base + "/readyz")
            assert notready.status_code == 503 and "migrations pending" in notready.json()["reason"]
    lines = [ln for ln in srv.log().splitlines() if ln.strip()]
    assert lines and all(json.loads(ln)["level"] for ln in lines)  # every log line is JSON
    assert token not in srv.log() and staff not in srv.log()
