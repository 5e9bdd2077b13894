"""The decisions: category and priority of a message, and why it must go to a human."""

from __future__ import annotations

from dataclasses import dataclass, field

from crm_mcp.tools.engines.rules.matching import fires_unnegated, prepare
from crm_mcp.tools.engines.rules.sentiment import score_sentiment
from crm_mcp.tools.engines.rules.tables import (
    CATEGORY_RULES,
    CRITICAL_RULES,
    ESCALATION_DETAILS,
    HIGH_RULES,
    LEGAL,
    LOW_CATEGORIES,
    NEGATION_BEFORE,
    TEXT_TRIGGERS,
    THANKS,
    VERY_NEGATIVE,
    EscalationCode,
)
from crm_mcp.tools.vocabulary import TicketCategory, TicketPriority


@dataclass(frozen=True)
class Classification:
    category: TicketCategory
    priority: TicketPriority
    matched: list[str] = field(default_factory=list)


def classify(
    text: str, subject: str | None = None, *, sentiment: float | None = None
) -> Classification:
    """Category and priority of an inbound message by the tables in ``tables.py``.

    Subject and body are read together. ``matched`` lists every rule that fired: category rules
    first (table order), then priority rules. ``sentiment`` may be passed when the caller already
    scored the message (saves a VADER run); otherwise it is computed from subject + body.
    """
    scan = prepare(text, subject)
    matched: list[str] = []
    category: TicketCategory = "general"
    for cat, rules in CATEGORY_RULES:
        fired = [name for name, pattern in rules if pattern.search(scan)]
        if fired and category == "general":
            category = cat
        matched.extend(fired)

    critical = [name for name, pattern in CRITICAL_RULES if pattern.search(scan)]
    high = [name for name, pattern in HIGH_RULES if pattern.search(scan)]
    if LEGAL.search(scan) is not None:
        high.append("high.legal_threat")
    if sentiment is None:
        sentiment = score_sentiment(f"{subject}\n{text}" if subject else (text or ""))
    if isinstance(sentiment, (int, float)) and sentiment < VERY_NEGATIVE:
        high.append("high.negative_sentiment")
    low: list[str] = []
    if category in LOW_CATEGORIES:
        low.append(f"low.{category}")
    elif category == "general" and THANKS.search(scan):
        low.append("low.thanks")

    priority: TicketPriority
    if critical:
        priority = "critical"
    elif high:
        priority = "high"
    elif low:
        priority = "low"
    else:
        priority = "medium"
    matched.extend(critical)
    matched.extend(high)
    if priority == "low":
        matched.extend(low)
    return Classification(category=category, priority=priority, matched=matched)


@dataclass(frozen=True)
class EscalationReason:
    code: EscalationCode
    detail: str


def escalation_reasons(
    text: str,
    *,
    sentiment: float,
    unanswered_inbound: int = 0,
    threshold: float = VERY_NEGATIVE,
    repeat_limit: int = 3,
) -> list[EscalationReason]:
    """Why this message must go to a human (empty list: it need not).

    At most one reason per code, in ``ESCALATION_CODES`` order: the phrase triggers of
    ``tables.TEXT_TRIGGERS``, then ``sentiment < threshold`` (strictly; NaN never fires), then
    ``unanswered_inbound >= repeat_limit``.
    """
    scan = prepare(text)
    fired: list[EscalationCode] = []
    if scan.text:
        for code, pattern, negatable in TEXT_TRIGGERS:
            if fires_unnegated(pattern, scan, NEGATION_BEFORE) if negatable else pattern.search(scan):
                fired.append(code)
    if sentiment is not None and sentiment < threshold:
        fired.append("negative_sentiment")
    if unanswered_inbound >= repeat_limit:
        fired.append("repeated_unanswered")
    numbers = {
        "sentiment": sentiment,
        "threshold": threshold,
        "unanswered_inbound": unanswered_inbound,
        "repeat_limit": repeat_limit,
    }
    return [EscalationReason(code, ESCALATION_DETAILS[code].format(**numbers)) for code in fired]
