"""Shopify's two shapes of an order -> the arguments of the CRM's upsert_order. Both use the
order's GraphQL id (gid://shopify/Order/N) as its key, so a webhook and a sync agree."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

ORDER_FIELDS = """
id name email phone createdAt updatedAt cancelledAt displayFinancialStatus displayFulfillmentStatus
totalPriceSet { shopMoney { amount currencyCode } }
totalRefundedSet { shopMoney { amount } }
customer { firstName lastName email phone }
lineItems(first: 50) { nodes { title variantTitle sku quantity originalUnitPriceSet { shopMoney { amount } } } }
fulfillments(first: 10) { trackingInfo(first: 10) { number url company } }
"""


def _name(first: str | None, last: str | None) -> str | None:
    return " ".join(p for p in (first, last) if p) or None


def _lower(v: str | None) -> str | None:
    return v.lower() if v else None


def _clean(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if v is not None}


def from_graphql(node: dict[str, Any]) -> dict[str, Any]:
    customer = node.get("customer") or {}
    money = ((node.get("totalPriceSet") or {}).get("shopMoney") or {})
    refunded = (((node.get("totalRefundedSet") or {}).get("shopMoney") or {}).get("amount")) or "0"
    items = [_clean({"title": i.get("title") or "item", "variant": i.get("variantTitle"), "sku": i.get("sku"),
                     "quantity": int(i.get("quantity") or 0),
                     "price": ((i.get("originalUnitPriceSet") or {}).get("shopMoney") or {}).get("amount")})
             for i in ((node.get("lineItems") or {}).get("nodes") or [])]
    tracking = [_clean({"number": t.get("number"), "url": t.get("url"), "company": t.get("company")})
                for f in node.get("fulfillments") or [] for t in f.get("trackingInfo") or []]
    return _clean({
        "external_order_id": node["id"], "order_number": node.get("name") or node["id"].rsplit("/", 1)[-1],
        "updated_at": node["updatedAt"], "placed_at": node.get("createdAt") or node["updatedAt"],
        "email": node.get("email") or customer.get("email"), "phone": node.get("phone") or customer.get("phone"),
        "customer_name": _name(customer.get("firstName"), customer.get("lastName")),
        "financial_status": _lower(node.get("displayFinancialStatus")),
        "fulfillment_status": _lower(node.get("displayFulfillmentStatus")),
        "cancelled": node.get("cancelledAt") is not None,
        "total_price": str(money.get("amount") or "0"), "currency": money.get("currencyCode") or "USD",
        "refunded_amount": str(refunded), "items": items, "tracking": tracking[:50],
    })


def from_webhook(p: dict[str, Any]) -> dict[str, Any]:
    """An orders/* webhook body (the REST representation of the order)."""
    customer = p.get("customer") or {}
    tracking: list[dict[str, Any]] = []
    for f in p.get("fulfillments") or []:
        numbers = f.get("tracking_numbers") or ([f["tracking_number"]] if f.get("tracking_number") else [])
        urls = f.get("tracking_urls") or ([f["tracking_url"]] if f.get("tracking_url") else [])
        for i, number in enumerate(numbers):
            tracking.append(_clean({"number": number, "url": urls[i] if i < len(urls) else None,
                                    "company": f.get("tracking_company")}))
    refunded = sum((Decimal(str(t.get("amount") or 0)) for r in p.get("refunds") or [] for t in r.get("transactions") or []
                    if t.get("kind") in (None, "refund") and t.get("status") in (None, "success")), Decimal(0))
    gid = p.get("admin_graphql_api_id") or f"gid://shopify/Order/{p['id']}"
    return _clean({
        "external_order_id": gid, "order_number": p.get("name") or str(p.get("order_number") or p["id"]),
        "updated_at": p["updated_at"], "placed_at": p.get("created_at") or p["updated_at"],
        "email": p.get("email") or p.get("contact_email") or customer.get("email"),
        "phone": p.get("phone") or customer.get("phone"),
        "customer_name": _name(customer.get("first_name"), customer.get("last_name")),
        "financial_status": p.get("financial_status"), "fulfillment_status": p.get("fulfillment_status"),
        "cancelled": p.get("cancelled_at") is not None,
        "total_price": str(p.get("total_price") or "0"), "currency": p.get("currency") or "USD",
        "refunded_amount": str(refunded),
        "items": [_clean({"title": i.get("title") or i.get("name") or "item", "variant": i.get("variant_title"),
                          "sku": i.get("sku") or None, "quantity": int(i.get("quantity") or 0), "price": i.get("price")})
                  for i in p.get("line_items") or []][:500],
        "tracking": tracking[:50],
    })
