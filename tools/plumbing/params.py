"""Parameter types shared by the tool inputs: each one states its wire format once (the JSON
schema clients see) and normalises once, during the single validation of a call.

    TicketNumber     'tkt-42', ' TKT-0042 ' -> 'TKT-0042'
    CustomerId ...   a UUID string -> uuid.UUID, with an error naming the tool that finds the id
    Email            email-validator, lower-cased
    Phone            phonenumbers -> E.164, read in the configured default region
    Text             whitespace-trimmed (control characters are already gone: registry.clean_strings)

Errors raised here are the caller's to fix; they say what a valid value looks like and which
tool finds it, and never echo the value (it may be customer text)."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints, ValidationInfo, WithJsonSchema

from crm_mcp.tools.engines.identity import normalize_email, normalize_phone
from crm_mcp.tools.plumbing.errors import UserError

TICKET_NUMBER = re.compile(r"^\s*TKT-(\d{1,9})\s*$", re.IGNORECASE)
TICKET_NUMBER_EXAMPLE = "TKT-0042"


def format_ticket_number(n: int) -> str:
    return f"TKT-{n:04d}"


MAX_TICKET_NUMBER = 20
MAX_UUID = 64


def normalize_ticket_number(raw: str) -> str:
    if len(raw or "") > MAX_TICKET_NUMBER:
        raise UserError(f"ticket_number is too long (at most {MAX_TICKET_NUMBER} characters); it looks like {TICKET_NUMBER_EXAMPLE}.")
    m = TICKET_NUMBER.match(raw or "")
    if not m:
        raise UserError(
            f"ticket_number must look like {TICKET_NUMBER_EXAMPLE}.",
            hint="Use list_tickets or find_customer to find the ticket number.",
        )
    return format_ticket_number(int(m.group(1)))


def parse_uuid(value: Any, what: str, finder: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str) and len(value) > MAX_UUID:
        raise UserError(f"{what} is too long (at most {MAX_UUID} characters); a UUID looks like 3f2b8c1e-....")
    try:
        return uuid.UUID(str(value).strip())
    except (ValueError, AttributeError):
        raise UserError(f"{what} must be a UUID such as 3f2b8c1e-....", hint=f"Use {finder} to look it up.") from None


def _uuid_type(what: str, finder: str) -> Any:
    return Annotated[
        uuid.UUID,
        BeforeValidator(lambda v: parse_uuid(v, what, finder)),
        WithJsonSchema({"type": "string", "format": "uuid", "maxLength": MAX_UUID}),
    ]


def _phone(value: str, info: ValidationInfo) -> str:
    region = (info.context or {}).get("default_region", "US")
    return normalize_phone(value, region)


TicketNumber = Annotated[
    str,
    BeforeValidator(lambda v: normalize_ticket_number(v) if isinstance(v, str) else v),
    WithJsonSchema({"type": "string", "maxLength": MAX_TICKET_NUMBER}),  # descriptions show TKT-0042
]
CustomerId = _uuid_type("customer_id", "find_customer")
ConversationId = _uuid_type("conversation_id", "get_customer_history")
MessageId = _uuid_type("message_id", "get_conversation")
ArticleId = _uuid_type("article_id", "search_knowledge_base")

Text = Annotated[str, StringConstraints(strip_whitespace=True)]
Email = Annotated[str, StringConstraints(max_length=320), AfterValidator(normalize_email)]
Phone = Annotated[str, StringConstraints(max_length=50), AfterValidator(_phone)]

# Paging: every list takes the opaque next_cursor of the page before (plumbing/paging.py decodes it).
Cursor = Annotated[str | None, Field(default=None, max_length=500, description="next_cursor from the previous page.")]
