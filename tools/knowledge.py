"""Knowledge base and product catalogue: hybrid search, article upserts, Markdown import, reindex.

Search looks a query up two ways: vector similarity over passage embeddings (HNSW, cosine) finds
paraphrases; BM25 over the passages' text (kb_tsv in migrations/0010: identifiers kept whole,
titles and headings weighted) finds exact product terms and error codes. The two are fused by
score, not rank (_fuse), and passages are folded back to one hit per article. Each hit is
labelled 'relevant' or 'weak' from its evidence (evidence(): similarity, the share of the query's
idf weight it holds, the share of query words the knowledge base has never seen) and its distance
to the best hit; an answer with nothing relevant says so. bench/kb_quality.py measures ranking
and labels on the dev set and on held-out sets."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import asyncpg
import frontmatter
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rapidfuzz import process
from rapidfuzz.distance import OSA
from tqdm import tqdm

from crm_mcp.tools.engines.chunking import chunk_text
from crm_mcp.tools.plumbing.context import Crm
from crm_mcp.tools.engines.embeddings import TOKENIZER_FILE, Embedder, make_embedder
from crm_mcp.tools.vocabulary import KB_CATEGORIES, KbCategory
from crm_mcp.tools.plumbing.errors import UserError
from crm_mcp.tools.models import Out
from crm_mcp.tools.plumbing.params import ArticleId, Text
from crm_mcp.tools.plumbing.registry import crm_tool

log = logging.getLogger(__name__)

CANDIDATES = 40
# Fusion and labels (bench/kb_quality.py measures them on the dev set and the held-out sets).
TEXT_SHARE = 0.15
RELEVANT_EVIDENCE = 0.2
RELEVANT_MARGIN = 0.1
COVERAGE_SHARE = 0.2
MIN_SIMILARITY = 0.25
UNSEEN_COMMON, UNSEEN_OTHER = 0.5, 1.0


class EmbeddingSpaceMismatch(Exception):
    pass


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v)[:3])


async def _index_settings(crm: Crm, conn: asyncpg.Connection) -> None:
    # One round trip. asyncpg prepares each statement once; after five runs PostgreSQL may
    # switch to a generic plan, which cannot see a tsquery parameter and scans every passage.
    sets = [f"SET LOCAL hnsw.ef_search = {EF_SEARCH}", "SET LOCAL plan_cache_mode = force_custom_plan"]
    # Filtered HNSW scans stop early and return too few rows unless iterative scans are on.
    if crm.pgvector_iterative_scan:
        sets.append("SET LOCAL hnsw.iterative_scan = relaxed_order")
    await conn.execute("; ".join(sets))


def embedder_key(e: Embedder) -> str:
    return f"{e.provider}/{e.model}"


def get_embedder(crm: Crm) -> Embedder:
    emb = crm.embedder
    if emb is None:
        s = crm.settings
        emb = make_embedder(s.embeddings, model=s.embedding_model, api_key=s.openai_api_key, base_url=s.openai_base_url)
        crm.embedder = emb
    return emb


async def check_embedding_space(crm: Crm) -> None:
    """Refuse to serve vectors made by another embedder than the configured one; note whether
    pgvector has iterative index scans (0.8+; external servers may run 0.7)."""
    emb = get_embedder(crm)
    async with crm.pool.acquire() as conn:
        version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        crm.pgvector_iterative_scan = _version_tuple(version or "0") >= (0, 8)
        row = await conn.fetchrow("SELECT provider, model, dimension FROM embedding_space")
        stored = await conn.fetchval("SELECT count(*) FROM kb_chunks WHERE embedding IS NOT NULL")
    if row is None:
        return
    if (row["provider"], row["model"], row["dimension"]) != (emb.provider, emb.model, emb.dimension):
        if stored == 0:
            return  # nothing embedded yet: the first import adopts the configured embedder
        raise EmbeddingSpaceMismatch(
            f"the knowledge base was embedded with {row['provider']}/{row['model']} ({row['dimension']} dims) but "
            f"{emb.provider}/{emb.model} ({emb.dimension} dims) is configured; run `crm-mcp kb reindex` to re-embed, "
            "or configure the original embedder (CRM_EMBEDDINGS, CRM_EMBEDDING_MODEL)"
        )


async def _adopt_space(conn: asyncpg.Connection, emb: Embedder, *, reindexing: bool = False) -> None:
    """Make the stored vector space the configured embedder's: on first use of an empty
    knowledge base, or when reindexing. Never silently over vectors of another space."""
    row = await conn.fetchrow("SELECT provider, model, dimension FROM embedding_space FOR UPDATE")
    if row is not None and (row["provider"], row["model"], row["dimension"]) == (emb.provider, emb.model, emb.dimension):
        return
    if not reindexing and await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM kb_chunks WHERE embedding IS NOT NULL) OR EXISTS (SELECT 1 FROM products WHERE embedding IS NOT NULL)"):
        raise EmbeddingSpaceMismatch(
            f"stored vectors were made with {row['provider']}/{row['model']}, not {emb.provider}/{emb.model}; "
            "run `crm-mcp kb reindex` first")
    if row is None or row["dimension"] != emb.dimension:
        d = int(emb.dimension)
        for table, index in (("kb_chunks", "kb_chunks_embedding_hnsw"), ("products", "products_embedding_hnsw")):
            await conn.execute(f"DROP INDEX IF EXISTS {index}")
            await conn.execute(f"ALTER TABLE {table} ALTER COLUMN embedding TYPE vector({d}) USING NULL")
            await conn.execute(f"UPDATE {table} SET embedded_with = NULL")
            await conn.execute(
                f"CREATE INDEX {index} ON {table} USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)")
    await conn.execute(
        "INSERT INTO embedding_space (provider, model, dimension) VALUES ($1, $2, $3) "
        "ON CONFLICT (singleton) DO UPDATE SET provider = $1, model = $2, dimension = $3, updated_at = now()",
        emb.provider, emb.model, emb.dimension)


# Articles -------------------------------------------------------------------------------------


@dataclass
class Article:
    title: str
    content: str
    category: str
    source_path: str | None = None
    tags: list[str] | None = None
    # What parsing had to decide for the file: (summary counter, one-line explanation).
    import_notes: list[tuple[str, str]] = field(default_factory=list)


def content_hash(a: Article) -> str:
    return hashlib.sha256(f"{a.title}\x1f{a.category}\x1f{a.content}".encode()).hexdigest()


async def upsert_article(crm: Crm, a: Article, *, article_id: uuid.UUID | None = None, is_active: bool = True) -> tuple[uuid.UUID, str, int]:
    """Create or update one article and its chunk embeddings in one transaction.
    Returns (id, 'created'|'updated'|'unchanged', chunk count)."""
    emb = get_embedder(crm)
    h = content_hash(a)
    async with crm.pool.acquire() as conn:
        if article_id is not None:
            existing = await conn.fetchrow("SELECT id, content_hash, is_active FROM knowledge_base WHERE id = $1", article_id)
            if existing is None:
                raise UserError(f"No knowledge base article {article_id}.", hint="Omit article_id to create one, or use search_knowledge_base to find it.")
        elif a.source_path:
            existing = await conn.fetchrow("SELECT id, content_hash, is_active FROM knowledge_base WHERE source_path = $1", a.source_path)
        else:
            existing = None
        if existing is not None and existing["content_hash"] == h and existing["is_active"] == is_active:
            stale = await conn.fetchval(
                "SELECT count(*) FROM kb_chunks WHERE article_id = $1 AND embedded_with IS DISTINCT FROM $2",
                existing["id"], embedder_key(emb))
            if not stale:
                n = await conn.fetchval("SELECT count(*) FROM kb_chunks WHERE article_id = $1", existing["id"])
                return existing["id"], "unchanged", n
    chunks = chunk_text(a.content) or [a.content]
    # Embedding is slow and needs no database: done before the transaction opens.
    vectors = await emb.embed_documents([f"{a.title}\n{c}" for c in chunks])
    async with crm.tx() as conn:
        await _adopt_space(conn, emb)
        if existing is None:
            aid = await conn.fetchval(
                """INSERT INTO knowledge_base (source_path, title, content, category, content_hash, is_active, metadata)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)
                   ON CONFLICT (source_path) DO UPDATE SET title = $2, content = $3, category = $4, content_hash = $5, is_active = $6
                   RETURNING id""",
                a.source_path, a.title, a.content, a.category, h, is_active, {"tags": a.tags or []})
            state = "created"
        else:
            aid = existing["id"]
            await conn.execute(
                "UPDATE knowledge_base SET title = $2, content = $3, category = $4, content_hash = $5, is_active = $6 WHERE id = $1",
                aid, a.title, a.content, a.category, h, is_active)
            state = "updated"
        await conn.execute("DELETE FROM kb_chunks WHERE article_id = $1", aid)
        await conn.executemany(
            """INSERT INTO kb_chunks (article_id, chunk_index, category, is_active, content, embedding, embedded_with, tsv)
               VALUES ($1, $2, $3, $4, $5, $6, $7,
                       kb_tsv($8, $5))""",
            [(aid, i, a.category, is_active, c, vectors[i], embedder_key(emb), a.title) for i, c in enumerate(chunks)])
    return aid, state, len(chunks)


def _front_matter(text: str, notes: list[tuple[str, str]]) -> tuple[dict[str, Any], str]:
    """YAML front matter (python-frontmatter): keys lower-cased; unreadable YAML is reported and
    the file is imported as if it had none."""
    try:
        post = frontmatter.loads(text)
    except Exception as exc:  # yaml's errors have no common public base beyond Exception
        notes.append(("front_matter_ignored", f"front matter is not valid YAML ({type(exc).__name__}); ignored it"))
        return {}, text
    return {str(k).lower(): v for k, v in post.metadata.items()}, post.content


def parse_markdown(path: Path, root: Path) -> Article:
    notes: list[tuple[str, str]] = []
    meta, text = _front_matter(path.read_text(encoding="utf-8"), notes)
    lines = text.strip().splitlines()
    title = None
    for i, line in enumerate(lines):
        if line.startswith("# "):
            title = line[2:].strip()
            lines = lines[:i] + lines[i + 1:]
            break
    rel = path.relative_to(root).as_posix()
    title = title or (str(meta["title"]).strip() if meta.get("title") else None) \
        or _title_from_name(path, notes, "no '# ' heading and no title in front matter")
    category = _category(path, root, str(meta["category"]) if meta.get("category") else None, notes)
    raw_tags = meta.get("tags") or []
    tags = [str(t).strip() for t in (raw_tags if isinstance(raw_tags, list) else str(raw_tags).split(",")) if str(t).strip()]
    return Article(title=title, content="\n".join(lines).strip(), category=category, source_path=rel, tags=tags,
                   import_notes=notes)


def parse_text(path: Path, root: Path) -> Article:
    """A plain text file is one article: the file name is its title, the folder its category."""
    notes: list[tuple[str, str]] = []
    title = _title_from_name(path, notes, "plain text has no heading")
    category = _category(path, root, None, notes)
    return Article(title=title, content=path.read_text(encoding="utf-8").strip(), category=category,
                   source_path=path.relative_to(root).as_posix(), import_notes=notes)


def _title_from_name(path: Path, notes: list[tuple[str, str]], why: str) -> str:
    stem = " ".join(path.stem.replace("-", " ").replace("_", " ").split()) or path.stem
    title = stem[:1].upper() + stem[1:]
    notes.append(("untitled", f"{why}; titled {title!r} from the file name"))
    return title


def _category(path: Path, root: Path, declared: str | None, notes: list[tuple[str, str]]) -> str:
    if declared:
        category, origin = declared, "front matter category"
    elif path.parent != root:
        category, origin = path.parent.name, "folder name"
    else:
        return "general"  # a file at the top of the folder: no category was asked for
    if category in KB_CATEGORIES:
        return category
    notes.append(("mapped_to_general",
                  f"{origin} {category!r} is not a knowledge base category ({', '.join(KB_CATEGORIES)}); imported as general"))
    return "general"


IMPORTABLE = {".md": parse_markdown, ".markdown": parse_markdown, ".txt": parse_text}


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


async def import_folder(
    crm: Crm, root: Any, *, source: str = "import", progress: bool = False, warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Import every Markdown (.md) and plain text (.txt) file under root; idempotent by path and
    content hash. Hidden files and folders (.git) are passed over. Whatever import had to decide
    or could not do is counted in the summary and, per file, passed to `warn`: a category mapped
    to general, a title taken from the file name, a file skipped and why."""
    root_path = Path(str(root))
    found = sorted(p for p in root_path.rglob("*") if p.is_file() and not _hidden(p, root_path))
    files = [p for p in found if p.suffix.lower() in IMPORTABLE]
    counts: dict[str, Any] = {"created": 0, "updated": 0, "unchanged": 0, "chunks": 0, "mapped_to_general": 0, "untitled": 0,
                              "front_matter_ignored": 0}
    skipped: list[dict[str, str]] = []

    def note(path: Path, message: str) -> None:
        if warn is not None:
            warn(f"{path.relative_to(root_path).as_posix()}: {message}")

    def skip(path: Path, reason: str) -> None:
        skipped.append({"path": path.relative_to(root_path).as_posix(), "reason": reason})
        note(path, f"skipped: {reason}")

    for f in found:
        if f.suffix.lower() not in IMPORTABLE:
            skip(f, f"not Markdown (.md) or plain text (.txt){f' but {f.suffix}' if f.suffix else ''}")
    for f in tqdm(files, desc="importing", unit="file", disable=not progress, file=sys.stderr):
        try:
            art = IMPORTABLE[f.suffix.lower()](f, root_path)
        except UnicodeDecodeError:
            skip(f, "not UTF-8 text")
            continue
        if not art.content.strip():
            skip(f, "no text besides the title")
            continue
        for key, message in art.import_notes:
            counts[key] += 1
            note(f, message)
        _, state, n = await upsert_article(crm, art)
        counts[state] += 1
        counts["chunks"] += n
    counts["files"] = counts["created"] + counts["updated"] + counts["unchanged"]
    counts["skipped"] = skipped
    return counts


