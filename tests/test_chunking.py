from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crm_mcp.tools.engines.chunking import chunk_text

SENTENCES = [
    "Open Settings and choose Billing.",
    "Invoices are created on the first day of each cycle.",
    "Refunds for annual plans are pro rata within fourteen days!",
    "Does the webhook retry?",
    "Yes, up to five times with exponential backoff.",
    "Agents with the Supervisor role can reassign tickets across teams.",
]


def _article(sections: int, sentences_per_section: int) -> str:
    parts = ["# Billing guide"]
    for s in range(sections):
        parts.append(f"## Section {s}")
        body = " ".join(SENTENCES[(s + k) % len(SENTENCES)] for k in range(sentences_per_section))
        parts.append(body)
    return "\n\n".join(parts)


def _is_contiguous_run(needle: list[str], haystack: list[str]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def _covers_in_order(words: list[str], chunks: list[str]) -> bool:
    """Every input word is matched, in order, by the words of the chunks in order."""
    stream = [w for c in chunks for w in c.split()]
    it = iter(stream)
    return all(any(w == s for s in it) for w in words)


def test_empty_and_blank() -> None:
    assert chunk_text("") == []
    assert chunk_text("   \n\n \t ") == []


def test_short_text_is_one_chunk_unchanged() -> None:
    text = "# Reset\n\nClick *Forgot password* on the sign-in page."
    assert chunk_text(text) == [text]


def test_long_article_splits_with_overlap_and_bounds() -> None:
    text = _article(sections=8, sentences_per_section=12)
    chunks = chunk_text(text, max_words=80, overlap_words=20)
    assert len(chunks) > 3
    words = text.split()
    for c in chunks:
        assert 0 < len(c.split()) <= 80
        assert _is_contiguous_run(c.split(), words)
    assert _covers_in_order(words, chunks)
    # Neighbouring chunks of one section share words (the overlap).
    overlapping = sum(
        1 for a, b in zip(chunks, chunks[1:]) if not b.lstrip().startswith("#") and a.split()[-1] in b.split()[:20]
    )
    assert overlapping >= 1


def test_heading_stays_with_its_section() -> None:
    text = _article(sections=6, sentences_per_section=7)
    chunks = chunk_text(text, max_words=60, overlap_words=10)
    for c in chunks:
        last_block = c.rstrip().split("\n\n")[-1]
        assert not last_block.lstrip().startswith("#"), f"chunk ends in a heading: {c!r}"
    # each section heading appears and is followed by its own text in the same chunk
    for s in range(6):
        holder = [c for c in chunks if f"## Section {s}" in c]
        assert holder
        assert holder[0].split(f"## Section {s}", 1)[1].strip()


def test_prefers_sentence_boundaries() -> None:
    text = " ".join(SENTENCES * 10)  # one long paragraph
    chunks = chunk_text(text, max_words=50, overlap_words=10)
    assert len(chunks) > 1
    for c in chunks:
        assert c.rstrip()[-1] in ".!?"


def test_never_splits_a_word_even_without_sentences() -> None:
    words = [f"w{i}x" for i in range(1000)]
    chunks = chunk_text(" ".join(words), max_words=100, overlap_words=25)
    for c in chunks:
        assert all(w in set(words) for w in c.split())
        assert len(c.split()) <= 100
    assert _covers_in_order(words, chunks)


def test_code_fence_is_kept_whole_when_it_fits() -> None:
    code = "```python\nclient = Client()\n\nclient.reset_password(user)\n```"
    text = "# API\n\nUse the client:\n\n" + code + "\n\n" + " ".join(SENTENCES * 8)
    chunks = chunk_text(text, max_words=60, overlap_words=10)
    assert any(code in c for c in chunks)


def test_deterministic() -> None:
    text = _article(sections=5, sentences_per_section=9)
    assert chunk_text(text, max_words=70) == chunk_text(text, max_words=70)


@pytest.mark.parametrize("max_words,overlap", [(0, 0), (10, 10), (10, -1)])
def test_rejects_bad_parameters(max_words: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk_text("some text", max_words=max_words, overlap_words=overlap)


_word = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Z", "C")), min_size=1, max_size=12)
_sentence = st.builds(
    lambda ws, end: " ".join(ws) + end, st.lists(_word, min_size=1, max_size=30), st.sampled_from(["", ".", "!", "?"])
)
_paragraph = st.builds(lambda ss: " ".join(ss), st.lists(_sentence, min_size=1, max_size=8))
_heading = st.builds(lambda level, ws: "#" * level + " " + " ".join(ws), st.integers(1, 4), st.lists(_word, min_size=1, max_size=6))
_block = st.one_of(_paragraph, _paragraph, _heading)
_markdown = st.builds(
    lambda blocks, seps: "".join(b + s for b, s in zip(blocks, seps)),
    st.lists(_block, min_size=0, max_size=25),
    st.lists(st.sampled_from(["\n\n", "\n", "\n\n\n", " \n\n"]), min_size=25, max_size=25),
)


@settings(max_examples=300, deadline=None)
@given(text=_markdown, max_words=st.integers(1, 120), overlap_frac=st.floats(0, 0.9))
def test_properties(text: str, max_words: int, overlap_frac: float) -> None:
    overlap = min(max_words - 1, int(max_words * overlap_frac))
    chunks = chunk_text(text, max_words=max_words, overlap_words=overlap)
    words = text.split()
    if not words:
        assert chunks == []
        return
    assert chunks
    for c in chunks:
        cw = c.split()
        assert cw, "empty chunk"
        assert len(cw) <= max_words
        assert _is_contiguous_run(cw, words)  # never mid-word, never reordered
    assert _covers_in_order(words, chunks)
    assert chunks[0].split()[0] == words[0] and chunks[-1].split()[-1] == words[-1]
    if len(words) <= max_words:
        assert len(chunks) == 1
    assert chunk_text(text, max_words=max_words, overlap_words=overlap) == chunks
