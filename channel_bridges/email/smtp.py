"""Outbound over SMTP (aiosmtplib): implicit TLS on port 465, STARTTLS elsewhere; plain only to a
loopback host. A 4xx answer or a dropped connection is transient, a 5xx refusal permanent."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib

from ..delivery import PermanentDeliveryError, TransientDeliveryError


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    user: str | None = None
    password: str | None = None
    tls: bool = True  # required unless the host is loopback (config refuses otherwise)
    timeout_s: float = 30.0


async def send(cfg: SmtpConfig, msg: EmailMessage) -> None:
    implicit = cfg.tls and cfg.port == 465
    try:
        await aiosmtplib.send(
            msg, hostname=cfg.host, port=cfg.port, username=cfg.user or None, password=cfg.password or None,
            use_tls=implicit, start_tls=True if (cfg.tls and not implicit) else False, timeout=cfg.timeout_s)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [r.code for r in exc.recipients]
        reason = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)[:500]
        if all(500 <= c < 600 for c in codes):
            raise PermanentDeliveryError(f"recipient refused: {reason}") from None
        raise TransientDeliveryError(f"recipient deferred: {reason}") from None
    except aiosmtplib.SMTPResponseException as exc:
        text = f"SMTP {exc.code}: {exc.message}"[:500]
        if 500 <= exc.code < 600 and exc.code not in (530, 535):  # auth failures are fixable config: keep retrying
            raise PermanentDeliveryError(text) from None
        raise TransientDeliveryError(text) from None
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise TransientDeliveryError(f"{type(exc).__name__}: {exc}"[:300]) from None
