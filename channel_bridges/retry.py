"""Backoff for everything a bridge retries: reaching the CRM, and transient channel failures."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter (a random delay up to base * 2**attempt, capped), so
    bridges that failed together do not retry together."""

    base_s: float = 0.5
    cap_s: float = 30.0
    # A provider's Retry-After is obeyed up to this bound; beyond it the lease would lapse anyway.
    max_retry_after_s: float = 300.0

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_retry_after_s)
        return random.uniform(self.base_s / 2, min(self.cap_s, self.base_s * 2 ** min(attempt, 30)))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - (now or datetime.now(timezone.utc))).total_seconds(), 0.0)
