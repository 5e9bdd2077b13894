"""`crm-mcp bridge whatsapp`: the webhooks (Twilio and/or Meta) and the whatsapp delivery loop in
one process; see app.py for the paths and outbound.py for how replies go out."""

from __future__ import annotations

import anyio
import httpx2

from ..connection import CrmTarget
from ..logs import configure
from ..runtime import Bridge, serve_http
from .app import create_app
from .config import Settings
from .outbound import Sender


async def serve(target: CrmTarget, settings: Settings, *, host: str = "127.0.0.1", port: int = 8090,
                lease_s: float = 60.0, wait_s: float = 20.0) -> None:
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(20.0, connect=10.0)) as http:
        bridge = Bridge(channel="whatsapp", deliver=Sender(settings, http).deliver, target=target,
                        lease_s=lease_s, wait_s=wait_s, attempt_timeout_s=25.0)
        await serve_http(bridge, create_app(bridge, settings), host=host, port=port, name="whatsapp")


def main(*, settings: Settings, port: int, host: str = "127.0.0.1", server: str | None = None, token: str | None = None,
         lease_s: float = 60.0, log_level: str = "INFO") -> None:
    configure(log_level)
    anyio.run(lambda: serve(CrmTarget.from_env(server, token), settings, host=host, port=port, lease_s=lease_s))
