"""Knowledge-base search latency and HNSW recall at 10k and 100k articles (not a test).

    python -m bench.kb_latency [--sizes 10000 100000] [--json out.json]

What it does
------------
1. Starts its own embedded PostgreSQL in a temporary directory (or, when CRM_DATABASE_URL is
   set, creates a scratch database there), applies the migrations, and removes everything it
   started at the end.
2. Builds a synthetic support knowledge base (a forms-and-workflows SaaS: products, features,
   integrations, plans, platforms, error codes like FB-4291, actions and symptoms) from
   templates. Categories are spread over the 8 KB categories with 'security' at ~1% of rows.

   HONEST CAVEAT about the vectors: embedding 100k article texts with the local embedder would
   take ~50 minutes here, so only a pool of ~1,500 distinct generated articles is embedded for
   real (all-MiniLM-L6-v2, the configured local embedder). Every other article's vector is a
   normalised random convex combination of 2-3 pool vectors of the same topic (same feature,
   else same category) plus small Gaussian noise. Its text is generated from the same topic, so
   text and vector agree roughly, but the vector is not the embedding of that text. Full-text
   search runs over the real generated texts. The nearest-neighbour cosine statistics of real
   vs derived vectors are printed so the resemblance can be judged.
3. Bulk-loads with COPY into a staging table, fills knowledge_base and kb_chunks (one chunk per
   article; tsv computed in SQL exactly as upsert_article does), builds the HNSW and GIN
   indexes after loading, ANALYZEs.
4. Measures per size:
   (a) search_knowledge_base through the real server over stdio (mcp.Client), p50/p95, query
       embedding included;
   (b) the same SQL (VECTOR_SQL + TEXT_SQL + the result-row fetch, same SET LOCALs) directly
       with precomputed query vectors: the floor; vector and text parts also timed alone;
   (c) HNSW recall@10 vs exact search (index scans disabled) at ef_search 40/80/200/400
       (tools.knowledge.EF_SEARCH is what the tool uses), plus recall@10 with the 1% category filter;
   (d) filtered search (category 'security', ~1% of rows) through the tool.
   Queries are paraphrased support questions (bench/kb_eval.jsonl plus templated ones),
   embedded for real.
5. Prints a table with the targets and, when a target is missed (or with --investigate),
   EXPLAIN ANALYZE of the text query and the same timings for the old plain-OR text query.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import numpy as np

if __package__ in (None, ""):  # python bench/kb_latency.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgvector.asyncpg import register_vector  # noqa: E402

from bench.common import log, machine, percentile, with_db  # noqa: E402

from crm_mcp.tools.engines.embeddings import LocalEmbedder  # noqa: E402
from crm_mcp.tools.knowledge import CANDIDATES, COMMON_FREQ, SELECTIVE_FROM_ROWS, TEXT_SQL, VECTOR_SQL  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EMBEDDED_WITH = "local/all-MiniLM-L6-v2"
from crm_mcp.tools.knowledge import EF_SEARCH as TOOL_EF_SEARCH  # noqa: E402
TARGETS = {"tool_p95_ms": {10_000: 10.0, 100_000: 15.0}, "recall_at_10": 0.95, "filtered_p95_ms": 20.0}
FILTER_CATEGORY = "security"
ROWS_SQL = """SELECT k.id, k.title, k.category, c.content FROM knowledge_base k JOIN kb_chunks c ON c.article_id = k.id
               WHERE c.id = ANY($1::bigint[])"""

# --------------------------------------------------------------------------------------------
# Vocabulary and generators
# --------------------------------------------------------------------------------------------

FEATURES: dict[str, list[str]] = {
    "feature": [
        "conditional logic", "file upload fields", "form templates", "scheduled flows", "multi-page forms",
        "calculated fields", "custom thank-you pages", "partial submissions", "response limits", "hidden fields",
        "signature fields", "payment fields", "form analytics", "custom themes", "offline mode in the mobile app",
        "PDF generation", "approval steps", "email notifications", "response editing", "form versioning",
    ],
    "integrations": [
        "the Slack integration", "Google Sheets sync", "the Salesforce connector", "the HubSpot integration",
        "Zapier", "Make scenarios", "Microsoft Teams alerts", "Airtable sync", "Mailchimp audiences",
        "Stripe payments", "outgoing webhooks", "the REST API", "the Notion integration", "Dropbox uploads",
        "Google Drive uploads", "Excel Online sync", "the Pipedrive connector", "the Zendesk integration",
        "Twilio SMS", "the Intercom integration",
    ],
    "account": [
        "password reset", "two-step sign-in", "profile settings", "team members", "seats", "roles and permissions",
        "workspace ownership", "changing your email address", "account deletion", "member invitations",
        "notification preferences", "language and time zone settings",
    ],
    "billing": [
        "invoices", "VAT numbers", "refunds", "plan upgrades", "plan downgrades", "annual billing",
        "payment methods", "failed card payments", "seat charges", "discount codes", "nonprofit pricing",
        "subscription cancellation", "receipts", "billing currency", "purchase orders",
    ],
    "security": [
        "single sign-on with SAML", "SCIM provisioning", "the audit log", "IP allowlists", "encryption at rest",
        "session timeouts", "enforced two-factor authentication", "API key rotation", "data retention policies",
        "security questionnaires",
    ],
    "general": [
        "getting started", "plan limits", "service status", "system requirements", "browser support",
        "keyboard shortcuts", "release notes", "accessibility", "data residency", "support hours",
    ],
    "faq": [
        "embedding forms on a website", "the free trial", "student discounts", "monthly response quotas",
        "custom domains", "GDPR requests", "the mobile app", "exporting responses to CSV",
        "importing from Google Forms", "importing from Typeform",
    ],
}
# troubleshooting articles are about any feature
FEATURES["troubleshooting"] = FEATURES["feature"] + FEATURES["integrations"] + FEATURES["account"][:6]

CATEGORY_SHARE = {  # of all rows; security is the ~1% category for the filtered test
    "troubleshooting": 0.30, "feature": 0.19, "integrations": 0.16, "account": 0.10,
    "billing": 0.10, "general": 0.08, "faq": 0.06, "security": 0.01,
}

ACTIONS = ["set up", "configure", "turn off", "troubleshoot", "reset", "export", "connect", "migrate",
           "customise", "limit", "test", "audit", "update", "remove", "share"]
SYMPTOMS = ["stops syncing", "shows a blank page", "times out", "sends duplicate notifications",
            "loses data after saving", "is very slow", "does not trigger", "keeps asking me to sign in",
            "rejects valid input", "shows the wrong time zone", "fails with a permission error",
            "returns an empty response", "is missing fields", "cannot be saved"]
PLATFORMS = ["Chrome", "Firefox", "Safari", "Edge", "the iOS app", "the Android app", "the desktop app"]
PLANS = ["Free", "Starter", "Professional", "Business", "Enterprise"]
SECTIONS = ["Settings → Integrations", "Settings → Members", "Settings → Billing", "Settings → Security",
            "Form → Settings", "Flows → Editor", "Responses → Export", "Profile → Privacy", "Workspace → Limits"]
BUTTONS = ["Save", "Connect", "Reconnect", "Test", "Publish", "Apply", "Confirm", "Download", "Enable"]
CAUSES = ["the access token expired", "the connected account lost its permissions",
          "a field mapping points to a deleted column", "the rate limit of {n} requests per minute was reached",
          "the uploaded file is larger than {n} MB", "the workspace reached its monthly response quota",
          "the browser blocks third-party cookies", "a required field was renamed after the flow was built",
          "the time zone of the workspace differs from the account's", "the SAML certificate expired",
          "the webhook endpoint answered with status 5xx", "the card issuer declined the charge"]
UNITS = ["responses", "flows", "runs", "uploads", "seats", "API calls"]


def _code(rng: random.Random) -> str:
    return f"FB-{rng.randint(1000, 3999)}"


def make_article(rng: random.Random, category: str, feature: str) -> tuple[str, str]:
    a, s, p, plan = rng.choice(ACTIONS), rng.choice(SYMPTOMS), rng.choice(PLATFORMS), rng.choice(PLANS)
    code = _code(rng)
    n = rng.choice([5, 10, 20, 25, 50, 100, 500, 1000])
    F = feature[0].upper() + feature[1:]
    if category == "troubleshooting":
        title = rng.choice([f"{F} {s}", f"Error {code}: {feature} {s}", f"Why {feature} {s} in {p}",
                            f"Fixing {feature} when it {s}", f"{F} {s} after an update ({code})"])
    else:
        title = rng.choice([f"How to {a} {feature}", f"{F}: {a} it step by step", f"{F} on the {plan} plan",
                            f"Using {feature} in {p}", f"{F} explained", f"Can I {a} {feature}?",
                            f"{F}: limits and options"])
    cause = rng.choice(CAUSES).format(n=n)
    pool = [
        f"This article explains how to {a} {feature} in Flowbase and what to check when it {s}.",
        f"Go to **{rng.choice(SECTIONS)}** and open {feature}.",
        f"Click **{rng.choice(BUTTONS)}**; changes take effect within {rng.choice([1, 2, 5, 15])} minutes.",
        f"Only Owners and Admins can {a} {feature}; Editors see the setting greyed out.",
        f"On the {plan} plan, {feature} is limited to {n} {rng.choice(UNITS)} per month.",
        f"If you see error {code}, the usual cause is that {cause}.",
        f"In {p}, clear the cache and sign in again if {feature} {rng.choice(SYMPTOMS)}.",
        f"Reconnect {feature} with a shared account so flows do not stop when someone leaves the workspace.",
        f"Contact support with the request ID shown under the error message if the problem persists after {rng.choice([1, 24, 48])} hours.",
        f"{F} is available on {rng.choice(PLANS)} and higher; trials include it for {rng.choice([7, 14, 30])} days.",
        f"Existing responses are kept when you {rng.choice(ACTIONS)} {feature}, but running flows are paused.",
        f"You can {rng.choice(ACTIONS)} {feature} from the API with a key that has the {rng.choice(['forms:write', 'flows:admin', 'responses:read'])} scope.",
        f"Administrators get an email when {feature} {rng.choice(SYMPTOMS)} more than {rng.choice([3, 5, 10])} times in an hour.",
        f"Note: {feature} behaves differently in {rng.choice(PLATFORMS)}, where {cause}.",
    ]
    rng.shuffle(pool)
    body = " ".join(pool[: rng.randint(6, 9)])
    steps = "\n".join(f"{i}. {t}" for i, t in enumerate(rng.sample(pool[9:], 3), 1))
    return title, f"{body}\n\n## Steps\n\n{steps}"


def make_queries(rng: random.Random, n: int, category: str | None = None) -> list[str]:
    """Paraphrased support questions; with category, about that category's features."""
    out: list[str] = []
    seen: set[str] = set()
    if category is None:
        p = REPO / "bench" / "kb_eval.jsonl"
        if p.exists():
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    q = json.loads(line)["question"]
                    if q not in seen:
                        seen.add(q)
                        out.append(q)
    feats = FEATURES[category] if category else [f for c in CATEGORY_SHARE for f in FEATURES[c]]
    while len(out) < n:
        f, a, s, p, plan = rng.choice(feats), rng.choice(ACTIONS), rng.choice(SYMPTOMS), rng.choice(PLATFORMS), rng.choice(PLANS)
        f = f.removeprefix("the ")
        q = rng.choice([
            f"{f} {s} since yesterday, what do i do",
            f"getting {_code(rng)} when i try to {a} {f}",
            f"can i {a} {f} on the {plan.lower()} plan?",
            f"how do i {a} {f} from my phone",
            f"where are the settings for {f}",
            f"our {f} {s} in {p}, any idea why?",
            f"is there a way to {a} {f} for the whole team",
            f"{f} not working",
            f"hi, we need to {a} {f} before our audit next week, how?",
            f"why {f} {s}??",
        ])
        if q not in seen:
            seen.add(q)
            out.append(q)
    return out[:n]


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