async def reindex(crm: Crm, *, batch: int = 64, progress: bool = False) -> dict[str, int]:
    """Re-embed every chunk and product with the configured embedder. Resumable: rows already
    embedded with it are skipped, so an interrupted run continues where it stopped."""
    emb = get_embedder(crm)
    key = embedder_key(emb)
    async with crm.tx() as conn:
        await _adopt_space(conn, emb, reindexing=True)
    done = {"chunks": 0, "products": 0}
    total = 0
    async with crm.pool.acquire() as conn:
        total = await conn.fetchval("SELECT count(*) FROM kb_chunks WHERE embedded_with IS DISTINCT FROM $1", key)
    bar = tqdm(total=total, desc="re-embedding", unit="chunk", disable=not progress, file=sys.stderr)
    while True:
        async with crm.pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT c.id, k.title, c.content FROM kb_chunks c JOIN knowledge_base k ON k.id = c.article_id
                   WHERE c.embedded_with IS DISTINCT FROM $1 ORDER BY c.id LIMIT $2""", key, batch)
        if not rows:
            break
        vecs = await emb.embed_documents([f"{r['title']}\n{r['content']}" for r in rows])
        async with crm.tx() as conn:
            await conn.executemany("UPDATE kb_chunks SET embedding = $2, embedded_with = $3 WHERE id = $1",
                                   [(r["id"], vecs[i], key) for i, r in enumerate(rows)])
        done["chunks"] += len(rows)
        bar.update(len(rows))
    bar.close()
    done["products"] = await embed_products(crm)
    return done


async def embed_products(crm: Crm, batch: int = 64) -> int:
    emb = get_embedder(crm)
    key = embedder_key(emb)
    n = 0
    while True:
        async with crm.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, title, coalesce(category, '') AS category, description FROM products "
                "WHERE embedded_with IS DISTINCT FROM $1 ORDER BY id LIMIT $2", key, batch)
        if not rows:
            return n
        vecs = await emb.embed_documents([f"{r['title']}. {r['category']}. {r['description']}" for r in rows])
        async with crm.tx() as conn:
            await _adopt_space(conn, emb)
            await conn.executemany("UPDATE products SET embedding = $2, embedded_with = $3 WHERE id = $1",
                                   [(r["id"], vecs[i], key) for i, r in enumerate(rows)])
        n += len(rows)


# Search ---------------------------------------------------------------------------------------

VECTOR_SQL = """
SELECT c.article_id, c.id AS chunk_id, 1 - (c.embedding <=> $1) AS cosine
FROM kb_chunks c
WHERE c.is_active AND c.embedding IS NOT NULL AND ($2::text IS NULL OR c.category = $2)
ORDER BY c.embedding <=> $1
LIMIT $3
"""

# The query's lexemes (kb_query_lexemes: english stems and whole identifiers) with their
# document frequency, for BM25's idf, and whether each is a common English word ($3 holds the
# query's words that are, see _common_words). Frequent lexemes come from the planner's statistics on a
# large table (counting their rows would cost more than the search); the others are counted
# through the GIN index, which for rare lexemes is a handful of rows.
LEXEME_SQL = """
WITH lex AS (
    SELECT unnest(kb_query_lexemes($1)) AS lexeme
), rel AS (
    SELECT reltuples FROM pg_class WHERE oid = 'kb_chunks'::regclass
), n AS (
    SELECT CASE WHEN rel.reltuples >= $2 THEN rel.reltuples
                ELSE (SELECT count(*) FROM kb_chunks WHERE is_active) END::float8 AS n
    FROM rel
), mce AS (
    SELECT e.lexeme, e.freq
    FROM pg_stats s, unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS e(lexeme, freq)
    WHERE s.schemaname = current_schema() AND s.tablename = 'kb_chunks' AND s.attname = 'tsv' AND e.lexeme IS NOT NULL
      AND (SELECT reltuples FROM rel) >= $2
)
SELECT l.lexeme, n.n, l.lexeme = ANY(kb_query_lexemes($3)) AS common,
       coalesce(m.freq * n.n,
                (SELECT count(*) FROM kb_chunks c WHERE c.is_active AND c.tsv @@ kb_lexeme_query(l.lexeme)))::float8 AS df
