"""Knowledge base and product catalogue: hybrid search, article upserts, Markdown import, reindex.

Search fuses two rankings with reciprocal rank fusion (RRF, k=60): vector similarity over chunk
embeddings (HNSW, cosine) finds paraphrases; PostgreSQL full text (an OR of the query's
lexemes, ranked with ts_rank_cd) finds exact product terms and error codes. Articles are
searched per chunk and folded back to one hit per article. Relevance is reported honestly: a
hit is 'relevant' when its cosine similarity reaches the threshold or it is a strong full-text
match; otherwise it is labelled 'weak', and an answer with nothing relevant says so."""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import asyncpg
import frontmatter
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from crm_mcp.tools.engines.chunking import chunk_text
from crm_mcp.tools.plumbing.context import Crm
from crm_mcp.tools.engines.embeddings import Embedder, make_embedder
from crm_mcp.tools.vocabulary import KB_CATEGORIES, KbCategory
from crm_mcp.tools.plumbing.errors import UserError
from crm_mcp.tools.models import Out
from crm_mcp.tools.plumbing.params import ArticleId, Text
from crm_mcp.tools.plumbing.registry import crm_tool

log = logging.getLogger(__name__)

RRF_K = 60
CANDIDATES = 40
RELEVANT_COSINE = 0.35
STRONG_TEXT_RANK = 0.05


class EmbeddingSpaceMismatch(Exception):
    pass


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v)[:3])


async def _index_settings(crm: Crm, conn: asyncpg.Connection) -> None:
    await conn.execute(f"SET LOCAL hnsw.ef_search = {EF_SEARCH}")
    # Filtered HNSW scans stop early and return too few rows unless iterative scans are on.
    if crm.pgvector_iterative_scan:
        await conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")


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
                       setweight(to_tsvector('english', $8), 'A') || setweight(to_tsvector('english', $5), 'B'))""",
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

# The text arm ORs the query's lexemes (a question rarely contains every word of the answer,
# so an AND would miss), ranked with ts_rank_cd. On a large knowledge base common words would
# match nearly every passage and ranking them all costs hundreds of milliseconds, so there only
# the query's rare lexemes (in at most COMMON_FREQ of passages, from the planner's statistics)
# are ORed; with none rare, all of them are ANDed. Small tables keep the plain OR.
TEXT_SQL = """
WITH lex AS (
    SELECT lexeme FROM unnest(tsvector_to_array(to_tsvector('english', $1))) AS lexeme
), freq AS (
    SELECT e.lexeme, e.freq
    FROM pg_stats s, unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS e(lexeme, freq)
    WHERE s.schemaname = current_schema() AND s.tablename = 'kb_chunks' AND s.attname = 'tsv' AND e.lexeme IS NOT NULL
      AND (SELECT reltuples FROM pg_class WHERE oid = 'kb_chunks'::regclass) >= $5
), q AS (
    SELECT to_tsquery('english', coalesce(
               (SELECT string_agg(quote_literal(l.lexeme), ' | ') FROM lex l LEFT JOIN freq f USING (lexeme)
                WHERE coalesce(f.freq, 0) <= $4),
               (SELECT string_agg(quote_literal(lexeme), ' & ') FROM lex))) AS tsq
)
SELECT c.article_id, c.id AS chunk_id, ts_rank_cd(c.tsv, q.tsq, 32) AS rank
FROM kb_chunks c, q
WHERE q.tsq IS NOT NULL AND c.is_active AND c.tsv @@ q.tsq AND ($2::text IS NULL OR c.category = $2)
ORDER BY rank DESC, c.id
LIMIT $3
"""
COMMON_FREQ = 0.005
# HNSW candidate list per query: 200 keeps recall@10 >= 0.95 at 10k passages for ~1 ms more
# than 80 (bench/kb_latency.py measures both).
EF_SEARCH = 200
SELECTIVE_FROM_ROWS = 2000


@dataclass
class Hit:
    article_id: uuid.UUID
    chunk_id: int
    score: float = 0.0
    cosine: float | None = None
    text_rank: float | None = None
    vector_pos: int | None = None
    text_pos: int | None = None


async def hybrid_search(
    crm: Crm, query: str, *, category: str | None, limit: int, mode: Literal["hybrid", "vector", "text"] = "hybrid",
) -> list[Hit]:
    emb = get_embedder(crm)
    hits: dict[uuid.UUID, Hit] = {}
    qvec = await emb.embed_query(query) if mode != "text" else None
    async with crm.pool.acquire() as conn, conn.transaction():
        if qvec is not None:
            await _index_settings(crm, conn)
            vrows = await conn.fetch(VECTOR_SQL, qvec, category, CANDIDATES)
        else:
            vrows = []
        trows = (await conn.fetch(TEXT_SQL, query, category, CANDIDATES, COMMON_FREQ, SELECTIVE_FROM_ROWS)
                 if mode != "vector" else [])
    pos = 0
    for r in vrows:
        h = hits.get(r["article_id"])
        if h is None:
            pos += 1
            hits[r["article_id"]] = Hit(r["article_id"], r["chunk_id"], cosine=float(r["cosine"]), vector_pos=pos)
    pos = 0
    for r in trows:
        h = hits.get(r["article_id"])
        if h is None:
            pos += 1
            hits[r["article_id"]] = Hit(r["article_id"], r["chunk_id"], text_rank=float(r["rank"]), text_pos=pos)
        elif h.text_pos is None:
            pos += 1
            h.text_pos, h.text_rank = pos, float(r["rank"])
    for h in hits.values():
        h.score = sum(1.0 / (RRF_K + p) for p in (h.vector_pos, h.text_pos) if p is not None)
    ranked = sorted(hits.values(), key=lambda h: (-h.score, str(h.article_id)))
    return ranked[:limit]


class SearchKbInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: Text = Field(min_length=1, max_length=2000, description="The customer's question or the terms to look up, in natural language or exact (error codes work).")
    category: KbCategory | None = Field(default=None, description="Only articles of this category.")
    limit: int = Field(default=5, ge=1, le=20, description="Maximum number of articles (1-20).")
    min_score: float | None = Field(
        default=None, ge=0, le=1, description=f"Hide results below this similarity (0-1); 'relevant' starts at {RELEVANT_COSINE}. Default: all, labelled."
    )


class KbResult(Out):
    article_id: str
    title: str
    category: str
    snippet: str = Field(description="The best-matching passage of the article.")
    similarity: float | None = Field(description="Cosine similarity of the best passage to the query (0-1).")
    fused_score: float = Field(description="Reciprocal rank fusion score used for ordering.")
    matched_by: list[Literal["vector", "text"]]
    relevance: Literal["relevant", "weak"]


class SearchKbResult(Out):
    results: list[KbResult]
    nothing_relevant: bool = Field(description="True when no result reaches the relevance threshold: do not guess; escalate_to_human.")
    note: str | None = None


def _relevance(h: Hit) -> Literal["relevant", "weak"]:
    if h.cosine is not None and h.cosine >= RELEVANT_COSINE:
        return "relevant"
    if h.text_pos is not None and h.text_pos <= 3 and (h.text_rank or 0) >= STRONG_TEXT_RANK:
        return "relevant"
    return "weak"


def _snippet(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


@crm_tool(name="search_knowledge_base", title="Search knowledge base", toolset="knowledge", read_only=True, destructive=False, idempotent=True)
async def search_knowledge_base(crm: Crm, args: SearchKbInput) -> SearchKbResult:
    """Find help articles that answer a question: hybrid search over meaning (paraphrases) and exact
    terms (error codes such as FB-4291, product names). Returns title, best passage, category,
    scores and a relevance label. Answer only from results labelled 'relevant'; when
    nothing_relevant is true, do not guess: escalate_to_human. Products for sale: search_products."""
    query = args.query
    hits = await hybrid_search(crm, query, category=args.category, limit=args.limit)
    if args.min_score is not None:
        hits = [h for h in hits if (h.cosine or 0) >= args.min_score or _relevance(h) == "relevant" and h.cosine is None]
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
            similarity=None if h.cosine is None else round(h.cosine, 3), fused_score=round(h.score, 5),
            matched_by=[s for s, p in (("vector", h.vector_pos), ("text", h.text_pos)) if p is not None],  # type: ignore[misc]
            relevance=_relevance(h)))
    nothing = not any(r.relevance == "relevant" for r in results)
    note = "Nothing relevant was found; do not guess an answer. Escalate with escalate_to_human or ask the customer for details." if nothing else None
    return SearchKbResult(results=results, nothing_relevant=nothing, note=note)


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


class SearchProductsResult(Out):
    results: list[ProductResult]


PRODUCT_SQL = """
WITH v AS (
    SELECT id, 1 - (embedding <=> $1) AS cosine, row_number() OVER (ORDER BY embedding <=> $1) AS pos
    FROM products WHERE is_active AND embedding IS NOT NULL AND ($3::numeric IS NULL OR price <= $3)
    ORDER BY embedding <=> $1 LIMIT $5
), q AS (
    SELECT to_tsquery('english', string_agg(quote_literal(lexeme), ' | ')) AS tsq
    FROM unnest(tsvector_to_array(to_tsvector('english', $2))) AS lexeme
), t AS (
    SELECT p.id, row_number() OVER (ORDER BY ts_rank_cd(p.tsv, q.tsq, 32) DESC) AS pos
    FROM products p, q WHERE q.tsq IS NOT NULL AND p.is_active AND p.tsv @@ q.tsq AND ($3::numeric IS NULL OR p.price <= $3)
    LIMIT $5
)
SELECT p.*, v.cosine, v.pos AS vpos, t.pos AS tpos,
       coalesce(1.0 / ($6 + v.pos), 0) + coalesce(1.0 / ($6 + t.pos), 0) AS score
