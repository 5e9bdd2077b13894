"""How the rule tables match text: word-bounded phrases over a lower-cased scan window, fast.

Conventions every table in ``tables.py`` relies on:

* Case-insensitive (patterns are lower-case, text is lower-cased); every alternative is anchored
  on word boundaries, so "shell" never matches "hell", "issue" never matches "sue".
* A space in a phrase matches any run of whitespace: "log  in" and "log\\nin" are "log in".
* Curly apostrophes are read as ``'``.
* Only the first ``SCAN_CHARS`` characters of subject + body are read.
* A negatable match is ignored when the same sentence, just before it, ends in a refusal cue
  (``fires_unnegated``; the cues are ``tables.NEGATION_BEFORE``).

``WordPattern`` finds exactly what the plain ``\\b(?:a|b|...)\\b`` regex (its ``source``) finds;
tests/test_rules.py checks this property on generated text.
"""

from __future__ import annotations

import functools
import re

SCAN_CHARS = 10_000

_WORD_CHAR = re.compile(r"\w")
_TOKEN = re.compile(r"\w+")
_ASCII_NON_WORD = {c: " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_")}
_QUANTIFIERS = frozenset("?*{")
_REGEX_META = frozenset("()[]{}.^$*+?|\\")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\uff07": "'"})


class ScanText:
    """A message prepared once for all rules: the lower-cased text, its words (``\\w+`` runs)
    and their first 3 and 4 characters, and (lazily) which alternatives of which patterns can
    match it (see ``WordPattern``)."""

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
        self._candidates: dict[WordPattern, list[re.Pattern[str]]] | None = None

    def candidates(self, pattern: WordPattern) -> list[re.Pattern[str]]:
        if self._candidates is None:
            found: dict[WordPattern, list[re.Pattern[str]]] = {}
            hits: list[tuple[WordPattern, re.Pattern[str]]] = list(_ALWAYS)
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
    e.g. ``-``), or when it ends a top-level alternative (``WordPattern`` appends ``\\b``) or a
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
_BY_WORD: dict[str, list[tuple[WordPattern, re.Pattern[str]]]] = {}
_BY_P4: dict[str, list[tuple[WordPattern, re.Pattern[str]]]] = {}
_BY_P3: dict[str, list[tuple[WordPattern, re.Pattern[str]]]] = {}
_BY_SUBSTRING: list[tuple[str, WordPattern, re.Pattern[str]]] = []
_ALWAYS: list[tuple[WordPattern, re.Pattern[str]]] = []


class WordPattern:
    """Word-bounded alternatives ``\\b(?:a|b|...)\\b`` over lower-cased text, built for speed.

    Plain ``re`` on a pattern that starts with ``\\b``, is IGNORECASE or opens with a group tries
    every position of the text, and 60 such patterns took ~2.5 ms per 2 KB message. Instead:

    1. Each alternative is compiled on its own, with leading groups distributed
       (``(?:a|b) x`` -> ``a x``, ``b x``) so it starts with a literal, which ``re`` finds
       with a fast prefix scan.
    2. What every match of an alternative must start with (``_leads``: a whole word, or a
       word prefix) is indexed at import; per message, ``ScanText.candidates`` intersects the
       message's words with that index, and only those alternatives run (typically a few
       percent of them).
    3. The leading word boundary is verified in Python on each candidate exactly as ``\\b``
       would (the characters on either side differ in being word characters); a rejected
       candidate resumes the search one character later, so no match is lost.
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

    def finditer(self, t: ScanText):
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

    def search(self, t: ScanText) -> re.Match[str] | None:
        return next(self.finditer(t), None)


def rx(*alternatives: str, suffix: str = "") -> WordPattern:
    """Word-bounded alternatives (see ``WordPattern``). A literal space means one or more
    whitespace (inside a character class write ``\\s``). Alternatives must be lower-case."""
    return WordPattern(alternatives, suffix)


def each(prefixes: str, rest: str) -> list[str]:
    """``each("a|b", " x")`` -> ``["a x", "b x"]``: leading choices as separate alternatives,
    so each alternative starts with a literal (see ``WordPattern``)."""
    return [p + rest for p in prefixes.split("|")]


def prepare(text: str | None, subject: str | None = None) -> ScanText:
    """The scan window of subject + body, as every rule reads it."""
    joined = f"{subject}\n{text or ''}" if subject else (text or "")
    return _prepare_joined(joined[:SCAN_CHARS])


@functools.lru_cache(maxsize=16)
def _prepare_joined(joined: str) -> ScanText:
    # Cached: intake classifies and checks escalation on the same "subject\nbody" string.
    return ScanText(joined.translate(_APOSTROPHES).lower())


_CLAUSE_BREAK = re.compile(r"[.!?;:\n]")


def _negated(text: str, start: int, negation_before: re.Pattern[str]) -> bool:
    window = text[max(0, start - 80) : start]
    breaks = list(_CLAUSE_BREAK.finditer(window))
    if breaks:
        window = window[breaks[-1].end() :]
    return negation_before.search(window) is not None


def fires_unnegated(pattern: WordPattern, t: ScanText, negation_before: re.Pattern[str]) -> bool:
    """Whether ``pattern`` has a match not cancelled by ``negation_before`` just before it in the
    same sentence (text after the last ``. ! ? ; :`` or newline, at most 80 characters back)."""
    return any(not _negated(t.text, m.start(), negation_before) for m in pattern.finditer(t))
