"""What both back ends do with one fetched message, and where they keep their place.

MailIntake.handle: parse; a bounce of one of our replies marks it failed; a robot's mail is
skipped; bad mail is refused with its reason (logged and counted: the mailbox keeps flowing);
everything else becomes ingest_message with its threading ids. It raises CrmUnavailable only,
so the caller keeps its checkpoint where it was and fetches the message again later.

Checkpoints: bridge_checkpoint (compare-and-set on a version) in the CRM, so a restarted bridge
on any host resumes where the last one stopped."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import anyio

from ..connection import CrmRejected, CrmUnavailable
from ..logs import event
from ..runtime import Bridge
from .parse import BadMail, ParsedMail, parse

log = logging.getLogger("crm_mcp.bridge.email")

Outcome = Literal["ingested", "duplicate", "robot", "bounce", "refused"]


@dataclass
class MailStats:
    fetched: int = 0
    robots: int = 0
    bounces: int = 0
    refused: int = 0
    last_refused: str | None = None


@dataclass
class MailIntake:
    bridge: Bridge
    support_address: str
    own_addresses: frozenset[str] = frozenset()
    stats: MailStats = field(default_factory=MailStats)

    def __post_init__(self) -> None:
        self.own_addresses = frozenset({self.support_address.lower(), *(a.lower() for a in self.own_addresses)})

    async def handle(self, raw: bytes, *, where: str, fallback_id: str, channel_message_id: str | None = None,
                     thread_ref: str | None = None, provider: str = "imap") -> Outcome:
        """`where` names the message in logs (mailbox + UID, Gmail id); never its content."""
        self.stats.fetched += 1
        try:
            mail = parse(raw, own_addresses=self.own_addresses, fallback_id=fallback_id)
        except BadMail as exc:
            return self.refuse(where, exc.reason)
        if mail.bounced_ids:
            await self._bounce(mail, where)
            return "bounce"
        if mail.robot:
            self.stats.robots += 1
            event(log, "mail_skipped_robot", where=where, reason=mail.robot)
            return "robot"
        return await self._ingest(mail, where=where, channel_message_id=channel_message_id, thread_ref=thread_ref,
                                  provider=provider)

    def refuse(self, where: str, reason: str) -> Outcome:
        self.stats.refused += 1
        self.stats.last_refused = f"{where}: {reason}"[:300]
        event(log, "mail_refused", logging.WARNING, where=where, reason=reason)
        return "refused"

    async def _bounce(self, mail: ParsedMail, where: str) -> None:
        self.stats.bounces += 1
        for mid in mail.bounced_ids:
            try:
                got = await self._call("update_delivery_status", channel="email", channel_message_id=mid, status="failed",
                                       error=(mail.bounce_reason or "bounced")[:2000])
            except CrmRejected:
                continue  # not one of ours (or an inbound message): nothing to mark
            event(log, "reply_bounced", where=where, message_id=got["message_id"], changed=got["changed"])

    async def _ingest(self, mail: ParsedMail, *, where: str, channel_message_id: str | None, thread_ref: str | None,
                      provider: str) -> Outcome:
        content = mail.text or _no_text(mail)
        args: dict[str, Any] = {
            "channel_message_id": channel_message_id or mail.message_id,
            "sender": {"email": mail.sender_email, **({"name": mail.sender_name} if mail.sender_name else {})},
            "content": content, "metadata": {**mail.metadata(), "provider": provider, "message_id_header": mail.message_id},
        }
        if mail.subject:
            args["subject"] = mail.subject
        if mail.threads_to:
            args["in_reply_to"] = mail.threads_to
        if thread_ref:
            args["thread_ref"] = thread_ref
            args["metadata"]["thread_id"] = thread_ref  # claim_outbox hands replies this metadata: the thread to send into
        now = datetime.now(timezone.utc)
        if mail.date and datetime(2000, 1, 2, tzinfo=timezone.utc) < mail.date < now + timedelta(minutes=4):
            args["received_at"] = mail.date.isoformat()
        try:
            result = await self.bridge.ingest(**args)
        except CrmRejected as exc:
            return self.refuse(where, f"the CRM refused it: {str(exc)[:200]}")
        return "duplicate" if result["duplicate"] else "ingested"

    async def _call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        return await call_retrying(self.bridge, tool, **arguments)


async def call_retrying(bridge: Bridge, tool: str, /, *, deadline_s: float = 30.0, **arguments: Any) -> dict[str, Any]:
    """A CRM call retried with backoff while the CRM is unreachable; CrmUnavailable at the deadline."""
    assert bridge.crm is not None
    end = anyio.current_time() + deadline_s
    attempt = 0
    while True:
        try:
            return await bridge.crm.call(tool, timeout_s=max(end - anyio.current_time(), 1.0), **arguments)
        except CrmUnavailable:
            delay = bridge.backoff.delay(attempt)
            if anyio.current_time() + delay >= end:
                raise
            attempt += 1
            await anyio.sleep(delay)


def _no_text(mail: ParsedMail) -> str:
    if mail.attachments:
        names = ", ".join(str(a.get("filename") or a.get("content_type")) for a in mail.attachments[:5])
        return f"(no text; {len(mail.attachments)} attachment(s): {names})"
    return "(empty message)"


@dataclass
class Checkpoint:
    """One (bridge, key) checkpoint: read once, then written forward with compare-and-set."""

    bridge: Bridge
    name: str
    key: str
    value: dict[str, Any] | None = None
    version: int = 0

    async def load(self) -> dict[str, Any] | None:
        got = await call_retrying(self.bridge, "bridge_checkpoint", bridge=self.name, key=self.key)
        self.value, self.version = got["value"], got["version"]
        return self.value

    async def save(self, value: dict[str, Any]) -> None:
        got = await call_retrying(self.bridge, "bridge_checkpoint", bridge=self.name, key=self.key, value=value,
                                  expect_version=self.version)
        if not got["written"]:
            # Another process wrote it since we read: ours is the newer position (we just
            # fetched past it), so write over it on the version we now see.
            event(log, "checkpoint_raced", logging.WARNING, key=self.key, theirs=got["value"])
            got = await call_retrying(self.bridge, "bridge_checkpoint", bridge=self.name, key=self.key, value=value,
                                      expect_version=got["version"])
        self.value, self.version = got["value"], got["version"]
