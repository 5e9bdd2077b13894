"""One inbound WhatsApp message, whichever provider it came through, as ingest_message takes it.

What the agent reads is text: media become "[image attached: caption]", a location, a button or
list choice a bracketed line; everything else the provider sent is kept in metadata. A type we do
not understand is recorded as "[unsupported message type: X]", never dropped."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

MAX_CAPTION = 1000


@dataclass
class Inbound:
    provider: str
    message_id: str  # MessageSid or wamid: the dedup key
    sender: str  # E.164
    kind: str
    lines: list[str] = field(default_factory=list)
    name: str | None = None
    received_at: datetime | None = None
    in_reply_to: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def ingest_arguments(self) -> dict[str, Any]:
        text = "\n".join(line for line in self.lines if line.strip()) or f"[{self.kind} message]"
        args: dict[str, Any] = {
            "channel": "whatsapp", "channel_message_id": self.message_id,
            "sender": {"whatsapp": self.sender, **({"name": self.name[:200]} if self.name else {})},
            "content": text[:50_000],
            "metadata": {"provider": self.provider, "type": self.kind, **self.metadata},
        }
        if self.received_at is not None:
            args["received_at"] = self.received_at.isoformat()
        if self.in_reply_to:
            args["in_reply_to"] = [self.in_reply_to]
        return args


def media_kind(content_type: str | None) -> str:
    major = (content_type or "").split("/")[0].lower()
    return major if major in ("image", "video", "audio") else "document"


def media_line(kind: str, caption: str | None) -> str:
    caption = (caption or "").strip()[:MAX_CAPTION]
    return f"[{kind} attached: {caption}]" if caption else f"[{kind} attached]"


def location_line(lat: Any, lon: Any, name: str | None = None, address: str | None = None) -> str:
    where = ", ".join(p for p in (name, address) if p)
    return f"[location: {where} ({lat}, {lon})]" if where else f"[location: {lat}, {lon}]"


def unsupported_line(kind: str) -> str:
    return f"[unsupported message type: {kind or 'unknown'}]"


def e164(number: str) -> str:
    number = number.strip().removeprefix("whatsapp:")
    return number if number.startswith("+") else "+" + number
