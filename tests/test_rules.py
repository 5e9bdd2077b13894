"""Tests for crm_mcp.tools.engines.rules: every rule table row, the negative cases, precedence, properties."""

from __future__ import annotations

import dataclasses
import time
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from crm_mcp.tools import vocabulary as enums
from crm_mcp.tools.engines.rules import sentiment, tables
from crm_mcp.tools.engines.rules import (
    CATEGORY_PRECEDENCE,
    CATEGORY_RULES,
    ESCALATION_CODES,
    SENTIMENT_MAX_CHARS,
    Classification,
    EscalationReason,
    classify,
    escalation_reasons,
    score_sentiment,
)
from crm_mcp.tools.intake import Escalation

NEUTRAL = 0.0


def codes(text: str, **kw) -> list[str]:
    kw.setdefault("sentiment", NEUTRAL)
    return [r.code for r in escalation_reasons(text, **kw)]


# ------------------------------------------------------------------ vocabulary / structure


def test_categories_are_the_enum_vocabulary():
    assert set(CATEGORY_PRECEDENCE) == set(enums.TICKET_CATEGORIES)
    assert CATEGORY_PRECEDENCE[-1] == "general"
    assert len(CATEGORY_PRECEDENCE) == len(set(CATEGORY_PRECEDENCE))


def test_rule_names_are_unique_and_prefixed_by_category():
    names = [name for cat, rules in CATEGORY_RULES for name, _ in rules]
    assert len(names) == len(set(names))
    for cat, rules in CATEGORY_RULES:
        for name, _ in rules:
            assert name.startswith(cat + ".")


def test_classification_is_frozen():
    c = classify("hello")
    assert isinstance(c, Classification)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.category = "billing"  # type: ignore[misc]


def test_escalation_codes_listed():
    assert ESCALATION_CODES == (
        "legal_threat",
        "refund_or_pricing_negotiation",
        "human_requested",
        "negative_sentiment",
        "repeated_unanswered",
    )


def test_escalation_tables_use_the_one_code_list():
    assert tuple(tables.ESCALATION_DETAILS) == ESCALATION_CODES
    text_codes = tuple(code for code, _, _ in tables.TEXT_TRIGGERS)
    assert text_codes == ESCALATION_CODES[: len(text_codes)]
    schema = Escalation.model_json_schema()["properties"]["code"]
    assert tuple(schema["enum"]) == ESCALATION_CODES


# ------------------------------------------------------------------ sentiment


def test_sentiment_empty_and_whitespace():
    assert score_sentiment("") == 0.0
    assert score_sentiment("   \n\t") == 0.0


def test_sentiment_sign_and_scale():
    assert score_sentiment("I love this product, it is wonderful!") > 0.5
    assert score_sentiment("This is awful, I hate it, worst service ever") < -0.5
    assert score_sentiment("The invoice is attached.") == 0.0


def test_sentiment_rounded_to_three_decimals():
    s = score_sentiment("Pretty good, but a bit slow")
    assert s == round(s, 3)


def test_sentiment_reads_only_first_5000_chars():
    head = "neutral words here " * 300
    head = head[:SENTIMENT_MAX_CHARS]
    assert score_sentiment(head + " I hate this, terrible, awful, horrible!" * 50) == score_sentiment(head)


_STOCK = SentimentIntensityAnalyzer()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "not", "no", "never", "so", "this", "good", "bad", "great", "terrible", "but",
                "kind", "of", "least", "at", "very", "without", "doubt", "the", "bomb", "hate",
                "love", "GREAT", "!", "?", "isn't", "cut", "me", "some", "slack", "yeah", "right",
                "sort", "of", "😀", "😡", ":)", ":(", "extremely", "barely", "nor", "or", "LOL",
            ]
        ),
        max_size=40,
    ).map(" ".join)
)
def test_sentiment_matches_stock_vader(text):
    """The windowed analyzer is an optimisation only: same compound as stock VADER."""
    expected = round(_STOCK.polarity_scores(text)["compound"], 3) if text.strip() else 0.0
    assert score_sentiment(text) == expected


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_sentiment_matches_stock_vader_on_arbitrary_text(text):
    expected = round(_STOCK.polarity_scores(text)["compound"], 3) if text.strip() else 0.0
    assert score_sentiment(text) == expected


