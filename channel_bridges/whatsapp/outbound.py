"""Delivering one claimed reply part on WhatsApp: through the provider the customer's latest
inbound message came in by (claim_outbox's reply_to.metadata.provider), free-form inside the
24-hour window, else the configured approved template, else failed with the reason and the
ticket escalated (PermanentDeliveryError(escalate=True)): never a silent loss.

A part claimed again after a crash (attempt > 1) may have been sent once already: neither
provider takes an idempotency key for sends, so the attempt is logged and carried in the
request (Twilio's StatusCallback query, Meta's biz_opaque_callback_data) for the record."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import httpx2

from ..delivery import Delivered, OutboundPart, PermanentDeliveryError, TransientDeliveryError
from ..logs import event
from . import meta, twilio
from .config import Settings
from .window import WindowClosed, fill, window_open

log = logging.getLogger("crm_mcp.bridge.whatsapp")


@dataclass
class Sender:
    settings: Settings
    http: httpx2.AsyncClient

    def provider_for(self, part: OutboundPart) -> str:
        wanted = ((part.reply_to or {}).get("metadata") or {}).get("provider")
        enabled = self.settings.providers
        if wanted in enabled:
            return wanted
        if wanted:
            raise PermanentDeliveryError(
                f"the customer wrote through {wanted}, which this bridge has not configured; configure it and retry the reply",
                escalate=True)
        return enabled[0]

    async def deliver(self, part: OutboundPart) -> Delivered:
        provider = self.provider_for(part)
        if part.attempt > 1:
            event(log, "whatsapp_resend", logging.WARNING, message_id=part.message_id, attempt=part.attempt, provider=provider,
                  note="an earlier claim may have sent this part already")
        try:
            try:
                if not window_open(part.reply_to):
                    raise WindowClosed("outside WhatsApp's 24-hour window (the customer's last message is older)")
                return await self._text(provider, part)
            except WindowClosed as closed:
                return await self._template(provider, part, closed.reason)
        except WindowClosed as refused:  # the template itself refused: nothing else to try
            raise PermanentDeliveryError(refused.reason, escalate=True) from None
        except httpx2.TransportError as exc:  # connect/read failures and timeouts: retried by the loop
            raise TransientDeliveryError(f"{provider}: {type(exc).__name__}: {exc}"[:300]) from None

    async def _text(self, provider: str, part: OutboundPart) -> Delivered:
        s = self.settings
        if provider == "twilio":
            assert s.twilio is not None
            return await twilio.send(self.http, s.twilio, part.recipient, {"Body": part.text},
                                     twilio.status_callback_url(s.public_url, part.message_id, part.attempt))
        assert s.meta is not None
        return await meta.send(self.http, s.meta, part.recipient,
                               {"type": "text", "text": {"body": part.text, "preview_url": False}},
                               meta.opaque_data(part.message_id, part.attempt))

    async def _template(self, provider: str, part: OutboundPart, why: str) -> Delivered:
        s = self.settings
        params = fill(s.template_params, ticket_number=part.ticket_number, text=part.text)
        if provider == "twilio" and s.twilio is not None and s.twilio.template_content_sid:
            variables = {str(i + 1): p for i, p in enumerate(params)}
            done = await twilio.send(self.http, s.twilio, part.recipient,
                                     {"ContentSid": s.twilio.template_content_sid, "ContentVariables": json.dumps(variables)},
                                     twilio.status_callback_url(s.public_url, part.message_id, part.attempt))
        elif provider == "meta" and s.meta is not None and s.meta.template_name:
            template = {"name": s.meta.template_name, "language": {"code": s.meta.template_language},
                        "components": [{"type": "body", "parameters": [{"type": "text", "text": p} for p in params]}]}
            done = await meta.send(self.http, s.meta, part.recipient, {"type": "template", "template": template},
                                   meta.opaque_data(part.message_id, part.attempt))
        else:
            raise PermanentDeliveryError(f"not sent: {why}; no approved template is configured for {provider}, "
                                         "so a person must reach the customer another way", escalate=True)
        event(log, "whatsapp_template_sent", message_id=part.message_id, provider=provider)
        return done
