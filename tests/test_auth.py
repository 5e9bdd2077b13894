"""Bearer tokens on the HTTP transport: 401 + protected-resource metadata, tokens from the CLI,
revocation without restart, --no-auth only on loopback, JWTs from a JWKS served by the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import asyncpg
import httpx
import pytest

from .conftest import REPO, server_env
from .http_server import bearer_client, http_server, result_text, tool_names

pytestmark = pytest.mark.anyio


async def test_no_token_gets_401_and_metadata(db_dsn: str) -> None:
    async with http_server(db_dsn) as srv:
        async with httpx.AsyncClient() as http:
            init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
            headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
            for extra in ({}, {"Authorization": "Bearer crm_not-a-real-token"}, {"Authorization": "Basic eDp5"}):
                r = await http.post(srv.url, json=init, headers={**headers, **extra})
                assert r.status_code == 401, r.text
                www = r.headers["www-authenticate"]
                assert www.startswith("Bearer ")
                meta_url = www.split('resource_metadata="', 1)[1].split('"', 1)[0]
                assert meta_url == srv.base + "/.well-known/oauth-protected-resource/mcp"
            for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
                meta = (await http.get(srv.base + path)).json()
                assert meta["resource"] == srv.url
                assert meta["authorization_servers"]
                assert meta["bearer_methods_supported"] == ["header"]
        # the SDK client without a token cannot connect either
        with pytest.raises(Exception):
            async with bearer_client(srv.url, None, mode="legacy") as c:
                await c.list_tools()


def _cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crm_mcp.server.cli", *args], env=server_env(dsn), cwd=REPO,
                          capture_output=True, text=True, timeout=120)


async def test_token_cli_and_revocation_without_restart(db_dsn: str) -> None:
    made = _cli(db_dsn, "token", "create", "--role", "staff", "--name", "desk-alice")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert made.stdout.strip() == token  # alone on stdout
    assert token.startswith("crm_") and len(token) >= 4 + 43
    dup = _cli(db_dsn, "token", "create", "--role", "staff", "--name", "desk-alice")
    assert dup.returncode == 2 and dup.stderr.count("\n") == 1 and "already exists" in dup.stderr
    bad = _cli(db_dsn, "token", "create", "--role", "root", "--name", "x")
    assert bad.returncode == 2
    conn = await asyncpg.connect(db_dsn)
    try:
        stored = await conn.fetchval("SELECT token_sha256 FROM api_tokens WHERE name = 'desk-alice'")
        import hashlib
        assert bytes(stored) == hashlib.sha256(token.encode()).digest()
        assert token.encode() not in b"".join(bytes(str(v), "utf-8") for v in await conn.fetchrow("SELECT * FROM api_tokens"))
    finally:
        await conn.close()
    async with http_server(db_dsn) as srv:
        for mode in ("auto", "legacy"):
            async with bearer_client(srv.url, token, mode=mode) as client:
                assert "merge_customers" in await tool_names(client)
        listed = _cli(db_dsn, "token", "list", "--json")
        rows = json.loads(listed.stdout)
        assert rows[0]["name"] == "desk-alice" and rows[0]["role"] == "staff" and rows[0]["last_used_at"]
        assert token not in listed.stdout and token not in _cli(db_dsn, "token", "list").stdout
        async with bearer_client(srv.url, token, mode="legacy") as client:
            await client.list_tools()
            revoked = _cli(db_dsn, "token", "revoke", "desk-alice")
            assert revoked.returncode == 0, revoked.stderr
            with pytest.raises(Exception):  # the very next request on the open session is refused
                await client.list_tools()
        async with httpx.AsyncClient() as http:
            r = await http.post(srv.url, json={}, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401
    assert _cli(db_dsn, "token", "revoke", "nobody").returncode == 2


def test_no_auth_refused_off_loopback() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env["CRM_DATABASE_URL"] = "postgresql://127.0.0.1:1/none"
    for args in (["--host", "0.0.0.0", "--no-auth"], ["--host", "0.0.0.0"]):
        out = subprocess.run([sys.executable, "-m", "crm_mcp.server.cli", "serve", "--http", *args],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().count("\n") == 0, out.stderr
    assert "loopback" in out.stderr or "CRM_PUBLIC_URL" in out.stderr


async def test_no_auth_on_loopback_serves_without_token(db_dsn: str) -> None:
    async with http_server(db_dsn, "--no-auth", "--role", "readonly") as srv:
        async with bearer_client(srv.url, None) as client:
            names = await tool_names(client)
            assert "find_customer" in names and "upsert_customer" not in names
            res = await client.call_tool("upsert_customer", {"email": "x@example.com"})
            assert res.is_error and "readonly" in result_text(res)


class _Jwks:
    """An issuer's JWKS served by the test on 127.0.0.1."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from cryptography.hazmat.primitives.asymmetric import rsa
        from jwt.algorithms import RSAAlgorithm

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


ISSUER = "https://idp.test.invalid/"


def _jwt(key: object, *, aud: str, iss: str = ISSUER, exp_in: int = 300, scope: str = "crm:readonly",
         kid: str = "k1") -> str:
    import time

    import jwt

    now = int(time.time())
    claims = {"iss": iss, "aud": aud, "sub": "user-42", "iat": now, "exp": now + exp_in, "scope": scope}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})  # type: ignore[arg-type]