# ------------------------------------------------------------------ categories (one row per rule)

CATEGORY_CASES = [
    # feature_request
    ("We have a feature request: dark mode", "feature_request", "feature_request.explicit"),
    ("It would be great if exports included tags", "feature_request", "feature_request.would_be_great"),
    ("Would be nice to have a calendar view", "feature_request", "feature_request.would_be_great"),
    ("Please add dark mode", "feature_request", "feature_request.please_add"),
    ("Can you add a Gantt chart?", "feature_request", "feature_request.please_add"),
    ("Could you implement bulk edit", "feature_request", "feature_request.please_add"),
    ("I wish you had a mobile app", "feature_request", "feature_request.wish"),
    ("Any plans to support Jira?", "feature_request", "feature_request.wish"),
    ("Is offline mode on the roadmap?", "feature_request", "feature_request.wish"),
    # account_access
    ("I forgot my password", "account_access", "account_access.password"),
    ("The login page is slow", "account_access", "account_access.login"),
    ("I can't log in", "account_access", "account_access.login"),
    ("sign-in keeps looping", "account_access", "account_access.login"),
    ("I'm locked out", "account_access", "account_access.locked_out"),
    ("My account was suspended", "account_access", "account_access.locked_out"),
    ("2FA codes never arrive", "account_access", "account_access.2fa"),
    ("lost my authenticator phone", "account_access", "account_access.2fa"),
    ("two-factor is confusing", "account_access", "account_access.2fa"),
    ("Our SAML setup with Okta", "account_access", "account_access.sso"),
    ("SSO is mandatory for us", "account_access", "account_access.sso"),
    ("I cannot access my account", "account_access", "account_access.access"),
    # billing
    ("Where is my invoice?", "billing", "billing.invoice"),
    ("I want a refund", "billing", "billing.refund"),
    ("I was refunded the wrong amount", "billing", "billing.refunded"),
    ("You charged me twice", "billing", "billing.charge"),
    ("What are these charges?", "billing", "billing.charge"),
    ("I will file a chargeback", "billing", "billing.chargeback"),
    ("My payment is stuck", "billing", "billing.payment"),
    ("My card was declined", "billing", "billing.card"),
    ("Update my credit card", "billing", "billing.card"),
    ("Please add our VAT number to the account", "billing", "billing.vat"),
    ("I need a receipt", "billing", "billing.receipt"),
    ("Cancel my subscription", "billing", "billing.subscription"),
    ("What is the price of the professional plan?", "billing", "billing.plan_price"),
    ("I'd like to upgrade", "billing", "billing.plan_price"),
    # orders
    ("Where is my order #5521?", "orders", "orders.order"),
    ("I ordered two licences", "orders", "orders.order"),
    ("Has it shipped yet?", "orders", "orders.shipment"),
    ("The delivery is late", "orders", "orders.delivery"),
    ("What's the tracking number?", "orders", "orders.tracking"),
    # bug_report
    ("Found a bug in reports", "bug_report", "bug_report.bug"),
    ("I get FB-4012 when saving", "bug_report", "bug_report.error_code"),
    ("The app crashes on start", "bug_report", "bug_report.crash"),
    ("The export button is broken", "bug_report", "bug_report.broken"),
    ("Search doesn't work", "bug_report", "bug_report.not_working"),
    ("Search doesn’t work", "bug_report", "bug_report.not_working"),  # curly apostrophe
    ("reports stopped working yesterday", "bug_report", "bug_report.not_working"),
    # technical
    ("Is there an API for contacts?", "technical", "technical.api"),
    ("Our webhook is not firing", "technical", "technical.webhook"),
    ("The Zapier integration", "technical", "technical.integration"),
    ("Contacts don't sync with Google", "technical", "technical.sync"),
    ("Getting a 500 error", "technical", "technical.http_error"),
    ("The request timed out", "technical", "technical.http_error"),
    # how_to
    ("How do I export contacts?", "how_to", "how_to.how"),
    ("How can I add a colleague?", "how_to", "how_to.how"),
    ("Where can I find the settings?", "how_to", "how_to.where"),
    ("Is there a way to merge duplicates?", "how_to", "how_to.way"),
    # complaint
    ("This is terrible", "complaint", "complaint.strong_words"),
    ("Unacceptable. Worst experience ever", "complaint", "complaint.strong_words"),
    ("I'm really disappointed", "complaint", "complaint.strong_words"),
    ("I want to make a complaint", "complaint", "complaint.complain"),
    ("Still waiting, nobody answered", "complaint", "complaint.poor_service"),
]


