"""A local stand-in for the Gmail API, enough for the email bridge: getProfile, watch, history.list
(with an expiry horizon: older start ids get Gmail's 404), messages.list/get(raw)/send. The real
google-api-python-client talks to it (client_options api_endpoint = GMAIL_API_BASE)."""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .fake_http import serving

USERS = re.compile(r"^/gmail/v1/users/(?P<user>[^/]+)/(?P<rest>.*)$")


@dataclass
class FakeGmail:
    history_id: int = 1000
    expired_before: int = 0  # history.list from an id below this answers 404
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {raw, threadId, labelIds, historyId}
    sent: list[tuple[EmailMessage, dict[str, Any]]] = field(default_factory=list)
    watches: list[dict[str, Any]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    base: str = ""

    def deliver(self, raw: bytes, *, thread_id: str | None = None, labels: tuple[str, ...] = ("INBOX", "UNREAD")) -> str:
        with self.lock:
            self.history_id += 1
            mid = f"g{self.history_id:x}"
            self.messages[mid] = {"raw": raw, "threadId": thread_id or f"t-{mid}", "labelIds": list(labels),
                                  "historyId": self.history_id}
            return mid

    def expire_history(self) -> None:
        with self.lock:
            self.expired_before = self.history_id + 1

    # the API -------------------------------------------------------------------------------------

    def answer(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        m = USERS.match(path)
        if not m:
            return 404, {"error": {"code": 404, "message": "not found"}}
        rest = m.group("rest")
        q = {k: v[0] for k, v in query.items()}
        with self.lock:
            self.requests.append(f"{method} {rest}")
            if method == "GET" and rest == "profile":
                return 200, {"emailAddress": m.group("user"), "historyId": str(self.history_id)}
            if method == "POST" and rest == "watch":
                self.watches.append(body)
                return 200, {"historyId": str(self.history_id), "expiration": "9999999999999"}
            if method == "GET" and rest == "history":
                start = int(q["startHistoryId"])
                if start < self.expired_before:
                    return 404, {"error": {"code": 404, "message": "Requested entity was not found."}}
                added = [{"id": str(v["historyId"]), "messagesAdded": [{"message": {"id": k, "threadId": v["threadId"],
                                                                                     "labelIds": v["labelIds"]}}]}
                         for k, v in self.messages.items() if v["historyId"] > start]
                return 200, {"history": added, "historyId": str(self.history_id)}
            if method == "GET" and rest == "messages":
                listed = [{"id": k, "threadId": v["threadId"]} for k, v in self.messages.items() if "SENT" not in v["labelIds"]]
                return 200, {"messages": list(reversed(listed)), "resultSizeEstimate": len(listed)}  # newest first, as Gmail
            if method == "POST" and rest == "messages/send":
                raw = base64.urlsafe_b64decode(body["raw"])
                msg = message_from_bytes(raw, policy=policy.default)
                self.history_id += 1
                mid = f"g{self.history_id:x}"
                thread = body.get("threadId") or f"t-{mid}"
                self.messages[mid] = {"raw": raw, "threadId": thread, "labelIds": ["SENT"], "historyId": self.history_id}
                self.sent.append((msg, body))  # type: ignore[arg-type]
                return 200, {"id": mid, "threadId": thread, "labelIds": ["SENT"]}
            got = re.match(r"^messages/([^/]+)$", rest)
            if method == "GET" and got and got.group(1) in self.messages:
                v = self.messages[got.group(1)]
                assert q.get("format") == "raw"
                return 200, {"id": got.group(1), "threadId": v["threadId"], "labelIds": v["labelIds"],
                             "historyId": str(v["historyId"]), "raw": base64.urlsafe_b64encode(v["raw"]).decode().rstrip("=")}
        return 404, {"error": {"code": 404, "message": f"no route {method} {rest}"}}


@contextmanager
def fake_gmail() -> Iterator[FakeGmail]:
    fake = FakeGmail()

    class Handler(BaseHTTPRequestHandler):
        def _go(self, method: str) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"null") if length else None
            status, doc = fake.answer(method, parts.path, parse_qs(parts.query), body)
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._go("GET")

        def do_POST(self) -> None:
            self._go("POST")

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler) as base:
        fake.base = base + "/"
        yield fake
