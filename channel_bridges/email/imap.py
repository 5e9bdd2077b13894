"""Inbound over IMAP: catch up from the checkpoint, then IDLE; reconnect with backoff.

The checkpoint is {"uidvalidity", "last_uid"} per mailbox. UIDs only mean something under one
UIDVALIDITY: when the server reports another (the mailbox was recreated or rebuilt), the bridge
fetches the mailbox's recent mail again (`resync_days`) and the CRM's dedup by Message-ID drops
what it already has. A message larger than the limit is not downloaded: its headers are, and it
is refused with the reason. The checkpoint moves after each batch, only past messages the CRM
has answered for (ingested, skipped or refused), so a crash re-fetches at most one batch."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import aioimaplib
import anyio

from ..connection import CrmUnavailable
from ..logs import event
from ..retry import Backoff
from .inbound import Checkpoint, MailIntake
from .parse import MAX_MESSAGE_BYTES

log = logging.getLogger("crm_mcp.bridge.email.imap")

_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")
_FETCH_UID = re.compile(rb"UID (\d+)")
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
BATCH = 50


class ImapError(Exception):
    pass


@dataclass(frozen=True)
class ImapConfig:
    host: str
    port: int
    user: str
    password: str
    folder: str = "INBOX"
    tls: bool = True  # implicit TLS (IMAPS); plain only to a loopback host (config refuses otherwise)
    idle_s: float = 300.0  # re-issue IDLE this often (servers drop idle sessions after 30 min)
    resync_days: int = 30  # first run and a UIDVALIDITY change: fetch this much recent mail
    timeout_s: float = 30.0


class ImapInbox:
    def __init__(self, cfg: ImapConfig, intake: MailIntake, *, bridge_name: str, backoff: Backoff | None = None) -> None:
        self.cfg = cfg
        self.intake = intake
        self.checkpoint = Checkpoint(intake.bridge, bridge_name, f"imap:{cfg.folder}")
        self.backoff = backoff or Backoff(base_s=1.0, cap_s=60.0)
        self.connected = False
        self.last_error: str | None = None
        self._reached = False  # this session got as far as the mailbox: the next failure starts backoff afresh

    async def run(self) -> None:
        attempt = 0
        while True:
            self._reached = False
            try:
                await self._session()
            except (OSError, asyncio.TimeoutError, aioimaplib.Abort, aioimaplib.CommandTimeout, ImapError,
                    CrmUnavailable) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            except Exception as exc:  # a bug or a refusal must not end the bridge: log it, back off, reconnect
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("imap session failed")
            delay = self.backoff.delay(attempt)
            event(log, "imap_disconnected", logging.WARNING, error=self.last_error, retry_in_s=round(delay, 2))
            attempt = 0 if self._reached else attempt + 1
            await anyio.sleep(delay)

    async def _connect(self) -> aioimaplib.IMAP4:
        c = self.cfg
        if c.tls:
            imap: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(host=c.host, port=c.port, timeout=c.timeout_s,
                                                          ssl_context=ssl.create_default_context())
        else:
            imap = aioimaplib.IMAP4(host=c.host, port=c.port, timeout=c.timeout_s)
        await imap.wait_hello_from_server()
        _ok(await imap.login(c.user, c.password), "LOGIN (check CRM_IMAP_USER / CRM_IMAP_PASSWORD)")
        return imap

    async def _session(self) -> None:
        imap = await self._connect()
        try:
            selected = _ok(await imap.select(_quote(self.cfg.folder)), f"SELECT {self.cfg.folder}")
            uidvalidity = _first_int(_UIDVALIDITY, selected.lines)
            if uidvalidity is None:
                raise ImapError("the server reported no UIDVALIDITY")
            saved = await self.checkpoint.load()
            if saved is None or saved.get("uidvalidity") != uidvalidity:
                event(log, "imap_resync", folder=self.cfg.folder, uidvalidity=uidvalidity,
                      previous=(saved or {}).get("uidvalidity"), days=self.cfg.resync_days)
                last_uid = None  # fetch recent mail by date; dedup drops what the CRM has
            else:
                last_uid = int(saved.get("last_uid", 0))
            self.connected, self.last_error, self._reached = True, None, True
            event(log, "imap_connected", folder=self.cfg.folder, uidvalidity=uidvalidity, last_uid=last_uid)
            while True:
                # Until a pass finds nothing: mail that arrives during a pass is announced (EXISTS)
                # outside IDLE, where the client drops it, so only another pass can see it.
                while True:
                    before = last_uid
                    last_uid = await self._catch_up(imap, uidvalidity, last_uid)
                    if last_uid == before:
                        break
                await self._idle(imap)
        finally:
            self.connected = False
            with anyio.move_on_after(5, shield=True):
                try:
                    await imap.logout()
                except Exception:  # the connection is already gone; nothing to tidy
                    pass

    async def _catch_up(self, imap: aioimaplib.IMAP4, uidvalidity: int, last_uid: int | None) -> int:
        if last_uid is None:
            since = (datetime.now(timezone.utc) - timedelta(days=self.cfg.resync_days)).strftime("%d-%b-%Y")
            found = _ok(await imap.uid_search("SINCE", since, charset=None), "UID SEARCH")
            uids = sorted(int(u) for line in found.lines[:-1] for u in line.split() if u.isdigit())
            last_uid = 0
        else:
            got = _ok(await imap.uid("fetch", f"{last_uid + 1}:*", "(UID RFC822.SIZE)"), "UID FETCH")
            uids = sorted(u for u in (_first_int(_FETCH_UID, [line]) for line in got.lines if isinstance(line, bytes))
                          if u is not None and u > last_uid)  # `n:*` always names the last message
        for start in range(0, len(uids), BATCH):
            batch = uids[start:start + BATCH]
            sized = _ok(await imap.uid("fetch", ",".join(map(str, batch)), "(UID RFC822.SIZE)"), "UID FETCH sizes")
            sizes = {uid: size for line in sized.lines if isinstance(line, bytes)
                     if (uid := _first_int(_FETCH_UID, [line])) is not None and (size := _first_int(_SIZE, [line])) is not None}
            for uid in batch:
                await self._one(imap, uid, sizes.get(uid, 0))
            last_uid = max(last_uid, batch[-1])
            await self.checkpoint.save({"uidvalidity": uidvalidity, "last_uid": last_uid})
        if not uids and (self.checkpoint.value or {}).get("uidvalidity") != uidvalidity:
            await self.checkpoint.save({"uidvalidity": uidvalidity, "last_uid": last_uid})
        return last_uid

    async def _one(self, imap: aioimaplib.IMAP4, uid: int, size: int) -> None:
        where = f"{self.cfg.folder}/{uid}"
        if size > MAX_MESSAGE_BYTES:
            self.intake.refuse(where, f"message is {size / 1048576:.1f} MB; the limit is {MAX_MESSAGE_BYTES // 1048576} MB (not downloaded)")
            return
        got = _ok(await imap.uid("fetch", str(uid), "(UID BODY.PEEK[])"), "UID FETCH body")
        raw = next((bytes(line) for line in got.lines if isinstance(line, bytearray)), None)
        if raw is None:
            self.intake.refuse(where, "the server returned no body (expunged meanwhile?)")
            return
        outcome = await self.intake.handle(raw, where=where, fallback_id=f"imap-{self.checkpoint.value and self.checkpoint.value.get('uidvalidity')}-{uid}@{self.cfg.host}")
        event(log, "mail_handled", logging.DEBUG, where=where, outcome=outcome)

    async def _idle(self, imap: aioimaplib.IMAP4) -> None:
        """Wait for the server to announce new mail (EXISTS), at most idle_s; then catch up."""
        idle = await imap.idle_start(timeout=self.cfg.idle_s + 30)
        try:
            with anyio.move_on_after(self.cfg.idle_s):
                while True:
                    pushed = await imap.wait_server_push(timeout=self.cfg.idle_s + 30)
                    lines = pushed if isinstance(pushed, list) else getattr(pushed, "lines", [])
                    if lines == aioimaplib.STOP_WAIT_SERVER_PUSH:
                        raise ImapError("IDLE ended by the server")
                    if any(isinstance(x, bytes) and x.endswith(b"EXISTS") for x in lines):
                        break
        finally:
            if imap.has_pending_idle():
                imap.idle_done()
            with anyio.fail_after(self.cfg.timeout_s, shield=True):
                await asyncio.wait_for(idle, self.cfg.timeout_s)


def _ok(resp: Any, what: str) -> Any:
    if resp.result != "OK":
        detail = b" ".join(x for x in resp.lines if isinstance(x, bytes))[:200].decode("utf-8", "replace")
        raise ImapError(f"{what} failed: {resp.result} {detail}")
    return resp


def _first_int(pattern: re.Pattern[bytes], lines: list[Any]) -> int | None:
    for line in lines:
        if isinstance(line, (bytes, bytearray)):
            m = pattern.search(bytes(line))
            if m:
                return int(m.group(1))
    return None


def _quote(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'
