"""`crm-mcp bridge webform`: the form's HTTP server and the web_form delivery loop in one process.

A web-form reply is delivered by being shown on the status page, so the delivery loop marks
each claimed reply delivered (with its delivery status recorded in the CRM) and the status page
shows delivered replies."""

from __future__ import annotations

import logging
import signal

import anyio
import uvicorn

from ..connection import CrmTarget
from ..logs import configure, event
from ..runtime import Bridge, mark_delivered
from .app import create_app
from .security import RateLimit, load_secret

log = logging.getLogger("crm_mcp.bridge.webform")


async def serve(target: CrmTarget, *, host: str = "127.0.0.1", port: int = 8080, refresh_s: int = 10,
                rate_limit: RateLimit | None = None, wait_s: float = 20.0) -> None:
    bridge = Bridge(channel="web_form", deliver=mark_delivered, target=target, wait_s=wait_s)
    app = create_app(bridge, secret=load_secret(), refresh_s=refresh_s, rate_limit=rate_limit)
    uv = uvicorn.Server(uvicorn.Config(app, host=host, port=port, access_log=False, log_config=None, lifespan="off"))
    async with bridge.connected(), anyio.create_task_group() as tg:
        tg.start_soon(bridge.delivery_loop)
        watcher = anyio.CancelScope()

        async def watch() -> None:
            with watcher, anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    event(log, "stopping", signal=signal.Signals(signum).name)
                    uv.should_exit = True  # finish requests in flight, then return
                    bridge.stop()
                    return

        tg.start_soon(watch)
        event(log, "webform_listening", url=f"http://{host}:{port}/", crm=target.mode)
        await uv.serve()
        bridge.stop()  # the part being delivered finishes; the task group waits for it
        watcher.cancel()


def main(*, port: int, host: str = "127.0.0.1", server: str | None = None, token: str | None = None,
         refresh_s: int = 10, log_level: str = "INFO") -> None:
    configure(log_level)
    anyio.run(lambda: serve(CrmTarget.from_env(server, token), host=host, port=port, refresh_s=refresh_s,
                           rate_limit=RateLimit.from_env()))
