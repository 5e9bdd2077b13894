"""Twilio's side of WhatsApp: signed form webhooks in, the Messages API out.

Signatures are checked with the twilio package's RequestValidator over the public URL of the
request (CRM_PUBLIC_URL + path + query), so they hold behind a proxy. Outbound uses plain HTTP
against TWILIO_API_BASE (the REST client would hide the base URL a test points at a fake)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import httpx2
from twilio.request_validator import RequestValidator

from ..delivery import Delivered, PermanentDeliveryError, http_failure
from .config import TwilioSettings
from .inbound import Inbound, e164, location_line, media_kind, media_line, unsupported_line
from .window import WindowClosed

WINDOW_ERRORS = {63016}  # "outside the allowed window"
# Twilio's MessageStatus -> our delivery status; queued/accepted/sending/scheduled are not news.
STATUS = {"sent": "sent", "delivered": "delivered", "read": "read", "failed": "failed", "undelivered": "failed"}


def signature_ok(cfg: TwilioSettings, url: str, params: Mapping[str, str], signature: str | None) -> bool:
    return bool(signature) and RequestValidator(cfg.auth_token).validate(url, dict(params), signature)


def parse_message(form: Mapping[str, str]) -> Inbound:
    sid = form.get("MessageSid") or form.get("SmsMessageSid") or ""
    msg = Inbound(provider="twilio", message_id=sid, sender=e164(form.get("From", "")), kind="text",
                  name=(form.get("ProfileName") or "").strip() or None,
                  in_reply_to=form.get("OriginalRepliedMessageSid") or None)
    body = (form.get("Body") or "").strip()
    n = int(form["NumMedia"]) if (form.get("NumMedia") or "").isdigit() else 0
    declared = (form.get("MessageType") or "").lower()
    if n:
        media = [{"type": media_kind(form.get(f"MediaContentType{i}")), "content_type": form.get(f"MediaContentType{i}"),
                  "url": form.get(f"MediaUrl{i}")} for i in range(min(n, 10))]
        msg.kind = media[0]["type"]
        msg.metadata["media"] = media
        if body:
            msg.metadata["caption"] = body
        msg.lines = [media_line(m["type"], body if i == 0 else None) for i, m in enumerate(media)]
    elif form.get("Latitude") and form.get("Longitude"):
        msg.kind = "location"
        loc = {k.lower(): form[k] for k in ("Latitude", "Longitude", "Address", "Label") if form.get(k)}
        msg.metadata["location"] = loc
        msg.lines = [location_line(loc["latitude"], loc["longitude"], loc.get("label"), loc.get("address"))]
    elif form.get("ButtonText") or form.get("ButtonPayload"):
        msg.kind = "interactive"
        msg.metadata["interactive"] = {"type": "button_reply", "title": form.get("ButtonText"), "id": form.get("ButtonPayload")}
        msg.lines = [f"[button reply: {form.get('ButtonText') or form.get('ButtonPayload')}]"]
    elif form.get("ListId") or form.get("ListTitle"):
        msg.kind = "interactive"
        msg.metadata["interactive"] = {"type": "list_reply", "title": form.get("ListTitle"), "id": form.get("ListId")}
        msg.lines = [f"[list reply: {form.get('ListTitle') or form.get('ListId')}]"]
    elif body:
        msg.lines = [body]
    else:
        msg.kind = "unsupported"
        msg.metadata["unsupported"] = {"message_type": declared or None}
        msg.lines = [unsupported_line(declared)]
    if declared:
        msg.metadata["twilio_type"] = declared
    return msg


def status_report(form: Mapping[str, str]) -> dict[str, Any] | None:
    """update_delivery_status arguments for a status callback; None for statuses that are not news."""
    status = STATUS.get((form.get("MessageStatus") or "").lower())
    if status is None:
        return None
    report: dict[str, Any] = {"status": status}
    if status == "failed":
        code = form.get("ErrorCode") or "unknown"
        report["error"] = f"Twilio {code}: {form.get('ErrorMessage') or 'message ' + (form.get('MessageStatus') or 'failed')}"
        report["escalate"] = code.isdigit() and int(code) in WINDOW_ERRORS
    return report


async def send(http: httpx2.AsyncClient, cfg: TwilioSettings, to: str, fields: dict[str, str], status_callback: str) -> Delivered:
    """POST a message; fields is Body, or ContentSid and ContentVariables for a template."""
    data = {"From": f"whatsapp:{cfg.number}", "To": f"whatsapp:{to}", "StatusCallback": status_callback, **fields}
    resp = await http.post(f"{cfg.api_base}/2010-04-01/Accounts/{cfg.account_sid}/Messages.json",
                           data=data, auth=(cfg.account_sid, cfg.auth_token))
    try:
        doc = resp.json()
    except ValueError:
        doc = {}
    if resp.status_code in (200, 201) and doc.get("sid"):
        return Delivered(provider_message_id=str(doc["sid"]))
    code, words = doc.get("code"), str(doc.get("message") or resp.reason_phrase)[:500]
    reason = f"Twilio {code}: {words}" if code else words
    if code in WINDOW_ERRORS:
        raise WindowClosed(reason)
    err = http_failure(resp.status_code, reason, resp.headers.get("Retry-After"))
    if resp.status_code in (200, 201):  # a 2xx without a sid: do not send again blindly
        raise PermanentDeliveryError(f"Twilio answered {resp.status_code} without a message sid")
    raise err


def status_callback_url(public_url: str, message_id: str, attempt: int) -> str:
    return f"{public_url}/twilio/status?{urlencode({'message_id': message_id, 'attempt': attempt})}"
