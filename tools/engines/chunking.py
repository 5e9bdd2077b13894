"""Split Markdown knowledge-base articles into overlapping chunks for embedding.

Boundaries, in order of preference: blocks (paragraphs, headings, fenced code
blocks), then sentences and lines, then words (a chunk never splits a word).
A heading stays with the section it introduces: it is never the last thing in
a chunk when the text after it would start the next one.  Consecutive chunks
of the same section overlap by up to ``overlap_words`` words, taken as whole
trailing sentences/blocks when they fit.  Words are whitespace-separated
tokens; every chunk's words are a contiguous run of the input's words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["chunk_text"]

_HEADING = re.compile(r"^\s{0,3}#{1,6}(\s|$)")
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")


@dataclass(frozen=True)
class _Unit:
    text: str
    words: int
    block: int  # index of the block it came from
    heading: bool


def _blocks(text: str) -> list[tuple[str, bool]]:
    """(block text, is_heading) in order: blank-line paragraphs, heading lines, code fences."""
    blocks: list[tuple[str, bool]] = []
    current: list[str] = []
    in_fence = False

    def flush() -> None:
        if current:
            block = "\n".join(current).strip()
            if block.split():
                blocks.append((block, False))
            current.clear()

    for line in text.splitlines():
        if in_fence:
            current.append(line)
            if _FENCE.match(line):
                in_fence = False
                flush()
            continue
        if _FENCE.match(line):
            flush()
            current.append(line)
            in_fence = True
        elif _HEADING.match(line):
            flush()
            if line.split():
                blocks.append((line.strip(), True))
        elif not line.strip():
            flush()
        else:
            current.append(line)
    flush()
    return blocks


def _units(text: str, max_words: int) -> list[_Unit]:
    units: list[_Unit] = []
    for index, (block, heading) in enumerate(_blocks(text)):
        n = len(block.split())
        if n <= max_words:
            units.append(_Unit(block, n, index, heading))
            continue
        for piece in _SENTENCE_BREAK.split(block):
            words = piece.split()
            if not words:
                continue
            if len(words) <= max_words:
                units.append(_Unit(piece.strip(), len(words), index, heading))
            else:  # a run-on sentence: fixed word windows
                for start in range(0, len(words), max_words):
                    window = words[start : start + max_words]
                    units.append(_Unit(" ".join(window), len(window), index, heading))
    return units


def _join(units: list[_Unit]) -> str:
    parts: list[str] = []
    for i, unit in enumerate(units):
        if i:
            parts.append(" " if unit.block == units[i - 1].block and not unit.heading else "\n\n")
        parts.append(unit.text)
    return "".join(parts)


def _tail(units: list[_Unit], budget: int) -> list[_Unit]:
    """The overlap carried into the next chunk: trailing whole units within budget,
    or else the last ``budget`` words of the last unit."""
    if budget <= 0 or not units:
        return []
    tail: list[_Unit] = []
    total = 0
    for unit in reversed(units):
        if unit.heading or total + unit.words > budget:
            break
        tail.insert(0, unit)
        total += unit.words
    if tail:
        return tail
    last = units[-1]
    if last.heading:
        return []
    words = last.text.split()[-budget:]
    return [_Unit(" ".join(words), len(words), last.block, False)]


def chunk_text(text: str, *, max_words: int = 180, overlap_words: int = 40) -> list[str]:
    """Split ``text`` (Markdown) into chunks of at most ``max_words`` words.

    Short text gives one chunk, empty or blank text gives ``[]``.  Pure and
    deterministic.
    """
    if max_words < 1:
        raise ValueError("max_words must be at least 1")
    if not 0 <= overlap_words < max_words:
        raise ValueError("overlap_words must be >= 0 and smaller than max_words")
    units = _units(text, max_words)
    if not units:
        return []
    if sum(u.words for u in units) <= max_words:
        return [_join(units)]

    chunks: list[list[_Unit]] = []
    current: list[_Unit] = []
    size = 0
    fresh = 0  # units in `current` that are not overlap from the previous chunk
    i = 0
    while i < len(units):
        unit = units[i]
        # A heading opens a new chunk unless it and the start of its section fit here.
        need = unit.words
        if unit.heading and i + 1 < len(units) and not units[i + 1].heading:
            need += units[i + 1].words
        if size + need <= max_words or (fresh == 0 and size + unit.words <= max_words):
            current.append(unit)
            size += unit.words
            fresh += 1
            i += 1
            continue
        if fresh == 0:
            # Only overlap so far and the next unit does not fit beside it:
            # drop overlap from the front until it does.
            while current and size + unit.words > max_words:
                size -= current.pop(0).words
            continue
        chunks.append(current)
        # No overlap across a section boundary: a heading starts clean.
        carry = [] if unit.heading else _tail(current, min(overlap_words, max_words - unit.words))
        current = list(carry)
        size = sum(u.words for u in current)
        fresh = 0
    if fresh:
        chunks.append(current)
    return [_join(c) for c in chunks]
