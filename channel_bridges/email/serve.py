"""`crm-mcp bridge email`: one support address, inbound and outbound, over IMAP/SMTP or the Gmail API.

One process: the inbound watcher (IMAP IDLE, or Gmail push + history catch-up), the email
delivery loop, and a small HTTP server for /healthz (and, for Gmail, the Pub/Sub push endpoint)."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..connection import CrmTarget
from ..delivery import OutboundPart
from ..logs import configure, event
from ..runtime import Bridge
from .imap import ImapConfig, ImapInbox
from .inbound import MailIntake
from .outbound import EmailSender, ReplyRateLimit
from .smtp import SmtpConfig, send as smtp_send

log = logging.getLogger("crm_mcp.bridge.email")


class EmailConfigError(Exception):
    """A setting is missing or wrong: the message names it, its valid values and what to do."""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _tls(env: Mapping[str, str], name: str, host: str) -> bool:
    value = env.get(name, "auto").strip().lower()
    if value not in ("auto", "on", "off"):
        raise EmailConfigError(f"{name}={value!r}: valid values are auto, on, off.")
    if value == "off" and not is_loopback(host):
        raise EmailConfigError(f"{name}=off is allowed only to a loopback host (got {host}); use TLS (auto or on).")
    return value == "on" or (value == "auto" and not is_loopback(host))


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise EmailConfigError(f"{name}={raw!r} is not a port number (1-65535).")
    return int(raw)


def _need(env: Mapping[str, str], name: str) -> str:
    value = (env.get(name) or "").strip()
    if not value:
        raise EmailConfigError(f"{name} is not set; see README 'Email bridge' for the settings of each back end.")
    return value


@dataclass(frozen=True)
class EmailSettings:
    support_address: str
    support_name: str | None
    backend: str
    imap: ImapConfig | None = None
    smtp: SmtpConfig | None = None
    gmail: Any = None  # gmail.GmailConfig
    reply_limit: int = 10
    reply_window_s: float = 3600.0
    push_token: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, backend: str | None = None) -> EmailSettings:
        env = os.environ if env is None else env
        address = _need(env, "CRM_SUPPORT_ADDRESS").lower()
        if address.count("@") != 1 or " " in address:
            raise EmailConfigError(f"CRM_SUPPORT_ADDRESS={address!r} is not an email address, e.g. support@example.com.")
        backend = backend or env.get("CRM_EMAIL_BACKEND") or (
            "gmail" if (env.get("GMAIL_CREDENTIALS") or env.get("GMAIL_API_BASE")) and not env.get("CRM_IMAP_HOST") else "imap")
        if backend not in ("imap", "gmail"):
            raise EmailConfigError(f"backend {backend!r}: valid values are imap, gmail.")
        limit = env.get("CRM_EMAIL_REPLY_LIMIT", "10/3600")
        try:
            count, window = (float(x) for x in limit.split("/"))
            if count < 1 or window <= 0:
                raise ValueError
        except ValueError:
            raise EmailConfigError(f"CRM_EMAIL_REPLY_LIMIT={limit!r}: give replies/seconds, e.g. 10/3600.") from None
        common = dict(support_address=address, support_name=env.get("CRM_SUPPORT_NAME") or None, backend=backend,
                      reply_limit=int(count), reply_window_s=window)
        if backend == "gmail":
            from .gmail import GmailConfig

            gmail = GmailConfig.from_env(env, address)
            push_token = env.get("GMAIL_PUSH_TOKEN") or None
            if gmail.topic and (push_token is None or len(push_token) < 16):
                raise EmailConfigError("GMAIL_TOPIC is set but GMAIL_PUSH_TOKEN is not (or is under 16 characters): the push "
                                       "subscription's URL must carry it, https://<host>/gmail/push?token=<GMAIL_PUSH_TOKEN>.")
            return cls(**common, gmail=gmail, push_token=push_token)
        host = _need(env, "CRM_IMAP_HOST")
        imap_tls = _tls(env, "CRM_IMAP_TLS", host)
        imap = ImapConfig(host=host, port=_port(env, "CRM_IMAP_PORT", 993 if imap_tls else 143),
                          user=_need(env, "CRM_IMAP_USER"), password=_need(env, "CRM_IMAP_PASSWORD"),
                          folder=env.get("CRM_IMAP_FOLDER") or "INBOX", tls=imap_tls,
                          idle_s=float(env.get("CRM_IMAP_IDLE_S") or 300))
        smtp_host = _need(env, "CRM_SMTP_HOST")
        smtp_tls = _tls(env, "CRM_SMTP_TLS", smtp_host)
        smtp = SmtpConfig(host=smtp_host, port=_port(env, "CRM_SMTP_PORT", 587 if smtp_tls else 25),
                          user=env.get("CRM_SMTP_USER") or None, password=env.get("CRM_SMTP_PASSWORD") or None, tls=smtp_tls)
        return cls(**common, imap=imap, smtp=smtp)


async def serve(settings: EmailSettings, target: CrmTarget, *, host: str = "127.0.0.1", port: int = 8025,
                wait_s: float = 20.0) -> None:
    inbox: Any
    if settings.backend == "gmail":
        from .gmail import GmailClient, GmailInbox

        client = GmailClient(settings.gmail)

        async def send(msg: EmailMessage, part: OutboundPart) -> str | None:
            thread = part.thread_ref or ((part.reply_to or {}).get("metadata") or {}).get("thread_id")
            return await client.send(msg, thread_id=thread)
    else:
        smtp = settings.smtp
        assert smtp is not None

        async def send(msg: EmailMessage, part: OutboundPart) -> str | None:
            await smtp_send(smtp, msg)
            return None

    sender = EmailSender(settings.support_address, send, settings.support_name,
                         ReplyRateLimit(settings.reply_limit, settings.reply_window_s))
    bridge = Bridge(channel="email", deliver=sender, target=target, wait_s=wait_s)
    intake = MailIntake(bridge, settings.support_address)
    name = f"email:{settings.support_address}"
    if settings.backend == "gmail":
        inbox = GmailInbox(client, intake, bridge_name=name)
    else:
        assert settings.imap is not None
        inbox = ImapInbox(settings.imap, intake, bridge_name=name)

    async def healthz(request: Request) -> JSONResponse:
        doc = bridge.health()
        s = intake.stats
        doc["email"] = {"backend": settings.backend, "inbound_connected": inbox.connected, "inbound_error": inbox.last_error,
                        "fetched": s.fetched, "robots": s.robots, "bounces": s.bounces, "refused": s.refused,
                        "last_refused": s.last_refused}
        ok = doc["status"] == "ok" and inbox.connected
        return JSONResponse(doc, status_code=200 if ok else 503)

    routes = [Route("/healthz", healthz)]
    if settings.backend == "gmail":
        routes.append(Route("/gmail/push", inbox.push_endpoint(settings.push_token), methods=["POST"]))
    app = Starlette(routes=routes)
    uv = uvicorn.Server(uvicorn.Config(app, host=host, port=port, access_log=False, log_config=None, lifespan="off"))
    async with bridge.connected(), anyio.create_task_group() as tg:
        tg.start_soon(bridge.delivery_loop)
        inbound = anyio.CancelScope()

        async def run_inbound() -> None:
            with inbound:
                await inbox.run()

        tg.start_soon(run_inbound)
        watcher = anyio.CancelScope()

        async def watch() -> None:
            with watcher, anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    event(log, "stopping", signal=signal.Signals(signum).name)
                    uv.should_exit = True
                    bridge.stop()
                    return

        tg.start_soon(watch)
        event(log, "email_bridge_started", backend=settings.backend, address=settings.support_address,
              health=f"http://{host}:{port}/healthz", crm=target.mode)
        await uv.serve()
        bridge.stop()  # the reply being sent finishes; the task group waits for it
        inbound.cancel()
        watcher.cancel()


def main(*, port: int, host: str = "127.0.0.1", server: str | None = None, token: str | None = None,
         backend: str | None = None, log_level: str = "INFO", wait_s: float = 20.0) -> None:
    configure(log_level)
    settings = EmailSettings.from_env(backend=backend)
    anyio.run(lambda: serve(settings, CrmTarget.from_env(server, token), host=host, port=port, wait_s=wait_s))