@pytest.mark.parametrize("text,category,rule", CATEGORY_CASES)
def test_category_rules(text, category, rule):
    c = classify(text, sentiment=NEUTRAL)
    assert c.category == category, c
    assert rule in c.matched


def test_default_general():
    c = classify("Hi, just checking in about next week.", sentiment=NEUTRAL)
    assert c.category == "general"
    assert c.priority == "medium"
    assert c.matched == []


def test_subject_is_read():
    assert classify("see subject", subject="Invoice #123 wrong", sentiment=NEUTRAL).category == "billing"
    assert classify("Invoice #123 wrong", subject=None, sentiment=NEUTRAL).category == "billing"
    assert classify("", subject="", sentiment=NEUTRAL).category == "general"


@pytest.mark.parametrize(
    "text",
    [
        "Hello",
        "ideal",
        "shell script",
        "This was helpful",
        "Hello, I have an idea that would be ideal",
        "debugging output",  # not "bug"
        "the apiary",  # not "api"
        "Who is in charge of this project?",  # not billing
        "In order to continue I need to check",  # not orders
        "The printer is out of order",  # not orders
        "unsubscribe me from the newsletter",  # not subscription
        "I'm logging some notes",  # not login
        "hashtag synchronicity",  # not sync
        "I have an issue",
    ],
)
def test_word_boundaries_do_not_classify(text):
    c = classify(text, sentiment=NEUTRAL)
    assert c.category == "general", c


def test_credit_card_is_billing_not_complaint():
    c = classify("Hello, I want to update my credit card", sentiment=NEUTRAL)
    assert c.category == "billing"
    assert not any(m.startswith("complaint.") for m in c.matched)


def test_refunded_vs_refund_are_distinct_rules():
    assert "billing.refund" in classify("refund please", sentiment=NEUTRAL).matched
    assert "billing.refunded" not in classify("refund please", sentiment=NEUTRAL).matched
    m = classify("I was refunded", sentiment=NEUTRAL).matched
    assert "billing.refunded" in m and "billing.refund" not in m


def test_can_you_add_a_person_is_not_a_feature_request():
    assert classify("Can you add my colleague to our workspace?", sentiment=NEUTRAL).category == "general"
    assert classify("Please add me to the beta", sentiment=NEUTRAL).category == "general"


# ------------------------------------------------------------------ precedence


@pytest.mark.parametrize(
    "text,category",
    [
        ("Please add SSO support", "feature_request"),  # feature_request > account_access
        ("It would be great if invoices showed VAT", "feature_request"),  # > billing
        ("I can't log in to pay my invoice", "account_access"),  # > billing
        ("I was charged for an order I never ordered", "billing"),  # > orders
        ("The order page crashes", "orders"),  # orders > bug_report
        ("The API crashes with a 500 error", "bug_report"),  # bug_report > technical
        ("How do I connect the webhook?", "technical"),  # technical > how_to
        ("How do I download my invoice?", "billing"),  # billing > how_to
        ("Your billing is terrible", "billing"),  # billing > complaint
        ("How do I complain?", "how_to"),  # how_to > complaint
    ],
)
def test_precedence(text, category):
    assert classify(text, sentiment=NEUTRAL).category == category