FROM lex l CROSS JOIN n LEFT JOIN mce m USING (lexeme)
"""

# BM25 over the passages that match the candidate query ($3), scored on every query lexeme.
# Term frequency is weighted by where a lexeme stands (title $5, heading $6, body 1) and an
# identifier (kb_tsv stores it without position) counts $7 once. dl is the passage's number of
# distinct lexemes and avgdl its mean over the candidates. With $11 set, a query that matches
# $11 passages or more ranks nothing (the candidates are fetched up to that many, not all).
BM25_SQL = """
WITH q AS (
    SELECT * FROM unnest($1::text[], $2::float8[]) AS q(lexeme, idf)
), cand AS (
    SELECT c.id, c.article_id, c.tsv, length(c.tsv)::float8 AS dl
    FROM kb_chunks c
    WHERE c.is_active AND c.tsv @@ $3::tsquery AND ($4::text IS NULL OR c.category = $4)
    LIMIT $11
), avgdl AS (
    SELECT greatest(avg(dl), 1) AS a FROM cand
), tf AS (
    SELECT cand.id, cand.article_id, cand.dl, q.lexeme, q.idf,
           coalesce((SELECT sum(CASE w WHEN 'A' THEN $5 WHEN 'B' THEN $6 ELSE 1 END) FROM unnest(u.weights) AS w), $7) AS tf
    FROM cand CROSS JOIN LATERAL unnest(cand.tsv) AS u JOIN q ON q.lexeme = u.lexeme
)
SELECT tf.article_id, tf.id AS chunk_id,
       sum(tf.idf * tf.tf * ($8 + 1) / (tf.tf + $8 * (1 - $9 + $9 * tf.dl / avgdl.a)))::float8 AS score,
       array_agg(tf.lexeme) AS matched
