"""Normalising the ways customers reach us, so one person is one key on every channel.

Emails: email-validator (syntax, IDNA domain, lower-cased whole address; deliverability is
not checked, no DNS). Phones and WhatsApp numbers: phonenumbers, to E.164; a number without a
country code is read in the configured default region. `whatsapp:+1...` (Twilio's form) is
accepted."""

from __future__ import annotations

import re
from collections.abc import Iterable

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from crm_mcp.tools.plumbing.errors import UserError

_WHATSAPP_PREFIX = re.compile(r"^\s*whatsapp:\s*", re.IGNORECASE)
MAX_IDENTIFIER_LEN = 320


def normalize_email(raw: str) -> str:
    if len(raw) > MAX_IDENTIFIER_LEN:
        raise UserError(f"Invalid email: longer than {MAX_IDENTIFIER_LEN} characters.")
    try:
        info = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise UserError(f"Invalid email address: {exc}", hint="Give an address like name@example.com.") from None
    return info.normalized.lower()


def normalize_phone(raw: str, default_region: str) -> str:
    text = _WHATSAPP_PREFIX.sub("", raw)
    if len(text) > 40 or not text.strip():
        raise UserError("Invalid phone number: empty or too long.", hint="Give it in international form, e.g. +14155550123.")
    try:
        num = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        raise UserError(
            "Invalid phone number: it could not be parsed.",
            hint=f"Give it in international form, e.g. +14155550123 (numbers without a country code are read as {default_region}).",
        ) from None
    # "Possible" (right length for the country) rather than "valid": libphonenumber's range
    # metadata lags new allocations, and refusing a real customer's number is worse.
    if not phonenumbers.is_possible_number(num):
        raise UserError(
            "Invalid phone number: wrong length for its country code.",
            hint="Check the digits and the country code, e.g. +14155550123.",
        )
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def normalize_identifier(kind: str, raw: str, default_region: str) -> str:
    if kind == "email":
        return normalize_email(raw)
    if kind in ("phone", "whatsapp"):
        return normalize_phone(raw, default_region)
    raise UserError(f"Unknown identifier kind {kind!r}.", hint="Use one of: email, phone, whatsapp.")


def looks_like_email(text: str) -> bool:
    return "@" in text


def looks_like_phone(text: str) -> bool:
    stripped = _WHATSAPP_PREFIX.sub("", text)
    digits = sum(ch.isdigit() for ch in stripped)
    return digits >= 6 and bool(re.fullmatch(r"[\d\s()+.\-/]+", stripped.strip()))


def identity_lock_keys(identities: Iterable[tuple[str, str]]) -> list[str]:
    """The advisory-lock keys of (kind, value) identities, in the one order every caller takes
    them (sorted): the intake locks the identities of a message before it resolves its customer,
    and merge_customers locks every identity of the two records, so neither decides on a customer
    the other is changing."""
    return ["\x1f".join(("id", k, v)) for k, v in sorted(set(identities))]