def test_precedence_order_documented():
    assert CATEGORY_PRECEDENCE == (
        "feature_request",
        "account_access",
        "billing",
        "orders",
        "bug_report",
        "technical",
        "how_to",
        "complaint",
        "general",
    )


def test_matched_lists_all_fired_rules():
    c = classify("Refund my invoice, the webhook is broken", sentiment=NEUTRAL)
    assert c.category == "billing"
    assert {"billing.refund", "billing.invoice", "technical.webhook", "bug_report.broken"} <= set(c.matched)


# ------------------------------------------------------------------ priority


@pytest.mark.parametrize(
    "text,rule",
    [
        ("We have an outage", "critical.outage"),
        ("The site is down", "critical.outage"),
        ("production down!!", "critical.outage"),
        ("Everything is completely down", "critical.outage"),
        ("Nobody can log in", "critical.outage"),
        ("We suffered data loss", "critical.data_loss"),
        ("We lost all our contacts", "critical.data_loss"),
        ("All records were deleted", "critical.data_loss"),
        ("There was a security breach", "critical.security_breach"),
        ("Our account was hacked", "critical.security_breach"),
        ("Unauthorized access to our workspace", "critical.security_breach"),
        ("All our users can't log in", "critical.all_users"),
        ("All users are affected", "critical.all_users"),
        ("This is affecting every agent", "critical.all_users"),
    ],
)
def test_critical(text, rule):
    c = classify(text, sentiment=NEUTRAL)
    assert c.priority == "critical", c
    assert rule in c.matched


@pytest.mark.parametrize(
    "text,rule",
    [
        ("I can't log in", "high.cannot_log_in"),
        ("I cannot sign in since yesterday", "high.cannot_log_in"),
        ("Unable to access my account", "high.cannot_log_in"),
        ("I'm locked out", "high.cannot_log_in"),
        ("Login failed again", "high.cannot_log_in"),
        ("My payment failed", "high.payment_failed"),
        ("The card was declined", "high.payment_failed"),
        ("I was charged twice", "high.payment_failed"),
        ("I will contact my lawyer", "high.legal_threat"),
        ("We're suing you", "high.legal_threat"),
    ],
)
def test_high(text, rule):
    c = classify(text, sentiment=NEUTRAL)
    assert c.priority == "high", c
    assert rule in c.matched


def test_high_on_very_negative_sentiment():
    assert classify("meh", sentiment=-0.61).priority == "high"
    assert "high.negative_sentiment" in classify("meh", sentiment=-0.61).matched
    assert classify("meh", sentiment=-0.6).priority == "medium"  # strictly below
    assert classify("meh", sentiment=float("nan")).priority == "medium"


def test_sentiment_computed_when_not_passed():
    c = classify("This is the worst, most awful, horrible, disgusting service. I hate you all.")
    assert c.priority == "high"
    assert "high.negative_sentiment" in c.matched


@pytest.mark.parametrize(
    "text,rule",
    [
        ("Please add dark mode", "low.feature_request"),
        ("How do I export contacts?", "low.how_to"),
        ("Thanks, that worked!", "low.thanks"),
        ("Thank you so much", "low.thanks"),
    ],
)
def test_low(text, rule):
    c = classify(text, sentiment=NEUTRAL)
    assert c.priority == "low", c
    assert rule in c.matched


def test_thanks_does_not_lower_a_real_issue():
    assert classify("Thanks, but my invoice is wrong", sentiment=NEUTRAL).priority == "medium"
    assert classify("Thanks. I can't log in though", sentiment=NEUTRAL).priority == "high"


