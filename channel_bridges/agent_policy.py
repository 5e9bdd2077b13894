"""What the offline agent decides and says: pure functions, no I/O.

The agent's own words are fixed text: a holding reply (no promise of refunds, discounts or
dates: a person follows up), and for an answer a short intro line, the knowledge-base passage and
its source. Customer text never reaches a reply, so instructions inside it have nowhere to go."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

HOLDING_REPLY = ("Thanks for your message. I've passed it to our support team, and a member of the team "
                 "will follow up with you personally.")
ANSWER_INTRO = "Thanks for reaching out. Here is what our help centre says about this:"

# Room for the passage after the channel template and our fixed lines (web_form allows 1,000
# characters with its template, email 2,000; WhatsApp splits long replies itself).
PASSAGE_CHARS = {"web_form": 550, "email": 1400, "whatsapp": 1200}

# A knowledge-base passage that reads as a commitment about money or time is not sent by a
# machine: a person decides. Checked on the exact text that would go out.
PROMISE = re.compile(
    r"\b(we(?:'ll| will| shall)|you(?:'ll| will) (?:get|receive|be (?:refunded|credited)))\b[^.]{0,80}"
    r"\b(refund|discount|credit|reimburse|compensat)", re.IGNORECASE)

TAG = re.compile(r"^<untrusted-customer-content[^>]*>\n?|\n?</untrusted-customer-content>$")

Decision = Literal["answered", "escalated_rule", "escalated_no_answer", "escalated_error", "escalated_model_failure"]


@dataclass(frozen=True)
class Answer:
    body: str
    article_id: str
    title: str


def customer_text(wrapped: str) -> str:
    """The claim's text without its untrusted-content wrapper: used only as a search query."""
    return TAG.sub("", wrapped.strip()).strip()


def rule_reason(work: dict[str, Any]) -> str | None:
    """The escalation rules' verdict as a reason for staff, or None when they allow an answer."""
    reasons = work.get("escalation_reasons") or []
    if not work.get("escalation_suggested") and not reasons:
        return None
    codes = ", ".join(r["code"] for r in reasons) or "rules"
    return f"Agent escalation by rule ({codes})"[:500]


def _trim(passage: str, limit: int) -> str:
    passage = passage.strip()
    if len(passage) <= limit:
        return passage
    cut = passage[:limit]
    end = max(cut.rfind(". "), cut.rfind(".\n"), cut.rfind("\n"))
    return (cut[: end + 1] if end > limit // 3 else cut.rsplit(" ", 1)[0] + " ...").strip()


def compose_answer(search: dict[str, Any], channel: str, limit: int | None = None) -> Answer | None:
    """An answer from the best hit when it is labelled relevant and makes no promise; else None."""
    results = search.get("results") or []
    if search.get("nothing_relevant") or not results:
        return None
    best = results[0]
    if best.get("relevance") != "relevant":
        return None
    passage = _trim(best["snippet"], limit or PASSAGE_CHARS.get(channel, 550))
    if not passage or PROMISE.search(passage):
        return None
    body = f"{ANSWER_INTRO}\n\n{passage}\n\nSource: {best['title']}"
    return Answer(body=body, article_id=best["article_id"], title=best["title"])
