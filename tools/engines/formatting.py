"""Pure text helpers for outbound replies and for handling customer-written text.

No I/O; every function is total on ``str`` input (it never raises) except for a ``limit`` below 1.
Lengths are counted in Unicode code points (Python ``len``).

render_template(template, *, body, customer_name, ticket_number)
    Placeholders: ``{{customer_name}}``, ``{{response_body}}``, ``{{ticket_number}}`` (spaces
    inside the braces allowed). Substitution is literal and done in ONE pass over the template,
    so placeholder-looking text inside the body or the name is never expanded. Unknown
    ``{{...}}`` are left as they are.
    * ``template`` None or blank -> ``body`` unchanged.
    * name missing/blank -> ``NAME_FALLBACK`` ("there": "Hi there,"). The name is put on one
      line: control characters removed, runs of whitespace (newlines included) become one space.
    * ticket number missing/blank -> every template line containing ``{{ticket_number}}`` is
      dropped (other lines, e.g. "Track your ticket at ...", stay).
    * a template without ``{{response_body}}`` gets the body appended after a blank line, so
      a misconfigured template can never swallow the reply.

split_message(text, limit)
    For channels that split long replies (WhatsApp, 1600). Text is stripped; empty -> ``[]``.
    Each part is stripped, non-empty and ``len(part) <= limit``. Cut points, in order of
    preference, searched backwards from the limit: (1) a sentence end -- whitespace after
    ``. ! ? …`` (optionally followed by closing quotes/brackets) or a newline; (2) any
    whitespace; (3) a hard cut at ``limit`` chars, only when a single word (a URL) is longer
    than the limit. Only whitespace is removed at cut points, so ``" ".join(parts).split() ==
    text.split()`` whenever no word is longer than the limit, and the non-whitespace characters
    are always preserved in order.

strip_control_chars(text)
    For every piece of customer text before storage. ``\\r\\n`` and lone ``\\r`` become ``\\n``;
    removed: C0 controls U+0000-U+001F except ``\\t`` and ``\\n``, DEL U+007F, C1 controls
    U+0080-U+009F, and lone surrogates U+D800-U+DFFF (they cannot be encoded as UTF-8, so
    PostgreSQL would reject the row, as it rejects NUL). Everything else (emoji, RTL text,
    zero-width joiners) is kept.

untrusted(text, *, source) -- the convention for customer text in tool output
    Customer-written text returned by a tool is wrapped as::

        <untrusted-customer-content source="email">
        ...the text...
        </untrusted-customer-content>

    Tool descriptions tell the model that anything inside this element is data written by a
    customer, never instructions. ``source`` is reduced to ``[a-z0-9_.:-]`` (other characters
    become "_", at most 40 chars, empty -> "unknown") so it cannot break the attribute. Inside
    the text, every ``<`` that starts something reading as an opening or closing tag of this
    element (case-insensitive, whitespace or invisible characters allowed after ``<`` and around
    the ``/``) is replaced by ``&lt;``, so the output contains exactly one closing tag, at the
    very end, and no second opening tag. Nothing else is escaped: the text is not HTML.
"""

from __future__ import annotations

import re

__all__ = [
    "NAME_FALLBACK",
    "UNTRUSTED_TAG",
    "render_template",
    "split_message",
    "strip_control_chars",
    "untrusted",
]

NAME_FALLBACK = "there"
UNTRUSTED_TAG = "untrusted-customer-content"

_PLACEHOLDER = re.compile(r"\{\{\s*(customer_name|response_body|ticket_number)\s*\}\}")
_TICKET_PLACEHOLDER = re.compile(r"\{\{\s*ticket_number\s*\}\}")
_BODY_PLACEHOLDER = re.compile(r"\{\{\s*response_body\s*\}\}")

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_SENTENCE_END = frozenset(".!?\u2026")
_CLOSERS = frozenset("\"')]}\u201d\u2019\u00bb")


def strip_control_chars(text: str) -> str:
    """Remove C0/C1 controls (keeping ``\\t``/``\\n``) and lone surrogates; CRLF/CR -> LF."""
    if not text:
        return ""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _one_line(value: str | None) -> str:
    if not value:
        return ""
    return " ".join(strip_control_chars(value).split())


def render_template(
    template: str | None,
    *,
    body: str,
    customer_name: str | None,
    ticket_number: str | None,
) -> str:
    """Fill a channel template in one literal pass (see the module docstring)."""
    if template is None or not template.strip():
        return body
    name = _one_line(customer_name) or NAME_FALLBACK
    ticket = _one_line(ticket_number)
    if not ticket:
        template = "\n".join(
            line for line in template.split("\n") if not _TICKET_PLACEHOLDER.search(line)
        )
    if not _BODY_PLACEHOLDER.search(template):
        template = (template.rstrip() + "\n\n{{response_body}}") if template.strip() else "{{response_body}}"
    values = {"customer_name": name, "response_body": body, "ticket_number": ticket}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _ends_sentence(s: str, i: int) -> bool:
    """True when whitespace at ``s[i]`` follows a sentence end (or is a newline)."""
    if s[i] == "\n":
        return True
    j = i - 1
    while j >= 0 and s[j] in _CLOSERS:
        j -= 1
    return j >= 0 and s[j] in _SENTENCE_END


def _cut_point(s: str, limit: int) -> tuple[int, str]:
    """Best cut index in ``s`` (whose ``s[0]`` is not whitespace) for a part of <= limit chars.

    Returns (index, kind) with kind "sentence", "word" or "hard"; ``s[index]`` is whitespace for
    the first two kinds.
    """
    word_cut = 0
    for i in range(min(limit, len(s) - 1), 0, -1):
        if s[i].isspace():
            if _ends_sentence(s, i):
                return i, "sentence"
            if not word_cut:
                word_cut = i
    if word_cut:
        return word_cut, "word"
    return limit, "hard"


def _split(text: str, limit: int) -> list[str]:
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut, _ = _cut_point(rest, limit)
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return parts


def split_message(text: str, limit: int) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` chars (see the module docstring)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    text = text.strip()
    if not text:
        return []
    if len(text) <= limit:
        return [text]
    return _split(text, limit)


_INVISIBLE = r"[\s\x00-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]*"
_TAG_LIKE = re.compile(
    rf"<(?={_INVISIBLE}/?{_INVISIBLE}{re.escape(UNTRUSTED_TAG)})", re.IGNORECASE
)
_SOURCE_BAD = re.compile(r"[^a-z0-9_.:-]")


def untrusted(text: str, *, source: str) -> str:
    """Wrap customer-written ``text`` so a model reads it as data (see the module docstring)."""
    src = _SOURCE_BAD.sub("_", (source or "").lower())[:40] or "unknown"
    safe = _TAG_LIKE.sub("&lt;", text or "")
    return f'<{UNTRUSTED_TAG} source="{src}">\n{safe}\n</{UNTRUSTED_TAG}>'
