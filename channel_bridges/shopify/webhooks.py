"""`crm-mcp bridge shopify`: Shopify's order webhooks into the CRM.

POST /shopify/webhooks: the raw body's base64 HMAC-SHA256 under the app's secret must equal
X-Shopify-Hmac-Sha256 (compared in constant time), else 401 and nothing is stored or parsed.
The order is then upserted with X-Shopify-Webhook-Id as delivery_id: the CRM records a delivery
once, across restarts and replicas, and an update older than the stored order (Shopify does not
promise order of delivery) changes nothing. refunds/create carries only the refund, so the order is
read back from the Admin API first. 200 once the CRM has committed; 503 while it cannot (Shopify
retries), so nothing is acknowledged that was not stored."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import signal
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from ..connection import CrmConnection, CrmRejected, CrmTarget, CrmUnavailable
from ..logs import configure, event
from .admin import AdminApi, ShopifyError
from .mapping import from_graphql, from_webhook
from .settings import ShopifySettings

log = logging.getLogger("crm_mcp.bridge.shopify")

ORDER_TOPICS = frozenset({"orders/create", "orders/updated", "orders/fulfilled", "orders/cancelled", "orders/paid",
                          "orders/edited"})
REFUND_TOPICS = frozenset({"refunds/create"})
MAX_BODY = 2 * 1024 * 1024


def signature(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def verified(secret: str, body: bytes, header: str | None) -> bool:
    if not header:
        return False
    return hmac.compare_digest(signature(secret, body).encode(), header.strip().encode())


def create_app(crm: CrmConnection, settings: ShopifySettings, api: AdminApi | None) -> Starlette:
    secret = settings.webhook_secret or ""

    async def webhook(request: Request) -> Any:
        body = await request.body()
        if len(body) > MAX_BODY:
            return PlainTextResponse("too large", status_code=413)
        if not verified(secret, body, request.headers.get("X-Shopify-Hmac-Sha256")):
            event(log, "webhook_unsigned", logging.WARNING, topic=request.headers.get("X-Shopify-Topic"))
            return PlainTextResponse("invalid signature", status_code=401)
        topic = (request.headers.get("X-Shopify-Topic") or "").lower()
        delivery = request.headers.get("X-Shopify-Webhook-Id") or None
        try:
            payload = json.loads(body)
            if topic in ORDER_TOPICS:
                args = from_webhook(payload)
            elif topic in REFUND_TOPICS:
                if api is None:
                    raise ShopifyError("refunds/create needs SHOPIFY_ACCESS_TOKEN to read the order back")
                node = await api.order(f"gid://shopify/Order/{payload['order_id']}")
                if node is None:
                    raise KeyError("order")
                args = from_graphql(node)
            else:
                event(log, "webhook_ignored", topic=topic, delivery=delivery)
                return JSONResponse({"outcome": "ignored"})
        except (ValueError, KeyError, TypeError) as exc:
            # Signed by Shopify but not an order we can read: retrying the same body will not help.
            event(log, "webhook_unreadable", logging.WARNING, topic=topic, delivery=delivery, error=type(exc).__name__)
            return JSONResponse({"outcome": "unreadable"})
        except ShopifyError as exc:
            event(log, "webhook_order_unavailable", logging.WARNING, topic=topic, delivery=delivery, error=str(exc)[:200])
            return PlainTextResponse("order not readable now", status_code=503)
        if delivery:
            args["delivery_id"] = delivery
        try:
            result = await crm.call("upsert_order", timeout_s=20, **args)
        except CrmUnavailable as exc:
            event(log, "webhook_crm_unavailable", logging.WARNING, topic=topic, delivery=delivery, error=str(exc)[:200])
            return PlainTextResponse("CRM unavailable, retry", status_code=503)
        except CrmRejected as exc:
            event(log, "webhook_rejected", logging.WARNING, topic=topic, delivery=delivery, error=str(exc)[:300])
            return JSONResponse({"outcome": "rejected"})
        event(log, "webhook_stored", topic=topic, delivery=delivery, outcome=result["outcome"], order=result.get("order_id"))
        return JSONResponse({"outcome": result["outcome"], "order_id": result.get("order_id")})

    async def healthz(request: Request) -> Any:
        return JSONResponse({"ok": True, "crm_connected": crm.connected}, status_code=200 if crm.connected else 503)

    return Starlette(routes=[Route("/shopify/webhooks", webhook, methods=["POST"]), Route("/healthz", healthz)])


async def serve(target: CrmTarget, settings: ShopifySettings, *, host: str = "127.0.0.1", port: int = 8092) -> None:
    async with CrmConnection(target) as crm:
        api_cm = AdminApi(settings) if settings.access_token else None
        api = await api_cm.__aenter__() if api_cm else None
        try:
            app = create_app(crm, settings, api)
            uv = uvicorn.Server(uvicorn.Config(app, host=host, port=port, access_log=False, log_config=None, lifespan="off"))
            async with anyio.create_task_group() as tg:
                watcher = anyio.CancelScope()

                async def watch() -> None:
                    with watcher, anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                        async for signum in signals:
                            event(log, "stopping", signal=signal.Signals(signum).name)
                            uv.should_exit = True  # requests in flight finish (their upserts commit) first
                            return

                tg.start_soon(watch)
                event(log, "shopify_listening", url=f"http://{host}:{port}/shopify/webhooks", crm=target.mode)
                await uv.serve()
                watcher.cancel()
        finally:
            if api_cm is not None:
                await api_cm.__aexit__(None, None, None)


def main(*, port: int, host: str = "127.0.0.1", server: str | None = None, token: str | None = None,
         log_level: str = "INFO") -> None:
    import sys

    from .settings import ShopifyConfigError, load

    configure(log_level)
    try:
        settings = load(need=("webhook_secret",))
    except ShopifyConfigError as exc:
        print(f"crm-mcp: bridge shopify: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    anyio.run(lambda: serve(CrmTarget.from_env(server, token), settings, host=host, port=port))
