"""The rule tables: what each category, priority level and escalation code fires on.

These tables are the contract (tests/test_rules.py checks each row). Rule names are
``<category>.<rule>`` / ``<level>.<rule>``; ``classify`` reports the names that fired. How a phrase
matches (word boundaries, whitespace, apostrophes, scan window) is in ``matching.py``.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from crm_mcp.tools.engines.rules.matching import WordPattern, each, rx
from crm_mcp.tools.vocabulary import TicketCategory

# Sentiment below this makes a message high priority and, by default, escalates it.
VERY_NEGATIVE = -0.6

# Why a message must go to a human, in the order ``escalation_reasons`` reports them.
EscalationCode = Literal[
    "legal_threat",
    "refund_or_pricing_negotiation",
    "human_requested",
    "negative_sentiment",
    "repeated_unanswered",
]
ESCALATION_CODES: tuple[EscalationCode, ...] = get_args(EscalationCode)

_NT = r"(?:n'?t| not)"  # "don't" / "dont" / "do not", appended to an auxiliary
_CANT = r"(?:can'?t|can not|cannot)"

# --------------------------------------------------------------------------------------------
# Category: the first category in CATEGORY_RULES order with a firing rule wins; else "general".
# An explicit request for something new is a feature request whatever area it touches ("please
# add SSO"); then the concrete, actionable subject beats the kind of question (how_to) and the
# tone (complaint): "your billing is terrible" is billing, and the anger shows in priority and
# escalation instead. Account access leads the subjects because it blocks everything.
# --------------------------------------------------------------------------------------------

# "please add me/a user/..." is an account chore, not a feature request.
_PERSON_OBJECT = (
    r"(?!\s+(?:me|my|him|her|them|us|our|a user|users|a colleague|colleagues|a team member|"
    r"team members?|new users?)\b)"
).replace(" ", r"\s+")

CATEGORY_RULES: tuple[tuple[TicketCategory, tuple[tuple[str, WordPattern], ...]], ...] = (
    (
        "feature_request",
        (
            ("feature_request.explicit", rx(r"feature requests?", r"feature suggestions?")),
            (
                "feature_request.would_be_great",
                rx(r"would be (?:great|nice|good|awesome|helpful|useful|cool|amazing) (?:if|to have)"),
            ),
            (
                "feature_request.please_add",
                rx(rf"(?:please|can you|could you|would you|will you) (?:add|implement){_PERSON_OBJECT}"),
            ),
            (
                "feature_request.wish",
                rx(
                    r"i wish (?:you|it|there|the app|flowbase|your)",
                    r"any plans to (?:add|support)",
                    r"on (?:the|your) roadmap",
                ),
            ),
        ),
    ),
    (
        "account_access",
        (
            ("account_access.password", rx(r"passwords?", r"passcodes?")),
            (
                "account_access.login",
                rx(
                    r"log[-\s]?ins?",
                    r"logging in",
                    r"logged (?:in|out)",
                    r"sign[-\s]?ins?",
                    r"signing in",
                    r"log[-\s]?on",
                ),
            ),
            (
                "account_access.locked_out",
                rx(
                    r"locked out",
                    r"account (?:is |was |has been |got )?(?:locked|suspended|disabled|deactivated)",
                ),
            ),
            (
                "account_access.2fa",
                rx(
                    r"2fa",
                    r"mfa",
                    r"two[-\s]?factor",
                    r"2[-\s]?step verification",
                    r"authenticator",
                    r"verification codes?",
                    r"one[-\s]?time (?:code|password)s?",
                    r"otp",
                ),
            ),
            (
                "account_access.sso",
                rx(r"sso", r"saml", r"single sign[-\s]?on", r"okta", r"identity provider"),
            ),
            (
                "account_access.access",
                rx(
                    rf"(?:{_CANT}|unable to|could{_NT}) (?:access|get into) (?:my|our|the) account",
                    r"forgot (?:my|the) (?:password|username)",
                    r"reset (?:my|our|the) password",
                ),
            ),
        ),
    ),
    (
        "billing",
        (
            ("billing.invoice", rx(r"invoices?", r"invoiced", r"invoicing")),
            ("billing.refund", rx(r"refunds?", r"refunding")),
            # its own rule so callers can tell a completed refund from a request
            ("billing.refunded", rx(r"refunded")),
            (  # not "in charge"
                "billing.charge",
                rx(r"charge(?<!\bin\scharge)s?", r"charged", r"overcharg\w*", r"double[-\s]?charg\w*"),
            ),
            (
                "billing.chargeback",
                rx(r"charge[-\s]?backs?", r"dispute (?:the |this |a )?(?:charge|payment|transaction)s?"),
            ),
            ("billing.payment", rx(r"payments?", r"paid", r"billing", r"billed", r"pay for")),
            (
                "billing.card",
                rx(
                    r"card (?:was |got |is |has been |keeps (?:getting |being )?)?declined",
                    r"declined card",
                    r"(?:credit|debit) cards?",
                    r"card details",
                ),
            ),
            ("billing.vat", rx(r"vat", r"gst", r"sales tax", r"tax (?:id|number|invoice)")),
            ("billing.receipt", rx(r"receipts?")),
            ("billing.subscription", rx(r"subscriptions?", r"subscribed?", r"renewal")),
            (
                "billing.plan_price",
                rx(
                    r"pricing",
                    r"prices?",
                    r"(?:upgrade|downgrade)[ds]?",
                    r"(?:free|starter|professional|enterprise|pro|paid|annual|monthly|yearly) plan",
                    r"plan (?:price|cost|change)",
                ),
            ),
        ),
    ),
    (
        "orders",
        (
            # not "in order (to)" / "out of order"
            ("orders.order", rx(r"order(?<!\bin\sorder)(?<!\bout\sof\sorder)s?", r"ordered")),
            ("orders.shipment", rx(r"shipments?", r"shipped", r"shipping")),
            ("orders.delivery", rx(r"deliver(?:y|ies|ed)", r"couriers?", r"parcels?")),
            (
                "orders.tracking",
                rx(
                    r"tracking (?:number|code|id|link|info(?:rmation)?)",
                    r"track (?:my|the|our) (?:order|parcel|package|shipment|delivery)",
                ),
            ),
        ),
    ),
    (
        "bug_report",
        (
            ("bug_report.bug", rx(r"bugs?", r"buggy", r"glitch(?:es|y)?")),
            ("bug_report.error_code", rx(r"fb-\d+", r"error (?:code|message)s?")),
            (
                "bug_report.crash",
                rx(r"crash(?:es|ed|ing)?", r"freez(?:e|es|ing)", r"froze", r"frozen"),
            ),
            ("bug_report.broken", rx(r"broken")),
            (
                "bug_report.not_working",
                rx(
                    rf"(?:does{_NT}|do{_NT}|is{_NT}|are{_NT}|not|no longer|stopped|won'?t|will not|never) work(?:s|ing)?",
                    rf"(?:does{_NT}|won'?t|will not) (?:load|save|open|respond)",
                ),
            ),
        ),
    ),
    (
        "technical",
        (
            ("technical.api", rx(r"apis?", r"endpoints?", r"sdks?", r"graphql", r"oauth")),
            ("technical.webhook", rx(r"webhooks?")),
            (
                "technical.integration",
                rx(r"integrat(?:e|es|ed|ing|ion|ions)", r"zapier", r"plugins?", r"add-?ons?"),
            ),
            ("technical.sync", rx(r"sync(?:s|ed|ing)?", r"synchroni[sz](?:e|es|ed|ing|ation)")),
            (
                "technical.http_error",
                rx(
                    *each("4|5", r"\d\d (?:error|status|response)s?"),
                    r"(?:error|status|http|code) [45]\d\d",
                    r"internal server error",
                    r"bad gateway",
                    r"service unavailable",
                    r"time-?outs?",
                    r"timed out",
                ),
            ),
        ),
    ),
    (
        "how_to",
        (
            ("how_to.how", rx(r"how (?:do|can|should|would|could) (?:i|we|you)", r"how to")),
            (
                "how_to.where",
                rx(r"where (?:can|do|should) (?:i|we)", r"where is the", r"where are the"),
            ),
            ("how_to.way", rx(r"is there a way to", r"is it possible to")),
        ),
    ),
    (
        "complaint",
        (
            (
                "complaint.strong_words",
                rx(
                    r"terrible",
                    r"unacceptable",
                    r"worst",
                    r"disappoint(?:ed|ing|ment)",
                    r"awful",
                    r"horrible",
                    r"horrendous",
                    r"appall?(?:ing|ed)",
                    r"disgust(?:ed|ing)",
                    r"disgraceful",
                    r"ridiculous",
                    r"outrageous",
                    r"pathetic",
                    r"useless",
                    r"incompetent",
                    r"furious",
                    r"fed up",
                    r"sick and tired",
                    r"rip-?off",
                    r"scam",
                    r"shocking",
                ),
            ),
            ("complaint.complain", rx(r"complain(?:t|ts|ing|ed)?")),
            (
                "complaint.poor_service",
                rx(
                    r"(?:poor|bad|rude|slow) (?:service|support|response|experience)",
                    r"(?:nobody|no one) (?:responds|responded|replied|replies|answers|answered|got back)",
                    r"still waiting",
                    r"no response",
                ),
            ),
        ),
    ),
)

CATEGORY_PRECEDENCE: tuple[str, ...] = tuple(cat for cat, _ in CATEGORY_RULES) + ("general",)

# --------------------------------------------------------------------------------------------
# Escalation phrases (LEGAL also makes a message high priority)
# --------------------------------------------------------------------------------------------

# "sue" only as a verb, so the name "Sue" does not fire. A chargeback is a formal external
# dispute with fees and a binding outcome, so it counts as a legal threat, not a refund request.
# Not negation-aware on purpose: "I don't want to involve my lawyer, but..." is still a threat; a
# human glance is cheap, a missed threat is not.
LEGAL = rx(
    r"lawyers?",
    r"attorneys?",
    r"solicitors?",
    r"law\s*suits?",
    r"legal (?:action|proceedings|team|counsel|department)",
    r"class action",
    r"small claims",
    r"(?:take|taking|took) (?:you|this|your company|it|flowbase) to court",
    r"see you in court",
    r"suing",
    r"(?:will|going to|gonna|to|shall|would|could|might|may|and|or|i'll|we'll|they'll|ill) sue",
    r"sue (?:you|your|u|them|flowbase|the company)",
    r"report (?:you|this|your company|flowbase) to (?:the )?(?:ftc|bbb|better business bureau|"
    r"ombudsman|trading standards|consumer protection|regulators?|authorities)",
    r"charge[-\s]?backs?",
    r"dispute (?:the |this |a )?(?:charge|payment|transaction)s?",
)

# A bare "I was refunded, thanks" reports a finished refund and does not fire; "want to be
# refunded" and "haven't been refunded" do. "credit card" never fires.
REFUND = rx(
    r"refunds?",
    r"refunding",
    r"(?:be|get|getting) refunded",
    r"(?:have|has|had|was|were)(?:n'?t| not| never)(?: yet)? been refunded",
    r"money back",
    r"reimburs(?:e|ed|ement)",
    r"compensat(?:e|ion)",
    r"discounts?",
    r"discounted",
    r"cheaper",
    r"price match(?:ing)?",
    r"match (?:the|their|a) price",
    r"lower (?:the )?price",
    r"(?:better|lower|reduced|special) (?:price|deal|rate|pricing)",
    r"negotiat(?:e|ing|ion)",
    r"price reduction",
    r"reduce (?:the|my|our) (?:price|bill|cost)",
    r"waive (?:the )?fees?",
    r"account credit",
)

# Not "talk to someone in my team", not "my manager", not "a manager account"; no phrase may be
# followed by "-", so "a human-readable export" does not escalate, and "human" alone never fires.
_HUMAN_TARGET = (
    r"(?:an? |the |your |some )?(?:real |actual |live |human |senior |proper )?"
    r"(?:human(?: being)?|person|people|manager|supervisor|representative|rep|agent|someone|"
    r"somebody|staff(?: member)?|employee|team member|boss)"
    r"(?! (?:in|on|at|from) (?:my|our)\b)"
)
HUMAN = rx(
    *(
        r"(?:speak|talk|chat|get through|be put through|put me through|connect me|transfer me|"
        r"escalate (?:this|me|it|my case|my ticket)) (?:to|with) " + _HUMAN_TARGET,
        r"(?:want|need|demand|request|get me|give me) (?:an? |the |your )?(?:real |actual |live )?"
        r"(?:human|person|manager|supervisor|representative)"
        r"(?! (?:account|role|access|permissions?|seats?|view|login|dashboard|plan)\b)",
        r"(?:real|live) (?:person|human|agent),? please",
        r"escalate",
        r"(?:not|no more|stop|don'?t want|do not want|hate|tired of) "
        r"(?:(?:to )?(?:talk|talking|chat|chatting|speak|speaking) (?:to|with) )?(?:a |an |the |this |your )?"
        r"(?:bots?|robots?|ai|chatbots?|machines?|automated (?:repl(?:y|ies)|responses?|messages?|system))",
    ),
    suffix="(?!-)",
)

# A negatable match is ignored when its sentence, just before it, ends with one of these refusal
# cues and then only filler words: "I don't want a refund, just a fix", "no need to escalate".
NEGATION_BEFORE = re.compile(
    r"(?:\b(?:do|does|did)(?:n'?t|\s+not)\s+(?:want|need|expect|require|ask\s+for|asked\s+for|care\s+about)"
    r"|\bnot\s+(?:asking|looking|interested|after|seeking)(?:\s+(?:for|in))?"
    r"|\bno\s+need\s+(?:for|to)"
    r"|\bnever\s+(?:asked|wanted|requested)(?:\s+for)?"
    r"|\bwithout)"
    r"(?:\s+(?:a|an|any|the|my|our|to|for|be|get|ever|really|even))*\s*$"
)

# code -> phrases, and whether a refusal cue before a match cancels it (NEGATION_BEFORE).
TEXT_TRIGGERS: tuple[tuple[EscalationCode, WordPattern, bool], ...] = (
    ("legal_threat", LEGAL, False),
    ("refund_or_pricing_negotiation", REFUND, True),
    ("human_requested", HUMAN, True),
)

# What the reason says: written by us, never quoting the customer (numbers only).
ESCALATION_DETAILS: dict[EscalationCode, str] = {
    "legal_threat": "The customer threatens legal action or a formal payment dispute.",
    "refund_or_pricing_negotiation": "The customer asks for money back or negotiates on price; staff must decide.",
    "human_requested": "The customer explicitly asks to deal with a member of staff.",
    "negative_sentiment": "Sentiment {sentiment:+.2f} is below the escalation threshold {threshold:+.2f}.",
    "repeated_unanswered": "{unanswered_inbound} inbound messages are unanswered (limit {repeat_limit}).",
}

# --------------------------------------------------------------------------------------------
# Priority: the highest level with a firing rule wins (critical > high > low); else "medium".
# high also fires on LEGAL ("high.legal_threat") and on sentiment < VERY_NEGATIVE
# ("high.negative_sentiment"); low on LOW_CATEGORIES and, for "general" only, on THANKS.
# --------------------------------------------------------------------------------------------

CRITICAL_RULES: tuple[tuple[str, WordPattern], ...] = (
    (
        "critical.outage",
        rx(
            r"outages?",
            r"(?:site|website|app|application|service|system|platform|servers?|api|dashboard|"
            r"everything|production|prod|flowbase) (?:is |are |went |has gone |have gone |"
            r"seems (?:to be )?|appears (?:to be )?)?(?:completely |totally |entirely )?down",
            r"down for (?:everyone|everybody|all)",
            r"(?:nobody|no one|none of us) can (?:log\s*in|sign\s*in|access|use)",
        ),
    ),
    (
        "critical.data_loss",
        rx(
            r"data loss",
            r"lost (?:all )?(?:of )?(?:my |our |the )?(?:data|records|contacts|files|history)",
            r"(?:data|records|contacts|files) (?:(?:was|were|has been|have been|got|is|are) )?"
            r"(?:deleted|wiped|erased|lost|gone|missing|disappeared|corrupted)",
            r"deleted all (?:of )?(?:my |our )?(?:data|records|contacts)",
        ),
    ),
    (
        "critical.security_breach",
        rx(
            r"security (?:breach|incident|vulnerability)",
            r"data (?:breach|leak)",
            r"breach(?:ed)?",
            r"hacked",
            r"compromised",
            r"unauthori[sz]ed (?:access|logins?)",
            r"someone (?:else )?(?:has )?logged into (?:my|our) account",
        ),
    ),
    (  # the group must be hit within the sentence: a bare "export all our users" is not critical
        "critical.all_users",
        rx(
            r"all (?:of )?(?:our |my |the )?(?:users|customers|employees|staff|agents|accounts|team members)"
            rf"\b[^.!?\n]{{0,40}}?\b(?:{_CANT}|unable|affected|impacted|locked|down|broken|failing|not)",
            r"(?:affects|affecting|impacts|impacting) (?:all|every)",
            r"entire (?:team|company|organi[sz]ation)",
        ),
    ),
)

HIGH_RULES: tuple[tuple[str, WordPattern], ...] = (
    (
        "high.cannot_log_in",
        rx(
            rf"(?:{_CANT}|unable to|could{_NT}|not able to|no longer able to) "
            r"(?:log[-\s]?(?:in|on)|login|sign[-\s]?in|access (?:my|our|the) account|get in(?:to (?:my|our|the) account)?)",
            r"locked out",
            rf"login (?:fails|failed|failing|is failing|not working|does{_NT} work|is broken|broken)",
        ),
    ),
    (
        "high.payment_failed",
        rx(
            r"payments? (?:has |have |was |were |keeps |kept |is )?(?:failed|failing|declined|bounced|"
            rf"rejected|not going through|did{_NT} go through)",
            r"failed payments?",
            r"card (?:was |got |is |has been |keeps (?:getting |being )?)?(?:declined|rejected)",
            r"charged twice",
            r"double[-\s]?charged",
            r"(?:transaction|charge) (?:failed|declined)",
        ),
    ),
)

# A message in one of these categories is low priority unless something more urgent fires.
LOW_CATEGORIES: tuple[TicketCategory, ...] = ("feature_request", "how_to")

THANKS = rx(
    r"thanks",
    r"thank you",
    r"thx",
    r"many thanks",
    r"cheers",
    r"much appreciated",
    r"appreciate it",
)