FROM tf, avgdl
WHERE $11::int IS NULL OR (SELECT count(*) FROM cand) < $11
GROUP BY tf.article_id, tf.id
ORDER BY score DESC, tf.id
LIMIT $10
"""
COSINE_SQL = """
SELECT DISTINCT ON (c.article_id) c.article_id, c.id AS chunk_id, 1 - (c.embedding <=> $1) AS cosine
FROM kb_chunks c
WHERE c.article_id = ANY($2::uuid[]) AND c.is_active AND c.embedding IS NOT NULL
ORDER BY c.article_id, c.embedding <=> $1
"""
COMMON_FREQ = 0.005
# HNSW candidate list per query: 200 keeps recall@10 >= 0.95 at 10k passages for ~1 ms more
# than 80 (bench/kb_latency.py measures both).
EF_SEARCH = 200
SELECTIVE_FROM_ROWS = 2000
MAX_COMMON_MATCHES = 500
BM25_K1, BM25_B = 1.2, 0.75
TITLE_WEIGHT, HEADING_WEIGHT, IDENTIFIER_WEIGHT = 3.0, 2.0, 2.0


def _tsquery_literal(lexeme: str) -> str:
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


@dataclass
class Hit:
    article_id: uuid.UUID
    chunk_id: int
    score: float = 0.0
    cosine: float | None = None
    bm25: float | None = None
    coverage: float = 0.0  # share of the query's idf that the best BM25 passage contains
    evidence: float = 0.0  # what the label rests on (evidence())
    exact: bool = False  # its passage holds an identifier of the query (an error code, a snake_case name)
    relevant: bool = False
    vector_pos: int | None = None
    text_pos: int | None = None


@dataclass
class SearchRows:
    vector: list[asyncpg.Record] = field(default_factory=list)  # HNSW candidates, nearest first
    text: list[asyncpg.Record] = field(default_factory=list)  # BM25 candidates, best first
    cosine: list[asyncpg.Record] = field(default_factory=list)  # similarity of articles only BM25 found
    # idf of every query lexeme; one the knowledge base has never seen gets the largest idf.
    idf: dict[str, float] = field(default_factory=dict)
    unseen: Unseen = field(default_factory=lambda: Unseen())


@dataclass(frozen=True)
class Unseen:
    """The query's words that no passage contains, as shares of its words (numbers and
    identifiers are not counted: '12000 steps' or an unknown order number says nothing about
    the subject). Common English words ('wife', 'workshop') are split from the rest (product
    names, jargon): a long message is full of the first, a question about another product
    names the second."""
    common: float = 0.0
    other: float = 0.0


def _unseen(rows: list[asyncpg.Record]) -> Unseen:
    words = [r for r in rows if not r["lexeme"].startswith("#") and not any(ch.isdigit() for ch in r["lexeme"])]
    if not words:
        return Unseen()
    return Unseen(sum(r["df"] == 0 and r["common"] for r in words) / len(words),
                  sum(r["df"] == 0 and not r["common"] for r in words) / len(words))


def _common_words(query: str) -> str:
    """The query's words that are common English (the embedder's WordPiece vocabulary)."""
    english = _english_words()
    return " ".join(w for w in _WORD.findall(query.lower()) if w in english)


def _idf(df: float, n: float) -> float:
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


async def text_rows(
    conn: asyncpg.Connection, query: str, category: str | None, limit: int,
) -> tuple[list[asyncpg.Record], dict[str, float], Unseen]:
    """BM25 over passages, best first: (article_id, chunk_id, score, matched lexemes); the idf of
    each query lexeme; the query's words that no passage contains."""
    lex = await conn.fetch(LEXEME_SQL, query, SELECTIVE_FROM_ROWS, _common_words(query))
    if not lex:
        return [], {}, Unseen()
    n = max(lex[0]["n"], 1.0)
    idf = {r["lexeme"]: _idf(r["df"], n) for r in lex}
    found = [(r["lexeme"], r["df"]) for r in lex if r["df"] > 0]
    unseen = _unseen(lex)
    if not found:
        return [], idf, unseen
    lexemes = [l for l, _ in found]
    if n >= SELECTIVE_FROM_ROWS:
        # Ranking every passage that shares a common word costs hundreds of milliseconds on a
        # large table: only the query's rare lexemes pick candidates. With none, all of them are
        # ANDed, unless even that would match more than MAX_COMMON_MATCHES passages (a query of
        # common words only, such as "FB mean" where FB is in every article): BM25 over common
        # words says little, and the vector arm ranks alone.
        rare = [l for l, df in found if df <= COMMON_FREQ * n]
        cap = None
        if rare:
            tsq = " | ".join(map(_tsquery_literal, rare))
        elif n * math.prod(df / n for _, df in found) > MAX_COMMON_MATCHES:
            return [], idf, unseen
        else:
            # The estimate takes the words as independent; in real text they are not ("keeps
            # asking me to sign in"), and the AND can match thousands: BM25_SQL stops at the cap.
            tsq, cap = " & ".join(map(_tsquery_literal, lexemes)), MAX_COMMON_MATCHES
    else:
        tsq, cap = " | ".join(map(_tsquery_literal, lexemes)), None
    rows = await conn.fetch(BM25_SQL, lexemes, [idf[l] for l in lexemes], tsq, category, TITLE_WEIGHT, HEADING_WEIGHT,
                            IDENTIFIER_WEIGHT, BM25_K1, BM25_B, limit, cap)
    return rows, idf, unseen