class Dataset:
    """Articles (title, content, category, feature) and their vectors, generated lazily up to n."""

    def __init__(self, seed: int, pool_size: int, max_n: int) -> None:
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.pool_size = pool_size
        self.max_n = max_n
        self.titles: list[str] = []
        self.contents: list[str] = []
        self.categories: list[str] = []
        self.features: list[str] = []
        self.vectors = np.empty((0, 384), dtype=np.float32)
        self.pool_vecs: np.ndarray | None = None
        self.by_feature: dict[str, list[int]] = {}
        self.by_category: dict[str, list[int]] = {}
        self.cat_plan = self._category_plan()

    def _category_plan(self) -> list[str]:
        """Exact category per row: the pool is stratified (every category has enough real
        anchors) and the remaining rows are drawn so that, at the largest size, every category
        has its target share (security ~1%). At smaller sizes the shares are close."""
        rng = self.rng
        cats = list(CATEGORY_SHARE)
        sec_pool = max(20, int(self.pool_size * 0.04))
        pool = [FILTER_CATEGORY] * sec_pool
        rest_cats = [c for c in cats if c != FILTER_CATEGORY]
        w = np.array([CATEGORY_SHARE[c] for c in rest_cats])
        w = w / w.sum()
        for i, c in enumerate(rest_cats):
            pool += [c] * int(round(w[i] * (self.pool_size - sec_pool)))
        pool = (pool + [rest_cats[0]] * self.pool_size)[: self.pool_size]
        rng.shuffle(pool)
        plan = list(pool)
        # The rest: security is added whenever the running share drops below 1%.
        sec = plan.count(FILTER_CATEGORY)
        while len(plan) < self.max_n:
            if sec < 0.01 * (len(plan) + 1):
                plan.append(FILTER_CATEGORY)
                sec += 1
            else:
                plan.append(rng.choices(rest_cats, weights=w)[0])
        return plan

    def generate_texts(self, n: int) -> None:
        while len(self.titles) < n:
            c = self.cat_plan[len(self.titles)]
            f = self.rng.choice(FEATURES[c])
            t, body = make_article(self.rng, c, f)
            self.titles.append(t)
            self.contents.append(body)
            self.categories.append(c)
            self.features.append(f)

    def embed_pool(self, emb: LocalEmbedder, cache: str | None = None) -> tuple[float, bool]:
        """Embed the pool for real (as upsert_article does: title, newline, chunk). Returns
        (seconds, whether the vectors came from the cache file)."""
        self.generate_texts(self.pool_size)
        t0 = time.perf_counter()
        texts = [f"{self.titles[i]}\n{self.contents[i]}" for i in range(self.pool_size)]
        key = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()
        cached = False
        if cache and Path(cache).exists():
            z = np.load(cache)
            if str(z["key"]) == key:
                self.pool_vecs, cached = z["vecs"], True
        if not cached:
            self.pool_vecs = emb.encode_sync(texts)
            if cache:
                np.savez(cache, key=key, vecs=self.pool_vecs)
        dt = time.perf_counter() - t0
        self.vectors = self.pool_vecs.copy()
        for i in range(self.pool_size):
            self.by_feature.setdefault(self.features[i], []).append(i)
            self.by_category.setdefault(self.categories[i], []).append(i)
        return dt, cached

    def derive_vectors(self, n: int, noise: float) -> None:
        """Vectors for rows pool_size..n-1: normalised random convex combination of 2-3 pool
        vectors of the same feature (else category), plus Gaussian noise of norm ~noise."""
        self.generate_texts(n)
        start = len(self.vectors)
        if start >= n:
            return
        assert self.pool_vecs is not None
        out = np.empty((n - start, 384), dtype=np.float32)
        sigma = noise / np.sqrt(384)
        for j, i in enumerate(range(start, n)):
            anchors = self.by_feature.get(self.features[i], [])
            if len(anchors) < 3:
                anchors = self.by_category[self.categories[i]]
            k = 2 if self.rng.random() < 0.5 else 3
            idx = self.rng.sample(anchors, k)
            w = self.np_rng.dirichlet(np.ones(k))
            v = w @ self.pool_vecs[idx] + self.np_rng.normal(0, sigma, 384)
            out[j] = v / np.linalg.norm(v)
        self.vectors = np.vstack([self.vectors, out])


