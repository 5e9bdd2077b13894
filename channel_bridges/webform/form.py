"""The support form's fields, their limits and the checks that decide whether anything is stored."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from email_validator import EmailNotValidError, validate_email

MAX_BODY_BYTES = 64 * 1024
LIMITS = {"name": 200, "email": 320, "subject": 200, "message": 5000, "order_number": 40}
# Shown as a select; the CRM classifies the ticket itself, this is a hint kept in the metadata.
CATEGORIES = {
    "": "Choose a topic (optional)",
    "account_access": "Signing in and my account",
    "billing": "Billing and invoices",
    "technical": "Something is not working",
    "orders": "An order",
    "feature_request": "An idea or request",
    "general": "Something else",
}
ORDER_NUMBER = re.compile(r"^[A-Za-z0-9#][A-Za-z0-9#\-_/. ]*$")
HONEYPOT = "website"


@dataclass
class Submission:
    values: dict[str, str]
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def check(raw: dict[str, str]) -> Submission:
    """Values trimmed and checked; errors name the field and say how to fix it."""
    v = {k: (raw.get(k) or "").strip() for k in ("name", "email", "subject", "message", "category", "order_number")}
    v["message"] = (raw.get("message") or "").strip()
    errors: dict[str, str] = {}
    if not v["name"]:
        errors["name"] = "Please tell us your name."
    if not v["email"]:
        errors["email"] = "Please enter your email address, so we can reach you."
    else:
        try:
            v["email"] = validate_email(v["email"], check_deliverability=False).normalized
        except EmailNotValidError:
            errors["email"] = "This does not look like an email address; it should look like name@example.com."
    if not v["subject"]:
        errors["subject"] = "Please give your message a subject."
    if not v["message"]:
        errors["message"] = "Please write your message; it is empty."
    for name, limit in LIMITS.items():
        if len(v[name]) > limit and name not in errors:
            errors[name] = f"Please shorten this to at most {limit:,} characters (it has {len(v[name]):,})."
    if v["category"] not in CATEGORIES:
        errors["category"] = "Please choose one of the listed topics."
    if v["order_number"] and "order_number" not in errors and not ORDER_NUMBER.match(v["order_number"]):
        errors["order_number"] = "An order number has letters, digits, '#' and '-' only, e.g. FB-10042."
    return Submission(values=v, errors=errors)
