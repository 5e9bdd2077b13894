"""The HTTP service around the MCP endpoint: bearer auth wiring, session limits, operational
routes (/healthz, /readyz, /metrics) and the uvicorn configuration that closes slow clients.

Auth uses the SDK's own pieces: MCPServer(token_verifier=..., auth=AuthSettings(...)) gives the
401 + `WWW-Authenticate: Bearer resource_metadata=...` answer and the RFC 9728 metadata document
at /.well-known/oauth-protected-resource/mcp; we add the bare /.well-known/oauth-protected-resource
form too. /healthz and /readyz are open (load balancers); /metrics needs any valid token when
auth is on (CRM_METRICS_REQUIRE_TOKEN=false opens it)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

import h11
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.routes import create_protected_resource_routes
from mcp.server.auth.settings import AuthSettings
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import AnyHttpUrl
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from .config import Settings

log = logging.getLogger(__name__)

_LOOPBACK_HOSTS = ["127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*"]
_LOOPBACK_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]


class HttpConfigError(Exception):
    """A refused HTTP configuration: printed as one line, exit 2."""


def check_http_settings(settings: Settings) -> None:
    if settings.no_auth and not settings.host_is_loopback():
        raise HttpConfigError(f"--no-auth is refused on {settings.host}: without tokens only loopback addresses "
                              "(127.0.0.1, ::1, localhost) may be served")
    if not settings.host_is_loopback() and not settings.public_url:
        raise HttpConfigError(f"serving on {settings.host} needs CRM_PUBLIC_URL (the URL clients use, e.g. "
                              "https://crm.example.com/mcp): it is the OAuth resource URL and the allowed Host")
    if bool(settings.oauth_issuer) != bool(settings.oauth_jwks_url):
        raise HttpConfigError("CRM_OAUTH_ISSUER and CRM_OAUTH_JWKS_URL must be set together")


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """Host/Origin checks (DNS rebinding): loopback names, plus the public URL's host if set."""
    hosts, origins = list(_LOOPBACK_HOSTS), list(_LOOPBACK_ORIGINS)
    if settings.public_url:
        parts = urlsplit(settings.public_url)
        hosts += [parts.netloc, f"{parts.hostname}"] if parts.port is None else [parts.netloc]
        origins.append(f"{parts.scheme}://{parts.netloc}")
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


def auth_settings(settings: Settings) -> AuthSettings:
    resource = settings.resource_url()
    # With opaque tokens only there is no authorization server to point clients at (tokens are
    # handed out with `crm-mcp token create`); the metadata then names this server's origin.
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(resource))
    return AuthSettings(issuer_url=AnyHttpUrl(settings.oauth_issuer or origin), resource_server_url=AnyHttpUrl(resource),
                        validate_token_resource=True)


def make_verifier(settings: Settings, pool: Any) -> Any:
    from .auth import ApiTokenVerifier, CombinedVerifier, JwtVerifier

    resource = settings.resource_url()
    jwt = None
    if settings.oauth_issuer and settings.oauth_jwks_url:
        jwt = JwtVerifier(issuer=settings.oauth_issuer, jwks_url=settings.oauth_jwks_url,
                          audience=settings.oauth_audience or resource, resource=resource)
    return CombinedVerifier(api=ApiTokenVerifier(pool=pool, resource=resource), jwt=jwt)


