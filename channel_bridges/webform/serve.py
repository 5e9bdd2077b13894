"""`crm-mcp bridge webform`: the form's HTTP server and the web_form delivery loop in one process.

A web-form reply is delivered by being shown on the status page, so the delivery loop marks
each claimed reply delivered (with its delivery status recorded in the CRM) and the status page
shows delivered replies."""

from __future__ import annotations

import anyio

from ..connection import CrmTarget
from ..logs import configure
from ..runtime import Bridge, mark_delivered, serve_http
from .app import create_app
from .security import RateLimit, load_secret


async def serve(target: CrmTarget, *, host: str = "127.0.0.1", port: int = 8080, refresh_s: int = 10,
                rate_limit: RateLimit | None = None, wait_s: float = 20.0) -> None:
    bridge = Bridge(channel="web_form", deliver=mark_delivered, target=target, wait_s=wait_s)
    app = create_app(bridge, secret=load_secret(), refresh_s=refresh_s, rate_limit=rate_limit)
    await serve_http(bridge, app, host=host, port=port, name="webform")


def main(*, port: int, host: str = "127.0.0.1", server: str | None = None, token: str | None = None,
         refresh_s: int = 10, log_level: str = "INFO") -> None:
    configure(log_level)
    anyio.run(lambda: serve(CrmTarget.from_env(server, token), host=host, port=port, refresh_s=refresh_s,
                           rate_limit=RateLimit.from_env()))
