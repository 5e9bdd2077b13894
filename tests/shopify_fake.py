"""A stand-in for Shopify's Admin GraphQL API on 127.0.0.1: orders paged by cursor, the cost
extension on every answer, a THROTTLED answer on demand, and order(id) for refunds/create."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from .fake_http import serving

TOKEN = "shpat_test_token"
SECRET = "shopify-test-webhook-secret"


def sign(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def gql_order(n: int, *, updated: str = "2026-11-02T10:00:00Z", refunded: str = "0.00", email: str | None = None) -> dict[str, Any]:
    return {
        "id": f"gid://shopify/Order/{n}", "name": f"#{1000 + n}", "email": email or f"buyer{n}@example.com", "phone": None,
        "createdAt": f"2026-11-01T{n % 24:02d}:00:00Z", "updatedAt": updated, "cancelledAt": None,
        "displayFinancialStatus": "PAID", "displayFulfillmentStatus": "FULFILLED" if n % 2 else "UNFULFILLED",
        "totalPriceSet": {"shopMoney": {"amount": f"{10 * n}.00", "currencyCode": "EUR"}},
        "totalRefundedSet": {"shopMoney": {"amount": refunded}},
        "customer": {"firstName": "Buyer", "lastName": str(n), "email": None, "phone": None},
        "lineItems": {"nodes": [{"title": "Linen shirt", "variantTitle": "M", "sku": "LS-M", "quantity": 1,
                                 "originalUnitPriceSet": {"shopMoney": {"amount": f"{10 * n}.00"}}}]},
        "fulfillments": [{"trackingInfo": [{"number": f"TRK{n}", "url": f"https://track.example/TRK{n}", "company": "DHL"}]}]
        if n % 2 else [],
    }


@dataclass
class FakeShopify:
    orders: list[dict[str, Any]]
    # 'after' cursors whose first request is answered THROTTLED (with the bucket nearly empty)
    throttle_after: set[str] = field(default_factory=set)
    # answers that report a nearly empty bucket, so the next request must wait
    low_bucket_after: set[str] = field(default_factory=set)
    requests: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    bad_tokens: int = 0
    base: str = ""

    def answer(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        cost = {"requestedQueryCost": 20, "actualQueryCost": 12,
                "throttleStatus": {"maximumAvailable": 1000.0, "currentlyAvailable": 980.0, "restoreRate": 50.0}}
        if "ordersCount" in query:
            return {"data": {"ordersCount": {"count": len(self.orders)}}, "extensions": {"cost": cost}}
        if "order(id:" in query:
            found = next((o for o in self.orders if o["id"] == variables["id"]), None)
            return {"data": {"order": found}, "extensions": {"cost": cost}}
        after = variables.get("after")
        key = after or "<start>"
        if key in self.throttle_after:
            self.throttle_after.discard(key)
            cost["throttleStatus"]["currentlyAvailable"] = 4.0  # (20 - 4) / 50 = 0.32 s to refill
            return {"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}], "extensions": {"cost": cost}}
        start = int(after.removeprefix("c")) if after else 0
        page = self.orders[start:start + int(variables["first"])]
        end = start + len(page)
        if key in self.low_bucket_after:
            cost["throttleStatus"]["currentlyAvailable"] = 5.0  # (20 - 5) / 50 = 0.3 s before the next query
        return {"data": {"orders": {"pageInfo": {"hasNextPage": end < len(self.orders), "endCursor": f"c{end}"},
                                    "nodes": page}},
                "extensions": {"cost": cost}}


@contextmanager
def fake_shopify(fake: FakeShopify) -> Iterator[FakeShopify]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            if not re.fullmatch(r"/admin/api/\d{4}-\d{2}/graphql\.json", self.path):
                self.send_response(404)
                self.end_headers()
                return
            if self.headers.get("X-Shopify-Access-Token") != TOKEN:
                fake.bad_tokens += 1
                self.send_response(401)
                self.end_headers()
                return
            fake.requests.append((time.monotonic(), body["query"], body.get("variables") or {}))
            out = json.dumps(fake.answer(body["query"], body.get("variables") or {})).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    with serving(Handler) as base:
        fake.base = base
        yield fake


def webhook_order(n: int, updated: str, **over: Any) -> dict[str, Any]:
    """An order webhook body as Shopify posts it (REST field names), order number #(1000 + n)."""
    body: dict[str, Any] = {
        "id": n, "admin_graphql_api_id": f"gid://shopify/Order/{n}", "name": f"#{1000 + n}",
        "email": "Wendy@Example.com", "phone": "+1 415 555 0100", "created_at": "2026-11-03T08:00:00-05:00",
        "updated_at": updated, "cancelled_at": None, "financial_status": "paid", "fulfillment_status": None,
        "total_price": "64.50", "currency": "USD",
        "customer": {"first_name": "Wendy", "last_name": "Hook", "email": "wendy@example.com"},
        "line_items": [{"title": "Wool scarf", "variant_title": "Grey", "sku": "WS-G", "quantity": 1, "price": "64.50"}],
        "fulfillments": [], "refunds": [],
    }
    body.update(over)
    return body