async def test_jwt_from_external_issuer(db_dsn: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    jwks = _Jwks()
    try:
        async with http_server(db_dsn, CRM_OAUTH_ISSUER=ISSUER, CRM_OAUTH_JWKS_URL=jwks.url) as srv:
            aud = srv.url  # default audience: this server's resource URL
            meta = httpx.get(srv.base + "/.well-known/oauth-protected-resource/mcp").json()
            assert meta["authorization_servers"] == [ISSUER]
            good = _jwt(jwks.key, aud=aud)
            for mode in ("auto", "legacy"):
                async with bearer_client(srv.url, good, mode=mode) as client:
                    names = await tool_names(client)
                    assert "find_customer" in names and "upsert_customer" not in names  # crm:readonly
                    res = await client.call_tool("upsert_customer", {"email": "jwt@example.com"})
                    assert res.is_error and "role 'readonly'" in result_text(res)
            async with bearer_client(srv.url, _jwt(jwks.key, aud=aud, scope="openid crm:staff")) as client:
                assert "merge_customers" in await tool_names(client)
            other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            bad = {
                "expired": _jwt(jwks.key, aud=aud, exp_in=-120),
                "wrong audience": _jwt(jwks.key, aud="http://127.0.0.1:1/mcp"),
                "wrong issuer": _jwt(jwks.key, aud=aud, iss="https://evil.test.invalid/"),
                "wrong key": _jwt(other_key, aud=aud),
                "no crm scope": _jwt(jwks.key, aud=aud, scope="openid email"),
                "garbage": "a.b.c",
            }
            init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
            headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
            async with httpx.AsyncClient() as http:
                ok = await http.post(srv.url, json=init, headers={**headers, "Authorization": f"Bearer {good}"})
                assert ok.status_code == 200
                for why, token in bad.items():
                    r = await http.post(srv.url, json=init, headers={**headers, "Authorization": f"Bearer {token}"})
                    assert r.status_code == 401, why
            assert good not in srv.log()
        # the issuer's JWKS unreachable: 503 (retry later), not 401 (bad token)
        from .http_server import free_port

        async with http_server(db_dsn, CRM_OAUTH_ISSUER=ISSUER,
                               CRM_OAUTH_JWKS_URL=f"http://127.0.0.1:{free_port()}/jwks.json") as srv:
            async with httpx.AsyncClient() as http:
                token = _jwt(jwks.key, aud=srv.url)
                r = await http.post(srv.url, json=init, headers={**headers, "Authorization": f"Bearer {token}"})
                assert r.status_code == 503 and r.headers["retry-after"] == "5"
        # a configured audience replaces the resource URL as the required `aud`
        async with http_server(db_dsn, CRM_OAUTH_ISSUER=ISSUER, CRM_OAUTH_JWKS_URL=jwks.url,
                               CRM_OAUTH_AUDIENCE="api://crm") as srv:
            async with bearer_client(srv.url, _jwt(jwks.key, aud="api://crm")) as client:
                assert "find_customer" in await tool_names(client)
            async with httpx.AsyncClient() as http:
                r = await http.post(srv.url, json=init, headers={**headers, "Authorization": f"Bearer {_jwt(jwks.key, aud=srv.url)}"})
                assert r.status_code == 401
    finally:
        jwks.close()


async def test_database_down_is_503_not_401(db_dsn: str, pg_admin_dsn: str) -> None:
    """A good token while the token table cannot be read: 503 + Retry-After (retry), never 401
    (which tells the client its token is bad) nor a 500 with a traceback; /readyz says not ready."""
    from .http_server import make_token

    token = await make_token(db_dsn, "steady", "staff")
    from urllib.parse import urlsplit

    dbname = urlsplit(db_dsn).path.lstrip("/")
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "Authorization": f"Bearer {token}"}
    async with http_server(db_dsn, tolerate=("asyncpg.pool",), CRM_SLA_CHECK_INTERVAL_S="3600") as srv:
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await http.post(srv.url, json=init, headers=headers)).status_code == 200
            admin = await asyncpg.connect(pg_admin_dsn)
            try:
                await admin.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS false")
                await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", dbname)
                down = await http.post(srv.url, json=init, headers=headers)
                assert down.status_code == 503, down.text
                assert down.headers["retry-after"] == "5"
                assert (await http.get(srv.base + "/readyz")).status_code == 503
            finally:
                await admin.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")
                await admin.close()
            assert (await http.post(srv.url, json=init, headers=headers)).status_code == 200  # recovered


async def test_public_url_is_resource_and_allowed_host(db_dsn: str) -> None:
    """CRM_PUBLIC_URL (needed for a non-loopback bind) names the resource in the metadata and the
    401 header, and its host joins the loopback names the DNS-rebinding check accepts."""
    from .http_server import free_port, make_token

    token = await make_token(db_dsn, "remote", "readonly")
    public = f"http://crm.test.invalid:{free_port()}/mcp"
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "Authorization": f"Bearer {token}"}
    async with http_server(db_dsn, "--public-url", public) as srv:
        async with httpx.AsyncClient() as http:
            meta = (await http.get(srv.base + "/.well-known/oauth-protected-resource/mcp")).json()
            assert meta["resource"] == public
            r = await http.post(srv.url, json=init, headers={k: v for k, v in headers.items() if k != "Authorization"})
            assert r.status_code == 401 and "crm.test.invalid" in r.headers["www-authenticate"]
            host = public.split("/")[2]
            ok = await http.post(srv.url, json=init, headers={**headers, "Host": host, "Origin": f"http://{host}"})
            assert ok.status_code == 200, ok.text
            evil = await http.post(srv.url, json=init, headers={**headers, "Host": "evil.example"})
            assert evil.status_code in (403, 421)
            evil_origin = await http.post(srv.url, json=init, headers={**headers, "Origin": "http://evil.example"})
            assert evil_origin.status_code == 403