FROM products p LEFT JOIN v ON v.id = p.id LEFT JOIN t ON t.id = p.id
WHERE v.id IS NOT NULL OR t.id IS NOT NULL
ORDER BY score DESC, p.external_id
LIMIT $4
"""


@crm_tool(name="search_products", title="Search product catalogue", toolset="commerce", read_only=True, destructive=False, idempotent=True)
async def search_products(crm: Crm, args: SearchProductsInput) -> SearchProductsResult:
    """Find products in the catalogue (plans, add-ons, seat packs, services) by meaning and exact
    terms, optionally under a price. How-to questions: search_knowledge_base."""
    query = args.query
    qvec = await get_embedder(crm).embed_query(query)
    async with crm.pool.acquire() as conn, conn.transaction():
        await _index_settings(crm, conn)
        rows = await conn.fetch(PRODUCT_SQL, qvec, query, args.max_price, args.limit, CANDIDATES, RRF_K)
    return SearchProductsResult(results=[
        ProductResult(external_id=r["external_id"], title=r["title"], description=_snippet(r["description"], 300),
                      category=r["category"], price=str(r["price"]) if r["price"] is not None else None, currency=r["currency"],
                      similarity=None if r["cosine"] is None else round(float(r["cosine"]), 3),
                      matched_by=[s for s, p in (("vector", r["vpos"]), ("text", r["tpos"])) if p is not None])  # type: ignore[misc]
        for r in rows])