def _sole(group: BaseExceptionGroup) -> BaseException:
    """The one failure inside (possibly nested) single-member groups, else the group itself."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def search_rows(
    crm: Crm, conn: asyncpg.Connection, query: str, qvec: np.ndarray | Callable[[], Awaitable[np.ndarray]] | None,
    category: str | None, *, text: bool = True,
) -> SearchRows:
    """The search's SQL in one transaction on conn: BM25 candidates, vector candidates (when
    qvec is given), and the similarity of the articles only BM25 found. qvec may be a function
    that computes the query's embedding: it is called once the transaction has begun and the
    text arm's SQL runs meanwhile, so the database and the model work at the same time.
    bench/kb_latency.py times this, with the vector ready, as the SQL floor."""
    out = SearchRows()
    async with conn.transaction():
        await _index_settings(crm, conn)
        if text:
            async def text_arm() -> None:
                out.text, out.idf, out.unseen = await text_rows(conn, query, category, CANDIDATES)

            if callable(qvec):
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(text_arm)
                        qvec = await qvec()
                except BaseExceptionGroup as group:
                    # Callers map a provider error or a statement timeout to what the user is
                    # told: raise the failure itself, not the task group's wrapper.
                    raise _sole(group) from None
            else:
                await text_arm()
        elif callable(qvec):
            qvec = await qvec()
        if qvec is not None:
            out.vector = await conn.fetch(VECTOR_SQL, qvec, category, CANDIDATES)
        if qvec is not None and out.text:
            # Articles found by their words alone still get a similarity: labels never rest on
            # a text match by itself.
            missing = list({r["article_id"] for r in out.text} - {r["article_id"] for r in out.vector})
            if missing:
                out.cosine = await conn.fetch(COSINE_SQL, qvec, missing)
    return out


# Typo tolerance ---------------------------------------------------------------------------------

# The query's words the knowledge base has never seen, each with the known words (kb_words,
# migrations/0013) of its first letter and about its length: the candidates for a correction.
CORRECTION_SQL = """
SELECT q.w AS word,
       ARRAY(SELECT k.word FROM kb_words k
             WHERE left(k.word, 1) = left(q.w, 1) AND length(k.word) BETWEEN length(q.w) - 2 AND length(q.w) + 2
             ORDER BY k.word LIMIT $2) AS candidates