def test_priority_levels_ordering():
    # critical beats high beats low
    assert classify("How do I recover? Production is down", sentiment=NEUTRAL).priority == "critical"
    assert classify("Please add a fix, I can't log in", sentiment=NEUTRAL).priority == "high"
    assert classify("How do I log in? My lawyer asks", sentiment=NEUTRAL).priority == "high"


@pytest.mark.parametrize(
    "text",
    [
        "I want to export all our users to CSV",  # all users without impact
        "The price went down, nice",
        "Is the dashboard going to be redesigned?",
        "My payment method",
    ],
)
def test_not_urgent(text):
    assert classify(text, sentiment=NEUTRAL).priority in ("medium", "low")


def test_priority_vocabulary():
    for text in ["", "x", "production is down", "thanks", "I can't log in", "please add x"]:
        c = classify(text, sentiment=NEUTRAL)
        assert c.priority in enums.TICKET_PRIORITIES
        assert c.category in enums.TICKET_CATEGORIES


# ------------------------------------------------------------------ escalation


@pytest.mark.parametrize(
    "text",
    [
        "I'm calling my lawyer",
        "Our attorney will be in touch",
        "My solicitor has the details",
        "We will sue you",
        "I'll sue",
        "We'll sue you",
        "I'm going to sue your company",
        "We are suing",
        "Expect a lawsuit",
        "We will take legal action",
        "See you in small claims court",
        "I'll take you to court",
        "This is a class action waiting to happen",
        "I will report you to the FTC",
        "I will do a chargeback",
        "I'm going to dispute the charge with my bank",
        "LAWYER",
    ],
)
def test_legal_threat(text):
    assert "legal_threat" in codes(text)


@pytest.mark.parametrize(
    "text",
    [
        "I want a refund",
        "Refund me now",
        "I want my money back",
        "Can I get a discount?",
        "Your competitor is cheaper",
        "Will you price match?",
        "Can you offer a lower price?",
        "I'd like to negotiate the renewal",
        "I want to be refunded",
        "I haven't been refunded yet",
        "I still have not been refunded",
        "I expect compensation",
        "Please waive the fee",
        "I don't want anything except a refund",
        "I haven't got my refund",
        "I don't want a discount. I want a refund.",  # second sentence is not negated
    ],
)
def test_refund_or_pricing(text):
    assert "refund_or_pricing_negotiation" in codes(text)


@pytest.mark.parametrize(
    "text",
    [
        "Let me speak to a human",
        "I want to talk to a real person",
        "Can I talk to your manager?",
        "Please connect me with a representative",
        "Transfer me to an agent",
        "I need a human",
        "I demand a supervisor",
        "Real person, please",
        "Please escalate",
        "escalate this to a manager",
        "I don't want to talk to a bot",
        "Stop the automated replies",
        "Can I speak with someone?",
    ],
)
def test_human_requested(text):
    assert "human_requested" in codes(text)


@pytest.mark.parametrize(
    "text",
    [
        "Hello",
        "ideal",
        "credit card",
        "Hello, please update my credit card",
        "I would like a human-readable export",
        "Can I get a human-readable CSV?",
        "suede shoes",
        "I have an issue",
        "We will pursue this internally",
        "Sue from your team was very helpful",
        "The issue escalated quickly",
        "The refunded amount arrived, thanks",  # completed refund, no request
        "I was refunded, thanks",
        "I need a manager account for Anna",
        "I'll talk to someone in my team",
        "I need to talk to my manager first",
        "What a shell of a product",
        "helpful",
        "hell",  # no rule about hell at all
        "The basketball court",
        "My payment method is a credit card",
        "The price is fine",
        "Which plan is the legal entity on?",
        "",
    ],
)
def test_no_escalation(text):
    assert codes(text) == []


