"""What every bridge runs: the CRM connection, inbound `ingest`, the outbound delivery loop,
health, and a graceful stop.

Inbound: `await bridge.ingest(...)` returns only once ingest_message has committed the message;
acknowledge to the channel after it, never before. A retry of the same channel message (the
channel redelivers, the bridge crashed before acknowledging) is absorbed by the CRM's dedup.

Outbound: claim_outbox long-polls for the channel's pending replies under a lease; each part
goes to the channel's `deliver` callable, and the outcome is reported with
update_delivery_status. Transient failures are retried with backoff inside the lease; a part
still failing when its lease runs out is left to lapse and is claimed again later (attempt
counts up), until `max_attempts`, when it is marked failed. On stop the part being delivered
finishes (one attempt, bounded by `attempt_timeout_s`, and its report); parts claimed but not
started lapse back to pending."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse

from .connection import CrmConnection, CrmRejected, CrmTarget, CrmUnavailable
from .delivery import Deliver, Delivered, OutboundPart, PermanentDeliveryError, TransientDeliveryError
from .logs import event
from .retry import Backoff

log = logging.getLogger("crm_mcp.bridge")


@dataclass
class BridgeStats:
    started_at: float = field(default_factory=time.time)
    ingested: int = 0
    delivered: int = 0
    failed: int = 0
    retried: int = 0
    last_claim_at: float | None = None


@dataclass
class Bridge:
    channel: str
    deliver: Deliver
    target: CrmTarget = field(default_factory=CrmTarget.from_env)
    lease_s: float = 60.0
    wait_s: float = 20.0
    batch: int = 10
    max_attempts: int = 5
    attempt_timeout_s: float = 30.0
    ingest_timeout_s: float = 30.0
    backoff: Backoff = field(default_factory=Backoff)
    stats: BridgeStats = field(default_factory=BridgeStats)
    crm: CrmConnection | None = None
    _stopping: anyio.Event = field(default_factory=anyio.Event)
    _claim_scope: anyio.CancelScope | None = None

    @asynccontextmanager
    async def connected(self) -> AsyncIterator[Bridge]:
        """The CRM connection, open for the duration of the block."""
        async with CrmConnection(self.target) as crm:
            self.crm = crm
            try:
                yield self
            finally:
                self.crm = None

    # inbound ------------------------------------------------------------------------------------

    async def ingest(self, **arguments: Any) -> dict[str, Any]:
        """ingest_message, retried while the CRM is unreachable (up to ingest_timeout_s). Returns the
        committed result; raises CrmRejected for input the CRM refuses, CrmUnavailable at the deadline."""
        assert self.crm is not None, "use `async with bridge.connected()`"
        arguments.setdefault("channel", self.channel)
        deadline = anyio.current_time() + self.ingest_timeout_s
        attempt = 0
        while True:
            left = deadline - anyio.current_time()
            try:
                result = await self.crm.call("ingest_message", timeout_s=max(left, 1.0), **arguments)
            except CrmUnavailable:
                delay = self.backoff.delay(attempt)
                if anyio.current_time() + delay >= deadline:
                    raise
                attempt += 1
                await anyio.sleep(delay)
                continue
            self.stats.ingested += 1
            event(log, "ingested", channel=self.channel, message_id=result["message_id"],
                  ticket=result["ticket"]["ticket_number"], duplicate=result["duplicate"])
            return result

    # outbound -----------------------------------------------------------------------------------

    async def delivery_loop(self) -> None:
        """Claim and deliver until stop() is called."""
        assert self.crm is not None, "use `async with bridge.connected()`"
        attempt = 0
        while not self._stopping.is_set():
            got: dict[str, Any] | None = None
            with anyio.CancelScope() as scope:
                self._claim_scope = scope
                try:
                    got = await self.crm.call("claim_outbox", timeout_s=self.wait_s + 15, channel=self.channel,
                                              limit=self.batch, lease_s=self.lease_s, wait_s=self.wait_s)
                    attempt = 0
                except CrmUnavailable:
                    await anyio.sleep(self.backoff.delay(attempt))
                    attempt += 1
                except CrmRejected as exc:  # e.g. the token lacks the bridge role: wait, do not spin
                    event(log, "claim_refused", logging.ERROR, channel=self.channel, error=str(exc)[:200])
                    await anyio.sleep(self.backoff.cap_s)
            self._claim_scope = None
            if not got:
                continue
            self.stats.last_claim_at = time.time()
            lease_end = anyio.current_time() + self.lease_s - 1.0
            for raw in got["parts"]:
                if self._stopping.is_set():
                    break  # not started: its lease lapses and it is delivered later
                part = OutboundPart.model_validate(raw)
                # Shielded: a stop lets the part in hand finish (bounded by grace_s) instead of
                # cutting it between the channel's send and the report.
                with anyio.CancelScope(shield=True):
                    await self._deliver_one(part, lease_end)

    async def _deliver_one(self, part: OutboundPart, lease_end: float) -> None:
        ids = {"channel": self.channel, "message_id": part.message_id, "ticket": part.ticket_number, "claim": part.attempt}
        tries = 0
        while True:
            reason: str
            try:
                with anyio.fail_after(self.attempt_timeout_s):
                    done = await self.deliver(part)
            except PermanentDeliveryError as exc:
                await self._report(part, "failed", error=exc.reason, escalate=exc.escalate)
                self.stats.failed += 1
                event(log, "delivery_failed", logging.WARNING, reason=exc.reason[:200], **ids)
                return
            except TransientDeliveryError as exc:
                reason, retry_after = exc.reason, exc.retry_after_s
            except (TimeoutError, OSError) as exc:
                reason, retry_after = f"{type(exc).__name__}: {exc}"[:200] or "timeout", None
            else:
                await self._report(part, done.status, channel_message_id=done.provider_message_id)
                self.stats.delivered += 1
                event(log, "delivered", status=done.status, tries=tries + 1, **ids)
                return
            tries += 1
            self.stats.retried += 1
            delay = self.backoff.delay(tries - 1, retry_after)
            stopping = self._stopping.is_set()
            if anyio.current_time() + delay + self.attempt_timeout_s > lease_end or stopping:
                if part.attempt >= self.max_attempts:
                    await self._report(part, "failed", error=f"gave up after {part.attempt} claims: {reason}")
                    self.stats.failed += 1
                    event(log, "delivery_given_up", logging.WARNING, reason=reason[:200], **ids)
                else:
                    event(log, "delivery_deferred", logging.WARNING, reason=reason[:200], **ids)  # lease lapses; claimed again
                return
            event(log, "delivery_retry", logging.INFO, reason=reason[:200], retry_in_s=round(delay, 2), **ids)
            await anyio.sleep(delay)

    async def _report(self, part: OutboundPart, status: str, *, channel_message_id: str | None = None,
                      error: str | None = None, escalate: bool = False) -> None:
        """update_delivery_status, retried while the CRM is unreachable. If it never gets through, the
        lease lapses and the part is delivered again under the same message_id (the channel's dedup key)."""
        assert self.crm is not None
        args: dict[str, Any] = {"message_id": part.message_id, "status": status}
        if channel_message_id:
            args["channel_message_id"] = channel_message_id
        if error:
            args["error"] = error[:2000]
        if escalate:
            args["escalate"] = True
        for attempt in range(8):
            try:
                await self.crm.call("update_delivery_status", timeout_s=20, **args)
                return
            except CrmUnavailable:
                await anyio.sleep(self.backoff.delay(attempt))
            except CrmRejected as exc:
                event(log, "report_refused", logging.ERROR, message_id=part.message_id, error=str(exc)[:200])
                return
        event(log, "report_lost", logging.ERROR, message_id=part.message_id)

    # lifecycle ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; the part being delivered finishes."""
        self._stopping.set()
        if self._claim_scope is not None:
            self._claim_scope.cancel()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def health(self) -> dict[str, Any]:
        crm = self.crm
        return {
            "status": "ok" if crm is not None and crm.connected and not self.stopping else "unavailable",
            "channel": self.channel,
            "crm": {"mode": self.target.mode, "connected": bool(crm and crm.connected)},
            "uptime_s": round(time.time() - self.stats.started_at, 1),
            "ingested": self.stats.ingested, "delivered": self.stats.delivered,
            "failed": self.stats.failed, "retried": self.stats.retried,
            "last_claim_at": self.stats.last_claim_at,
        }

    async def healthz(self, request: Request) -> JSONResponse:
        """GET /healthz: 200 while connected to the CRM, 503 otherwise."""
        doc = self.health()
        return JSONResponse(doc, status_code=200 if doc["status"] == "ok" else 503)

    async def run(self, *, with_signals: bool = True) -> None:
        """Connect and deliver until SIGINT/SIGTERM (or stop()); then let in-flight work finish."""
        async with self.connected(), anyio.create_task_group() as tg:
            if with_signals:
                tg.start_soon(self._watch_signals)
            await self.delivery_loop()
            tg.cancel_scope.cancel()

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                event(log, "stopping", signal=signal.Signals(signum).name, channel=self.channel)
                self.stop()
                return


async def serve_http(bridge: Bridge, app: Any, *, host: str, port: int, name: str) -> None:
    """A bridge's HTTP app (uvicorn) and its delivery loop in one process until SIGINT/SIGTERM: then
    requests in flight and the part being delivered finish."""
    uv = uvicorn.Server(uvicorn.Config(app, host=host, port=port, access_log=False, log_config=None, lifespan="off"))
    async with bridge.connected(), anyio.create_task_group() as tg:
        tg.start_soon(bridge.delivery_loop)
        watcher = anyio.CancelScope()

        async def watch() -> None:
            with watcher, anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    event(log, "stopping", signal=signal.Signals(signum).name, channel=bridge.channel)
                    uv.should_exit = True  # finish requests in flight, then return
                    bridge.stop()
                    return

        tg.start_soon(watch)
        event(log, f"{name}_listening", url=f"http://{host}:{port}/", crm=bridge.target.mode)
        await uv.serve()
        bridge.stop()  # the part being delivered finishes; the task group waits for it
        watcher.cancel()


async def mark_delivered(part: OutboundPart) -> Delivered:
    """Deliver for channels whose CRM record is the delivery (the web form's status page)."""
    return Delivered(provider_message_id=f"{part.channel}:{part.message_id}", status="delivered")
