"""The web form's defences: the secret, one-time form tokens bound to a CSRF cookie, status-page
tokens, and the per-address rate limit.

- Form token: signed (itsdangerous) and timed; carries a random submission id, which becomes the
  message's channel_message_id, so a double submit of one form lands once (the CRM's dedup), and
  a hash of the CSRF cookie, so a page on another site cannot post the form (signed double-submit
  cookie; the Origin header is checked as well).
- Status token: the ticket number and conversation id, signed; the conversation id is a random
  UUID, and without the secret no valid token can be made for a ticket.
- The secret comes from CRM_WEBFORM_SECRET, else a file in the data directory made on first use."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer
from platformdirs import user_data_path

CSRF_COOKIE = "crm_form"
FORM_MAX_AGE_S = 6 * 3600
SECRET_FILE = "webform_secret"


def data_dir() -> Path:
    return Path(os.environ.get("CRM_DATA_DIR") or user_data_path("crm-mcp", appauthor=False))


def load_secret(directory: Path | None = None) -> str:
    if env := os.environ.get("CRM_WEBFORM_SECRET"):
        return env
    path = (directory or data_dir()) / SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    # O_EXCL: two processes starting together agree on the first one's secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


class FormTokenError(Exception):
    def __init__(self, reason: str, expired: bool = False) -> None:
        super().__init__(reason)
        self.expired = expired


@dataclass
class Tokens:
    secret: str

    def __post_init__(self) -> None:
        self._form = URLSafeTimedSerializer(self.secret, salt="crm-webform-form")
        self._status = URLSafeSerializer(self.secret, salt="crm-webform-status")

    def _bind(self, csrf: str) -> str:
        return hmac.new(self.secret.encode(), csrf.encode(), hashlib.sha256).hexdigest()[:32]

    @staticmethod
    def new_csrf() -> str:
        return secrets.token_urlsafe(24)

    def form_token(self, csrf: str) -> str:
        return self._form.dumps({"s": secrets.token_urlsafe(16), "c": self._bind(csrf)})

    def submission_id(self, token: str, csrf: str | None) -> str:
        """The submission id of a valid form token posted with its own CSRF cookie."""
        try:
            doc = self._form.loads(token, max_age=FORM_MAX_AGE_S)
        except SignatureExpired:
            raise FormTokenError("expired", expired=True) from None
        except BadSignature:
            raise FormTokenError("invalid") from None
        if not csrf or not hmac.compare_digest(str(doc.get("c", "")), self._bind(csrf)):
            raise FormTokenError("csrf")
        return str(doc["s"])

    def status_token(self, ticket_number: str, conversation_id: str) -> str:
        return self._status.dumps([ticket_number, conversation_id])

    def read_status_token(self, token: str) -> tuple[str, str] | None:
        try:
            ticket, conv = self._status.loads(token)
        except (BadSignature, ValueError, TypeError):
            return None
        return str(ticket), str(conv)


@dataclass
class RateLimit:
    """At most `limit` submissions per `window_s` from one client address (sliding window, in memory:
    one web form process; behind a proxy, run it where the client address is the real one)."""

    limit: int = 10
    window_s: float = 600.0
    _hits: dict[str, deque[float]] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> RateLimit:
        """CRM_WEBFORM_RATE_LIMIT=N/SECONDS (default 10/600)."""
        raw = os.environ.get("CRM_WEBFORM_RATE_LIMIT", "").strip()
        if not raw:
            return cls()
        try:
            n, _, s = raw.partition("/")
            return cls(limit=int(n), window_s=float(s or 600))
        except ValueError:
            raise SystemExit(f"crm-mcp: CRM_WEBFORM_RATE_LIMIT must look like 10/600 (submissions per seconds), got {raw!r}") from None

    def hit(self, address: str) -> float | None:
        """Count a submission; None if allowed, else seconds until the next one is."""
        now = time.monotonic()
        q = self._hits.setdefault(address, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if len(q) >= self.limit:
            return q[0] + self.window_s - now
        q.append(now)
        if len(self._hits) > 10_000:  # forget idle addresses
            for key in [k for k, d in self._hits.items() if not d or d[-1] <= now - self.window_s]:
                del self._hits[key]
        return None
