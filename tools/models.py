"""Output models shared by several tools. Tool-specific inputs and outputs live beside their tool."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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