FROM unnest($1::text[]) AS q(w)
WHERE NOT EXISTS (SELECT 1 FROM kb_words e WHERE e.word = q.w)
"""
# Shorter words are left alone: "cant" is one letter from "cart", and a four-letter typo is
# as often another real word.
CORRECT_FROM_LENGTH = 5
# Bounds on the work one query can cause: a message of made-up words must not fetch the
# vocabulary many times over.
MAX_CORRECTED_WORDS, MAX_CANDIDATES = 8, 5000
_WORD = re.compile(r"[^\W\d_]+")
_dictionary: frozenset[str] | None = None


def _english_words() -> frozenset[str]:
    """Whole words of the embedder's WordPiece vocabulary (30k common English words and names,
    shipped with the package): a word in it is never 'corrected' into a knowledge base word,
    so 'older' does not become 'order', nor 'netflix' anything."""
    global _dictionary
    if _dictionary is None:
        path = Path(__file__).resolve().parent / "engines" / "data" / TOKENIZER_FILE
        vocab = json.loads(path.read_text(encoding="utf-8"))["model"]["vocab"]
        _dictionary = frozenset(w for w in vocab if w.isalpha())
    return _dictionary


def _max_typos(word: str) -> int:
    return 1 if len(word) < 9 else 2


def _best_correction(word: str, candidates: list[str]) -> str | None:
    """The nearest candidate by edit distance (transpositions count once); a tie goes to the
    longer common prefix, then the alphabetically first, so the same query always reads the same."""
    # process.extract compares in C++: a large vocabulary's few thousand candidates cost well under a millisecond
    near = process.extract(word, candidates, scorer=OSA.distance, score_cutoff=_max_typos(word), limit=None)
    if not near:
        return None
    return min(near, key=lambda m: (m[1], -len(os.path.commonprefix([word, m[0]])), m[0]))[0]


async def correct_spelling(conn: asyncpg.Connection, query: str) -> tuple[str, dict[str, str]]:
    """The query with misspelt words replaced by the knowledge base word they are one or two
    edits from ('pasword' -> 'password', 'stava' -> 'strava'), and the replacements made. Only
    words the knowledge base has never seen and that are not common English are looked at, so
    a correct query costs one indexed lookup and is returned unchanged."""
    english = _english_words()
    words = list(dict.fromkeys(w for w in _WORD.findall(query.lower()) if CORRECT_FROM_LENGTH <= len(w) <= 30 and w not in english))
    if not words:
        return query, {}
    fixes: dict[str, str] = {}
    for r in await conn.fetch(CORRECTION_SQL, words[:MAX_CORRECTED_WORDS], MAX_CANDIDATES):
        fix = _best_correction(r["word"], r["candidates"])
        if fix is not None:
            fixes[r["word"]] = fix
    if not fixes:
        return query, {}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, fixes)) + r")\b", re.IGNORECASE)
    return pattern.sub(lambda m: fixes[m.group(1).lower()], query), fixes


def _fuse(hits: list[Hit], mode: str) -> None:
    """Order by similarity plus TEXT_SHARE of the BM25 score scaled to the query's best. Scores,
    not ranks: reciprocal rank fusion gave a text arm that had ranked every article the same
    vote as the vector arm and threw away how far ahead the nearest article was."""
    top = max((h.bm25 or 0.0 for h in hits), default=0.0) or 1.0
    for h in hits:
        if mode == "vector":
            h.score = h.cosine or 0.0
        elif mode == "text":
            h.score = h.bm25 or 0.0
        elif mode == "rrf":
            h.score = sum(1.0 / (60 + p) for p in (h.vector_pos, h.text_pos) if p is not None)
        else:
            h.score = (h.cosine or 0.0) + TEXT_SHARE * (h.bm25 or 0.0) / top


async def hybrid_search(
    crm: Crm, query: str, *, category: str | None, limit: int, mode: Literal["hybrid", "vector", "text", "rrf"] = "hybrid",
    fixes: dict[str, str] | None = None,
) -> list[Hit]:
    """Articles for a query, best first, each with its features and label; misspellings are
    corrected first (recorded in `fixes` when given). `mode` is for the benchmarks: 'vector' or
    'text' orders by one arm alone (labels unchanged), 'rrf' is the reciprocal rank fusion this
    search used before."""
    emb = get_embedder(crm)
    async with crm.pool.acquire() as conn:
        query, made = await correct_spelling(conn, query)
        # The embedding runs in a worker thread while the text arm's SQL runs on conn.
        rows = await search_rows(crm, conn, query, functools.partial(emb.embed_query, query, inline=False), category, text=True)
    if fixes is not None:
        fixes.update(made)
    hits: dict[uuid.UUID, Hit] = {}
    for r in rows.vector:  # nearest passage first: an article's first row is its best
        if r["article_id"] not in hits:
            hits[r["article_id"]] = Hit(r["article_id"], r["chunk_id"], cosine=float(r["cosine"]), vector_pos=len(hits) + 1)
    for r in rows.cosine:
        hits[r["article_id"]] = Hit(r["article_id"], r["chunk_id"], cosine=float(r["cosine"]))
    total_idf = sum(rows.idf.values()) or 1.0
    pos = 0
    for r in rows.text:
        h = hits.get(r["article_id"])
        if h is None:
            h = hits[r["article_id"]] = Hit(r["article_id"], r["chunk_id"])
        if h.text_pos is None:
            pos += 1
            h.text_pos, h.bm25 = pos, float(r["score"])
            h.coverage = sum(rows.idf.get(l, 0.0) for l in r["matched"]) / total_idf
            h.exact = any(l.startswith("#") for l in r["matched"])
            if h.cosine is None:
                h.chunk_id = r["chunk_id"]
    if mode == "vector":
        pool = [h for h in hits.values() if h.vector_pos is not None]
    elif mode == "text":
        pool = [h for h in hits.values() if h.text_pos is not None]
    else:
        pool = list(hits.values())
    _fuse(pool, mode)
    for h in pool:
        h.evidence = evidence(h.cosine, h.coverage, rows.unseen)
    best = max((h.evidence for h in pool), default=0.0)
    for h in pool:
        h.relevant = _is_relevant(h.evidence, best, h.cosine, h.exact)
    ranked = sorted(pool, key=lambda h: (-h.score, str(h.article_id)))
    return ranked[:limit]


class SearchKbInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: Text = Field(min_length=1, max_length=2000, description="The customer's question or the terms to look up, in natural language or exact (error codes work).")
    category: KbCategory | None = Field(default=None, description="Only articles of this category.")
    limit: int = Field(default=5, ge=1, le=20, description="Maximum number of articles (1-20).")
    min_score: float | None = Field(
        default=None, ge=0, le=1, description="Hide results below this similarity (0-1). Default: all, labelled."
    )


class KbResult(Out):
    article_id: str
    title: str
    category: str
    snippet: str = Field(description="The best-matching passage of the article.")
    similarity: float | None = Field(description="Cosine similarity of the best passage to the query (0-1).")
    fused_score: float = Field(description="Ordering score: similarity plus text match.")
    matched_by: list[Literal["vector", "text"]]
    relevance: Literal["relevant", "weak"]


class SearchKbResult(Out):
    results: list[KbResult]
    nothing_relevant: bool = Field(description="True when no result is relevant: do not guess; escalate_to_human.")
    note: str | None = None


def evidence(cosine: float | None, coverage: float, unseen: Unseen) -> float:
    """How strongly a result answers the query, for its label: the passage's similarity, plus
    COVERAGE_SHARE of the query's idf weight found in it, minus what the whole knowledge base has
    never seen of the query's words (a question about another product names things that are not
    there; a chatty message holds everyday words no article needs, which weigh less)."""
    return (cosine or 0.0) + COVERAGE_SHARE * coverage - UNSEEN_COMMON * unseen.common - UNSEEN_OTHER * unseen.other


def _is_relevant(ev: float, best: float, cosine: float | None, exact: bool) -> bool:
    """Relevant: the passage holds an identifier of the query (an error code or API name is
    rarely in an article by accident), or its evidence reaches the threshold with a similarity
    of its own (words in common alone never make a result relevant) and is within
    RELEVANT_MARGIN of the best result's (a neighbour far behind the best is rarely a second
    answer)."""
    if exact:
        return True
    return ev >= RELEVANT_EVIDENCE and (cosine or 0.0) >= MIN_SIMILARITY and ev >= best - RELEVANT_MARGIN


def _relevance(h: Hit) -> Literal["relevant", "weak"]:
    return "relevant" if h.relevant else "weak"


def _snippet(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


NOTHING_RELEVANT = "Nothing relevant was found; do not guess an answer. Escalate with escalate_to_human or ask the customer for details."


@crm_tool(name="search_knowledge_base", title="Search knowledge base", toolset="knowledge", read_only=True, destructive=False, idempotent=True)
async def search_knowledge_base(crm: Crm, args: SearchKbInput) -> SearchKbResult:
    """Find help articles that answer a question, by meaning (paraphrases) and exact terms (error
    codes such as FB-4291, product names). Returns title, best passage, category, scores and a
    label: 'relevant' likely answers it, 'weak' is related at best. Answer only from 'relevant';
    if nothing_relevant, do not guess: escalate_to_human. Products for sale: search_products."""
    fixes: dict[str, str] = {}
    hits = await hybrid_search(crm, args.query, category=args.category, limit=args.limit, fixes=fixes)
    if args.min_score is not None:
        hits = [h for h in hits if (h.cosine or 0.0) >= args.min_score]
    async with crm.pool.acquire() as conn:
        rows = {r["id"]: r for r in await conn.fetch(
            """SELECT k.id, k.title, k.category, c.content FROM knowledge_base k JOIN kb_chunks c ON c.article_id = k.id
               WHERE c.id = ANY($1::bigint[])""", [h.chunk_id for h in hits])}
    results = []
    for h in hits:
        r = rows.get(h.article_id)
        if r is None:
            continue
        results.append(KbResult(
            article_id=str(h.article_id), title=r["title"], category=r["category"], snippet=_snippet(r["content"]),
            similarity=None if h.cosine is None else round(h.cosine, 3), fused_score=round(h.score, 4),
            matched_by=[s for s, p in (("vector", h.vector_pos), ("text", h.text_pos)) if p is not None],  # type: ignore[misc]
            relevance=_relevance(h)))
    nothing = not any(r.relevance == "relevant" for r in results)
    notes = [NOTHING_RELEVANT] if nothing else []
    if fixes:
        notes.append("Searched with spelling corrected: " + ", ".join(f"{a} -> {b}" for a, b in sorted(fixes.items())) + ".")
    return SearchKbResult(results=results, nothing_relevant=nothing, note=" ".join(notes) or None)


class UpsertKbInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: Text = Field(min_length=1, max_length=500, description="Article title.")
    content: Text = Field(min_length=1, max_length=200_000, description="Article body in Markdown.")
    category: KbCategory = Field(default="general", description="Article category.")
    article_id: ArticleId | None = Field(default=None, description="UUID of the article to update; omit to create (or to update by slug).")
    slug: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9/_-]{0,199}$", description="Stable key such as 'billing/refunds'; updating by slug is idempotent.")
    is_active: bool = Field(default=True, description="False hides the article from search without deleting it.")


class UpsertKbResult(Out):
    article_id: str
    state: Literal["created", "updated", "unchanged"]
    chunks: int


@crm_tool(name="upsert_kb_article", title="Create or update KB article", toolset="knowledge", read_only=False, destructive=False, idempotent=True)
async def upsert_kb_article(crm: Crm, args: UpsertKbInput) -> UpsertKbResult:
    """Create or update a knowledge base article (staff); embeddings are recomputed in the same
    call and long articles are split into passages. The same content again changes nothing.
    Check search_knowledge_base first."""
    aid = args.article_id
    art = Article(title=args.title, content=args.content, category=args.category, source_path=args.slug)
    aid, state, n = await upsert_article(crm, art, article_id=aid, is_active=args.is_active)
    return UpsertKbResult(article_id=str(aid), state=state, chunks=n)  # type: ignore[arg-type]


# Products -------------------------------------------------------------------------------------


class SearchProductsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: Text = Field(min_length=1, max_length=1000, description="What the customer is looking for, in their words.")
    max_price: float | None = Field(default=None, ge=0, description="Only products at or below this price.")
    limit: int = Field(default=5, ge=1, le=20, description="Maximum number of products (1-20).")


class ProductResult(Out):
    external_id: str
    title: str
    description: str
    category: str | None
    price: str | None
    currency: str
    similarity: float | None
    matched_by: list[Literal["vector", "text"]]
    relevance: Literal["relevant", "weak"]


class SearchProductsResult(Out):
    results: list[ProductResult]
    nothing_relevant: bool
    note: str | None = None


# Nearest products by meaning and products sharing a query lexeme, each with its similarity, the
# share of the query's idf weight its text holds, whether it holds an identifier of the query, and
# the query's words (common English, $5, or not) that no product has: the same evidence as
# search_knowledge_base's labels (Unseen). A catalogue is small, so lexemes are counted exactly.
PRODUCT_SQL = """
WITH lex AS (
    SELECT unnest(kb_query_lexemes($2)) AS lexeme
), n AS (
    SELECT count(*)::float8 AS n FROM products WHERE is_active
), idf AS (
    SELECT l.lexeme, d.df, ln(1 + (n.n - d.df + 0.5) / (d.df + 0.5)) AS idf,
           l.lexeme !~ '^#|[[:digit:]]' AS word, l.lexeme = ANY(kb_query_lexemes($5)) AS common
    FROM lex l CROSS JOIN n,
         LATERAL (SELECT count(*)::float8 AS df FROM products p WHERE p.is_active AND p.tsv @@ kb_lexeme_query(l.lexeme)) d
), v AS (
    SELECT id, row_number() OVER (ORDER BY embedding <=> $1) AS pos
    FROM products WHERE is_active AND embedding IS NOT NULL AND ($3::numeric IS NULL OR price <= $3)
    ORDER BY embedding <=> $1 LIMIT $4
), t AS (
    SELECT p.id FROM products p
    WHERE p.is_active AND ($3::numeric IS NULL OR p.price <= $3)
      AND p.tsv @@ (SELECT string_agg(kb_lexeme_query(lexeme)::text, ' | ')::tsquery FROM idf WHERE df > 0)
    LIMIT $4
)
SELECT p.external_id, p.title, p.description, p.category, p.price, p.currency, v.pos AS vpos,
       t.id IS NOT NULL AS text_match, 1 - (p.embedding <=> $1) AS cosine,
       coalesce((SELECT sum(i.idf) FILTER (WHERE p.tsv @@ kb_lexeme_query(i.lexeme)) / nullif(sum(i.idf), 0) FROM idf i), 0) AS coverage,
       EXISTS (SELECT 1 FROM idf i WHERE i.lexeme LIKE '#%' AND p.tsv @@ kb_lexeme_query(i.lexeme)) AS exact,
       coalesce((SELECT count(*) FILTER (WHERE i.df = 0 AND i.common)::float8 / nullif(count(*), 0) FROM idf i WHERE i.word), 0) AS unseen_common,
       coalesce((SELECT count(*) FILTER (WHERE i.df = 0 AND NOT i.common)::float8 / nullif(count(*), 0) FROM idf i WHERE i.word), 0) AS unseen_other
