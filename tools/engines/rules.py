"""Deterministic message rules: sentiment, category/priority classification, escalation triggers.

Pure functions, no I/O. They run on every inbound message, so every pattern is compiled once at
import time. Everything below is the contract: tests/test_rules.py checks each row.

Matching conventions (all rule tables)
--------------------------------------
* Case-insensitive; every alternative is anchored on word boundaries (``\\b...\\b``), so "Hello",
  "shell", "helpful" never match a "hell"/"help" rule, "issue"/"pursue"/"suede" never match "sue",
  "ideal" never matches "idea", "debug" never matches "bug".
* A space in a phrase matches any run of whitespace, so "log  in" and "log\\nin" are "log in".
* Curly apostrophes are read as ``'`` and the apostrophe is optional where people drop it:
  "can't" = "cant" = "can’t".
* Only the first ``SCAN_CHARS`` (10,000) characters of subject + body are read by the rules.
  Sentiment reads the first ``SENTIMENT_MAX_CHARS`` (5,000).
* Implementation (see ``_Pattern``): patterns are lower-case and run on lower-cased text, each
  alternative on its own behind a word index, with the leading ``\\b`` checked in Python. A
  property test checks this finds exactly what the plain ``\\b(?:...)\\b`` regex would.

1. score_sentiment(text) -> float
---------------------------------
VADER's compound score, rounded to 3 decimals, on the project's -1.0..+1.0 scale
(``enums.SENTIMENT_MIN``/``SENTIMENT_MAX``). Empty or whitespace-only text -> 0.0. One
module-level analyzer: a subclass of VADER's that removes stock VADER's quadratic work (it
re-lower-cases the whole word list for every word) and some per-word overhead; scores are
identical to stock VADER (property tests check this). ~4-8x faster on 2 KB.

2. classify(text, subject=None) -> Classification(category, priority, matched)
-----------------------------------------------------------------------------
Subject and body are read together. ``matched`` lists the names of every rule that fired,
category rules first (table order) then priority rules.

Category: the first category in this precedence order with at least one firing rule wins;
nothing fires -> ``general``.

====  ================  ==========================================================================
 #    category          rules (name: phrases)
====  ================  ==========================================================================
 1    feature_request   explicit: "feature request", "feature suggestion";
                        would_be_great: "(it) would be great/nice/good/awesome/helpful/useful/
                        cool/amazing if|to have";
                        please_add: "please/can you/could you/would you/will you add|implement"
                        -- NOT when followed by a person ("add me/my/him/her/them/us/our/
                        a user/a colleague/team member"), which is an account chore;
                        wish: "I wish you/it/there/the app ...", "any plans to add/support",
                        "on the/your roadmap"
 2    account_access    password: password(s), passcode(s); login: log in/login/log-in/logging
                        in/logged in|out/sign in/signin/sign-in/signing in/log on;
                        locked_out: "locked out", "account (is/was/has been) locked/suspended/
                        disabled/deactivated"; 2fa: 2FA, MFA, two-factor, 2-step verification,
                        authenticator, verification code, one-time code/password, OTP;
                        sso: SSO, SAML, single sign-on, Okta, identity provider;
                        access: "can't/cannot/unable to access|get into my account",
                        "forgot my password/username", "reset my password"
 3    billing           invoice: invoice(s)/invoiced/invoicing; refund: refund(s)/refunding;
                        refunded: refunded (its own rule so callers can tell a completed refund
                        from a request -- both are billing); charge: charge(s)/charged/
                        overcharged/double-charged, but NOT "in charge"; chargeback:
                        chargeback(s), charge back, dispute (the) charge/payment/transaction;
                        payment: payment(s), paid, billing, billed, "pay for";
                        card: "card (was/got/keeps getting) declined", "declined card",
                        "credit/debit card(s)", "card details"; vat: VAT, GST, sales tax,
                        tax ID/number/invoice; receipt: receipt(s); subscription:
                        subscription(s)/subscribe(d) (not "unsubscribe"), renewal;
                        plan_price: pricing, price(s), upgrade/downgrade(d/s),
                        "free/starter/professional/enterprise/pro/paid/annual/monthly/yearly plan",
                        "plan price/cost/change"
 4    orders            order: order(s)/ordered, but NOT "in order (to)" / "out of order";
                        shipment: shipment(s)/shipped/shipping; delivery: delivery/deliveries/
                        delivered, courier, parcel(s); tracking: "tracking number/code/id/link/
                        info", "track my/the/our order/parcel/package/shipment/delivery"
 5    bug_report        bug: bug(s), buggy, glitch(es)/glitchy; error_code: ``FB-<digits>``,
                        "error code/message"; crash: crash(es/ed/ing), freeze(s)/freezing/froze/
                        frozen; broken: broken; not_working: "doesn't/does not/don't/isn't/
                        aren't/not/no longer/stopped/won't/never work(s/ing)",
                        "doesn't/won't load|save|open|respond"
 6    technical         api: API(s), endpoint(s), SDK, GraphQL, OAuth; webhook: webhook(s);
                        integration: integrate/integration(s)/..., Zapier, plugin(s), add-on(s);
                        sync: sync/synced/syncing/synchronise...; http_error: "4xx/5xx error/
                        status/response", "error/status/HTTP 4xx/5xx", internal server error,
                        bad gateway, service unavailable, timeout(s), timed out
 7    how_to            how: "how do/can/should/would/could I/we/you", "how to";
                        where: "where can/do/should I/we", "where is the", "where are the";
                        way: "is there a way to", "is it possible to"
 8    complaint         strong_words: terrible, unacceptable, worst, disappointed/-ing/-ment,
                        awful, horrible, horrendous, appalling/appalled, disgusted/disgusting/
                        disgraceful, ridiculous, outrageous, pathetic, useless, incompetent,
                        furious, fed up, sick and tired, rip-off, scam, shocking;
                        complain: complain/complaint(s)/complaining/complained;
                        poor_service: "poor/bad/rude/slow service|support|response|
                        experience", "nobody/no one responds|replied|answered|got back",
                        "still waiting", "no response"
 -    general           default
====  ================  ==========================================================================

Why this order: an explicit request for something new (1) is a feature request whatever area it
touches ("please add SSO"); then the concrete, actionable subject (2-6) beats the kind of
question (7) and the tone (8) -- "your billing is terrible" is a billing ticket, and the anger
shows in priority and escalation instead. Account access leads because it blocks everything.

Priority: the highest level with a firing rule wins (critical > high > low); else ``medium``.

=========  ===================  ===============================================================
level      rule                 phrases / condition
=========  ===================  ===============================================================
critical   outage               outage(s); "(site/website/app/service/system/platform/server(s)/
                                API/dashboard/everything/production/prod/Flowbase) (is/are/went/
                                has gone/seems (to be)) (completely/totally) down", "down for
                                everyone/all", "nobody/no one/none of us can log in|access|use"
critical   data_loss            "data loss", "lost (all) (of) (my/our/the) data/records/contacts/
                                files/history", "data/records/contacts/files (was/were/has been)
                                deleted/wiped/erased/lost/gone/missing/disappeared/corrupted",
                                "deleted all (of) my/our data/records/contacts"
critical   security_breach      "security breach/incident/vulnerability", "data breach/leak",
                                breach(ed), hacked, compromised, "unauthorised/unauthorized
                                access/login(s)", "someone (else) logged into my/our account"
critical   all_users            "all (of) (our/my/the) users/customers/employees/staff/agents/
                                accounts/team members" followed in the same sentence (<=40
                                chars) by an impact word (can't, cannot, unable, affected,
                                impacted, locked, down, broken, failing, not); "affects/affecting/
                                impacting all|every ..."; "entire team/company/organisation".
                                A bare "export all our users" is NOT critical.
high       cannot_log_in        "can't/cannot/unable to/couldn't/not able to/no longer able to
                                log in|sign in|log on|access my account|get in(to my account)",
                                "locked out", "login fails/failed/failing/not working/broken"
high       payment_failed       "payment(s) (has/was/keeps) failed/failing/declined/bounced/
                                rejected/not going through/didn't go through", "failed payment",
                                "card (was/got/keeps getting) declined|rejected", "charged twice",
                                "double-charged", "transaction/charge failed|declined"
high       legal_threat         the legal_threat table of escalation_reasons (below)
high       negative_sentiment   sentiment < VERY_NEGATIVE (-0.6); the sentiment is computed
                                from subject + body unless the caller passes ``sentiment=``
low        feature_request      category is feature_request
low        how_to               category is how_to
low        thanks               category is general and "thanks/thank you/thx/many thanks/
                                cheers/much appreciated/appreciate it" occurs
medium     (default)
=========  ===================  ===============================================================

3. escalation_reasons(text, *, sentiment, unanswered_inbound=0, threshold=-0.6, repeat_limit=3)
------------------------------------------------------------------------------------------------
Returns at most one reason per code, in this order. ``detail`` is a fixed sentence written by
us (numbers only for the last two); it never quotes the customer.

=============================  ================================================================
code                           fires on
=============================  ================================================================
legal_threat                   lawyer(s), attorney(s), solicitor(s), lawsuit(s), "law suit",
                               "legal action/proceedings/team/counsel/department", "class
                               action", "small claims", "(take/taking) you/this/your company/it/
                               Flowbase to court", "see you in court", suing, "sue" only as a
                               verb ("will/I'll/we'll/they'll/going to/gonna/to/shall/would/could/might/may/
                               and/or sue", "sue you/your/them/Flowbase/the company") so the
                               name "Sue" and "issue"/"suede"/"pursue" do not fire;
                               "report you/this/your company to the FTC/BBB/Better Business
                               Bureau/ombudsman/trading standards/consumer protection/
                               regulator/authorities"; chargeback(s)/"charge back", "dispute
                               the/this/a charge|payment|transaction".
                               DECISION (chargeback): a chargeback is a formal external dispute
                               with fees and a binding outcome, so it is treated as a legal /
                               formal-dispute threat, not as a refund request.
                               DECISION (negation): NOT negation-aware -- "I don't want to
                               involve my lawyer, but..." is still a threat; a human glance is
                               cheap, a missed threat is not.
refund_or_pricing_negotiation  refund(s), refunding, "(to) be/get/getting refunded",
                               "have/has/had/was/were + n't/not/never (yet) been refunded",
                               "money back", reimburse/reimbursed/reimbursement,
                               compensate/compensation, discount(s)/discounted, cheaper,
                               "price match(ing)", "match the/their/a price", "lower (the)
                               price", "better/lower/reduced/special price/deal/rate/pricing",
                               negotiate/negotiating/negotiation, "price reduction", "reduce
                               the/my/our price|bill|cost", "waive (the) fee", "account credit".
                               DECISION ("refunded"): a bare "I was refunded, thanks" reports a
                               finished refund and does not fire; "want to be refunded" and
                               "haven't been refunded" do. "credit card" never fires.
human_requested                "speak/talk/chat/get through/be put through/put me through/
                               connect me/transfer me/escalate this (to|with) (a/an/the/your/
                               some) (real/actual/live/human/senior/proper) human (being)/person/
                               people/manager/supervisor/representative/rep/agent/someone/
                               somebody/staff (member)/employee/team member/boss" -- not when
                               followed by "in/on/at/from my|our" ("talk to someone in my
                               team"); "my manager" never fires;
                               "want/need/demand/request/get me/give me (a/the/your) (real/
                               actual/live) human/person/manager/supervisor/representative"
                               (not when followed by account/role/access/permission(s)/seat/
                               view/login/dashboard/plan); "real/live person|human|agent
                               please"; "escalate" (the bare verb, not "escalated"/
                               "escalation"); "not/no more/stop/don't want/do not want/hate/
                               tired of (to talk/talking to) a bot(s)/robot(s)/AI/chatbot(s)/
                               machine(s)/automated reply|replies|response(s)|message(s)|system".
                               DECISION ("human-readable"): the word "human" alone never fires,
                               and no human phrase may be followed by "-", so "I would like a
                               human-readable export" does not escalate.
negative_sentiment             ``sentiment < threshold`` (strictly below; NaN never fires)
repeated_unanswered            ``unanswered_inbound >= repeat_limit``
=============================  ================================================================

Negation (refund_or_pricing_negotiation and human_requested only): a match is ignored when the
text just before it, in the same sentence (after the last ``. ! ? ; :`` or newline), ends with a
refusal cue -- "don't/doesn't/didn't/do not/does not/did not want|need|expect|require|ask for|
asked for|care about", "not asking/looking/interested/after/seeking (for|in)", "no need for|to",
"never asked/wanted/requested (for)", "without" -- optionally followed by filler words only
(a, an, any, the, my, our, to, for, be, get, ever, really, even). So "I don't want a refund, just
a fix" and "no need to escalate" do not fire, but "I don't want anything except a refund" and
"I haven't got my refund" do. Other matches of the same code in the text still count.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import Literal

from vaderSentiment.vaderSentiment import (
    BOOSTER_DICT,
    N_SCALAR,
    NEGATE,
    SentimentIntensityAnalyzer,
    SentiText,
)

from crm_mcp.tools.vocabulary import TicketCategory, TicketPriority

__all__ = [
    "SCAN_CHARS",
    "SENTIMENT_MAX_CHARS",
    "VERY_NEGATIVE",
    "CATEGORY_PRECEDENCE",
    "ESCALATION_CODES",
    "Classification",
    "EscalationCode",
    "EscalationReason",
    "classify",
    "escalation_reasons",
    "score_sentiment",
]

SCAN_CHARS = 10_000
SENTIMENT_MAX_CHARS = 5_000
VERY_NEGATIVE = -0.6

EscalationCode = Literal[
    "legal_threat",
    "refund_or_pricing_negotiation",
    "human_requested",
    "negative_sentiment",
    "repeated_unanswered",
]
ESCALATION_CODES: tuple[str, ...] = (
    "legal_threat",
    "refund_or_pricing_negotiation",
    "human_requested",
    "negative_sentiment",
    "repeated_unanswered",
)


# --------------------------------------------------------------------------------------------
# Sentiment
# --------------------------------------------------------------------------------------------


_VADER_NEGATE = frozenset(NEGATE)


def _vader_negated(word_lower: str) -> bool:
    return word_lower in _VADER_NEGATE or "n't" in word_lower


class _WindowedVader(SentimentIntensityAnalyzer):
    """Stock VADER scores, about 4x faster on a 2 KB message.

    Stock ``_negation_check`` and ``_special_idioms_check`` lower-case the *whole* word list on
    every call (O(n^2) per message) but only look at words i-3..i+2; we hand the idioms check
    that window with the index shifted, and the negation check is re-stated reading only the
    words it needs (with ``negated`` of one word as a set lookup). The emoji pass is skipped when the
    text holds no emoji character (it would copy the text unchanged, char by char); words not
    in the lexicon skip the call to ``sentiment_valence`` (which appends 0 for them); and
    ``_but_check`` assigns instead of pop/insert and skips zeros. A property test checks the
    scores against stock VADER.
    """

    def __init__(self) -> None:
        super().__init__()
        self._emoji_chars = frozenset(k for k in self.emojis if len(k) == 1)

    @staticmethod
    def _negation_check(valence, words_and_emoticons, start_i, i):  # type: ignore[override]
        # Stock logic verbatim, reading only the 1-3 words it needs; negated([w]) for one word
        # is "w in NEGATE or n't in w".
        w = words_and_emoticons
        if start_i == 0:
            if _vader_negated(w[i - 1].lower()):
                valence = valence * N_SCALAR
        if start_i == 1:
            w2, w1 = w[i - 2].lower(), w[i - 1].lower()
            if w2 == "never" and (w1 == "so" or w1 == "this"):
                valence = valence * 1.25
            elif w2 == "without" and w1 == "doubt":
                pass
            elif _vader_negated(w2):
                valence = valence * N_SCALAR
        if start_i == 2:
            w3, w2, w1 = w[i - 3].lower(), w[i - 2].lower(), w[i - 1].lower()
            if w3 == "never" and (w2 == "so" or w2 == "this") or (w1 == "so" or w1 == "this"):
                valence = valence * 1.25
            elif w3 == "without" and (w2 == "doubt" or w1 == "doubt"):
                pass
            elif _vader_negated(w3):
                valence = valence * N_SCALAR
        return valence

    @staticmethod
    def _special_idioms_check(valence, words_and_emoticons, i):  # type: ignore[override]
        lo = max(0, i - 3)
        return SentimentIntensityAnalyzer._special_idioms_check(
            valence, words_and_emoticons[lo : i + 3], i - lo
        )

    def polarity_scores(self, text):  # type: ignore[override]
        if not self._emoji_chars.isdisjoint(text):
            return super().polarity_scores(text)
        # Same body as VADER 3.3.2's polarity_scores once the (no-op) emoji pass is skipped.
        text = text.strip()
        sentitext = SentiText(text)
        sentiments: list[float] = []
        words = sentitext.words_and_emoticons
        last = len(words) - 1
        lexicon = self.lexicon
        for i, item in enumerate(words):
            low = item.lower()
            if low in BOOSTER_DICT:
                sentiments.append(0)
                continue
            if i < last and low == "kind" and words[i + 1].lower() == "of":
                sentiments.append(0)
                continue
            if low not in lexicon:  # sentiment_valence would append 0 and return
                sentiments.append(0)
                continue
            sentiments = self.sentiment_valence(0, sentitext, item, i, sentiments)
        sentiments = self._but_check(words, sentiments)
        return self.score_valence(sentiments, text)

    @staticmethod
    def _but_check(words_and_emoticons, sentiments):  # type: ignore[override]
        # Stock: for each value, find its FIRST index in the (live) list and scale the value
        # there (pop + insert at the same index). Same walk, with assignment instead of
        # pop/insert, and zeros skipped (scaling a zero changes nothing numerically).
        lowered = [str(w).lower() for w in words_and_emoticons]
        if "but" not in lowered:
            return sentiments
        bi = lowered.index("but")
        for sentiment in sentiments:
            if sentiment == 0:
                continue
            si = sentiments.index(sentiment)
            if si < bi:
                sentiments[si] = sentiment * 0.5
            elif si > bi:
                sentiments[si] = sentiment * 1.5
        return sentiments


_ANALYZER = _WindowedVader()


def score_sentiment(text: str) -> float:
    """VADER compound score of ``text`` (first 5,000 chars), -1.0..1.0, rounded to 3 decimals."""
    if not text or text.isspace():
        return 0.0
    try:
        compound = float(_ANALYZER.polarity_scores(text[:SENTIMENT_MAX_CHARS])["compound"])
    except Exception:  # pragma: no cover - VADER on odd input; sentiment must never block intake
        return 0.0
    if math.isnan(compound):  # pragma: no cover
        return 0.0
    return round(max(-1.0, min(1.0, compound)), 3)


# --------------------------------------------------------------------------------------------
# Pattern helpers
# --------------------------------------------------------------------------------------------


_WORD_CHAR = re.compile(r"\w")


class _Text:
    """A message prepared once for all rules: the lower-cased text, its words (``\\w+`` runs)
    and their first 3 and 4 characters, and (lazily) which alternatives of which patterns can
    match it (see ``_Pattern``)."""

    __slots__ = ("text", "words", "p3", "p4", "_candidates")

    def __init__(self, text: str) -> None:
        self.text = text
        if text.isascii():  # same tokens as \w+, 4x faster
            words = set(text.translate(_ASCII_NON_WORD).split())
        else:
            words = set(_TOKEN.findall(text))
        self.words = words
        self.p3 = {w[:3] for w in words}
        self.p4 = {w[:4] for w in words}
        self._candidates: dict[_Pattern, list[re.Pattern[str]]] | None = None

    def candidates(self, pattern: _Pattern) -> list[re.Pattern[str]]:
        if self._candidates is None:
            found: dict[_Pattern, list[re.Pattern[str]]] = {}
            hits: list[tuple[_Pattern, re.Pattern[str]]] = list(_ALWAYS)
            for key in self.words & _BY_WORD.keys():
                hits.extend(_BY_WORD[key])
            for key in self.p4 & _BY_P4.keys():
                hits.extend(_BY_P4[key])
            for key in self.p3 & _BY_P3.keys():
                hits.extend(_BY_P3[key])
            text = self.text
            hits.extend((pat, rx) for sub, pat, rx in _BY_SUBSTRING if sub in text)
            for pat, rx in hits:
                found.setdefault(pat, []).append(rx)
            self._candidates = found
        return self._candidates.get(pattern, [])


_TOKEN = re.compile(r"\w+")
_ASCII_NON_WORD = {c: " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_")}
_QUANTIFIERS = frozenset("?*{")
_REGEX_META = frozenset("()[]{}.^$*+?|\\")


def _split_top(s: str) -> list[str]:
    """Split a regex fragment on ``|`` outside groups and classes."""
    parts, depth, start, i, in_class = [], 0, 0, 0, False
    while i < len(s):
        ch = s[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(s[start:i])
            start = i + 1
        i += 1
    parts.append(s[start:])
    return parts


_Lead = tuple[str, bool]  # (word characters every match starts with, whether that is a whole word)


def _leads(alt: str, *, end_is_word_end: bool = True) -> frozenset[_Lead] | None:
    """What every match of the regex fragment ``alt`` must start with; None if unknown.

    The leading run of word characters, stopping before a quantified one. It is a whole word
    ("exact") when a mandatory non-word literal follows it (a space, which means ``\\s+``, or
    e.g. ``-``), or when it ends a top-level alternative (``_rx`` appends ``\\b``) or a
    branch of a group that such a literal follows. An alternative opening with a
    non-optional ``(?:a|b)`` has the leads of its branches.
    """
    if alt.startswith("(?:"):
        i = _group_end(alt)
        nxt, after = alt[i + 1 : i + 2], alt[i + 2 : i + 3]
        if nxt and nxt in _QUANTIFIERS:
            return None
        if nxt == "":
            branch_end = end_is_word_end
        else:
            branch_end = nxt not in _REGEX_META and not (after and after in _QUANTIFIERS) and not (
                nxt.isalnum() or nxt == "_"
            )
        out: set[_Lead] = set()
        for branch in _split_top(alt[3:i]):
            sub = _leads(branch, end_is_word_end=branch_end)
            if not sub:
                return None
            out |= sub
        return frozenset(out)
    n = 0
    while n < len(alt):
        ch = alt[n]
        if not (ch.isascii() and (ch.isalnum() or ch == "_")) or alt[n + 1 : n + 2] in _QUANTIFIERS and alt[n + 1 : n + 2]:
            break
        n += 1
    if n == 0:
        return None
    nxt, after = alt[n : n + 1], alt[n + 1 : n + 2]
    if nxt == "":
        exact = end_is_word_end
    else:
        exact = nxt not in _REGEX_META and not (after and after in _QUANTIFIERS)
    return frozenset([(alt[:n], exact)])


def _group_end(alt: str) -> int:
    """Index of the ``)`` closing the group that opens ``alt`` (escapes skipped), or len(alt)."""
    depth, i = 0, 0
    while i < len(alt):
        ch = alt[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                break
        i += 1
    return i


def _distribute(alt: str) -> list[str]:
    """``(?:a|b)rest`` -> ``["arest", "brest"]`` (recursively), so that every alternative starts
    with a literal; a quantified leading group is left alone."""
    if not alt.startswith("(?:"):
        return [alt]
    i = _group_end(alt)
    rest = alt[i + 1 :]
    if rest[:1] and rest[:1] in "?*+{":
        return [alt]
    return [d for branch in _split_top(alt[3:i]) for d in _distribute(branch + rest)]


# The inverted index over every alternative of every pattern: lead -> (pattern, regex).
_BY_WORD: dict[str, list[tuple[_Pattern, re.Pattern[str]]]] = {}
_BY_P4: dict[str, list[tuple[_Pattern, re.Pattern[str]]]] = {}
_BY_P3: dict[str, list[tuple[_Pattern, re.Pattern[str]]]] = {}
_BY_SUBSTRING: list[tuple[str, _Pattern, re.Pattern[str]]] = []
_ALWAYS: list[tuple[_Pattern, re.Pattern[str]]] = []


class _Pattern:
    """Word-bounded alternatives ``\\b(?:a|b|...)\\b`` over lower-cased text, built for speed.

    Plain ``re`` on a pattern that starts with ``\\b``, is IGNORECASE or opens with a group tries
    every position of the text, and 60 such patterns took ~2.5 ms per 2 KB message. Instead:

    1. Each alternative is compiled on its own, with leading groups distributed
       (``(?:a|b) x`` -> ``a x``, ``b x``) so it starts with a literal, which ``re`` finds
       with a fast prefix scan. Patterns are lower-case and run on lower-cased text.
    2. What every match of an alternative must start with (``_leads``: a whole word, or a
       word prefix) is indexed at import; per message, ``_Text.candidates`` intersects the
       message's words with that index, and only those alternatives run (typically a few
       percent of them).
    3. The leading word boundary is verified in Python on each candidate exactly as ``\\b``
       would (the characters on either side differ in being word characters); a rejected
       candidate resumes the search one character later, so no match is lost.

    tests/test_rules.py checks that this finds exactly what the plain ``source`` regex finds.
    """

    __slots__ = ("source", "compiled")

    def __init__(self, alternatives: tuple[str, ...], suffix: str = "") -> None:
        compiled: list[tuple[re.Pattern[str], frozenset[_Lead] | None]] = []
        for alt in (d for a in alternatives for d in _distribute(a)):
            body = alt.replace(" ", r"\s+")
            regex = re.compile(rf"(?:{body})\b{suffix}")
            leads = _leads(alt)
            compiled.append((regex, leads))
            if leads is None:
                _ALWAYS.append((self, regex))
                continue
            for word, exact in leads:
                if exact:
                    _BY_WORD.setdefault(word, []).append((self, regex))
                elif len(word) >= 4:
                    _BY_P4.setdefault(word[:4], []).append((self, regex))
                elif len(word) == 3:
                    _BY_P3.setdefault(word, []).append((self, regex))
                else:
                    _BY_SUBSTRING.append((word, self, regex))
        self.compiled = tuple(compiled)
        body = "|".join(a.replace(" ", r"\s+") for a in alternatives)
        self.source = rf"\b(?:{body})\b{suffix}"  # the plain equivalent, for tests

    def finditer(self, t: _Text):
        """Matches, with a valid leading word boundary, of each candidate alternative in turn."""
        text = t.text
        isword = _WORD_CHAR.match
        for regex in t.candidates(self):
            search = regex.search
            pos = 0
            while True:
                m = search(text, pos)
                if m is None:
                    break
                start = m.start()
                if (start > 0 and isword(text, start - 1) is not None) != (
                    isword(text, start) is not None
                ):
                    yield m
                    pos = m.end() if m.end() > start else start + 1
                else:
                    pos = start + 1

    def search(self, t: _Text) -> re.Match[str] | None:
        return next(self.finditer(t), None)


def _rx(*alternatives: str, suffix: str = "") -> _Pattern:
    """Word-bounded alternatives (see ``_Pattern``). A literal space means one or more
    whitespace (inside a character class write ``\\s``). Alternatives must be lower-case."""
    return _Pattern(alternatives, suffix)


def _each(prefixes: str, rest: str) -> list[str]:
    """``_each("a|b", " x")`` -> ``["a x", "b x"]``: leading choices as separate alternatives,
    so each alternative starts with a literal (see ``_Pattern``)."""
    return [p + rest for p in prefixes.split("|")]


_NT = r"(?:n'?t| not)"  # "don't" / "dont" / "do not", appended to an auxiliary
_CANT = r"(?:can'?t|can not|cannot)"

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\uff07": "'"})


def _prepare(text: str | None, subject: str | None = None) -> _Text:
    joined = f"{subject}\n{text or ''}" if subject else (text or "")
    return _prepare_joined(joined[:SCAN_CHARS])


@functools.lru_cache(maxsize=16)
def _prepare_joined(joined: str) -> _Text:
    # Cached: intake classifies and checks escalation on the same "subject\nbody" string.
    return _Text(joined.translate(_APOSTROPHES).lower())


# --------------------------------------------------------------------------------------------
# Classification tables
# --------------------------------------------------------------------------------------------

_PERSON_OBJECT = (
    r"(?!\s+(?:me|my|him|her|them|us|our|a user|users|a colleague|colleagues|a team member|"
    r"team members?|new users?)\b)"
).replace(" ", r"\s+")

CATEGORY_RULES: tuple[tuple[TicketCategory, tuple[tuple[str, _Pattern], ...]], ...] = (
    (
        "feature_request",
        (
            ("feature_request.explicit", _rx(r"feature requests?", r"feature suggestions?")),
            (
                "feature_request.would_be_great",
                _rx(r"would be (?:great|nice|good|awesome|helpful|useful|cool|amazing) (?:if|to have)"),
            ),
            (
                "feature_request.please_add",
                _rx(rf"(?:please|can you|could you|would you|will you) (?:add|implement){_PERSON_OBJECT}"),
            ),
            (
                "feature_request.wish",
                _rx(
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
            ("account_access.password", _rx(r"passwords?", r"passcodes?")),
            (
                "account_access.login",
                _rx(
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
                _rx(
                    r"locked out",
                    r"account (?:is |was |has been |got )?(?:locked|suspended|disabled|deactivated)",
                ),
            ),
            (
                "account_access.2fa",
                _rx(
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
                _rx(r"sso", r"saml", r"single sign[-\s]?on", r"okta", r"identity provider"),
            ),
            (
                "account_access.access",
                _rx(
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
            ("billing.invoice", _rx(r"invoices?", r"invoiced", r"invoicing")),
            ("billing.refund", _rx(r"refunds?", r"refunding")),
            ("billing.refunded", _rx(r"refunded")),
            (
                "billing.charge",
                _rx(r"charge(?<!\bin\scharge)s?", r"charged", r"overcharg\w*", r"double[-\s]?charg\w*"),
            ),
            (
                "billing.chargeback",
                _rx(r"charge[-\s]?backs?", r"dispute (?:the |this |a )?(?:charge|payment|transaction)s?"),
            ),
            ("billing.payment", _rx(r"payments?", r"paid", r"billing", r"billed", r"pay for")),
            (
                "billing.card",
                _rx(
                    r"card (?:was |got |is |has been |keeps (?:getting |being )?)?declined",
                    r"declined card",
                    r"(?:credit|debit) cards?",
                    r"card details",
                ),
            ),
            ("billing.vat", _rx(r"vat", r"gst", r"sales tax", r"tax (?:id|number|invoice)")),
            ("billing.receipt", _rx(r"receipts?")),
            ("billing.subscription", _rx(r"subscriptions?", r"subscribed?", r"renewal")),
            (
                "billing.plan_price",
                _rx(
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
            ("orders.order", _rx(r"order(?<!\bin\sorder)(?<!\bout\sof\sorder)s?", r"ordered")),
            ("orders.shipment", _rx(r"shipments?", r"shipped", r"shipping")),
            ("orders.delivery", _rx(r"deliver(?:y|ies|ed)", r"couriers?", r"parcels?")),
            (
                "orders.tracking",
                _rx(
                    r"tracking (?:number|code|id|link|info(?:rmation)?)",
                    r"track (?:my|the|our) (?:order|parcel|package|shipment|delivery)",
                ),
            ),
        ),
    ),
    (
        "bug_report",
        (
            ("bug_report.bug", _rx(r"bugs?", r"buggy", r"glitch(?:es|y)?")),
            ("bug_report.error_code", _rx(r"fb-\d+", r"error (?:code|message)s?")),
            (
                "bug_report.crash",
                _rx(r"crash(?:es|ed|ing)?", r"freez(?:e|es|ing)", r"froze", r"frozen"),
            ),
            ("bug_report.broken", _rx(r"broken")),
            (
                "bug_report.not_working",
                _rx(
                    rf"(?:does{_NT}|do{_NT}|is{_NT}|are{_NT}|not|no longer|stopped|won'?t|will not|never) work(?:s|ing)?",
                    rf"(?:does{_NT}|won'?t|will not) (?:load|save|open|respond)",
                ),
            ),
        ),
    ),
    (
        "technical",
        (
            ("technical.api", _rx(r"apis?", r"endpoints?", r"sdks?", r"graphql", r"oauth")),
            ("technical.webhook", _rx(r"webhooks?")),
            (
                "technical.integration",
                _rx(r"integrat(?:e|es|ed|ing|ion|ions)", r"zapier", r"plugins?", r"add-?ons?"),
            ),
            ("technical.sync", _rx(r"sync(?:s|ed|ing)?", r"synchroni[sz](?:e|es|ed|ing|ation)")),
            (
                "technical.http_error",
                _rx(
                    *_each("4|5", r"\d\d (?:error|status|response)s?"),
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
            ("how_to.how", _rx(r"how (?:do|can|should|would|could) (?:i|we|you)", r"how to")),
            (
                "how_to.where",
                _rx(r"where (?:can|do|should) (?:i|we)", r"where is the", r"where are the"),
            ),
            ("how_to.way", _rx(r"is there a way to", r"is it possible to")),
        ),
    ),
    (
        "complaint",
        (
            (
                "complaint.strong_words",
                _rx(
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
            ("complaint.complain", _rx(r"complain(?:t|ts|ing|ed)?")),
            (
                "complaint.poor_service",
                _rx(
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
# Escalation tables (legal is shared with priority)
# --------------------------------------------------------------------------------------------

_LEGAL = _rx(
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

_REFUND = _rx(
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

_HUMAN_TARGET = (
    r"(?:an? |the |your |some )?(?:real |actual |live |human |senior |proper )?"
    r"(?:human(?: being)?|person|people|manager|supervisor|representative|rep|agent|someone|"
    r"somebody|staff(?: member)?|employee|team member|boss)"
    r"(?! (?:in|on|at|from) (?:my|our)\b)"
)
_HUMAN = _rx(
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

_NEGATION_BEFORE = re.compile(
    r"(?:\b(?:do|does|did)(?:n'?t|\s+not)\s+(?:want|need|expect|require|ask\s+for|asked\s+for|care\s+about)"
    r"|\bnot\s+(?:asking|looking|interested|after|seeking)(?:\s+(?:for|in))?"
    r"|\bno\s+need\s+(?:for|to)"
    r"|\bnever\s+(?:asked|wanted|requested)(?:\s+for)?"
    r"|\bwithout)"
    r"(?:\s+(?:a|an|any|the|my|our|to|for|be|get|ever|really|even))*\s*$"
)
_CLAUSE_BREAK = re.compile(r"[.!?;:\n]")


def _negated(text: str, start: int) -> bool:
    window = text[max(0, start - 80) : start]
    breaks = list(_CLAUSE_BREAK.finditer(window))
    if breaks:
        window = window[breaks[-1].end() :]
    return _NEGATION_BEFORE.search(window) is not None


def _fires_unnegated(pattern: _Pattern, t: _Text) -> bool:
    return any(not _negated(t.text, m.start()) for m in pattern.finditer(t))


def _legal(t: _Text) -> bool:
    return _LEGAL.search(t) is not None


# --------------------------------------------------------------------------------------------
# Priority tables
# --------------------------------------------------------------------------------------------

_CRITICAL_RULES: tuple[tuple[str, _Pattern], ...] = (
    (
        "critical.outage",
        _rx(
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
        _rx(
            r"data loss",
            r"lost (?:all )?(?:of )?(?:my |our |the )?(?:data|records|contacts|files|history)",
            r"(?:data|records|contacts|files) (?:(?:was|were|has been|have been|got|is|are) )?"
            r"(?:deleted|wiped|erased|lost|gone|missing|disappeared|corrupted)",
            r"deleted all (?:of )?(?:my |our )?(?:data|records|contacts)",
        ),
    ),
    (
        "critical.security_breach",
        _rx(
            r"security (?:breach|incident|vulnerability)",
            r"data (?:breach|leak)",
            r"breach(?:ed)?",
            r"hacked",
            r"compromised",
            r"unauthori[sz]ed (?:access|logins?)",
            r"someone (?:else )?(?:has )?logged into (?:my|our) account",
        ),
    ),
    (
        "critical.all_users",
        _rx(
            r"all (?:of )?(?:our |my |the )?(?:users|customers|employees|staff|agents|accounts|team members)"
            rf"\b[^.!?\n]{{0,40}}?\b(?:{_CANT}|unable|affected|impacted|locked|down|broken|failing|not)",
            r"(?:affects|affecting|impacts|impacting) (?:all|every)",
            r"entire (?:team|company|organi[sz]ation)",
        ),
    ),
)

_HIGH_RULES: tuple[tuple[str, _Pattern], ...] = (
    (
        "high.cannot_log_in",
        _rx(
            rf"(?:{_CANT}|unable to|could{_NT}|not able to|no longer able to) "
            r"(?:log[-\s]?(?:in|on)|login|sign[-\s]?in|access (?:my|our|the) account|get in(?:to (?:my|our|the) account)?)",
            r"locked out",
            rf"login (?:fails|failed|failing|is failing|not working|does{_NT} work|is broken|broken)",
        ),
    ),
    (
        "high.payment_failed",
        _rx(
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

_THANKS = _rx(
    r"thanks",
    r"thank you",
    r"thx",
    r"many thanks",
    r"cheers",
    r"much appreciated",
    r"appreciate it",
)


@dataclass(frozen=True)
class Classification:
    category: TicketCategory
    priority: TicketPriority
    matched: list[str] = field(default_factory=list)


def classify(
    text: str, subject: str | None = None, *, sentiment: float | None = None
) -> Classification:
    """Category and priority of an inbound message by the tables in the module docstring.

    ``sentiment`` may be passed when the caller already scored the message (saves a VADER run);
    otherwise it is computed from subject + body.
    """
    scan = _prepare(text, subject)
    matched: list[str] = []
    category: TicketCategory = "general"
    for cat, rules in CATEGORY_RULES:
        fired = [name for name, pattern in rules if pattern.search(scan)]
        if fired and category == "general":
            category = cat
        matched.extend(fired)

    critical = [name for name, pattern in _CRITICAL_RULES if pattern.search(scan)]
    high = [name for name, pattern in _HIGH_RULES if pattern.search(scan)]
    if _legal(scan):
        high.append("high.legal_threat")
    if sentiment is None:
        sentiment = score_sentiment(f"{subject}\n{text}" if subject else (text or ""))
    if isinstance(sentiment, (int, float)) and sentiment < VERY_NEGATIVE:
        high.append("high.negative_sentiment")
    low: list[str] = []
    if category == "feature_request":
        low.append("low.feature_request")
    elif category == "how_to":
        low.append("low.how_to")
    elif category == "general" and _THANKS.search(scan):
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


# --------------------------------------------------------------------------------------------
# Escalation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EscalationReason:
    code: EscalationCode
    detail: str


_DETAILS: dict[str, str] = {
    "legal_threat": "The customer threatens legal action or a formal payment dispute.",
    "refund_or_pricing_negotiation": "The customer asks for money back or negotiates on price; staff must decide.",
    "human_requested": "The customer explicitly asks to deal with a member of staff.",
}


def escalation_reasons(
    text: str,
    *,
    sentiment: float,
    unanswered_inbound: int = 0,
    threshold: float = -0.6,
    repeat_limit: int = 3,
) -> list[EscalationReason]:
    """Why this message must go to a human (empty list: it need not). See the module docstring."""
    scan = _prepare(text)
    reasons: list[EscalationReason] = []
    if scan.text:
        if _legal(scan):
            reasons.append(EscalationReason("legal_threat", _DETAILS["legal_threat"]))
        if _fires_unnegated(_REFUND, scan):
            reasons.append(
                EscalationReason(
                    "refund_or_pricing_negotiation", _DETAILS["refund_or_pricing_negotiation"]
                )
            )
        if _fires_unnegated(_HUMAN, scan):
            reasons.append(EscalationReason("human_requested", _DETAILS["human_requested"]))
    if sentiment is not None and sentiment < threshold:
        reasons.append(
            EscalationReason(
                "negative_sentiment",
                f"Sentiment {sentiment:+.2f} is below the escalation threshold {threshold:+.2f}.",
            )
        )
    if unanswered_inbound >= repeat_limit:
        reasons.append(
            EscalationReason(
                "repeated_unanswered",
                f"{unanswered_inbound} inbound messages are unanswered (limit {repeat_limit}).",
            )
        )
    return reasons
