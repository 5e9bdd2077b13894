"""The Shopify bridge against a local stand-in for the Admin API (tests/shopify_fake.py) and the
real CRM over HTTP: `crm-mcp shopify sync` (cursor paging, the cost throttle, resuming from its
checkpoint) and `crm-mcp bridge shopify` webhooks (good, bad and missing HMAC, a repeated
webhook id, updates out of order, refunds/create)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from .conftest import REPO, server_env
from .http_server import http_server, make_token
from .shopify_fake import SECRET, TOKEN, FakeShopify, fake_shopify, gql_order, sign, webhook_order
from .webform_helpers import _wait_http, free_port, stop_process

pytestmark = pytest.mark.anyio


def shopify_env(fake: FakeShopify, crm_token: str) -> dict[str, str]:
    return {"SHOPIFY_SHOP_DOMAIN": "test-shop.myshopify.com", "SHOPIFY_ACCESS_TOKEN": TOKEN,
            "SHOPIFY_WEBHOOK_SECRET": SECRET, "SHOPIFY_API_VERSION": "2025-07", "SHOPIFY_API_BASE": fake.base,
            "CRM_TOKEN": crm_token}


async def run_cli(dsn: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "crm_mcp.server.cli", *args], env=server_env(dsn, **env),
                              cwd=str(REPO), capture_output=True, text=True, timeout=180)
    return await anyio.to_thread.run_sync(run)


async def rows(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_sync_pages_throttles_and_resumes(db_dsn: str, tmp_path: Path) -> None:
    token = await make_token(db_dsn, "shopify-sync", "bridge")
    fake = FakeShopify(orders=[gql_order(n) for n in range(1, 8)], throttle_after={"c3"}, low_bucket_after={"c3"})
    checkpoint = tmp_path / "cp.json"
    with fake_shopify(fake):
        async with http_server(db_dsn, CRM_TOOLSETS="all,store,store_sync") as srv:
            env = shopify_env(fake, token)
            first = await run_cli(db_dsn, env, "shopify", "sync", "--server", srv.url, "--checkpoint", str(checkpoint),
                                  "--page-size", "3", "--max-pages", "1")
            assert first.returncode == 0, first.stderr
            out1 = json.loads(first.stdout.strip().splitlines()[-1])
            assert out1["created"] == 3 and out1["pages"] == 1 and not out1["complete"]
            assert json.loads(checkpoint.read_text())["cursor"] == "c3"
            assert len(await rows(db_dsn, "SELECT 1 FROM orders")) == 3

            second = await run_cli(db_dsn, env, "shopify", "sync", "--server", srv.url, "--checkpoint", str(checkpoint),
                                   "--page-size", "3")
            assert second.returncode == 0, second.stderr
            out2 = json.loads(second.stdout.strip().splitlines()[-1])
            # resumed after page 1: orders 4..7, never 1..3 again
            assert out2["created"] == 4 and "stale" not in out2 and out2["complete"] and out2["orders_seen"] == 7
            assert out2["throttle_wait_s"] >= 0.6  # 0.32 s after THROTTLED + 0.3 s for the low bucket
            pages = [(t, v.get("after")) for t, q, v in fake.requests if "orders(" in q]
            assert [a for _, a in pages] == [None, "c3", "c3", "c6"]  # the throttled query is repeated, same cursor
            assert pages[2][0] - pages[1][0] >= 0.3  # waited for the bucket to refill before repeating
            assert pages[3][0] - pages[2][0] >= 0.28  # and before the next page, the bucket being low
            assert json.loads(checkpoint.read_text())["complete"] is True

            third = await run_cli(db_dsn, env, "shopify", "sync", "--server", srv.url, "--checkpoint", str(checkpoint),
                                  "--page-size", "3")
            out3 = json.loads(third.stdout.strip().splitlines()[-1])
            assert out3["stale"] == 7 and "created" not in out3  # a complete checkpoint starts over; nothing changes

            bad = await run_cli(db_dsn, {**env, "SHOPIFY_ACCESS_TOKEN": "wrong"}, "shopify", "sync", "--server", srv.url,
                                "--checkpoint", str(tmp_path / "other.json"))
            assert bad.returncode == 1 and "SHOPIFY_ACCESS_TOKEN" in bad.stderr and "Traceback" not in bad.stderr
            missing = await run_cli(db_dsn, {"SHOPIFY_API_BASE": fake.base}, "shopify", "sync", "--server", srv.url)
            assert missing.returncode == 2 and "SHOPIFY_ACCESS_TOKEN" in missing.stderr

    stored = await rows(db_dsn, """SELECT o.order_number, o.status, o.tracking, o.items, o.total_price, o.currency, i.value
                                   FROM orders o JOIN customer_identifiers i ON i.customer_id = o.customer_id
                                   ORDER BY o.order_number""")
    assert [r["order_number"] for r in stored] == [f"#{1000 + n}" for n in range(1, 8)]
    first_order = stored[0]
    assert first_order["status"] == "fulfilled" and first_order["value"] == "buyer1@example.com"
    assert json.loads(first_order["tracking"]) == [{"number": "TRK1", "url": "https://track.example/TRK1", "company": "DHL"}]
    assert stored[1]["status"] == "paid" and json.loads(stored[1]["tracking"]) == []


async def test_webhooks(db_dsn: str, tmp_path: Path) -> None:
    token = await make_token(db_dsn, "shopify-hooks", "bridge")
    refund_node = gql_order(9, updated="2026-11-03T16:00:00Z", refunded="64.50", email="wendy@example.com")
    refund_node.update({"displayFinancialStatus": "REFUNDED", "totalPriceSet": {"shopMoney": {"amount": "64.50",
                                                                                             "currencyCode": "USD"}}})
    fake = FakeShopify(orders=[refund_node])
    with fake_shopify(fake):
        async with http_server(db_dsn, CRM_TOOLSETS="all,store,store_sync") as srv:
            port = free_port()
            log = open(tmp_path / "bridge.log", "wb")
            proc = subprocess.Popen([sys.executable, "-m", "crm_mcp.server.cli", "bridge", "shopify", "--port", str(port),
                                     "--server", srv.url], env=server_env(db_dsn, **shopify_env(fake, token)),
                                    cwd=str(REPO), stdout=log, stderr=log)
            base = f"http://127.0.0.1:{port}"
            try:
                await anyio.to_thread.run_sync(lambda: _wait_http(f"{base}/healthz", proc))
                async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                    async def post(topic: str, payload: dict[str, Any], webhook_id: str, signature: str | None = "good",
                                   ) -> httpx.Response:
                        body = json.dumps(payload).encode()
                        headers = {"X-Shopify-Topic": topic, "X-Shopify-Webhook-Id": webhook_id,
                                   "Content-Type": "application/json"}
                        if signature == "good":
                            headers["X-Shopify-Hmac-Sha256"] = sign(body)
                        elif signature is not None:
                            headers["X-Shopify-Hmac-Sha256"] = signature
                        return await http.post("/shopify/webhooks", content=body, headers=headers)

                    created = webhook_order(9, "2026-11-03T08:00:00-05:00")
                    fulfilled = webhook_order(9, "2026-11-03T09:30:00-05:00", fulfillment_status="fulfilled", fulfillments=[
                        {"tracking_company": "USPS", "tracking_numbers": ["9400111"],
                         "tracking_urls": ["https://tools.usps.com/go/TrackConfirmAction?tLabels=9400111"]}])
                    # wrong secret, tampered body, missing header: 401 and nothing stored
                    r = await post("orders/create", created, "w-bad", signature=sign(json.dumps(created).encode(), "other"))
                    assert r.status_code == 401
                    r = await post("orders/create", created, "w-none", signature=None)
                    assert r.status_code == 401
                    good_sig = sign(json.dumps(created).encode())
                    r = await http.post("/shopify/webhooks", content=json.dumps({**created, "total_price": "0.01"}).encode(),
                                        headers={"X-Shopify-Topic": "orders/create", "X-Shopify-Hmac-Sha256": good_sig})
                    assert r.status_code == 401
                    assert await rows(db_dsn, "SELECT 1 FROM orders") == []
                    assert await rows(db_dsn, "SELECT 1 FROM processed_messages WHERE source = 'shopify_webhook'") == []

                    # updates out of order: fulfilled (newer) arrives before created (older)
                    r = await post("orders/fulfilled", fulfilled, "w-2")
                    assert r.status_code == 200 and r.json()["outcome"] == "created"
                    r = await post("orders/create", created, "w-1")
                    assert r.status_code == 200 and r.json()["outcome"] == "stale"
                    r = await post("orders/fulfilled", fulfilled, "w-2")  # Shopify's retry of the same delivery
                    assert r.status_code == 200 and r.json()["outcome"] == "duplicate"
                    [o] = await rows(db_dsn, "SELECT * FROM orders")
                    assert o["status"] == "fulfilled" and json.loads(o["tracking"])[0]["number"] == "9400111"
                    assert o["total_price"] == pytest.approx(64.5) and o["currency"] == "USD"
                    ids = await rows(db_dsn, "SELECT kind, value FROM customer_identifiers WHERE customer_id = $1 ORDER BY kind",
                                     o["customer_id"])
                    assert [(i["kind"], i["value"]) for i in ids] == [("email", "wendy@example.com"), ("phone", "+14155550100")]
                    [c] = await rows(db_dsn, "SELECT name FROM customers")
                    assert c["name"] == "Wendy Hook"

                    # refunds/create: the order is read back from the Admin API (newer updated_at wins)
                    r = await post("refunds/create", {"id": 77, "order_id": 9, "transactions": []}, "w-3")
                    assert r.status_code == 200 and r.json()["outcome"] == "updated"
                    [o] = await rows(db_dsn, "SELECT status, refunded_amount FROM orders")
                    assert o["status"] == "refunded" and o["refunded_amount"] == pytest.approx(64.5)

                    r = await post("products/update", {"id": 1}, "w-4")
                    assert r.status_code == 200 and r.json()["outcome"] == "ignored"
                    r = await post("orders/updated", {"no": "order"}, "w-5")
                    assert r.status_code == 200 and r.json()["outcome"] == "unreadable"
            finally:
                stop_process(proc)
                log.close()
            assert proc.returncode == 0, (tmp_path / "bridge.log").read_text()[-3000:]
    text = (tmp_path / "bridge.log").read_text()
    assert "Traceback" not in text and "wendy@example.com" not in text.lower()  # ids and outcomes only in logs
    dedup = await rows(db_dsn, "SELECT external_id FROM processed_messages WHERE source = 'shopify_webhook' ORDER BY 1")
    assert [d["external_id"] for d in dedup] == ["w-1", "w-2", "w-3"]
