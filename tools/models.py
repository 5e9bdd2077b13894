"""Output models shared by several tools. Tool-specific inputs and outputs live beside their tool."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from crm_mcp.tools.engines.formatting import untrusted


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Identity(Out):
    kind: Literal["email", "phone", "whatsapp"]
    value: str = Field(description="Normalised: lower-case email or E.164 number.")
    verified: bool


class SentimentSummary(Out):
    average: float | None = Field(description="Mean sentiment of all inbound messages, -1 (negative) to +1 (positive).")
    recent: float | None = Field(description="Mean of the last 5 inbound messages.")
    trend: Literal["improving", "declining", "stable", "unknown"]
    samples: int


class CustomerSummary(Out):
    customer_id: str = Field(description="UUID; pass it to get_customer_history or upsert_customer.")
    name: str | None
    company: str | None
    plan: str
    identities: list[Identity]
    open_tickets: int
    last_contact_at: datetime | None
    total_interactions: int
    sentiment: SentimentSummary
    merged_into: str | None = Field(default=None, description="Set when this record was merged into another customer.")


class MessageView(Out):
    """One message as every reader sees it (get_conversation, get_ticket, resources, prompts)."""

    message_id: str
    at: datetime
    channel: str
    direction: str
    role: str
    subject: str | None = None
    content: str = Field(description="Customer-written text is wrapped in <untrusted-customer-content> tags.")
    delivery_status: str | None = None
    sentiment: float | None = None

    @classmethod
    def from_row(cls, r: Any) -> MessageView:
        """A messages row; the customer's own words (content, subject) are marked as untrusted data."""
        customer = r["role"] == "customer"
        subject = r["subject"]
        return cls(
            message_id=str(r["id"]), at=r["created_at"], channel=r["channel"], direction=r["direction"], role=r["role"],
            subject=untrusted(subject, source=r["channel"]) if subject and customer else subject,
            content=untrusted(r["content"], source=r["channel"]) if customer else r["content"],
            delivery_status=r["delivery_status"], sentiment=r["sentiment"],
        )