FROM products p LEFT JOIN v ON v.id = p.id LEFT JOIN t ON t.id = p.id
WHERE v.id IS NOT NULL OR t.id IS NOT NULL
"""


@crm_tool(name="search_products", title="Search product catalogue", toolset="commerce", read_only=True, destructive=False, idempotent=True)
async def search_products(crm: Crm, args: SearchProductsInput) -> SearchProductsResult:
    """Find products in the catalogue (plans, add-ons, seat packs, services) by meaning and exact
    terms, optionally under a price; labels as search_knowledge_base. How-to: search_knowledge_base."""
    qvec = await get_embedder(crm).embed_query(args.query)
    async with crm.pool.acquire() as conn, conn.transaction():
        await _index_settings(crm, conn)
        rows = await conn.fetch(PRODUCT_SQL, qvec, args.query, args.max_price, CANDIDATES, _common_words(args.query))
    scored = []
    for r in rows:
        cosine = None if r["cosine"] is None else float(r["cosine"])
        coverage = float(r["coverage"])
        unseen = Unseen(float(r["unseen_common"]), float(r["unseen_other"]))
        scored.append(((cosine or 0.0) + TEXT_SHARE * coverage, evidence(cosine, coverage, unseen), r))
    scored.sort(key=lambda x: (-x[0], x[2]["external_id"]))
    best = max((ev for _, ev, _ in scored), default=0.0)
    results = [
        ProductResult(external_id=r["external_id"], title=r["title"], description=_snippet(r["description"], 300),
                      category=r["category"], price=str(r["price"]) if r["price"] is not None else None, currency=r["currency"],
                      similarity=None if r["cosine"] is None else round(float(r["cosine"]), 3),
                      matched_by=[s for s, m in (("vector", r["vpos"] is not None), ("text", r["text_match"])) if m],  # type: ignore[misc]
                      relevance="relevant" if _is_relevant(ev, best, r["cosine"], r["exact"]) else "weak")
        for _, ev, r in scored[: args.limit]]
    nothing = not any(r.relevance == "relevant" for r in results)
    return SearchProductsResult(results=results, nothing_relevant=nothing,
                                note="No product matches; do not offer one. Ask what the customer needs." if nothing else None)
