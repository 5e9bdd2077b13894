"""Wiring of access control into the server, kept out of app.py: the guard middleware on every
transport, bearer-token auth on HTTP (unless --no-auth), the audit resource and, on HTTP, the
operational routes."""

from __future__ import annotations

import uuid
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, ValidationError

from crm_mcp.tools import all_tools
from crm_mcp.tools.plumbing.context import Caller, Crm
from crm_mcp.tools.plumbing.registry import clean_strings, validation_context

from .guard import Guard


def _read_only_index() -> dict[str, bool]:
    # Read-only comes from each tool's own annotations (readOnlyHint); unknown names count as writes.
    return {s.name: bool(s.annotations.read_only_hint) for s in all_tools()}


def _validator(crm: Crm) -> Any:
    """A tool's arguments through its own input model (what ToolSpec.run does first), for the
    lease check; None when they do not validate (the tool then refuses them itself)."""
    models = {s.name: s.input_model for s in all_tools()}

    def validate(name: str, arguments: dict[str, Any]) -> BaseModel | None:
        model = models.get(name)
        if model is None:
            return None
        try:
            return model.model_validate(clean_strings(arguments), context=validation_context(crm))
        except (ValidationError, ToolError, ValueError):
            return None

    return validate


def server_kwargs(crm: Crm, *, http: bool) -> dict[str, Any]:
    """Extra MCPServer(...) arguments: middleware always; token_verifier and auth on HTTP with auth."""
    settings = crm.settings
    authenticated = http and not settings.no_auth
    index = _read_only_index()
    actor = "no-auth" if http else "stdio"
    # One stdio server serves one client: its leases are this process's alone.
    default = Caller(actor, settings.role, holder=f"{actor}:{uuid.uuid4().hex[:12]}")
    kwargs: dict[str, Any] = {
        "middleware": [Guard(crm.pool, default=default, authenticated=authenticated,
                             read_only=lambda name: index.get(name, False), validate=_validator(crm))],
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
