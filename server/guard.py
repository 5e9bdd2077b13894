"""Role enforcement, audit and call metrics in one place: a server middleware (the SDK's
`MCPServer(middleware=...)` hook) that sees every request before its handler.

- tools/list, resources/list, resources/templates/list, prompts/list: filtered to what the
  caller's role may use, so clients are not offered what they would be refused.
- tools/call outside the role: a tool error naming the roles that may; the handler never runs.
- resources/read, prompts/get, completion/complete outside the role: a JSON-RPC error naming them.
- tools/call by the agent role: also within the caller's conversation leases (lease_scope.py).
- every write-tool call (allowed, refused or failed) is audited; every tool call is counted.

Who is calling: on HTTP with auth, the SDK's bearer middleware put the verified AccessToken on
the request; on stdio (and HTTP with --no-auth on loopback) it is the process's configured role. The lease
holder a call acts as is the token (its kind and name) or, on stdio, this server process."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import asyncpg
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, TextContent
from mcp_types import INVALID_REQUEST

from crm_mcp.tools.plumbing.context import CALLER, Caller
from crm_mcp.tools.plumbing.errors import Unavailable

from . import audit, lease_scope, roles, telemetry
from .auth import principal_of

log = logging.getLogger(__name__)


def _holder(name: str) -> str:
    # A JWT subject can be any length; the lease column takes 300 characters.
    return name if len(name) <= 200 else name[:120] + ":sha256:" + hashlib.sha256(name.encode()).hexdigest()


def _get(result: Any, attr: str, key: str) -> Any:
    return result.get(key) if isinstance(result, dict) else getattr(result, attr, None)


class Guard:
    def __init__(self, pool: Any, *, default: Caller, authenticated: bool,
                 read_only: Callable[[str], bool], validate: lease_scope.Validate) -> None:
        self.pool = pool
        self.default = default
        self.authenticated = authenticated
        self.read_only = read_only
        self.validate = validate  # a tool's arguments through its own input model; None if invalid

    def principal(self, ctx: Any) -> Caller | None:
        request = getattr(ctx, "request", None)
        user = getattr(request, "scope", {}).get("user") if request is not None else None
        access = user.access_token if isinstance(user, AuthenticatedUser) else get_access_token()
        if access is not None:
            actor, role = principal_of(access)
            kind = (access.claims or {}).get("kind", "token")
            return Caller(actor, role, _holder(f"{kind}:{actor}")) if role is not None else None
        if request is None or not self.authenticated:
            return self.default  # stdio, or HTTP with --no-auth (loopback only)
        return None  # an HTTP request that reached us unauthenticated: refuse everything

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        method = ctx.method
        if method not in _GUARDED:
            return await call_next(ctx)
        who = self.principal(ctx)
        params = ctx.params or {}
        if method == "tools/call":
            return await self._call_tool(ctx, call_next, who, params)
        if who is None:
            raise MCPError(code=INVALID_REQUEST, message="Permission denied: no authenticated role.")
        role = who.role
        if method == "tools/list":
            result = await call_next(ctx)
            tools = [t for t in _get(result, "tools", "tools") or []
                     if roles.may_call(role, _get(t, "name", "name"), self.read_only(_get(t, "name", "name")))]
            return _replace(result, "tools", tools)
        if method == "resources/list":
            result = await call_next(ctx)
            keep = [r for r in _get(result, "resources", "resources") or [] if roles.may_read_resource(role, str(_get(r, "uri", "uri")))]
            return _replace(result, "resources", keep)
        if method == "resources/templates/list":
            result = await call_next(ctx)
            key = "resource_templates" if not isinstance(result, dict) else "resourceTemplates"
            keep = [t for t in _get(result, "resource_templates", "resourceTemplates") or []
                    if roles.may_read_resource(role, str(_get(t, "uri_template", "uriTemplate")))]
            return _replace(result, key, keep)
        if method in ("resources/read", "resources/subscribe"):
            uri = str(params.get("uri", ""))
            if not roles.may_read_resource(role, uri):
                raise MCPError(code=INVALID_REQUEST, message=roles.denial(role, f"read {uri}", roles.resource_roles(uri)))
            return await call_next(ctx)
        if method == "prompts/list":
            if not roles.may_use_prompts(role):
                result = await call_next(ctx)
                return _replace(result, "prompts", [])
            return await call_next(ctx)
        if method == "prompts/get":
            if not roles.may_use_prompts(role):
                raise MCPError(code=INVALID_REQUEST, message=roles.denial(role, "use prompts", roles.PROMPT_ROLES))
            return await call_next(ctx)
        # completion/complete
        if not roles.may_complete(role):
            raise MCPError(code=INVALID_REQUEST, message=roles.denial(role, "use completions", roles.COMPLETION_ROLES))
        return await call_next(ctx)

    async def _call_tool(self, ctx: Any, call_next: Any, who: Caller | None, params: Any) -> Any:
        name = str(params.get("name", ""))
        arguments = params.get("arguments") or {}
        read_only = self.read_only(name)
        writes = not read_only
        role_label = who.role if who else "none"
        started = time.perf_counter()
        text: str | None = None
        if who is None or not roles.may_call(who.role, name, read_only):
            allowed = roles.tool_roles(name, read_only)
            text = (roles.denial(who.role, f"call {name}", allowed) if who
                    else f"Permission denied: no authenticated role may call {name}. Nothing was changed.")
        elif who.role == "agent":
            text = await self._lease_refusal(who, name, writes, arguments)
        if text is not None:
            log.info("denied %s to %s (%s)", name, who.actor if who else "unauthenticated", role_label)
            telemetry.observe_call(name, role_label, "denied", time.perf_counter() - started)
            if writes and who is not None:
                await audit.record(self.pool, actor=who.actor, role=who.role, tool=name, ids={},
                                   digest=audit.args_digest(arguments), outcome="error:denied")
            return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)
        assert who is not None
        failure = audit.start_call()
        caller = CALLER.set(who)  # tools whose policy depends on who asks (commerce, agent leases)
        try:
            result = await call_next(ctx)
        except Exception as exc:  # a protocol-level error (MCPError): still counted and audited
            kind = "protocol" if isinstance(exc, MCPError) else "internal"
            telemetry.observe_call(name, who.role, f"error:{kind}", time.perf_counter() - started)
            if writes:
                await audit.record(self.pool, actor=who.actor, role=who.role, tool=name, ids={},
                                   digest=audit.args_digest(arguments), outcome=f"error:{kind}")
            raise
        finally:
            CALLER.reset(caller)
        is_error = bool(_get(result, "is_error", "isError"))
        outcome = "ok" if not is_error else f"error:{failure[0] if failure else 'tool_error'}"
        telemetry.observe_call(name, who.role, outcome, time.perf_counter() - started)
        if writes:
            structured = _get(result, "structured_content", "structuredContent")
            await audit.record(self.pool, actor=who.actor, role=who.role, tool=name,
                               ids=audit.touched_ids(structured) if not is_error else {},
                               digest=audit.args_digest(arguments), outcome=outcome)
        return result

    async def _lease_refusal(self, who: Caller, name: str, writes: bool, arguments: dict[str, Any]) -> str | None:
        try:
            with anyio.fail_after(LEASE_CHECK_S):
                return await lease_scope.check(self.pool, holder=who.holder, tool=name, writes=writes,
                                               args=lambda: self.validate(name, arguments))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("lease check for %s failed: %s", name, type(exc).__name__)
            return str(Unavailable(type(exc).__name__))  # fail closed, retryable


LEASE_CHECK_S = 5.0

_GUARDED = frozenset({"tools/list", "tools/call", "resources/list", "resources/templates/list", "resources/read",
                      "resources/subscribe",
                      "prompts/list", "prompts/get", "completion/complete"})


def _replace(result: Any, key: str, value: list[Any]) -> Any:
    if isinstance(result, dict):
        return {**result, key: value}
    return result.model_copy(update={key: value})