def add_routes(server: Any, crm: Any, settings: Settings) -> None:
    """Operational routes; registered before streamable_http_app() builds the Starlette app."""
    from . import telemetry
    from .migrate import load_migrations

    auth_on = not settings.no_auth

    @server.custom_route("/healthz", methods=["GET"])
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @server.custom_route("/readyz", methods=["GET"])
    async def readyz(request: Request) -> Response:
        expected = {m.version for m in load_migrations()}
        try:
            async with asyncio.timeout(3):
                applied = {r["version"] for r in await crm.pool.fetch("SELECT version FROM schema_migrations")}
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "reason": f"database: {type(exc).__name__}"}, status_code=503)
        missing = sorted(expected - applied)
        if missing:
            return JSONResponse({"status": "unavailable", "reason": f"migrations pending: {missing}"}, status_code=503)
        return JSONResponse({"status": "ready", "migrations": max(applied, default=0)})

    @server.custom_route("/metrics", methods=["GET"])
    async def metrics(request: Request) -> Response:
        if auth_on and settings.metrics_require_token and not isinstance(request.scope.get("user"), AuthenticatedUser):
            return JSONResponse({"error": "invalid_token", "error_description": "Authentication required"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        sessions = len(server.session_manager._server_instances)  # the SDK has no public count
        body, ctype = await telemetry.render(crm.pool, sessions)
        return Response(body, media_type=ctype)

    if auth_on:
        # The SDK serves the path-suffixed RFC 9728 form; clients that probe the root form get the same document.
        a = auth_settings(settings)
        assert a.resource_server_url is not None
        suffixed = create_protected_resource_routes(resource_url=a.resource_server_url,
                                                    authorization_servers=[a.issuer_url])[0]
        if suffixed.path != "/.well-known/oauth-protected-resource":
            server._custom_starlette_routes.append(
                Route("/.well-known/oauth-protected-resource", endpoint=suffixed.endpoint, methods=["GET", "OPTIONS"]))


class TokenStoreDown:
    """ASGI middleware outside the SDK's bearer authentication: when the token table cannot be
    read, answer 503 with Retry-After instead of a 500 with a traceback."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from .auth import TokenStoreUnavailable

        try:
            await self.app(scope, receive, send)
        except TokenStoreUnavailable:
            if scope["type"] != "http":
                raise
            response = JSONResponse({"error": "temporarily_unavailable",
                                     "error_description": "The CRM database is unavailable; retry in a few seconds."},
                                    status_code=503, headers={"Retry-After": "5"})
            await response(scope, receive, send)


class _ClientGoneFilter(logging.Filter):
    """The SDK logs a client that hung up mid-body (or was cut off by the read timeout) as an
    ERROR with a traceback; one warning line is what it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        from starlette.requests import ClientDisconnect

        if record.exc_info and isinstance(record.exc_info[1], ClientDisconnect):
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "client disconnected before its request body arrived", ()
        return True


def harden(app: Any, server: Any, settings: Settings) -> None:
    """What the SDK's app does not do itself: per-token session cap, 503 when tokens cannot be
    checked, a quiet log line for clients that go away mid-request."""
    cap_sessions_per_principal(server.session_manager, settings.max_sessions_per_token)
    app.add_middleware(TokenStoreDown)  # outermost of the app's middleware: wraps the bearer check
    logging.getLogger("mcp.server.streamable_http").addFilter(_ClientGoneFilter())


def cap_sessions_per_principal(session_manager: Any, limit: int) -> None:
    """The SDK caps sessions globally (max_sessions) only. A session records the credential that
    opened it, so a credential already holding `limit` sessions is refused a new one (503, as at
    the global cap) instead of crowding everybody else out. Wraps the manager's admission step."""
    original = session_manager._admit_session

    def admit(requestor: Any) -> Any:
        if requestor is not None:
            held = sum(1 for owner in session_manager._session_owners.values() if owner == requestor)
            if held >= limit:
                log.warning("refusing a new session for %s: it holds %d (CRM_MAX_SESSIONS_PER_TOKEN)",
                            requestor.get("client_id"), held)
                return None
        return original(requestor)

    session_manager._admit_session = admit


class _ReadTimeoutH11(H11Protocol):
    """uvicorn closes idle keep-alive connections but never times out a request that arrives
    slowly (slowloris: a head or a body dribbled a byte at a time). Each request, head and body,
    must be complete within read_timeout seconds of its first byte (or of the connection opening);
    otherwise the connection is closed."""

    read_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._read_deadline: asyncio.TimerHandle | None = None
        self._arm_read_deadline()

    def _arm_read_deadline(self) -> None:
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(self.read_timeout, self._read_too_slow)

    def _disarm_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_too_slow(self) -> None:
        self._read_deadline = None
        # IDLE: the head is incomplete; SEND_BODY: the body is. DONE and later: it all arrived.
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._arm_read_deadline()
        super().data_received(data)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._disarm_read_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read_deadline()
        super().connection_lost(exc)


def uvicorn_config(app: Any, settings: Settings) -> Any:
    import uvicorn

    protocol = type("ReadTimeoutH11", (_ReadTimeoutH11,), {"read_timeout": settings.http_read_timeout_s})
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        lifespan="on",
        access_log=False,
        http=protocol,
        timeout_keep_alive=settings.http_keep_alive_s,
        limit_concurrency=settings.http_max_connections,
        h11_max_incomplete_event_size=16 * 1024,  # request line + headers
        log_config=None,  # our logging configuration (text or JSON) stays in charge
    )