def nn_cosine_stats(vecs: np.ndarray, sample: np.ndarray, exclude_self: bool = True) -> tuple[float, float]:
    sims = sample @ vecs.T
    if exclude_self:
        sims[sims > 0.99999] = -1
    best = sims.max(axis=1)
    return float(np.median(best)), float(np.percentile(best, 10))


# --------------------------------------------------------------------------------------------
# Database
# --------------------------------------------------------------------------------------------


async def _connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await register_vector(conn)
    return conn


async def load_rows(dsn: str, ds: Dataset, lo: int, hi: int) -> dict[str, float]:
    """Append rows lo..hi-1: COPY into a staging table, then INSERT ... SELECT into
    knowledge_base and kb_chunks with the tsv computed as upsert_article does. Indexes on
    kb_chunks (HNSW, GIN) are dropped first and rebuilt after."""
    timings: dict[str, float] = {}
    conn = await _connect(dsn)
    try:
        await conn.execute("DROP INDEX IF EXISTS kb_chunks_embedding_hnsw")
        await conn.execute("DROP INDEX IF EXISTS kb_chunks_tsv_idx")
        await conn.execute("DROP TABLE IF EXISTS bench_stage")
        await conn.execute("CREATE UNLOGGED TABLE bench_stage (n integer, id uuid, title text, content text, "
                           "category text, content_hash text, embedding vector(384))")
        t0 = time.perf_counter()
        records = []
        for i in range(lo, hi):
            t, c, cat = ds.titles[i], ds.contents[i], ds.categories[i]
            h = hashlib.sha256(f"{t}\x1f{cat}\x1f{c}".encode()).hexdigest()
            records.append((i, uuid.UUID(int=ds.rng.getrandbits(128), version=4), t, c, cat, h, ds.vectors[i]))
        await conn.copy_records_to_table("bench_stage", records=records)
        timings["copy_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        await conn.execute("""INSERT INTO knowledge_base (id, source_path, title, content, category, content_hash, source)
                              SELECT id, 'bench/' || n, title, content, category, content_hash, 'bench' FROM bench_stage""")
        timings["insert_articles_s"] = time.perf_counter() - t0
        await conn.execute("ANALYZE bench_stage")
    finally:
        await conn.close()
    # tsvector computation is CPU bound: split over two connections (2 cores).
    t0 = time.perf_counter()
    parts = 2

    async def fill(part: int) -> None:
        c = await _connect(dsn)
        try:
            await c.execute(
                """INSERT INTO kb_chunks (article_id, chunk_index, category, is_active, content, embedding, embedded_with, tsv)
                   SELECT id, 0, category, true, content, embedding, $1,
                          setweight(to_tsvector('english', title), 'A') || setweight(to_tsvector('english', content), 'B')
                   FROM bench_stage WHERE n % $2 = $3 ORDER BY n""", EMBEDDED_WITH, parts, part)
        finally:
            await c.close()

    async with anyio.create_task_group() as tg:
        for p in range(parts):
            tg.start_soon(fill, p)
    timings["insert_chunks_tsv_s"] = time.perf_counter() - t0
    conn = await _connect(dsn)
    try:
        await conn.execute("DROP TABLE bench_stage")
        t0 = time.perf_counter()
        await conn.execute("SET maintenance_work_mem = '1GB'")
        await conn.execute("SET max_parallel_maintenance_workers = 2")
        await conn.execute("CREATE INDEX kb_chunks_tsv_idx ON kb_chunks USING gin (tsv)")
        timings["gin_build_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # Same definition as migrations/0002_knowledge_commerce.sql.
        await conn.execute("CREATE INDEX kb_chunks_embedding_hnsw ON kb_chunks USING hnsw (embedding vector_cosine_ops) "
                           "WITH (m = 16, ef_construction = 64)")
        timings["hnsw_build_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        await conn.execute("VACUUM ANALYZE knowledge_base")
        await conn.execute("VACUUM ANALYZE kb_chunks")
        timings["vacuum_analyze_s"] = time.perf_counter() - t0
    finally:
        await conn.close()
    return timings


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------






def summary(xs: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(xs, 50), 2), "p95_ms": round(percentile(xs, 95), 2), "mean_ms": round(statistics.fmean(xs), 2),
            "max_ms": round(max(xs), 2), "n": len(xs)}


async def measure_tool(dsn: str, queries: list[str], fqueries: list[str], warmup: int, budget_s: float) -> dict[str, Any]:
    from mcp import Client, StdioServerParameters

    env = {k: v for k, v in os.environ.items() if not k.startswith("CRM_")}
    env.update({"CRM_DATABASE_URL": dsn, "CRM_LOG_LEVEL": "WARNING", "CRM_DEFAULT_REGION": "US"})
    params = StdioServerParameters(command=sys.executable, args=["-m", "crm_mcp.server.cli", "serve"], env=env, cwd=str(REPO))
    out: dict[str, Any] = {}
    async with Client(params, read_timeout_seconds=120) as client:  # type: ignore[arg-type]
        async def call(q: str, category: str | None) -> tuple[float, dict[str, Any]]:
            args: dict[str, Any] = {"query": q}
            if category:
                args["category"] = category
            t0 = time.perf_counter()
            r = await client.call_tool("search_knowledge_base", args)
            dt = (time.perf_counter() - t0) * 1000
            if r.is_error:
                raise RuntimeError("search_knowledge_base failed: " + " ".join(getattr(c, "text", "") for c in r.content))
            return dt, r.structured_content or {}

        wb = Budget(budget_s / 6, min_n=3)
        for i, q in enumerate(queries[:warmup]):
            if wb.over(i):
                break
            await call(q, None)
        for q in fqueries[: max(5, warmup // 4)]:
            await call(q, FILTER_CATEGORY)
        lat, nres, relevant = [], [], 0
        b = Budget(budget_s * 2 / 3)
        for i, q in enumerate(queries):
            if b.over(i):
                break
            dt, res = await call(q, None)
            lat.append(dt)
            nres.append(len(res.get("results", [])))
            relevant += not res.get("nothing_relevant", True)
        flat, fn, fwrong = [], [], 0
        b = Budget(budget_s / 6)
        for i, q in enumerate(fqueries):
            if b.over(i):
                break
            dt, res = await call(q, FILTER_CATEGORY)
            flat.append(dt)
            fn.append(len(res.get("results", [])))
            fwrong += sum(r["category"] != FILTER_CATEGORY for r in res.get("results", []))
        out["unfiltered"] = summary(lat) | {"mean_results": round(statistics.fmean(nres), 2),
                                            "share_with_relevant": round(relevant / len(lat), 3)}
        out["filtered"] = summary(flat) | {"mean_results": round(statistics.fmean(fn), 2), "wrong_category": fwrong}
    return out


async def sql_hybrid(conn: asyncpg.Connection, q: str, v: np.ndarray, category: str | None, text_sql: str = TEXT_SQL) -> tuple[float, float, float]:
    """The tool's hybrid_search SQL with a precomputed vector, then the row fetch. Returns
    (total, vector part, text part) in ms."""
    t0 = time.perf_counter()
    async with conn.transaction():
        await conn.execute(f"SET LOCAL hnsw.ef_search = {TOOL_EF_SEARCH}")
        await conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        t1 = time.perf_counter()
        vrows = await conn.fetch(VECTOR_SQL, v, category, CANDIDATES)
        t2 = time.perf_counter()
        extra = () if text_sql is not TEXT_SQL else (COMMON_FREQ, SELECTIVE_FROM_ROWS)
        trows = await conn.fetch(text_sql, q, category, CANDIDATES, *extra)
        t3 = time.perf_counter()
    ids: dict[Any, int] = {}
    for r in list(vrows) + list(trows):
        ids.setdefault(r["article_id"], r["chunk_id"])
    await conn.fetch(ROWS_SQL, list(ids.values())[:5])
    t4 = time.perf_counter()
    return (t4 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000


async def measure_sql(dsn: str, queries: list[str], qv: np.ndarray, fqueries: list[str], fqv: np.ndarray, warmup: int,
                      budget_s: float) -> dict[str, Any]:
    conn = await _connect(dsn)
    try:
        wb = Budget(budget_s / 6, min_n=3)
        for i in range(min(warmup, len(queries))):
            if wb.over(i):
                break
            await sql_hybrid(conn, queries[i], qv[i], None)
        for i in range(min(5, len(fqueries))):
            await sql_hybrid(conn, fqueries[i], fqv[i], FILTER_CATEGORY)
        tot, vec, txt = [], [], []
        b = Budget(budget_s * 2 / 3)
        for i, q in enumerate(queries):
            if b.over(i):
                break
            a, v, c = await sql_hybrid(conn, q, qv[i], None)
            tot.append(a), vec.append(v), txt.append(c)
        ftot, fvec, ftxt = [], [], []
        b = Budget(budget_s / 6)
        for i, q in enumerate(fqueries):
            if b.over(i):
                break
            a, v, c = await sql_hybrid(conn, q, fqv[i], FILTER_CATEGORY)
            ftot.append(a), fvec.append(v), ftxt.append(c)
        # How many chunks the OR-of-lexemes text query matches (and must rank) per query.
        matched = [await conn.fetchval(
            """WITH q AS (SELECT to_tsquery('english', string_agg(quote_literal(lexeme), ' | ')) AS tsq
                          FROM unnest(tsvector_to_array(to_tsvector('english', $1))) AS lexeme)
               SELECT count(*) FROM kb_chunks c, q WHERE q.tsq IS NOT NULL AND c.is_active AND c.tsv @@ q.tsq""", q)
            for q in queries[:10]]
        n = await conn.fetchval("SELECT count(*) FROM kb_chunks")
        return {"unfiltered": summary(tot), "vector_part": summary(vec), "text_part": summary(txt),
                "filtered": summary(ftot), "filtered_vector_part": summary(fvec), "filtered_text_part": summary(ftxt),
                "text_matched_rows_median": int(statistics.median(matched)),
                "text_matched_share_median": round(statistics.median(matched) / n, 3)}
    finally:
        await conn.close()


async def measure_recall(dsn: str, qv: np.ndarray, fqv: np.ndarray, efs: list[int], ds: Dataset) -> dict[str, Any]:
    """Recall@10 of the HNSW scan against exact search. Exact top-10s are computed in numpy
    over the very vectors loaded (a sequential scan per query takes ~2 s at 100k rows on this
    machine); a few are checked against PostgreSQL's own exact search (index scans off)."""
    conn = await _connect(dsn)
    sql = VECTOR_SQL
    try:
        rows = await conn.fetch("SELECT c.id, substr(k.source_path, 7)::int AS n FROM kb_chunks c JOIN knowledge_base k ON k.id = c.article_id")
        n_to_chunk = np.empty(len(rows), dtype=np.int64)
        for r in rows:
            n_to_chunk[r["n"]] = r["id"]
        vecs = ds.vectors[: len(rows)]
        cats = np.array(ds.categories[: len(rows)])
        fmask = cats == FILTER_CATEGORY

        def top10(v: np.ndarray, mask: np.ndarray | None) -> set[int]:
            sims = vecs @ v
            if mask is not None:
                sims = np.where(mask, sims, -np.inf)
            return {int(n_to_chunk[i]) for i in np.argsort(-sims, kind="stable")[:10]}

        exact = [top10(v, None) for v in qv]
        fexact = [top10(v, fmask) for v in fqv]
        agree = []
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_indexscan = off")
            await conn.execute("SET LOCAL enable_bitmapscan = off")
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql.replace("$2::text", "NULL::text").replace("$2", "NULL")
                                                            .replace("$3", "10").replace("$1", "$1::vector"), qv[0]))
            assert "hnsw" not in plan.lower(), plan
            for i in range(3):
                got = {r["chunk_id"] for r in await conn.fetch(sql, qv[i], None, 10)}
                agree.append(len(got & exact[i]) / 10)
        await conn.close()
        out: dict[str, Any] = {"exact_numpy_vs_sql_agreement": round(statistics.fmean(agree), 3)}
        chunk_to_n = {int(c): n for n, c in enumerate(n_to_chunk)}

        # Each setting on a fresh connection: after 5 executions of a prepared statement the
        # planner may switch to a generic plan, and for VECTOR_SQL that is an exact seq scan +
        # sort at these sizes (it would report a perfect but fake recall).
        async def run(ef: int, limit: int, category: str | None, vs: np.ndarray, truth: list[set[int]],
                      extra: str = "") -> dict[str, Any]:
            c = await _connect(dsn)
            rec, rec_tol, lat = [], [], []
            try:
                async with c.transaction():
                    await c.execute(f"SET LOCAL hnsw.ef_search = {ef}")
                    await c.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
                    if extra:
                        await c.execute(extra)
                    for i, v in enumerate(vs):
                        t0 = time.perf_counter()
                        got = [r["chunk_id"] for r in await c.fetch(sql, v, category, limit)]
                        lat.append((time.perf_counter() - t0) * 1000)
                        rec.append(len(set(got) & truth[i]) / max(1, len(truth[i])))
                        # near-tie tolerant: returned top-10 items at least as close as the true
                        # 10th neighbour minus 0.005 cosine
                        kth = min(float(vecs[chunk_to_n[t]] @ v) for t in truth[i])
                        rec_tol.append(sum(float(vecs[chunk_to_n[g]] @ v) >= kth - 0.005 for g in got[:10]) / 10)
            finally:
                await c.close()
            return {"recall_at_10": round(statistics.fmean(rec), 4), "min": round(min(rec), 2),
                    "recall_at_10_tie_tolerant": round(statistics.fmean(rec_tol), 4), "p95_ms": round(percentile(lat, 95), 2)}

        for ef in efs:
            out[f"ef{ef}"] = await run(ef, 10, None, qv, exact)
        # The tool asks for 40 candidates: is the true top 10 among them?
        out[f"ef{TOOL_EF_SEARCH}_in_{CANDIDATES}"] = await run(TOOL_EF_SEARCH, CANDIDATES, None, qv, exact)
        # pgvector bounds an HNSW scan's memory by work_mem x hnsw.scan_mem_multiplier.
        out[f"ef{max(efs)}_work_mem_64MB"] = await run(max(efs), 10, None, qv, exact, "SET LOCAL work_mem = '64MB'")
        out[f"filtered_ef{TOOL_EF_SEARCH}"] = await run(TOOL_EF_SEARCH, 10, FILTER_CATEGORY, fqv, fexact)
        return out
    finally:
        if not conn.is_closed():
            await conn.close()


