"""`crm-mcp up`: the whole desk under one supervisor.

It prepares the database (migrations, and the demo with --demo), mints a token for each
component that talks to the CRM over HTTP, then runs every component as its own process: the MCP
HTTP server, the web form bridge, and each further bridge whose settings are present. A component
that exits is restarted with exponential backoff; once it answers its health check its address is
printed; Ctrl-C or SIGTERM stops everything. The offline answering agent (`crm-mcp agent`) runs
as one more component with a token of the `agent` role. Tokens are handed to children in the environment
(never on a command line, where `ps` shows them) and revoked when the desk stops."""

from __future__ import annotations

import functools
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import anyio
import httpx

from .config import Settings

log = logging.getLogger(__name__)

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_RESET_S = 60.0  # a component that ran this long starts its backoff afresh
STOP_GRACE_S = 10.0


@dataclass
class Component:
    name: str
    argv: list[str]
    url: str  # where people (or other components) reach it; for a pure client, what it talks to
    health: str | None  # polled until it answers 200; None: a client with no port (announced at start)
    env: dict[str, str] = field(default_factory=dict)
    restarts: int = 0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "crm_mcp.server.cli", *args]


def channel_bridges(env: Mapping[str, str], host: str, ports: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """The bridges beyond the web form whose settings are present (WhatsApp: TWILIO_* or META_*;
    email: CRM_SUPPORT_ADDRESS; Shopify: SHOPIFY_*), checked the way each bridge checks them at
    start; and one line for each whose settings are present but wrong, which is not started (it
    would only exit and be restarted forever)."""
    on: list[str] = []
    wrong: list[str] = []
    if any(k.startswith(("TWILIO_", "META_")) for k in env):
        from crm_mcp.channel_bridges.whatsapp import config

        try:
            config.load(env, default_public_url=f"http://{host}:{ports['whatsapp']}")
            on.append("whatsapp")
        except config.ConfigError as exc:
            wrong.append(f"whatsapp not started: {exc}")
    if env.get("CRM_SUPPORT_ADDRESS"):
        from crm_mcp.channel_bridges.email.serve import EmailConfigError, EmailSettings

        try:
            EmailSettings.from_env(env)
            on.append("email")
        except EmailConfigError as exc:
            wrong.append(f"email not started: {exc}")
    if any(k.startswith("SHOPIFY_") for k in env):
        from crm_mcp.channel_bridges.shopify.settings import ShopifyConfigError, load

        try:
            load(need=("webhook_secret",), env=env)
            on.append("shopify")
        except ShopifyConfigError as exc:
            wrong.append(f"shopify not started: {exc}")
    return on, wrong


def plan(settings: Settings, *, webform_port: int, tokens: dict[str, str], bridges: Sequence[str] = (),
         ports: Mapping[str, int] | None = None) -> list[Component]:
    host, port = settings.host, settings.port
    mcp_url = f"http://{host}:{port}/mcp"
    # The Shopify bridge stores orders through upsert_order, which only the opt-in toolset
    # store_sync exposes: the server it talks to must have it.
    server_env = {}
    if "shopify" in bridges and "store_sync" not in settings.toolsets.split(","):
        server_env["CRM_TOOLSETS"] = f"{settings.toolsets},store_sync"
    components = [
        Component("mcp-server", _cli("serve", "--http", "--host", host, "--port", str(port)), mcp_url,
                  f"http://{host}:{port}/healthz", env=server_env),
        Component("webform", _cli("bridge", "webform", "--host", host, "--port", str(webform_port)),
                  f"http://{host}:{webform_port}/", f"http://{host}:{webform_port}/healthz",
                  env={"CRM_SERVER_URL": mcp_url, "CRM_TOKEN": tokens["webform"]}),
        Component("agent", _cli("agent"), mcp_url, None,
                  env={"CRM_SERVER_URL": mcp_url, "CRM_TOKEN": tokens["agent"]}),
    ]
    for name in bridges:
        p = (ports or BRIDGE_PORTS)[name]
        components.append(Component(name, _cli("bridge", name, "--host", host, "--port", str(p)), f"http://{host}:{p}/",
                                    f"http://{host}:{p}/healthz", env={"CRM_SERVER_URL": mcp_url, "CRM_TOKEN": tokens[name]}))
    return components


# The role each component's token gets: the least that component needs.
TOKEN_ROLES = {"webform": "bridge", "agent": "agent", "whatsapp": "bridge", "email": "bridge", "shopify": "bridge"}
BRIDGE_PORTS = {"whatsapp": 8090, "email": 8025, "shopify": 8092}  # each bridge's own default


async def mint_tokens(dsn: str, names: list[str]) -> dict[str, str]:
    """One token per component (role from TOKEN_ROLES), named so `crm-mcp token list` shows where it came from."""
    from .auth import create_token
    from .db import connect_once

    conn = await connect_once(dsn)
    try:
        stamp = f"{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"
        return {n: await create_token(conn, f"up-{n}-{stamp}", TOKEN_ROLES[n]) for n in names}
    finally:
        await conn.close()


async def revoke_minted(dsn: str, tokens: dict[str, str]) -> None:
    from .auth import hash_token
    from .db import connect_once

    conn = await connect_once(dsn)
    try:
        await conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE token_sha256 = ANY($1::bytea[]) "
                           "AND revoked_at IS NULL", [hash_token(t) for t in tokens.values()])
    finally:
        await conn.close()


