"""The Gmail API back end (google-api-python-client, its bundled discovery document).

Inbound: `users.watch` asks Gmail to publish mailbox changes to a Pub/Sub topic, whose push
subscription calls POST /gmail/push?token=<GMAIL_PUSH_TOKEN> (a shared secret in the push URL,
compared in constant time). A push only wakes the catch-up: `users.history.list` from the
stored historyId lists the messages added since, each fetched with `messages.get(format=raw)` and
parsed like any mail. The same catch-up runs every `poll_s` without a push (a lost push, or no
topic configured), and at start. A historyId Gmail no longer keeps (404) means a full resync of
recent mail (`messages.list newer_than:Nd`); the CRM's dedup by Gmail id drops what it has.

Outbound: `users.messages.send` with the raw RFC 5322 message and the customer's threadId.

The client is synchronous (httplib2): every call runs in a worker thread."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..logs import event
from ..retry import Backoff
from .inbound import Checkpoint, MailIntake
from .serve import EmailConfigError, is_loopback

log = logging.getLogger("crm_mcp.bridge.email.gmail")

SCOPES = ("https://www.googleapis.com/auth/gmail.modify",)  # read, send, and watch; nothing is deleted


@dataclass(frozen=True)
class GmailConfig:
    user: str  # the mailbox: "me" for OAuth, the support address for a service account with delegation
    credentials_file: str | None
    api_base: str | None
    topic: str | None
    poll_s: float = 60.0
    resync_days: int = 7
    resync_max: int = 500

    @classmethod
    def from_env(cls, env: Mapping[str, str], support_address: str) -> GmailConfig:
        creds = env.get("GMAIL_CREDENTIALS") or None
        base = env.get("GMAIL_API_BASE") or None
        if creds is None and not (base and is_loopback(_host(base))):
            raise EmailConfigError("GMAIL_CREDENTIALS is not set: the path of a service-account JSON key (with domain-wide "
                                   "delegation) or of an OAuth authorized-user JSON with a refresh token.")
        if creds is not None and not os.path.isfile(creds):
            raise EmailConfigError(f"GMAIL_CREDENTIALS={creds!r} is not a readable file.")
        topic = env.get("GMAIL_TOPIC") or None
        if topic and not topic.startswith("projects/"):
            raise EmailConfigError(f"GMAIL_TOPIC={topic!r}: give the full name, projects/<project>/topics/<topic>.")
        try:
            poll_s = float(env.get("GMAIL_POLL_S") or 60)
        except ValueError:
            raise EmailConfigError("GMAIL_POLL_S must be a number of seconds, e.g. 60.") from None
        return cls(user=env.get("GMAIL_USER") or support_address, credentials_file=creds, api_base=base, topic=topic,
                   poll_s=poll_s)


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or ""


def _credentials(cfg: GmailConfig) -> Any:
    if cfg.credentials_file is None:  # a local stand-in for the API (tests): no Google credentials at all
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    with open(cfg.credentials_file, encoding="utf-8") as f:
        info = json.load(f)
    if info.get("type") == "service_account":
        from google.oauth2 import service_account

        return service_account.Credentials.from_service_account_info(info, scopes=SCOPES).with_subject(cfg.user)
    from google.oauth2.credentials import Credentials

    return Credentials.from_authorized_user_info(info, scopes=SCOPES)


class HistoryExpired(Exception):
    pass


class GmailClient:
    def __init__(self, cfg: GmailConfig) -> None:
        self.cfg = cfg
        self._service: Any = None

    def _svc(self) -> Any:
        if self._service is None:
            from googleapiclient.discovery import build

            options = {"api_endpoint": self.cfg.api_base} if self.cfg.api_base else None
            self._service = build("gmail", "v1", credentials=_credentials(self.cfg), client_options=options,
                                  static_discovery=True, cache_discovery=False)
        return self._service

    async def _run(self, fn: Callable[[], Any]) -> Any:
        return await anyio.to_thread.run_sync(fn)

    def _users(self) -> Any:
        return self._svc().users()

    async def profile_history_id(self) -> str:
        got = await self._run(lambda: self._users().getProfile(userId=self.cfg.user).execute())
        return str(got["historyId"])

    async def watch(self, topic: str) -> str:
        got = await self._run(lambda: self._users().watch(
            userId=self.cfg.user, body={"topicName": topic, "labelIds": ["INBOX"], "labelFilterBehavior": "include"}).execute())
        return str(got["historyId"])

    async def added_since(self, history_id: str) -> tuple[list[dict[str, Any]], str]:
        """Messages added since history_id, and the history id to continue from."""
        from googleapiclient.errors import HttpError

        found: list[dict[str, Any]] = []
        token = None
        latest = history_id
        while True:
            def page(tok: str | None = token) -> Any:
                return self._users().history().list(userId=self.cfg.user, startHistoryId=history_id,
                                                    historyTypes="messageAdded", pageToken=tok).execute()
            try:
                got = await self._run(page)
            except HttpError as exc:
                if exc.resp.status == 404:
                    raise HistoryExpired(history_id) from None
                raise
            for h in got.get("history", []):
                for added in h.get("messagesAdded", []):
                    found.append(added["message"])
            latest = str(got.get("historyId", latest))
            token = got.get("nextPageToken")
            if not token:
                return found, latest

    async def recent(self) -> list[dict[str, Any]]:
        got = await self._run(lambda: self._users().messages().list(
            userId=self.cfg.user, q=f"newer_than:{self.cfg.resync_days}d -in:sent -in:drafts",
            maxResults=self.cfg.resync_max).execute())
        return list(reversed(got.get("messages", [])))  # oldest first

    async def raw(self, message_id: str) -> dict[str, Any]:
        return await self._run(lambda: self._users().messages().get(userId=self.cfg.user, id=message_id, format="raw").execute())

    async def send(self, msg: EmailMessage, *, thread_id: str | None) -> str:
        from googleapiclient.errors import HttpError

        from ..delivery import http_failure

        body: dict[str, Any] = {"raw": base64.urlsafe_b64encode(msg.as_bytes()).decode()}
        if thread_id:
            body["threadId"] = thread_id
        try:
            got = await self._run(lambda: self._users().messages().send(userId=self.cfg.user, body=body).execute())
        except HttpError as exc:
            raise http_failure(exc.resp.status, str(exc.reason or "")[:300], exc.resp.get("retry-after")) from None
        except OSError as exc:
            from ..delivery import TransientDeliveryError

            raise TransientDeliveryError(f"{type(exc).__name__}: {exc}"[:300]) from None
        return str(got["id"])


class GmailInbox:
    def __init__(self, client: GmailClient, intake: MailIntake, *, bridge_name: str, backoff: Backoff | None = None) -> None:
        self.client = client
        self.intake = intake
        self.checkpoint = Checkpoint(intake.bridge, bridge_name, "gmail:history")
        self.backoff = backoff or Backoff(base_s=1.0, cap_s=60.0)
        self.connected = False
        self.last_error: str | None = None
        self.pushes = 0
        self._wake = anyio.Event()

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._loop()
            except Exception as exc:  # API errors, the CRM away, a bug: log, back off, start over
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                self.connected = False
                delay = self.backoff.delay(attempt)
                attempt += 1
                event(log, "gmail_error", logging.WARNING, error=self.last_error, retry_in_s=round(delay, 2))
                await anyio.sleep(delay)

    async def _loop(self) -> None:
        cfg = self.client.cfg
        saved = await self.checkpoint.load()
        history_id = (saved or {}).get("history_id")
        if cfg.topic:  # a watch lasts 7 days: renewed at every (re)start and daily below
            await self.client.watch(cfg.topic)
            event(log, "gmail_watching", topic=cfg.topic)
            watched_at = anyio.current_time()
        if history_id is None:
            history_id = await self._full_resync("first start")
        self.connected, self.last_error = True, None
        while True:
            try:
                added, latest = await self.client.added_since(history_id)
            except HistoryExpired:
                latest = await self._full_resync(f"history id {history_id} expired")
                added = []
            for m in added:
                await self._one(m["id"])
            if latest != history_id:
                history_id = latest
                await self.checkpoint.save({"history_id": history_id})
            with anyio.move_on_after(cfg.poll_s):
                await self._wake.wait()
            self._wake = anyio.Event()
            if cfg.topic and anyio.current_time() - watched_at > 86400:
                await self.client.watch(cfg.topic)
                watched_at = anyio.current_time()

    async def _full_resync(self, why: str) -> str:
        # The history id is taken before the listing: mail that arrives during it is caught by the next catch-up.
        history_id = await self.client.profile_history_id()
        recent = await self.client.recent()
        event(log, "gmail_resync", reason=why, messages=len(recent))
        for m in recent:
            await self._one(m["id"])
        await self.checkpoint.save({"history_id": history_id})
        return history_id

    async def _one(self, gmail_id: str) -> None:
        got = await self.client.raw(gmail_id)
        labels = set(got.get("labelIds", []))
        if labels & {"SENT", "DRAFT"}:
            return  # our own outgoing mail shows up in the history too
        try:
            raw = base64.urlsafe_b64decode(got["raw"] + "=" * (-len(got["raw"]) % 4))
        except (KeyError, ValueError):
            self.intake.refuse(f"gmail/{gmail_id}", "Gmail returned no readable raw message")
            return
        await self.intake.handle(raw, where=f"gmail/{gmail_id}", fallback_id=f"gmail-{gmail_id}", channel_message_id=gmail_id,
                                 thread_ref=got.get("threadId"), provider="gmail")

    def push_endpoint(self, token: str | None) -> Callable[[Request], Awaitable[Response]]:
        """POST /gmail/push: a Pub/Sub push. Authenticated by the shared token in the push URL; the
        body only wakes the catch-up (its historyId is not trusted as a position)."""

        async def push(request: Request) -> Response:
            given = request.query_params.get("token", "")
            if not token or not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse({"error": "unauthenticated push"}, status_code=403)
            try:
                envelope = await request.json()
                data = json.loads(base64.b64decode(envelope["message"]["data"]))
                event(log, "gmail_push", history_id=str(data.get("historyId")))
            except (ValueError, KeyError, TypeError):
                return JSONResponse({"error": "not a Pub/Sub push envelope"}, status_code=400)
            self.pushes += 1
            self._wake.set()
            return Response(status_code=204)

        return push
