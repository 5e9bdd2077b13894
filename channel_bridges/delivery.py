"""The contract between the delivery loop and a channel: the loop hands the channel's deliver
callable one OutboundPart; it returns Delivered, or raises TransientDeliveryError (timeouts,
429, 5xx: retried with backoff, honouring Retry-After) or PermanentDeliveryError (the provider
refused it for good: reported failed with the reason, and the ticket gets a note).

OutboundPart.message_id is stable across redeliveries of the same part (after a crash and a
lapsed lease), so a channel that accepts an idempotency key can drop the duplicate."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .retry import parse_retry_after


class OutboundPart(BaseModel):
    """One claimed part, as claim_outbox returns it."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    message_id: str
    channel: str
    recipient: str
    text: str
    ticket_number: str | None = None
    conversation_id: str
    thread_ref: str | None = None
    part: int = 0
    parts: int = 1
    attempt: int = 1
    # The customer's latest message on the channel (threading headers, subject); None before any.
    reply_to: dict[str, Any] | None = None


@dataclass(frozen=True)
class Delivered:
    provider_message_id: str
    status: Literal["sent", "delivered"] = "sent"


class TransientDeliveryError(Exception):
    def __init__(self, reason: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class PermanentDeliveryError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Deliver = Callable[[OutboundPart], Awaitable[Delivered]]


def http_failure(status: int, reason: str, retry_after: str | None = None) -> Exception:
    """The error for a provider's HTTP answer: 408, 425, 429 and 5xx are transient, other 4xx permanent."""
    text = f"HTTP {status}: {reason}".strip()
    if status in (408, 425, 429) or status >= 500:
        return TransientDeliveryError(text, retry_after_s=parse_retry_after(retry_after))
    return PermanentDeliveryError(text)
