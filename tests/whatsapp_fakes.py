"""Stand-ins for Twilio's Messages API and Meta's Graph API (local HTTP servers on 127.0.0.1 that
record every request and answer as the real APIs do), webhook signing as each provider signs,
and the WhatsApp bridge as a real subprocess (`crm-mcp bridge whatsapp --server URL`)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from twilio.request_validator import RequestValidator

from .conftest import REPO, server_env
from .fake_http import serving
from .webform_helpers import TOKENS, _wait_http, free_port, stop_process

TWILIO_SID = "AC" + "1" * 32
TWILIO_TOKEN = "twilio-auth-token-for-tests"
TWILIO_NUMBER = "+14155238886"
META_SECRET = "meta-app-secret-for-tests"
META_VERIFY = "meta-verify-token-for-tests"
META_ACCESS = "meta-access-token-for-tests"
META_PHONE_ID = "106540352242922"
META_VERSION = "v21.0"

# Answers the fakes can be told to give, in the providers' own shapes.
TWILIO_ERRORS = {
    "429": (429, {"code": 20429, "message": "Too Many Requests", "more_info": "https://www.twilio.com/docs/errors/20429", "status": 429}),
    "window": (400, {"code": 63016, "message": "Failed to send freeform message because you are outside the allowed window. "
                     "If you want to send messages outside the allowed window, please use a Template.", "status": 400}),
    "invalid_number": (400, {"code": 21211, "message": "Invalid 'To' Phone Number: whatsapp:+1555", "status": 400}),
}
META_ERRORS = {
    "429": (429, {"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429,
                            "error_data": {"messaging_product": "whatsapp", "details": "Cloud API message throughput has been reached."}}}),
    "window": (400, {"error": {"message": "(#131047) Re-engagement message", "type": "OAuthException", "code": 131047,
                               "error_data": {"messaging_product": "whatsapp", "details": "Message failed to send because more than "
                                              "24 hours have passed since the customer last replied to this number."}}}),
}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # form dict (Twilio) or JSON (Meta)


@dataclass
class FakeProvider:
    """Both providers on one port: Twilio under /2010-04-01, Meta under /{version}. `script` is a
    queue of answers for the next sends ("ok", "429", "window", "invalid_number", "hang")."""

    requests: list[Recorded] = field(default_factory=list)
    script: list[str] = field(default_factory=list)
    retry_after: str = "1"
    release: threading.Event = field(default_factory=threading.Event)
    base: str = ""

    def sends(self, provider: str) -> list[Recorded]:
        prefix = "/2010-04-01/" if provider == "twilio" else f"/{META_VERSION}/"
        return [r for r in self.requests if r.path.startswith(prefix)]

    def wait_sends(self, provider: str, n: int, timeout: float = 30.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        while len(self.sends(provider)) < n:
            assert time.monotonic() < deadline, f"{provider} got {len(self.sends(provider))} sends, expected {n}"
            time.sleep(0.1)
        return self.sends(provider)

    def handle(self, h: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        raw = h.rfile.read(int(h.headers.get("content-length") or 0))
        twilio = h.path.startswith("/2010-04-01/")
        body = dict(parse_qsl(raw.decode())) if twilio else json.loads(raw or b"{}")
        self.requests.append(Recorded(h.command, h.path, {k.lower(): v for k, v in h.headers.items()}, body))
        answer = self.script.pop(0) if self.script else "ok"
        if answer == "hang":  # a provider that takes the request and never answers (until the test ends)
            self.release.wait(60)
            return 504, {}, b""
        if twilio:
            expected = "Basic " + base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
            if h.path != f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json" or h.headers.get("authorization") != expected:
                return 401, {}, json.dumps({"code": 20003, "message": "Authenticate", "status": 401}).encode()
            if answer in TWILIO_ERRORS:
                code, doc = TWILIO_ERRORS[answer]
                return code, {"Retry-After": self.retry_after} if code == 429 else {}, json.dumps(doc).encode()
            sid = "SM" + secrets.token_hex(16)
            return 201, {}, json.dumps({"sid": sid, "status": "queued", "to": body.get("To"), "from": body.get("From"),
                                        "body": body.get("Body"), "account_sid": TWILIO_SID}).encode()
        if h.path != f"/{META_VERSION}/{META_PHONE_ID}/messages" or h.headers.get("authorization") != f"Bearer {META_ACCESS}":
            return 401, {}, json.dumps({"error": {"message": "Invalid OAuth access token.", "type": "OAuthException", "code": 190}}).encode()
        if answer in META_ERRORS:
            code, doc = META_ERRORS[answer]
            return code, {"Retry-After": self.retry_after} if code == 429 else {}, json.dumps(doc).encode()
        wamid = "wamid." + base64.b64encode(secrets.token_bytes(24)).decode()
        return 200, {}, json.dumps({"messaging_product": "whatsapp", "contacts": [{"input": body.get("to"), "wa_id": body.get("to")}],
                                    "messages": [{"id": wamid}]}).encode()


@contextmanager
def fake_provider() -> Iterator[FakeProvider]:
    fake = FakeProvider()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            code, headers, body = fake.handle(self)
            self.send_response(code)
            for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler) as base:
        fake.base = base
        try:
            yield fake
        finally:
            fake.release.set()  # a handler held to simulate a hung provider must let go before the server stops


# signing, as the providers sign ---------------------------------------------------------------


def twilio_signature(url: str, params: dict[str, str], token: str = TWILIO_TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


def meta_signature(body: bytes, secret: str = META_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def twilio_inbound(sid: str, number: str, body: str = "", **extra: str) -> dict[str, str]:
    return {"MessageSid": sid, "SmsMessageSid": sid, "AccountSid": TWILIO_SID, "From": f"whatsapp:{number}",
            "To": f"whatsapp:{TWILIO_NUMBER}", "Body": body, "NumMedia": "0", "NumSegments": "1", "ApiVersion": "2010-04-01", **extra}


def meta_envelope(*, messages: list[dict[str, Any]] | None = None, statuses: list[dict[str, Any]] | None = None,
                  contacts: list[dict[str, Any]] | None = None) -> bytes:
    value: dict[str, Any] = {"messaging_product": "whatsapp",
                             "metadata": {"display_phone_number": "15550001111", "phone_number_id": META_PHONE_ID}}
    if contacts:
        value["contacts"] = contacts
    if messages:
        value["messages"] = messages
    if statuses:
        value["statuses"] = statuses
    return json.dumps({"object": "whatsapp_business_account",
                       "entry": [{"id": "WABA_ID", "changes": [{"value": value, "field": "messages"}]}]}).encode()


def meta_text(wamid: str, number: str, text: str, ts: int | None = None, **extra: Any) -> dict[str, Any]:
    return {"from": number.removeprefix("+"), "id": wamid, "timestamp": str(ts or int(time.time())), "type": "text",
            "text": {"body": text}, **extra}


@dataclass
class Bridge:
    base: str
    proc: subprocess.Popen
    log_path: Path

    def post_twilio(self, client: Any, path: str, params: dict[str, str], *, query: str = "", sign: bool = True,
                    token: str = TWILIO_TOKEN) -> Any:
        url = f"{self.base}{path}{'?' + query if query else ''}"
        headers = {"X-Twilio-Signature": twilio_signature(url, params, token)} if sign else {}
        return client.post(url, data=params, headers=headers)

    def post_meta(self, client: Any, body: bytes, *, sign: bool = True, secret: str = META_SECRET) -> Any:
        headers = {"Content-Type": "application/json", **({"X-Hub-Signature-256": meta_signature(body, secret)} if sign else {})}
        return client.post(f"{self.base}/meta", content=body, headers=headers)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def provider_env(fake: FakeProvider, **over: str) -> dict[str, str]:
    env = {"TWILIO_ACCOUNT_SID": TWILIO_SID, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN, "TWILIO_WHATSAPP_NUMBER": TWILIO_NUMBER,
           "TWILIO_API_BASE": fake.base, "META_APP_SECRET": META_SECRET, "META_VERIFY_TOKEN": META_VERIFY,
           "META_ACCESS_TOKEN": META_ACCESS, "META_PHONE_NUMBER_ID": META_PHONE_ID, "META_GRAPH_BASE": fake.base,
           "META_GRAPH_VERSION": META_VERSION}
    env.update(over)
    return env


def start_whatsapp(server_url: str, dsn: str, tmp: Path, env: dict[str, str], *, port: int | None = None,
                   lease_s: float = 60.0) -> Bridge:
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "crm_mcp.server.cli", "bridge", "whatsapp", "--port", str(port), "--server", server_url,
            "--lease-s", str(lease_s)]
    log_path = tmp / f"whatsapp-{port}.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen(args, env=server_env(dsn, CRM_TOKEN=TOKENS[dsn, server_url], CRM_PUBLIC_URL=base,
                                                 CRM_LOG_LEVEL="INFO", **env),
                            cwd=str(REPO), stdout=log, stderr=log)
    log.close()
    _wait_http(f"{base}/healthz", proc)
    return Bridge(base, proc, log_path)


@contextmanager
def whatsapp(server_url: str, dsn: str, tmp: Path, env: dict[str, str], **kw: Any) -> Iterator[Bridge]:
    bridge = start_whatsapp(server_url, dsn, tmp, env, **kw)
    try:
        yield bridge
    finally:
        stop_process(bridge.proc)


