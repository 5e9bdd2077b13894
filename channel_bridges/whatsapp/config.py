"""The WhatsApp bridge's settings: each provider is enabled by its own variables (env or flags),
and a half-configured provider is refused at start with the names that are missing."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

TWILIO_API = "https://api.twilio.com"
META_GRAPH = "https://graph.facebook.com"
META_VERSION = "v21.0"
MAX_BODY_BYTES = 256 * 1024  # Meta batches up to ~1,000 updates per envelope; real ones stay far below this


class ConfigError(Exception):
    """A setting the operator can fix; the message names it and the next step."""


@dataclass(frozen=True)
class TwilioSettings:
    account_sid: str
    auth_token: str
    number: str  # E.164, without the whatsapp: prefix
    api_base: str = TWILIO_API
    template_content_sid: str | None = None  # an approved Content template for replies outside the window


@dataclass(frozen=True)
class MetaSettings:
    app_secret: str
    verify_token: str
    access_token: str
    phone_number_id: str
    graph_base: str = META_GRAPH
    version: str = META_VERSION
    template_name: str | None = None  # an approved message template for replies outside the window
    template_language: str = "en_US"


@dataclass(frozen=True)
class Settings:
    public_url: str
    twilio: TwilioSettings | None = None
    meta: MetaSettings | None = None
    # Template body parameters; {ticket_number} and {text} (the reply) are filled in.
    template_params: tuple[str, ...] = ("{ticket_number}",)
    max_body_bytes: int = MAX_BODY_BYTES

    @property
    def providers(self) -> list[str]:
        return [name for name, cfg in (("twilio", self.twilio), ("meta", self.meta)) if cfg is not None]


TWILIO_REQUIRED = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_WHATSAPP_NUMBER")
META_REQUIRED = ("META_APP_SECRET", "META_VERIFY_TOKEN", "META_ACCESS_TOKEN", "META_PHONE_NUMBER_ID")


def _group(env: Mapping[str, str], names: tuple[str, ...], provider: str) -> dict[str, str] | None:
    got = {n: env[n].strip() for n in names if env.get(n, "").strip()}
    if not got:
        return None
    missing = [n for n in names if n not in got]
    if missing:
        raise ConfigError(f"{provider} is half configured: set {', '.join(missing)} as well (or unset {', '.join(got)} to disable {provider}).")
    return got


def load(env: Mapping[str, str] | None = None, *, public_url: str | None = None, default_public_url: str) -> Settings:
    env = os.environ if env is None else env
    twilio = meta = None
    if t := _group(env, TWILIO_REQUIRED, "Twilio"):
        number = t["TWILIO_WHATSAPP_NUMBER"].removeprefix("whatsapp:")
        if not number.startswith("+") or not number[1:].isdigit():
            raise ConfigError(f"TWILIO_WHATSAPP_NUMBER must be E.164 such as +14155238886, got {number!r}.")
        twilio = TwilioSettings(t["TWILIO_ACCOUNT_SID"], t["TWILIO_AUTH_TOKEN"], number,
                                api_base=env.get("TWILIO_API_BASE", "").rstrip("/") or TWILIO_API,
                                template_content_sid=env.get("TWILIO_TEMPLATE_CONTENT_SID") or None)
    if m := _group(env, META_REQUIRED, "Meta"):
        meta = MetaSettings(m["META_APP_SECRET"], m["META_VERIFY_TOKEN"], m["META_ACCESS_TOKEN"], m["META_PHONE_NUMBER_ID"],
                            graph_base=env.get("META_GRAPH_BASE", "").rstrip("/") or META_GRAPH,
                            version=env.get("META_GRAPH_VERSION") or META_VERSION,
                            template_name=env.get("META_TEMPLATE_NAME") or None,
                            template_language=env.get("META_TEMPLATE_LANGUAGE") or "en_US")
    if twilio is None and meta is None:
        raise ConfigError(f"no WhatsApp provider configured: set {', '.join(TWILIO_REQUIRED)} for Twilio "
                          f"and/or {', '.join(META_REQUIRED)} for Meta (see README, WhatsApp).")
    params: tuple[str, ...] = ("{ticket_number}",)
    if raw := env.get("WHATSAPP_TEMPLATE_PARAMS", "").strip():
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
            raise ConfigError('WHATSAPP_TEMPLATE_PARAMS must be a JSON list of strings, e.g. ["{ticket_number}"].')
        params = tuple(parsed)
    url = (public_url or env.get("CRM_PUBLIC_URL") or default_public_url).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"CRM_PUBLIC_URL must be the bridge's external base URL such as https://wa.example.com, got {url!r}.")
    return Settings(public_url=url, twilio=twilio, meta=meta, template_params=params)
