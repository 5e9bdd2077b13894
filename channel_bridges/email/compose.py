"""A claimed reply -> a real RFC 5322 message from the support address.

`Re:` + the customer's subject, In-Reply-To and References naming the customer's message (and
the references it carried), text/plain and text/html alternatives of the rendered reply, and a
Message-ID of ours derived from the CRM's message id: the same part redelivered after a crash
carries the same Message-ID, and a bounce or a customer's reply quoting it finds the reply."""

from __future__ import annotations

import html
import re
from email.headerregistry import Address
from email.message import EmailMessage
from datetime import datetime, timezone
from email.utils import format_datetime

from ..delivery import OutboundPart
from .parse import MAX_REFERENCES, message_ids, normalise_id

_RE = re.compile(r"^\s*((re|aw|sv|fw|fwd|rv|tr)\s*(\[\d+\])?\s*:\s*)+", re.I)


def our_message_id(part: OutboundPart, support_address: str) -> str:
    domain = support_address.rsplit("@", 1)[-1]
    suffix = f".{part.part}" if part.parts > 1 else ""
    return f"<crm-{part.message_id}{suffix}@{domain}>"


def reply_subject(subject: str | None, ticket_number: str | None) -> str:
    if subject and subject.strip():
        return "Re: " + _RE.sub("", subject.strip())[:480]
    return f"Your support request {ticket_number}" if ticket_number else "Your support request"


def text_to_html(text: str) -> str:
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    body = "\n".join("<p>" + html.escape(p).replace("\n", "<br>\n") + "</p>" for p in paragraphs)
    return f'<!DOCTYPE html>\n<html><body style="font-family: sans-serif; line-height: 1.4">\n{body}\n</body></html>\n'


def compose(part: OutboundPart, *, support_address: str, support_name: str | None = None) -> EmailMessage:
    reply_to = part.reply_to or {}
    msg = EmailMessage()
    local, _, domain = support_address.partition("@")
    msg["From"] = Address(display_name=support_name or "", username=local, domain=domain)
    msg["To"] = part.recipient
    msg["Subject"] = reply_subject(reply_to.get("subject"), part.ticket_number)
    msg["Date"] = format_datetime(datetime.now(timezone.utc))
    msg["Message-ID"] = our_message_id(part, support_address)
    meta = reply_to.get("metadata") or {}
    # The Message-ID header as received (for Gmail the channel id is Gmail's own id, not this).
    parent = normalise_id(meta.get("message_id_header") or reply_to.get("channel_message_id"))
    if parent:
        refs = [r for r in meta.get("references", []) if isinstance(r, str)]
        chain = [*message_ids(" ".join(refs)), parent]
        msg["In-Reply-To"] = parent
        msg["References"] = " ".join(list(dict.fromkeys(chain))[-MAX_REFERENCES:])
    if part.ticket_number:
        msg["X-CRM-Ticket"] = part.ticket_number
    msg.set_content(part.text)
    msg.add_alternative(text_to_html(part.text), subtype="html")
    return msg

