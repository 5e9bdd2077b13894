"""WhatsApp's 24-hour customer service window: free-form replies only within 24 hours of the
customer's last inbound message; after it, only an approved template."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

WINDOW = timedelta(hours=24)


class WindowClosed(Exception):
    """The provider refused a free-form message because the window is closed (or we know it is)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def window_open(reply_to: dict[str, Any] | None, now: datetime | None = None) -> bool:
    if not reply_to or not reply_to.get("received_at"):
        return False  # the customer never wrote on WhatsApp in this conversation
    at = reply_to["received_at"]
    received = at if isinstance(at, datetime) else datetime.fromisoformat(str(at).replace("Z", "+00:00"))
    return (now or datetime.now(timezone.utc)) - received < WINDOW


def fill(params: tuple[str, ...], *, ticket_number: str | None, text: str) -> list[str]:
    """Template parameters with {ticket_number} and {text} filled in (plain replace: no format specs
    for reply text to trip over). WhatsApp refuses empty parameters, hence the dash."""
    return [(p.replace("{ticket_number}", ticket_number or "-").replace("{text}", text))[:1024] or "-" for p in params]
