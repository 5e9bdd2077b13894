"""The closed vocabularies of the CRM, shared by the schema, the tools and the rules.

They mirror the CHECK constraints in migrations/0001_core.sql; migrations/README.md says why
each set was chosen over the seed documents' alternatives. Change both together.
"""

from __future__ import annotations

from typing import Literal, get_args

Channel = Literal["email", "whatsapp", "web_form"]
IdentifierKind = Literal["email", "phone", "whatsapp"]
Plan = Literal["free", "starter", "professional", "enterprise"]
ConversationStatus = Literal["active", "escalated", "closed"]
Direction = Literal["inbound", "outbound"]
# 'agent' is the AI support agent; 'human' is a member of staff replying through the CRM.
MessageRole = Literal["customer", "agent", "human", "system"]
DeliveryStatus = Literal["pending", "sent", "delivered", "read", "failed"]
TicketStatus = Literal["open", "in_progress", "waiting", "escalated", "resolved", "closed"]
TicketPriority = Literal["low", "medium", "high", "critical"]
TicketCategory = Literal[
    "general",
    "account_access",
    "billing",
    "technical",
    "bug_report",
    "how_to",
    "feature_request",
    "complaint",
    "orders",
]
KbCategory = Literal[
    "general", "account", "billing", "feature", "troubleshooting", "integrations", "security", "faq"
]
# What an agent turn ended in (agent_turns.decision, migrations/0007_agent_turns.sql).
AgentDecision = Literal["answered", "escalated_rule", "escalated_no_answer", "escalated_error", "escalated_model_failure"]
Tone = Literal["formal", "conversational", "semi-formal"]

CHANNELS: tuple[str, ...] = get_args(Channel)
IDENTIFIER_KINDS: tuple[str, ...] = get_args(IdentifierKind)
PLANS: tuple[str, ...] = get_args(Plan)
TICKET_STATUSES: tuple[str, ...] = get_args(TicketStatus)
TICKET_PRIORITIES: tuple[str, ...] = get_args(TicketPriority)
TICKET_CATEGORIES: tuple[str, ...] = get_args(TicketCategory)
KB_CATEGORIES: tuple[str, ...] = get_args(KbCategory)
DELIVERY_STATUSES: tuple[str, ...] = get_args(DeliveryStatus)

# Sentiment is one scale everywhere: -1.0 (very negative) .. 0.0 (neutral) .. +1.0 (very positive),
# VADER's compound score as is.
SENTIMENT_MIN = -1.0
SENTIMENT_MAX = 1.0