@pytest.mark.parametrize(
    "text,code",
    [
        ("I don't want a refund, just a fix", "refund_or_pricing_negotiation"),
        ("I do not need a discount", "refund_or_pricing_negotiation"),
        ("I'm not asking for a refund", "refund_or_pricing_negotiation"),
        ("No need for a refund", "refund_or_pricing_negotiation"),
        ("I never asked for a discount", "refund_or_pricing_negotiation"),
        ("I don't need to speak to a manager", "human_requested"),
        ("No need to escalate", "human_requested"),
        ("I don’t want a refund", "refund_or_pricing_negotiation"),  # curly apostrophe
    ],
)
def test_negation_suppresses(text, code):
    assert code not in codes(text)


def test_negation_does_not_apply_to_legal_threats():
    assert "legal_threat" in codes("I don't want to involve my lawyer, but I will")
    assert "legal_threat" in codes("I'm not going to sue... yet")


def test_negation_is_per_sentence():
    assert "refund_or_pricing_negotiation" in codes("I don't want a fix. Refund me.")


def test_negative_sentiment_threshold():
    assert codes("ok", sentiment=-0.61) == ["negative_sentiment"]
    assert codes("ok", sentiment=-0.6) == []  # strictly below
    assert codes("ok", sentiment=-0.3, threshold=-0.2) == ["negative_sentiment"]
    assert codes("ok", sentiment=float("nan")) == []


def test_repeated_unanswered():
    assert codes("ok", unanswered_inbound=3) == ["repeated_unanswered"]
    assert codes("ok", unanswered_inbound=2) == []
    assert codes("ok", unanswered_inbound=5, repeat_limit=6) == []
    assert codes("ok", unanswered_inbound=6, repeat_limit=6) == ["repeated_unanswered"]


def test_all_reasons_in_fixed_order_once_each():
    text = "My lawyer says refund me, refund me! Let me talk to a manager. Escalate!"
    reasons = escalation_reasons(text, sentiment=-0.9, unanswered_inbound=4)
    assert [r.code for r in reasons] == list(ESCALATION_CODES)
    assert all(isinstance(r, EscalationReason) for r in reasons)


MARKER = "Zq9xMarker"


@pytest.mark.parametrize(
    "text",
    [
        f"{MARKER} my lawyer will sue {MARKER}",
        f"{MARKER} refund {MARKER}",
        f"{MARKER} let me talk to a human {MARKER}",
    ],
)
def test_detail_never_echoes_customer_text(text):
    reasons = escalation_reasons(text, sentiment=-0.99, unanswered_inbound=9)
    assert reasons
    for r in reasons:
        assert MARKER.lower() not in r.detail.lower()
        for word in ("lawyer", "sue", "refund", "human"):
            assert word not in r.detail.lower()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400), st.floats(allow_nan=True), st.integers(-5, 50))
def test_detail_is_ours_for_any_text(text, sentiment, unanswered):
    for r in escalation_reasons(text, sentiment=sentiment, unanswered_inbound=unanswered):
        assert r.code in ESCALATION_CODES
        if len(text.strip()) >= 8:
            assert text.strip() not in r.detail


# ------------------------------------------------------------------ robustness properties

_ANY = st.text(alphabet=st.characters(codec=None), max_size=3000)


@settings(max_examples=200, deadline=None)
@given(_ANY, st.one_of(st.none(), st.text(max_size=200)))
def test_classify_never_raises(text, subject):
    c = classify(text, subject)
    assert c.category in enums.TICKET_CATEGORIES
    assert c.priority in enums.TICKET_PRIORITIES
    assert all(isinstance(m, str) for m in c.matched)


@settings(max_examples=200, deadline=None)
@given(_ANY)
def test_sentiment_never_raises_and_in_range(text):
    s = score_sentiment(text)
    assert enums.SENTIMENT_MIN <= s <= enums.SENTIMENT_MAX


