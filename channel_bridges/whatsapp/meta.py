"""Meta's WhatsApp Cloud API: the verification handshake, signed JSON webhooks in (messages and
statuses in one envelope), and POST /{version}/{phone-number-id}/messages out.

The signature is X-Hub-Signature-256: "sha256=" + HMAC-SHA256 of the raw body with the app
secret, compared in constant time before the body is parsed."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import httpx2

from ..delivery import Delivered, PermanentDeliveryError, http_failure
from .config import MetaSettings
from .inbound import Inbound, e164, location_line, media_line, unsupported_line
from .window import WindowClosed

WINDOW_ERRORS = {131047}  # "Re-engagement message": more than 24 hours since the customer last replied
MEDIA = ("image", "video", "audio", "document", "sticker")
STATUS = {"sent": "sent", "delivered": "delivered", "read": "read", "failed": "failed"}
OPAQUE_PREFIX = "crm:"  # biz_opaque_callback_data = crm:<message_id>:<attempt>, echoed in status webhooks


def signature_ok(cfg: MetaSettings, body: bytes, header: str | None) -> bool:
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(cfg.app_secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header.removeprefix("sha256=").strip().lower())


def _values(envelope: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for entry in envelope.get("entry") or []:
        for change in (entry or {}).get("changes") or []:
            value = (change or {}).get("value")
            if isinstance(value, dict):
                yield value


def _received(ts: Any) -> datetime | None:
    try:
        at = datetime.fromtimestamp(int(ts), timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    return min(at, datetime.now(timezone.utc))  # a clock ahead of ours must not be refused as "future"


def parse_messages(envelope: dict[str, Any]) -> list[Inbound]:
    out: list[Inbound] = []
    for value in _values(envelope):
        names = {c.get("wa_id"): ((c.get("profile") or {}).get("name") or "").strip() or None
                 for c in value.get("contacts") or [] if isinstance(c, dict)}
        for m in value.get("messages") or []:
            if not isinstance(m, dict) or not m.get("id") or not m.get("from"):
                continue
            out.append(_message(m, names.get(m["from"]), (value.get("metadata") or {}).get("phone_number_id")))
    return out


def _message(m: dict[str, Any], name: str | None, phone_number_id: str | None) -> Inbound:
    kind = str(m.get("type") or "unknown")
    msg = Inbound(provider="meta", message_id=str(m["id"]), sender=e164(str(m["from"])), kind=kind, name=name,
                  received_at=_received(m.get("timestamp")), in_reply_to=(m.get("context") or {}).get("id"))
    if phone_number_id:
        msg.metadata["phone_number_id"] = phone_number_id
    body = m.get(kind) if isinstance(m.get(kind), dict) else {}
    if kind == "text":
        msg.lines = [str(body.get("body") or "")]
    elif kind in MEDIA:
        caption = body.get("caption")
        msg.metadata["media"] = [{"type": kind, "id": body.get("id"), "content_type": body.get("mime_type"),
                                  **({"filename": body["filename"]} if body.get("filename") else {})}]
        if caption:
            msg.metadata["caption"] = caption
        msg.lines = [media_line(kind, caption)]
    elif kind == "location":
        msg.metadata["location"] = body
        msg.lines = [location_line(body.get("latitude"), body.get("longitude"), body.get("name"), body.get("address"))]
    elif kind == "interactive":
        which = str(body.get("type") or "")
        choice = body.get(which) if isinstance(body.get(which), dict) else {}
        msg.metadata["interactive"] = {"type": which, "id": choice.get("id"), "title": choice.get("title")}
        label = "button reply" if which == "button_reply" else "list reply" if which == "list_reply" else which
        msg.lines = [f"[{label}: {choice.get('title') or choice.get('id')}]"]
    elif kind == "button":  # a quick-reply button of a template
        msg.metadata["interactive"] = {"type": "button", "id": body.get("payload"), "title": body.get("text")}
        msg.lines = [f"[button reply: {body.get('text') or body.get('payload')}]"]
    else:
        errors = m.get("errors") or []
        msg.metadata["unsupported"] = {"type": kind, "errors": errors[:3], **({"content": body} if body else {})}
        msg.kind = "unsupported"
        msg.lines = [unsupported_line(kind)]
    return msg


def status_reports(envelope: dict[str, Any]) -> list[dict[str, Any]]:
    """update_delivery_status arguments (message_id or channel_message_id) for each status in the envelope."""
    out: list[dict[str, Any]] = []
    for value in _values(envelope):
        for s in value.get("statuses") or []:
            status = STATUS.get(str((s or {}).get("status") or ""))
            if status is None or not s.get("id"):
                continue
            report: dict[str, Any] = {"status": status}
            opaque = str(s.get("biz_opaque_callback_data") or "")
            if opaque.startswith(OPAQUE_PREFIX) and opaque.count(":") == 2:
                report["message_id"] = opaque.split(":")[1]
            else:
                report |= {"channel": "whatsapp", "channel_message_id": str(s["id"])}
            if status == "failed":
                err = (s.get("errors") or [{}])[0] or {}
                details = (err.get("error_data") or {}).get("details")
                report["error"] = f"Meta {err.get('code', 'unknown')}: {err.get('title') or err.get('message') or 'failed'}" + (
                    f" ({details})" if details else "")
                report["escalate"] = err.get("code") in WINDOW_ERRORS
            out.append(report)
    return out


async def send(http: httpx2.AsyncClient, cfg: MetaSettings, to: str, payload: dict[str, Any], opaque: str) -> Delivered:
    """POST a message; payload is {"type": "text", "text": {...}} or {"type": "template", "template": {...}}."""
    doc_out = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to.removeprefix("+"),
               "biz_opaque_callback_data": opaque, **payload}
    resp = await http.post(f"{cfg.graph_base}/{cfg.version}/{cfg.phone_number_id}/messages", json=doc_out,
                           headers={"Authorization": f"Bearer {cfg.access_token}"})
    try:
        doc = resp.json()
    except ValueError:
        doc = {}
    if resp.status_code == 200 and (doc.get("messages") or [{}])[0].get("id"):
        return Delivered(provider_message_id=str(doc["messages"][0]["id"]))
    err = doc.get("error") or {}
    details = (err.get("error_data") or {}).get("details")
    words = str(err.get("message") or resp.reason_phrase)[:500] + (f" ({details})" if details else "")
    reason = f"Meta {err['code']}: {words}" if err.get("code") else words
    if err.get("code") in WINDOW_ERRORS:
        raise WindowClosed(reason)
    if resp.status_code == 200:
        raise PermanentDeliveryError("Meta answered 200 without a message id")
    raise http_failure(resp.status_code, reason, resp.headers.get("Retry-After"))


def opaque_data(message_id: str, attempt: int) -> str:
    return f"{OPAQUE_PREFIX}{message_id}:{attempt}"
