"""Wiring of access control into the server, kept out of app.py: the guard middleware on every
transport, bearer-token auth on HTTP (unless --no-auth), the audit resource and, on HTTP, the
operational routes."""

from __future__ import annotations

from typing import Any

from crm_mcp.tools import all_tools
from crm_mcp.tools.plumbing.context import Crm

from .guard import Guard, Principal


def _read_only_index() -> dict[str, bool]:
    # Read-only comes from each tool's own annotations (readOnlyHint); unknown names count as writes.
    return {s.name: bool(s.annotations.read_only_hint) for s in all_tools()}


def server_kwargs(crm: Crm, *, http: bool) -> dict[str, Any]:
    """Extra MCPServer(...) arguments: middleware always; token_verifier and auth on HTTP with auth."""
    settings = crm.settings
    authenticated = http and not settings.no_auth
    index = _read_only_index()
    default = Principal("no-auth" if http else "stdio", settings.role)
    kwargs: dict[str, Any] = {
        "middleware": [Guard(crm.pool, default=default, authenticated=authenticated,
                             read_only=lambda name: index.get(name, False))],
    }
    if authenticated:
        from .http_ops import auth_settings, make_verifier

        kwargs["token_verifier"] = make_verifier(settings, crm.pool)
        kwargs["auth"] = auth_settings(settings)
    return kwargs


def install(server: Any, crm: Crm, *, http: bool) -> None:
    from .audit import register_resource

    register_resource(server, crm)
    if http:
        from .http_ops import add_routes

        add_routes(server, crm, crm.settings)