@settings(max_examples=200, deadline=None)
@given(_ANY, st.floats(-1, 1))
def test_escalation_never_raises(text, sentiment):
    escalation_reasons(text, sentiment=sentiment)


def test_nul_bytes_and_huge_strings():
    nasty = "\x00refund\x00 " + "a\x00" * 500_000 + " lawyer"
    assert classify(nasty, subject="\x00").category == "billing"
    assert "refund_or_pricing_negotiation" in codes(nasty)
    assert -1 <= score_sentiment(nasty) <= 1
    huge = ("I can't log in. " * 200_000)
    t = time.perf_counter()
    classify(huge)
    escalation_reasons(huge, sentiment=0.0)
    assert time.perf_counter() - t < 0.5  # only the scan window is read


# ------------------------------------------------------------------ speed

_MSG_2K = (
    "Hi team, I was charged twice for my Professional plan this month and the invoice shows "
    "the wrong VAT number. I tried to log in to fix the card details but the page says error "
    "FB-2211 and then times out. This is really frustrating because we rely on the webhook "
    "integration for our orders. Could you please look into it? Thanks, Anna. "
) * 6


def test_speed_2kb_message():
    msg = _MSG_2K[:2000]
    n = 200
    for _ in range(5):
        score_sentiment(msg)
    t = time.perf_counter()
    for _ in range(n):
        s = score_sentiment(msg)
        classify(msg, sentiment=s)
        escalation_reasons(msg, sentiment=s)
    per_call = (time.perf_counter() - t) / n
    # Generous bound for slow CI machines; typical numbers are in the module report.
    assert per_call < 0.02


def _best_per_call(fn, text: str, calls: int = 5, rounds: int = 7) -> float:
    """Fastest of several rounds: the least disturbed by other work on a shared machine."""
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn(text)
        best = min(best, (time.perf_counter() - t) / calls)
    return best


def test_sentiment_takes_the_fast_path(monkeypatch):
    """score_sentiment must run WindowedVader's code, not fall back to stock VADER's."""
    assert type(sentiment.ANALYZER) is sentiment.WindowedVader
    msg = _MSG_2K[:2000]
    calls = {"polarity_scores": 0, "_negation_check": 0, "_but_check": 0}
    idiom_windows: list[int] = []
    stock_polarity = SentimentIntensityAnalyzer.polarity_scores
    stock_negation = SentimentIntensityAnalyzer._negation_check
    stock_but = SentimentIntensityAnalyzer._but_check
    stock_idioms = SentimentIntensityAnalyzer._special_idioms_check

    def polarity(self, text):
        calls["polarity_scores"] += 1
        return stock_polarity(self, text)

    def negation(valence, words, start_i, i):
        calls["_negation_check"] += 1
        return stock_negation(valence, words, start_i, i)

    def but(words, sentiments):
        calls["_but_check"] += 1
        return stock_but(words, sentiments)

    def idioms(valence, words, i):
        idiom_windows.append(len(words))
        return stock_idioms(valence, words, i)

    monkeypatch.setattr(SentimentIntensityAnalyzer, "polarity_scores", polarity)
    monkeypatch.setattr(SentimentIntensityAnalyzer, "_negation_check", staticmethod(negation))
    monkeypatch.setattr(SentimentIntensityAnalyzer, "_but_check", staticmethod(but))
    monkeypatch.setattr(SentimentIntensityAnalyzer, "_special_idioms_check", staticmethod(idioms))

    # The probes see stock VADER's slow path: it calls each of them, on the whole word list.
    expected = round(SentimentIntensityAnalyzer().polarity_scores(msg)["compound"], 3)
    assert all(calls.values()) and max(idiom_windows) > 300
    calls.update(dict.fromkeys(calls, 0))
    idiom_windows.clear()

    assert score_sentiment(msg) == expected
    assert calls == {"polarity_scores": 0, "_negation_check": 0, "_but_check": 0}
    assert idiom_windows and max(idiom_windows) <= 6  # words i-3..i+2 only


