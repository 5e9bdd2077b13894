"""The Admin GraphQL API: one query at a time, paced by Shopify's cost-based throttle.

Every answer carries extensions.cost: the query's requested and actual cost and throttleStatus
(maximumAvailable, currentlyAvailable, restoreRate points per second). Before a query we wait
until the bucket holds what the last one requested; a THROTTLED answer (or HTTP 429) waits for the
bucket to refill (or Retry-After) and repeats the same query; other transient failures back off."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2

from ..logs import event
from ..retry import Backoff, parse_retry_after
from .mapping import ORDER_FIELDS
from .settings import ShopifySettings

log = logging.getLogger("crm_mcp.bridge.shopify")

ORDERS_QUERY = """query Orders($first: Int!, $after: String) {
  orders(first: $first, after: $after, sortKey: CREATED_AT) {
    pageInfo { hasNextPage endCursor }
    nodes { %s }
  }
}""" % ORDER_FIELDS
ORDER_QUERY = "query Order($id: ID!) { order(id: $id) { %s } }" % ORDER_FIELDS
COUNT_QUERY = "query { ordersCount(limit: null) { count } }"


class ShopifyError(Exception):
    """Shopify refused the request (bad token, bad query): retrying will not help."""


@dataclass
class Throttle:
    """What the last answer said about the bucket."""

    available: float | None = None
    restore_rate: float = 50.0
    last_cost: float = 0.0
    waited_s: float = 0.0  # total time spent waiting for the bucket (reported; tests check it)

    def note(self, cost: dict[str, Any] | None) -> None:
        if not cost:
            return
        status = cost.get("throttleStatus") or {}
        self.available = float(status.get("currentlyAvailable", self.available or 0))
        self.restore_rate = float(status.get("restoreRate") or self.restore_rate)
        self.last_cost = float(cost.get("requestedQueryCost") or cost.get("actualQueryCost") or self.last_cost)

    def wait_needed(self) -> float:
        if self.available is None or self.available >= self.last_cost:
            return 0.0
        return (self.last_cost - self.available) / self.restore_rate


@dataclass
class AdminApi:
    settings: ShopifySettings
    page_size: int = 50
    max_attempts: int = 8
    backoff: Backoff = field(default_factory=lambda: Backoff(base_s=0.5, cap_s=30.0))
    throttle: Throttle = field(default_factory=Throttle)
    _http: httpx2.AsyncClient | None = None

    async def __aenter__(self) -> AdminApi:
        self._http = httpx2.AsyncClient(timeout=httpx2.Timeout(30.0), headers={
            "X-Shopify-Access-Token": self.settings.access_token or "", "Content-Type": "application/json"})
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._http is not None
        await self._http.aclose()

    async def query(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self._http is not None, "use `async with AdminApi(...)`"
        for attempt in range(self.max_attempts):
            if (pause := self.throttle.wait_needed()) > 0:
                self.throttle.waited_s += pause
                await anyio.sleep(pause)
                self.throttle.available = None  # refilled as far as we know; the answer says for sure
            try:
                resp = await self._http.post(self.settings.graphql_url(), json={"query": query, "variables": variables or {}})
            except httpx2.TransportError as exc:
                delay = self.backoff.delay(attempt)
                event(log, "shopify_unreachable", logging.WARNING, error=type(exc).__name__, retry_in_s=round(delay, 2))
                await anyio.sleep(delay)
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                delay = self.backoff.delay(attempt, parse_retry_after(resp.headers.get("Retry-After")))
                event(log, "shopify_busy", logging.WARNING, status=resp.status_code, retry_in_s=round(delay, 2))
                self.throttle.waited_s += delay
                await anyio.sleep(delay)
                continue
            if resp.status_code in (401, 403):
                raise ShopifyError(f"Shopify refused the access token (HTTP {resp.status_code}); check SHOPIFY_ACCESS_TOKEN "
                                   "and the app's read_orders scope.")
            if resp.status_code != 200:
                raise ShopifyError(f"Shopify answered HTTP {resp.status_code} to the Admin API query.")
            body = resp.json()
            self.throttle.note((body.get("extensions") or {}).get("cost"))
            errors = body.get("errors") or []
            if any((e.get("extensions") or {}).get("code") == "THROTTLED" for e in errors):
                pause = max(self.throttle.wait_needed(), 0.05)
                event(log, "shopify_throttled", available=self.throttle.available, wait_s=round(pause, 2))
                self.throttle.waited_s += pause
                await anyio.sleep(pause)
                self.throttle.available = None
                continue
            if errors:
                raise ShopifyError("Shopify rejected the query: " + "; ".join(str(e.get("message"))[:200] for e in errors[:3]))
            return body.get("data") or {}
        raise ShopifyError(f"Shopify kept refusing for {self.max_attempts} attempts (throttled or unavailable); run sync again later: "
                           "it resumes from its checkpoint.")

    async def order_pages(self, after: str | None) -> AsyncIterator[tuple[list[dict[str, Any]], str | None, bool]]:
        """(orders, end cursor, has next page) per page, from the page after `after`."""
        while True:
            data = await self.query(ORDERS_QUERY, {"first": self.page_size, "after": after})
            page = data["orders"]
            info = page["pageInfo"]
            yield page["nodes"], info.get("endCursor"), bool(info.get("hasNextPage"))
            if not info.get("hasNextPage"):
                return
            after = info.get("endCursor")

    async def order(self, gid: str) -> dict[str, Any] | None:
        return (await self.query(ORDER_QUERY, {"id": gid})).get("order")

    async def count(self) -> int | None:
        try:
            return int((await self.query(COUNT_QUERY))["ordersCount"]["count"])
        except (ShopifyError, KeyError, TypeError, ValueError):
            return None  # a total only feeds the progress bar
