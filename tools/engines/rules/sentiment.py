"""Sentiment: VADER's compound score through a faster subclass that gives the same scores.

VADER runs on every inbound message. Stock VADER 3.3.2 takes ~10 ms on a 2 KB message, mostly
quadratic work (it re-lower-cases the whole word list for every word); ``WindowedVader`` removes
it and takes ~1.2 ms. It re-states parts of 3.3.2's code, so that version is pinned in
pyproject.toml and checked here at import. tests/test_rules.py checks its scores against stock
VADER and that the fast path is the one taken.
"""

from __future__ import annotations

import math
from importlib.metadata import version

VADER_VERSION = "3.3.2"


def check_vader_version(installed: str) -> None:
    """Refuse to run on a VADER whose internals ``WindowedVader`` was not written against."""
    if installed != VADER_VERSION:
        raise ImportError(
            f"crm-mcp needs vaderSentiment=={VADER_VERSION} (its sentiment scorer re-states that "
            f"version's internals) but {installed} is installed; "
            f"run: pip install 'vaderSentiment=={VADER_VERSION}'"
        )


check_vader_version(version("vaderSentiment"))

from vaderSentiment.vaderSentiment import (  # noqa: E402  (only once the version is known)
    BOOSTER_DICT,
    N_SCALAR,
    NEGATE,
    SentimentIntensityAnalyzer,
    SentiText,
)

SENTIMENT_MAX_CHARS = 5_000

_VADER_NEGATE = frozenset(NEGATE)


def _vader_negated(word_lower: str) -> bool:
    return word_lower in _VADER_NEGATE or "n't" in word_lower


class WindowedVader(SentimentIntensityAnalyzer):
    """Stock VADER scores, several times faster on a 2 KB message.

    Stock ``_negation_check`` and ``_special_idioms_check`` lower-case the *whole* word list on
    every call (O(n^2) per message) but only look at words i-3..i+2; we hand the idioms check
    that window with the index shifted, and the negation check is re-stated reading only the
    words it needs (with ``negated`` of one word as a set lookup). The emoji pass is skipped when
    the text holds no emoji character (it would copy the text unchanged, char by char); words not
    in the lexicon skip the call to ``sentiment_valence`` (which appends 0 for them); and
    ``_but_check`` assigns instead of pop/insert and skips zeros.
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


ANALYZER = WindowedVader()


def score_sentiment(text: str) -> float:
    """VADER compound score of ``text`` (first 5,000 chars), -1.0..1.0, rounded to 3 decimals.

    Empty or whitespace-only text is 0.0, on the project's scale (``vocabulary.SENTIMENT_MIN``
    .. ``SENTIMENT_MAX``).
    """
    if not text or text.isspace():
        return 0.0
    try:
        compound = float(ANALYZER.polarity_scores(text[:SENTIMENT_MAX_CHARS])["compound"])
    except Exception:  # pragma: no cover - VADER on odd input; sentiment must never block intake
        return 0.0
    if math.isnan(compound):  # pragma: no cover
        return 0.0
    return round(max(-1.0, min(1.0, compound)), 3)
