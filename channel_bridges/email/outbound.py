"""Before any reply leaves: never to a robot or to ourselves, and at most `limit` replies per
address per `window_s` (a loop with another auto-responder, or a flood, stops here). A reply over
the limit is deferred (a transient failure with Retry-After), not dropped."""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import getaddresses

from ..delivery import Delivered, OutboundPart, PermanentDeliveryError, TransientDeliveryError
from .compose import compose
from .parse import _ROBOT_LOCALPART


@dataclass
class ReplyRateLimit:
    limit: int = 10
    window_s: float = 3600.0
    _sent: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))

    def wait_s(self, address: str, now: float | None = None) -> float:
        """0 when a reply may go now, else seconds until one may."""
        now = time.monotonic() if now is None else now
        q = self._sent[address]
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return 0.0 if len(q) < self.limit else q[0] + self.window_s - now

    def record(self, address: str) -> None:
        self._sent[address].append(time.monotonic())


Send = Callable[[EmailMessage, OutboundPart], Awaitable[str | None]]


@dataclass
class EmailSender:
    """The bridge's `deliver`: guard, compose, send; reports our Message-ID as the provider id."""

    support_address: str
    send: Send
    support_name: str | None = None
    rate: ReplyRateLimit = field(default_factory=ReplyRateLimit)

    async def __call__(self, part: OutboundPart) -> Delivered:
        to = [a.lower() for _, a in getaddresses([part.recipient]) if "@" in a]
        if len(to) != 1:
            raise PermanentDeliveryError("the recipient is not exactly one email address")
        address = to[0]
        if address == self.support_address.lower() or _ROBOT_LOCALPART.match(address.split("@", 1)[0]):
            raise PermanentDeliveryError("not replying to an automated sender (mailer-daemon, noreply...) or to our own address")
        wait = self.rate.wait_s(address)
        if wait > 0:
            raise TransientDeliveryError(f"reply rate limit for this address: {self.rate.limit} per {self.rate.window_s:g} s",
                                         retry_after_s=wait)
        msg = compose(part, support_address=self.support_address, support_name=self.support_name)
        await self.send(msg, part)
        self.rate.record(address)
        # Our Message-ID, whichever back end sent it: a bounce or a customer's reply names it.
        return Delivered(provider_message_id=str(msg["Message-ID"]), status="sent")
