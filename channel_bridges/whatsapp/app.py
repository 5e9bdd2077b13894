"""The WhatsApp bridge's webhooks as a Starlette app:

    POST /twilio          Twilio inbound messages (form-encoded, X-Twilio-Signature)
    POST /twilio/status   Twilio status callbacks
    GET  /meta            Meta's verification handshake
    POST /meta            Meta messages and statuses (JSON, X-Hub-Signature-256)
    GET  /healthz         the bridge's health, with the count of refused signatures

Signatures are checked before anything is parsed or stored; a bad one is a 403, counted. A
message is acknowledged (Twilio: empty TwiML; Meta: 200) only after ingest_message committed
it; while the CRM is unreachable the answer is 503 and the provider delivers again, which the
CRM's dedup on the provider's id (MessageSid, wamid) absorbs."""

from __future__ import annotations

import hmac
import json
import logging
from collections import Counter
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..connection import CrmRejected, CrmUnavailable
from ..logs import event
from ..runtime import Bridge
from . import meta, twilio
from .config import Settings
from .inbound import Inbound

log = logging.getLogger("crm_mcp.bridge.whatsapp")
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


class TooLarge(Exception):
    pass


async def _body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge
    return bytes(body)


def create_app(bridge: Bridge, settings: Settings) -> Starlette:
    counters: Counter[str] = Counter()

    def refuse(provider: str, why: str) -> Response:
        counters[f"signature_rejected_{provider}"] += 1
        event(log, "signature_rejected", logging.WARNING, provider=provider, reason=why)
        return PlainTextResponse("Forbidden: signature missing or wrong", status_code=403)

    def too_large() -> Response:
        return PlainTextResponse(f"Payload larger than {settings.max_body_bytes} bytes", status_code=413)

    def unavailable() -> Response:
        # the provider delivers the webhook again later; the CRM's dedup keeps it to one message
        return PlainTextResponse("CRM temporarily unavailable; retry", status_code=503, headers={"Retry-After": "5"})

    async def store(msg: Inbound) -> None:
        try:
            await bridge.ingest(**msg.ingest_arguments())
        except CrmRejected as exc:
            # Input the CRM refuses will be refused again: acknowledged so the provider stops, and counted.
            counters["refused"] += 1
            event(log, "ingest_refused", logging.ERROR, provider=msg.provider, channel_message_id=msg.message_id,
                  error=str(exc)[:300])

    async def report(args: dict[str, Any]) -> None:
        assert bridge.crm is not None
        try:
            await bridge.crm.call("update_delivery_status", timeout_s=20, **args)
        except CrmRejected as exc:  # unknown message, a conflicting id: nothing to apply, do not retry
            counters["status_refused"] += 1
            event(log, "status_refused", logging.WARNING, message_id=args.get("message_id"),
                  channel_message_id=args.get("channel_message_id"), error=str(exc)[:300])

    async def form(request: Request, provider_cfg: Any) -> tuple[dict[str, str], Response | None]:
        if provider_cfg is None:
            return {}, PlainTextResponse("Twilio is not configured on this bridge", status_code=404)
        try:
            raw = await _body(request, settings.max_body_bytes)
        except TooLarge:
            return {}, too_large()
        params = dict(parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True, max_num_fields=200))
        query = f"?{request.url.query}" if request.url.query else ""
        url = f"{settings.public_url}{request.url.path}{query}"
        if not twilio.signature_ok(provider_cfg, url, params, request.headers.get("x-twilio-signature")):
            return {}, refuse("twilio", "missing" if "x-twilio-signature" not in request.headers else "mismatch")
        return params, None

    async def twilio_message(request: Request) -> Response:
        params, problem = await form(request, settings.twilio)
        if problem is not None:
            return problem
        msg = twilio.parse_message(params)
        if not msg.message_id or msg.sender == "+":
            return PlainTextResponse("MessageSid and From are required", status_code=400)
        try:
            await store(msg)
        except CrmUnavailable:
            return unavailable()
        return Response(EMPTY_TWIML, media_type="text/xml")

    async def twilio_status(request: Request) -> Response:
        params, problem = await form(request, settings.twilio)
        if problem is not None:
            return problem
        args = twilio.status_report(params)
        if args is not None:
            if mid := request.query_params.get("message_id"):
                args["message_id"] = mid
            elif params.get("MessageSid"):
                args |= {"channel": "whatsapp", "channel_message_id": params["MessageSid"]}
            else:
                return PlainTextResponse("MessageSid is required", status_code=400)
            try:
                await report(args)
            except CrmUnavailable:
                return unavailable()
        return Response(EMPTY_TWIML, media_type="text/xml")

    async def meta_verify(request: Request) -> Response:
        q = request.query_params
        token = q.get("hub.verify_token", "")
        if settings.meta is not None and q.get("hub.mode") == "subscribe" and \
                hmac.compare_digest(token.encode(), settings.meta.verify_token.encode()):
            return PlainTextResponse(q.get("hub.challenge", ""))
        counters["verify_rejected_meta"] += 1
        return PlainTextResponse("Forbidden: wrong verify token", status_code=403)

    async def meta_webhook(request: Request) -> Response:
        if settings.meta is None:
            return PlainTextResponse("Meta is not configured on this bridge", status_code=404)
        try:
            raw = await _body(request, settings.max_body_bytes)
        except TooLarge:
            return too_large()
        header = request.headers.get("x-hub-signature-256")
        if not meta.signature_ok(settings.meta, raw, header):
            return refuse("meta", "missing" if header is None else "mismatch")
        try:
            envelope = json.loads(raw)
        except ValueError:
            return PlainTextResponse("Body is not JSON", status_code=400)
        if not isinstance(envelope, dict):
            return PlainTextResponse("Body is not a JSON object", status_code=400)
        try:
            for msg in meta.parse_messages(envelope):
                await store(msg)
            for args in meta.status_reports(envelope):
                await report(args)
        except CrmUnavailable:
            return unavailable()
        return PlainTextResponse("ok")

    async def healthz(request: Request) -> JSONResponse:
        doc = bridge.health()
        doc.update(providers=settings.providers, signature_rejected={p: counters[f"signature_rejected_{p}"] for p in ("twilio", "meta")},
                   verify_rejected=counters["verify_rejected_meta"], ingest_refused=counters["refused"],
                   status_refused=counters["status_refused"])
        return JSONResponse(doc, status_code=200 if doc["status"] == "ok" else 503)

    return Starlette(routes=[
        Route("/twilio", twilio_message, methods=["POST"]),
        Route("/twilio/status", twilio_status, methods=["POST"]),
        Route("/meta", meta_verify, methods=["GET"]),
        Route("/meta", meta_webhook, methods=["POST"]),
        Route("/healthz", healthz),
    ])