def test_fast_sentiment_is_several_times_faster_than_stock_vader():
    msg = _MSG_2K[:2000]
    stock = _best_per_call(_STOCK.polarity_scores, msg)
    fast = _best_per_call(sentiment.ANALYZER.polarity_scores, msg)
    # Typically 6-8x; 3x leaves room for a noisy machine but not for the quadratic path.
    assert stock / fast >= 3, f"stock {stock * 1e3:.2f} ms, fast {fast * 1e3:.2f} ms"


def test_vader_version_is_pinned_and_guarded():
    assert version("vaderSentiment") == sentiment.VADER_VERSION
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert f"vaderSentiment=={sentiment.VADER_VERSION}" in pyproject["project"]["dependencies"]
    sentiment.check_vader_version(sentiment.VADER_VERSION)
    with pytest.raises(ImportError) as err:
        sentiment.check_vader_version("3.3.3")
    message = str(err.value)
    assert "3.3.3" in message and "pip install 'vaderSentiment==3.3.2'" in message
    assert "\n" not in message


# ------------------------------------------------------------------ the fast matcher is exact

import re  # noqa: E402

from crm_mcp.tools.engines.rules.matching import prepare  # noqa: E402

ALL_PATTERNS = (
    [(name, p) for _, rs in CATEGORY_RULES for name, p in rs]
    + list(tables.CRITICAL_RULES)
    + list(tables.HIGH_RULES)
    + [("legal", tables.LEGAL), ("refund", tables.REFUND), ("human", tables.HUMAN), ("thanks", tables.THANKS)]
)
_VOCAB = sorted(
    {w for _, p in ALL_PATTERNS for w in re.findall(r"[a-z0-9']+", p.source.replace(r"\s", " ").replace(r"\b", " "))}
    | {w for text, *_ in CATEGORY_CASES for w in text.lower().split()}
)
_SEPARATORS = [" ", " ", " ", "  ", "\n", ", ", ". ", "'", "-", "’", "é", "_", "(", "«", "#", "5", "00"]
_MIXED = st.lists(
    st.one_of(st.sampled_from(_VOCAB), st.sampled_from(_SEPARATORS), st.text(max_size=3)), max_size=60
).map("".join)


def _plain(p, text):
    return re.search(p.source, text) is not None


@settings(max_examples=600, deadline=None)
@given(_MIXED)
def test_prefiltered_matching_equals_plain_regex(text):
    t = prepare(text)
    for name, p in ALL_PATTERNS:
        assert (p.search(t) is not None) == _plain(p, t.text), (name, text)


@pytest.mark.parametrize("text", [c[0] for c in CATEGORY_CASES] + ["I'll sue", "won't load", "HTTP 503", "2-step verification"])
def test_prefiltered_matching_equals_plain_regex_examples(text):
    t = prepare(text)
    for name, p in ALL_PATTERNS:
        assert (p.search(t) is not None) == _plain(p, t.text), (name, text)


def test_every_regex_has_a_literal_prefix():
    """Guards the speed property: re can skip to candidate positions (see _Pattern)."""
    parser = pytest.importorskip("re._parser")
    compiler = pytest.importorskip("re._compiler")
    for name, p in ALL_PATTERNS:
        for regex, _ in p.compiled:
            tree = parser.parse(regex.pattern)
            prefix = compiler._get_literal_prefix(tree, 0)[0]
            assert prefix or compiler._get_charset_prefix(tree, 0), (name, regex.pattern)


def test_patterns_are_lower_case():
    for name, p in ALL_PATTERNS:
        # upper-case letters may only appear in escapes such as \S, \W, \D (none are used)
        assert re.sub(r"\\[a-zA-Z]", "", p.source) == re.sub(r"\\[a-zA-Z]", "", p.source).lower(), name