# The text arm as it was before tools/knowledge.py adopted rare-lexeme matching: an OR of every
# lexeme, which on a large table matches ~92% of passages and ranks them all. Kept as the
# comparison ("before") in the text-query investigation.
TEXT_PLAIN_OR_SQL = """
WITH q AS (
    SELECT to_tsquery('english', string_agg(quote_literal(lexeme), ' | ')) AS tsq
    FROM unnest(tsvector_to_array(to_tsvector('english', $1))) AS lexeme
)
SELECT c.article_id, c.id AS chunk_id, ts_rank_cd(c.tsv, q.tsq, 32) AS rank
FROM kb_chunks c, q
WHERE q.tsq IS NOT NULL AND c.is_active AND c.tsv @@ q.tsq AND ($2::text IS NULL OR c.category = $2)
ORDER BY rank DESC, c.id
LIMIT $3
"""
CODE_RE = re.compile(r"FB-\d{4}")


class Budget:
    """Stop a measurement loop after `seconds` (but not before `min_n` iterations)."""

    def __init__(self, seconds: float, min_n: int = 20) -> None:
        self.end = time.perf_counter() + seconds
        self.min_n = min_n

    def over(self, done: int) -> bool:
        return done >= self.min_n and time.perf_counter() > self.end


async def _code_hit_at5(conn: asyncpg.Connection, sql: str, queries: list[str], budget: Budget, *extra: Any) -> tuple[float, int]:
    """Share of error-code queries whose text-arm top 5 contains an article with that code."""
    hits = n = 0
    for q in queries:
        if budget.over(n):
            break
        code = CODE_RE.search(q).group(0)  # type: ignore[union-attr]
        rows = await conn.fetch(sql, q, None, CANDIDATES, *extra)
        ids = [r["chunk_id"] for r in rows[:5]]
        n += 1
        if ids:
            hits += bool(await conn.fetchval("SELECT count(*) FROM kb_chunks WHERE id = ANY($1) AND content LIKE '%' || $2 || '%'", ids, code))
    return hits / max(1, n), n