async def _wait_healthy(url: str, proc: anyio.abc.Process, timeout_s: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline and proc.returncode is None:
            try:
                if (await client.get(url)).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            await anyio.sleep(0.25)
    return False


async def supervise(c: Component, *, say: Callable[[str], None]) -> None:
    """Run one component until cancelled, restarting it with backoff when it exits."""
    backoff = BACKOFF_START_S
    env = {**os.environ, **c.env}
    while True:
        started = time.monotonic()
        async with await anyio.open_process(c.argv, env=env, stdin=subprocess.DEVNULL, stdout=None, stderr=None,
                                            start_new_session=True) as proc:
            try:
                restart = f"  (restart {c.restarts})" if c.restarts else ""
                if c.health is None:
                    say(f"{c.name:<11} answering through {c.url}{restart}")
                elif await _wait_healthy(c.health, proc):
                    say(f"{c.name:<11} {c.url}{restart}")
                code = await proc.wait()
            finally:
                with anyio.CancelScope(shield=True):
                    await _stop(proc)
        ran = time.monotonic() - started
        backoff = BACKOFF_START_S if ran > HEALTHY_RESET_S else min(backoff * 2, BACKOFF_MAX_S)
        c.restarts += 1
        say(f"{c.name} exited with code {code} after {ran:.0f} s; restarting in {backoff:.0f} s")
        await anyio.sleep(backoff)


async def _stop(proc: anyio.abc.Process) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    with anyio.move_on_after(STOP_GRACE_S):
        await proc.wait()
        return
    proc.kill()
    await proc.wait()


async def run_up(settings: Settings, *, demo: bool, webform_port: int, bridge_ports: Mapping[str, int] | None = None) -> None:
    def say(line: str) -> None:
        print(f"crm-mcp up: {line}", flush=True)

    ports = {**BRIDGE_PORTS, **(bridge_ports or {})}
    bridges, wrong = channel_bridges(os.environ, settings.host, ports)
    for line in wrong:
        say(line)

    from .app import open_crm, prepare_database

    if demo:
        from .demo import load_demo

        async with open_crm(settings, background=False) as crm:
            await load_demo(crm)
    dsn = await prepare_database(settings)  # once: migrations applied, the embedded server joined
    tokens = await mint_tokens(dsn, ["webform", "agent", *bridges])
    components = plan(settings, webform_port=webform_port, tokens=tokens, bridges=bridges, ports=ports)
    say("starting " + ", ".join(c.name for c in components) + "; Ctrl-C stops everything")
    try:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        say("stopping")
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch)
            for c in components:
                tg.start_soon(functools.partial(supervise, c, say=say))
    finally:
        with anyio.CancelScope(shield=True):
            await revoke_minted(dsn, tokens)
        say("stopped")
