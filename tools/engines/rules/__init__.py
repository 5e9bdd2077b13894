"""Deterministic message rules: sentiment, category and priority, and escalation to a human.

Pure functions, no I/O; they run on every inbound message, so every pattern is compiled once at
import. What is decided, and where:

* ``score_sentiment(text)``: VADER's compound score, -1.0..+1.0, 3 decimals (``sentiment.py``,
  a faster VADER subclass with identical scores).
* ``classify(text, subject)``: category (first in ``CATEGORY_PRECEDENCE`` with a firing rule)
  and priority (critical > high > low > medium) (``classify.py``).
* ``escalation_reasons(text, sentiment=...)``: one reason per ``EscalationCode`` that fires, in
  that order (``classify.py``).

The phrases, precedence and codes are the tables in ``tables.py``; how a phrase matches (word
boundaries, whitespace, apostrophes, negation, the scan window) is ``matching.py``.
tests/test_rules.py checks each row.
"""

from crm_mcp.tools.engines.rules.classify import (
    Classification,
    EscalationReason,
    classify,
    escalation_reasons,
)
from crm_mcp.tools.engines.rules.matching import SCAN_CHARS
from crm_mcp.tools.engines.rules.sentiment import SENTIMENT_MAX_CHARS, score_sentiment
from crm_mcp.tools.engines.rules.tables import (
    CATEGORY_PRECEDENCE,
    CATEGORY_RULES,
    ESCALATION_CODES,
    VERY_NEGATIVE,
    EscalationCode,
)

__all__ = [
    "SCAN_CHARS",
    "SENTIMENT_MAX_CHARS",
    "VERY_NEGATIVE",
    "CATEGORY_PRECEDENCE",
    "CATEGORY_RULES",
    "ESCALATION_CODES",
    "Classification",
    "EscalationCode",
    "EscalationReason",
    "classify",
    "escalation_reasons",
    "score_sentiment",
]