async def investigate_text(dsn: str, queries: list[str], fqueries: list[str], qv: np.ndarray, fqv: np.ndarray, budget_s: float) -> dict[str, Any]:
    conn = await _connect(dsn)
    out: dict[str, Any] = {}
    tsq = ("(SELECT to_tsquery('english', string_agg(quote_literal(l), ' | ')) "
           "FROM unnest(tsvector_to_array(to_tsvector('english', $1))) l)")
    try:
        # EXPLAIN ANALYZE a typical query (median matched-row count among the first 15).
        counts = sorted([(await conn.fetchval(f"SELECT count(*) FROM kb_chunks c WHERE c.tsv @@ {tsq}", q), q) for q in queries[:15]])
        mq = counts[len(counts) // 2][1]
        lit = "'" + mq.replace("'", "''") + "'"
        plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + TEXT_SQL.replace("$1", lit).replace("$2::text", "NULL::text")
                                .replace("$2", "NULL").replace("$3", str(CANDIDATES)).replace("$4", str(COMMON_FREQ))
                                .replace("$5", str(SELECTIVE_FROM_ROWS)))
        out["explain_query"] = mq
        out["explain"] = [r[0] for r in plan]
        # Where the time goes, on that query: GIN match only, + detoast tsv, + ts_rank_cd.
        split = {}
        for label, expr in (("match", "count(*)"), ("match_detoast", "sum(length(c.tsv))"),
                            ("match_detoast_rank_cd", f"sum(ts_rank_cd(c.tsv, {tsq}, 32))")):
            t0 = time.perf_counter()
            await conn.fetchval(f"SELECT {expr} FROM kb_chunks c WHERE c.tsv @@ {tsq}", mq)
            split[label + "_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        out["cost_split"] = split
        # Prototype: latency of the text part alone, hybrid total, non-empty share, error codes.
        b = Budget(budget_s / 3)
        lat, nonempty = [], 0
        for i, q in enumerate(queries):
            if b.over(i):
                break
            t0 = time.perf_counter()
            rows = await conn.fetch(TEXT_PLAIN_OR_SQL, q, None, CANDIDATES)
            lat.append((time.perf_counter() - t0) * 1000)
            nonempty += bool(rows)
        out["proto_text"] = summary(lat) | {"share_nonempty": round(nonempty / len(lat), 3)}
        tot, ftot = [], []
        for i, q in enumerate(queries):
            if i >= len(lat):
                break
            tot.append((await sql_hybrid(conn, q, qv[i], None, TEXT_PLAIN_OR_SQL))[0])
        for i, q in enumerate(fqueries):
            ftot.append((await sql_hybrid(conn, q, fqv[i], FILTER_CATEGORY, TEXT_PLAIN_OR_SQL))[0])
        out["proto_hybrid"] = summary(tot)
        out["proto_hybrid_filtered"] = summary(ftot)
        codeq = [q for q in queries if CODE_RE.search(q)]
        ph, pn = await _code_hit_at5(conn, TEXT_PLAIN_OR_SQL, codeq, Budget(budget_s / 6))
        ch, cn = await _code_hit_at5(conn, TEXT_SQL, codeq, Budget(budget_s / 4, min_n=5), COMMON_FREQ, SELECTIVE_FROM_ROWS)
        out["code_hit_at5"] = {"current": round(ch, 3), "current_n": cn, "proto": round(ph, 3), "proto_n": pn}
    finally:
        await conn.close()
    return out


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


async def db_info(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            "postgres": await conn.fetchval("SHOW server_version"),
            "pgvector": await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'"),
            "shared_buffers": await conn.fetchval("SHOW shared_buffers"),
            "work_mem": await conn.fetchval("SHOW work_mem"),
            "jit": await conn.fetchval("SHOW jit"),
        }
    finally:
        await conn.close()


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def fmt_ok(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_report(rep: dict[str, Any]) -> None:
    m, d = rep["machine"], rep["database"]
    print()
    print("=" * 100)
    print("crm-mcp knowledge-base search latency")
    print(f"machine : {m['nproc']} cores, {m['cpu_model']}, {m['mem_gib']} GiB RAM; Python {m['python']}; "
          f"load average at start {m['loadavg_at_start']}, at end {m.get('loadavg_at_end')} (other processes share the cores)")
    print(f"database: PostgreSQL {d['postgres']}, pgvector {d['pgvector']}, shared_buffers {d['shared_buffers']}, "
          f"work_mem {d['work_mem']}, jit {d['jit']} ({rep['db_mode']})")
    ds = rep["dataset"]
    print(f"data    : {ds['note']}")
    print(f"          pool {ds['pool_size']} real embeddings in {ds['pool_embed_s']:.0f}s; NN cosine median/p10: "
          f"real {ds['nn_cos_real'][0]:.3f}/{ds['nn_cos_real'][1]:.3f}, derived {ds['nn_cos_derived'][0]:.3f}/{ds['nn_cos_derived'][1]:.3f}")
    e = rep["embed_query"]
    print(f"embed   : embed_query (as the tool calls it) p50 {e['p50_ms']:.1f} ms, p95 {e['p95_ms']:.1f} ms over {e['n']} queries in this process")
    print(f"queries : {rep['queries']['unfiltered']} unfiltered, {rep['queries']['filtered']} filtered "
          f"(category '{FILTER_CATEGORY}'), {rep['queries']['recall']} for recall; warm-up {rep['queries']['warmup']}")
    print("-" * 100)
    sizes = [s for s in rep["sizes"]]
    hdr = f"{'metric':52}" + "".join(f"{s['rows']:>14,}" for s in sizes) + "   target"
    print(hdr)

    def row(label: str, vals: list[str], target: str = "") -> None:
        print(f"{label:52}" + "".join(f"{v:>14}" for v in vals) + f"   {target}")

    row("security (1% category) rows", [f"{s['filter_rows']:,}" for s in sizes])
    row("(a) tool search p50 ms (stdio, incl. embedding)", [f"{s['tool']['unfiltered']['p50_ms']:.2f}" for s in sizes])
    row("    n queries timed (tool | SQL)", [f"{s['tool']['unfiltered']['n']}|{s['sql']['unfiltered']['n']}" for s in sizes])
    row("(a) tool search p95 ms", [f" {s['tool']['unfiltered']['p95_ms']:.1f} {fmt_ok(s['ok']['tool_p95'])}" for s in sizes],
        "<= 10 (10k), <= 15 (100k)")
    row("(b) SQL hybrid p50 ms (precomputed vector)", [f"{s['sql']['unfiltered']['p50_ms']:.2f}" for s in sizes])
    row("(b) SQL hybrid p95 ms", [f"{s['sql']['unfiltered']['p95_ms']:.2f}" for s in sizes])
    row("    vector part p50 / p95 ms", [f"{s['sql']['vector_part']['p50_ms']:.1f}/{s['sql']['vector_part']['p95_ms']:.1f}" for s in sizes])
    row("    text part (OR of lexemes) p50 / p95 ms", [f"{s['sql']['text_part']['p50_ms']:.1f}/{s['sql']['text_part']['p95_ms']:.1f}" for s in sizes])
    row("    text rows matched per query (median, share)", [f"{s['sql']['text_matched_rows_median']:,} ({s['sql']['text_matched_share_median']:.0%})" for s in sizes])
    row("    ratio tool/SQL p50 | p95", [f"{s['ratio_p50']:.2f}|{s['ratio_p95']:.2f}" for s in sizes])
    for ef in rep["efs"]:
        r = [s["recall"][f"ef{ef}"] for s in sizes]
        tag = " (tool)" if ef == TOOL_EF_SEARCH else ""
        row(f"(c) HNSW recall@10 ef_search={ef}{tag}", [f"{x['recall_at_10']:.3f}" + (f" {fmt_ok(x['recall_at_10'] >= TARGETS['recall_at_10'])}" if ef == TOOL_EF_SEARCH else "") for x in r],
            ">= 0.95" if ef == TOOL_EF_SEARCH else "")
    row(f"    recall@10 tie-tolerant (cos within 0.005) ef={TOOL_EF_SEARCH}", [f"{s['recall'][f'ef{TOOL_EF_SEARCH}']['recall_at_10_tie_tolerant']:.3f}" for s in sizes])
    row(f"    true top-10 within tool's {CANDIDATES} candidates ef={TOOL_EF_SEARCH}", [f"{s['recall'][f'ef{TOOL_EF_SEARCH}_in_{CANDIDATES}']['recall_at_10']:.3f}" for s in sizes])
    ef_max = max(rep["efs"])
    row(f"    recall@10 ef_search={ef_max} with work_mem 64MB", [f"{s['recall'][f'ef{ef_max}_work_mem_64MB']['recall_at_10']:.3f}" for s in sizes])
    row(f"    recall@10 filtered ('{FILTER_CATEGORY}') ef={TOOL_EF_SEARCH}", [f"{s['recall'][f'filtered_ef{TOOL_EF_SEARCH}']['recall_at_10']:.3f}" for s in sizes])
    row("(d) filtered tool p50 ms", [f"{s['tool']['filtered']['p50_ms']:.2f}" for s in sizes])
    row("    n filtered queries timed (tool | SQL)", [f"{s['tool']['filtered']['n']}|{s['sql']['filtered']['n']}" for s in sizes])
    row("(d) filtered tool p95 ms", [f" {s['tool']['filtered']['p95_ms']:.1f} {fmt_ok(s['ok']['filtered_p95'])}" for s in sizes], "<= 20")
    row("    exact search: numpy vs SQL top-10 agreement (3 q)", [f"{s['recall']['exact_numpy_vs_sql_agreement']:.2f}" for s in sizes])
    row("    filtered SQL p50 / p95 ms", [f"{s['sql']['filtered']['p50_ms']:.1f}/{s['sql']['filtered']['p95_ms']:.1f}" for s in sizes])
    row("    filtered tool/SQL p95 ratio", [f"{s['ratio_filtered_p95']:.2f}" for s in sizes])
    row("    mean results (unfiltered | filtered)", [f"{s['tool']['unfiltered']['mean_results']:.1f}|{s['tool']['filtered']['mean_results']:.1f}" for s in sizes])
    row("phase seconds: load / SQL / recall / tool / investigate", [
        " " + "/".join(f"{s['phase_s'][k]:.0f}" for k in ("load", "sql", "recall", "tool", "investigate")) for s in sizes])
    row("load: COPY+insert / tsv / GIN / HNSW build s", [
        f"{s['load']['copy_s'] + s['load']['insert_articles_s']:.0f}/{s['load']['insert_chunks_tsv_s']:.0f}/{s['load']['gin_build_s']:.0f}/{s['load']['hnsw_build_s']:.0f}"
        for s in sizes])
    print("-" * 100)
    inv_sizes = [s for s in sizes if s.get("text_investigation")]
    if inv_sizes:
        print("before: text arm as a plain OR of every lexeme (the tool now matches only rare lexemes on large tables)")
        row("    proto text part p50 / p95 ms", [f"{s['text_investigation']['proto_text']['p50_ms']:.1f}/{s['text_investigation']['proto_text']['p95_ms']:.1f}" if s.get('text_investigation') else "-" for s in sizes])
        row("    proto text arm non-empty share", [f"{s['text_investigation']['proto_text']['share_nonempty']:.2f}" if s.get('text_investigation') else "-" for s in sizes])
        row("    proto hybrid SQL p50 / p95 ms", [f"{s['text_investigation']['proto_hybrid']['p50_ms']:.1f}/{s['text_investigation']['proto_hybrid']['p95_ms']:.1f}" if s.get('text_investigation') else "-" for s in sizes])
        row("    proto hybrid SQL filtered p50 / p95 ms", [f"{s['text_investigation']['proto_hybrid_filtered']['p50_ms']:.1f}/{s['text_investigation']['proto_hybrid_filtered']['p95_ms']:.1f}" if s.get('text_investigation') else "-" for s in sizes])
        row("    error-code queries: code in text top-5 (now|before)", [
            f"{s['text_investigation']['code_hit_at5']['current']:.2f}|{s['text_investigation']['code_hit_at5']['proto']:.2f}" if s.get('text_investigation') else "-" for s in sizes])
        print("-" * 100)
    for s in inv_sizes:
        inv = s["text_investigation"]
        print(f"text-query investigation at {s['rows']:,} rows, query {inv['explain_query']!r}:")
        print(f"  cost split (ms): {inv['cost_split']}")
        print("  EXPLAIN (ANALYZE, BUFFERS) of TEXT_SQL:")
        for line in inv["explain"]:
            print("    " + line)
    print(f"total wall time {rep['wall_s']:.0f}s")


async def run(ns: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    sizes = sorted(ns.sizes)
    rep: dict[str, Any] = {"machine": machine(), "efs": ns.ef, "sizes": []}
    external = os.environ.get("CRM_DATABASE_URL")
    tmp: Path | None = None
    settings = None
    admin_dsn: str
    dbname = f"crm_kb_bench_{uuid.uuid4().hex[:8]}"
    created_db = False
    try:
        if external:
            admin_dsn = external
            rep["db_mode"] = "external CRM_DATABASE_URL, scratch database"
        else:
            from crm_mcp.server.config import load_settings
            from crm_mcp.server.db import start_embedded

            tmp = Path(tempfile.mkdtemp(prefix="crm-kb-bench-"))
            settings = load_settings(data_dir=tmp)
            admin_dsn = await anyio.to_thread.run_sync(start_embedded, settings)
            rep["db_mode"] = f"embedded pgserver in {tmp}"
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f"CREATE DATABASE {dbname}")
            created_db = True
        finally:
            await admin.close()
        dsn = with_db(admin_dsn, dbname)
        from crm_mcp.server.migrate import migrate

        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        rep["database"] = await db_info(dsn)
        log(f"database ready ({rep['db_mode']}); PostgreSQL {rep['database']['postgres']}, "
              f"pgvector {rep['database']['pgvector']}")

        # Data and queries -------------------------------------------------------------------
        emb = LocalEmbedder()
        emb.warm_up()
        ds = Dataset(ns.seed, ns.pool, max(sizes))
        log(f"embedding a pool of {ns.pool} generated articles for real ...")
        pool_s, pool_cached = ds.embed_pool(emb, ns.pool_cache)
        qrng = random.Random(ns.seed + 1)
        queries = make_queries(qrng, ns.queries)
        fqueries = make_queries(qrng, ns.filtered_queries, FILTER_CATEGORY)
        qv = emb.encode_sync(queries)
        fqv = emb.encode_sync(fqueries)
        elat = []
        for q in queries + fqueries:
            t0 = time.perf_counter()
            await emb.embed_query(q)
            elat.append((time.perf_counter() - t0) * 1000)
        rep["embed_query"] = summary(elat)
        rq = qv[: ns.recall_queries]
        rfq = fqv[: min(len(fqv), 50)]
        rep["queries"] = {"unfiltered": len(queries), "filtered": len(fqueries), "recall": len(rq), "warmup": ns.warmup}

        loaded = 0
        for size in sizes:
            log(f"--- {size:,} articles: generating and loading ...")
            phase: dict[str, float] = {}
            tp = time.perf_counter()
            ds.derive_vectors(size, ns.noise)
            load = await load_rows(dsn, ds, loaded, size)
            loaded = size
            log(f"loaded: {load}")
            conn = await asyncpg.connect(dsn)
            try:
                frows = await conn.fetchval("SELECT count(*) FROM kb_chunks WHERE category = $1", FILTER_CATEGORY)
            finally:
                await conn.close()
            phase["load"], tp = time.perf_counter() - tp, time.perf_counter()
            log("SQL floor ...")
            sql = await measure_sql(dsn, queries, qv, fqueries, fqv, ns.warmup, ns.phase_budget)
            phase["sql"], tp = time.perf_counter() - tp, time.perf_counter()
            log("recall ...")
            recall = await measure_recall(dsn, rq, rfq, ns.ef, ds)
            phase["recall"], tp = time.perf_counter() - tp, time.perf_counter()
            log("tool over stdio ...")
            tool = await measure_tool(dsn, queries, fqueries, ns.warmup, ns.phase_budget)
            phase["tool"], tp = time.perf_counter() - tp, time.perf_counter()
            target = TARGETS["tool_p95_ms"].get(size, 10.0 if size <= 10_000 else 15.0)
            res: dict[str, Any] = {
                "rows": size, "filter_rows": frows, "load": {k: round(v, 2) for k, v in load.items()},
                "tool": tool, "sql": sql, "recall": recall,
                "ratio_p50": tool["unfiltered"]["p50_ms"] / sql["unfiltered"]["p50_ms"],
                "ratio_p95": tool["unfiltered"]["p95_ms"] / sql["unfiltered"]["p95_ms"],
                "ratio_filtered_p95": tool["filtered"]["p95_ms"] / sql["filtered"]["p95_ms"],
                "targets": {"tool_p95_ms": target, "recall_at_10": TARGETS["recall_at_10"], "filtered_p95_ms": TARGETS["filtered_p95_ms"]},
            }
            res["ok"] = {
                "tool_p95": tool["unfiltered"]["p95_ms"] <= target,
                "recall": recall[f"ef{TOOL_EF_SEARCH}"]["recall_at_10"] >= TARGETS["recall_at_10"],
                "filtered_p95": tool["filtered"]["p95_ms"] <= TARGETS["filtered_p95_ms"],
            }
            if not all(res["ok"].values()) or ns.investigate:
                log("investigating the text query ...")
                res["text_investigation"] = await investigate_text(dsn, queries, fqueries, qv, fqv, ns.phase_budget)
            phase["investigate"] = time.perf_counter() - tp
            res["phase_s"] = {k: round(v, 1) for k, v in phase.items()}
            rep["sizes"].append(res)
            log(f"{size:,}: tool p95 {tool['unfiltered']['p95_ms']:.2f} ms, SQL p95 {sql['unfiltered']['p95_ms']:.2f} ms, "
                f"recall@10 {recall[f'ef{TOOL_EF_SEARCH}']['recall_at_10']:.3f}, filtered p95 {tool['filtered']['p95_ms']:.2f} ms")

        sample = ds.np_rng.choice(np.arange(ds.pool_size), size=min(500, ds.pool_size), replace=False)
        dsample = ds.np_rng.choice(np.arange(ds.pool_size, len(ds.vectors)), size=min(500, len(ds.vectors) - ds.pool_size), replace=False) \
            if len(ds.vectors) > ds.pool_size else sample
        # NN within the real pool vs NN of derived vectors within an equally sized random subset.
        subset = ds.vectors[ds.np_rng.choice(np.arange(len(ds.vectors)), size=ds.pool_size, replace=False)]
        rep["dataset"] = {
            "note": (f"synthetic support articles; {ns.pool} embedded for real, the rest have DERIVED vectors "
                     f"(convex combination of 2-3 same-topic real vectors + Gaussian noise, norm ~{ns.noise})"),
            "pool_size": ds.pool_size, "pool_embed_s": round(pool_s, 1), "pool_cached": pool_cached, "noise": ns.noise,
            "nn_cos_real": nn_cosine_stats(ds.pool_vecs, ds.pool_vecs[sample]),
            "nn_cos_derived": nn_cosine_stats(subset, ds.vectors[dsample]),
            "category_counts": {c: ds.categories[: max(sizes)].count(c) for c in CATEGORY_SHARE},
        }
    finally:
        if created_db:
            try:
                admin = await asyncpg.connect(admin_dsn)
                try:
                    await admin.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
                finally:
                    await admin.close()
            except Exception as exc:  # noqa: BLE001
                log(f"could not drop {dbname}: {exc}")
        if settings is not None:
            from crm_mcp.server.db import embedded_pgdata, stop_embedded

            await anyio.to_thread.run_sync(stop_embedded, embedded_pgdata(settings))
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    rep["wall_s"] = time.perf_counter() - t_start
    rep["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return rep


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--pool", type=int, default=1500, help="articles embedded for real (default 1500)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--filtered-queries", type=int, default=100)
    p.add_argument("--recall-queries", type=int, default=100)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--ef", type=int, nargs="+", default=[40, 80, 200, 400])
    p.add_argument("--noise", type=float, default=0.3, help="norm of the Gaussian noise added to derived vectors")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--investigate", action="store_true", help="always run the text-query investigation")
    p.add_argument("--phase-budget", type=float, default=30.0,
                   help="seconds per measurement phase (SQL, tool, investigation) and size; a phase stops early "
                        "(after >= 20 queries) when its queries are slow, and the table shows n")
    p.add_argument("--pool-cache", help="optional .npz file caching the pool embeddings between runs")
    ns = p.parse_args(argv)
    rep = anyio.run(run, ns)
    print_report(rep)
    if ns.json:
        Path(ns.json).write_text(json.dumps(rep, indent=2, default=str))
        print(f"wrote {ns.json}")


if __name__ == "__main__":
    main()
