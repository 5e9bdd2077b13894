"""Knowledge-base search latency through the tool, as ratios to its floors, and HNSW recall on
real embeddings (not a test).

    python -m bench.kb_latency [--sizes 10000 100000] [--queries 150] [--json out.json]

For each size:
1. Generates a support knowledge base (a forms-and-workflows SaaS: features, integrations,
   plans, platforms, error codes like FB-4291) from templates and embeds a short passage of every
   article for real with the configured local embedder (title, newline, its first 20 words; see
   short_passage). Vectors are
   cached outside git in ~/.cache/crm-mcp-bench/ (CRM_BENCH_CACHE), keyed by the texts' hash, so
   only the first run pays for the embedding.
2. Loads a migrated scratch database (one passage per article, tsv from kb_tsv() as
   upsert_article does), builds the HNSW index as the migration does, ANALYZEs.
3. Per query, interleaved so the three share the machine's noise, in a shuffled order (the first
   to run a query reads its pages from disk, the others find them cached):
   - tool: search_knowledge_base through `crm-mcp serve` over stdio (mcp.Client), query
     embedding included;
   - SQL floor: tools.knowledge.correct_spelling + search_rows + the result-row fetch, in-process, with the query
     vector precomputed;
   - embedding floor: the same embedder's embed_query, in-process.
   Prints p50/p95 of each and the tool's as a ratio to the sum of the floors (target <= 1.5).
   The tool embeds the query while the text arm's SQL runs, so it can come in under the sum.
4. HNSW recall@10 against exact search (numpy over the same vectors) at several ef_search, the
   tool's EF_SEARCH marked.

The machine is small and shared: absolute figures drift between runs, ratios hold better.
Uses CRM_BENCH_DATABASE_URL when set, else an embedded PostgreSQL in a temporary directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
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

from bench.common import create_db, drop_db, embedded_postgres, log, open_direct, percentile, stdio_client  # noqa: E402
from crm_mcp.tools import knowledge  # noqa: E402
from crm_mcp.tools.engines.embeddings import LocalEmbedder  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
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
# Corpus: texts and real vectors (cached)
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    d = Path(os.environ.get("CRM_BENCH_CACHE", Path.home() / ".cache" / "crm-mcp-bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def make_corpus(n: int, seed: int = 16) -> tuple[list[str], list[str], list[str]]:
    """n articles (title, content, category); categories by CATEGORY_SHARE."""
    rng = random.Random(seed)
    cats = rng.choices(list(CATEGORY_SHARE), weights=list(CATEGORY_SHARE.values()), k=n)
    titles, contents = [], []
    for c in cats:
        t, body = make_article(rng, c, rng.choice(FEATURES[c]))
        titles.append(t)
        contents.append(body)
    return titles, contents, cats


def short_passage(content: str, words: int = 20) -> str:
    """The article's opening words: what is embedded for the benchmark. Whole articles embed at
    ~35/s on a quiet machine here (10k would take 5 minutes, 100k an hour, far more on busy
    cores); a short passage is ~5x faster and is still a real embedding of real text, which is
    what HNSW recall must be measured on (the full text is in the tsv)."""
    return " ".join(content.split()[:words])


def embed_cached(emb: LocalEmbedder, texts: list[str], what: str) -> np.ndarray:
    """Embeddings of texts, from the cache when these exact texts were embedded before. Built
    up in slices so an interrupted run keeps what it had."""
    key = hashlib.sha256("\x1e".join(texts).encode()).hexdigest()[:16]
    path = cache_dir() / f"{what}-{len(texts)}-{key}.npy"
    if path.exists():
        return np.load(path)
    part = path.with_suffix(".part.npy")
    done = np.load(part) if part.exists() else np.empty((0, 384), dtype=np.float32)
    t0 = time.perf_counter()
    step = 256
    while len(done) < len(texts):
        done = np.vstack([done, emb.encode_sync(texts[len(done): len(done) + step])])
        np.save(part, done)
        rate = len(done) / (time.perf_counter() - t0)
        log(f"embedded {len(done):,}/{len(texts):,} {what} ({rate:.0f}/s)")
    np.save(path, done)
    part.unlink(missing_ok=True)
    return done


async def load(dsn: str, titles: list[str], contents: list[str], cats: list[str], vecs: np.ndarray) -> dict[str, float]:
    """Articles and one passage each, tsv from kb_tsv() as upsert_article computes it; the HNSW
    index rebuilt after the load with the migration's parameters."""
    conn = await asyncpg.connect(dsn)
    await register_vector(conn)
    t: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        await conn.execute("DROP INDEX IF EXISTS kb_chunks_embedding_hnsw")
        await conn.execute("CREATE TEMP TABLE stage (n int, title text, content text, category text, embedding vector(384))")
        await conn.copy_records_to_table("stage", records=[(i, titles[i], contents[i], cats[i], vecs[i]) for i in range(len(titles))])
        await conn.execute(
            """INSERT INTO knowledge_base (source_path, title, content, category, content_hash)
               SELECT 'bench/' || n, title, content, category, md5(title || content) FROM stage""")
        await conn.execute(
            """INSERT INTO kb_chunks (article_id, chunk_index, category, content, embedding, embedded_with, tsv)
               SELECT k.id, 0, s.category, s.content, s.embedding, 'local/all-MiniLM-L6-v2', kb_tsv(s.title, s.content)
               FROM stage s JOIN knowledge_base k ON k.source_path = 'bench/' || s.n ORDER BY s.n""")
        t["load_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        await conn.execute("SET maintenance_work_mem = '512MB'")
        await conn.execute("CREATE INDEX kb_chunks_embedding_hnsw ON kb_chunks USING hnsw (embedding vector_cosine_ops) "
                           "WITH (m = 16, ef_construction = 64)")
        t["hnsw_s"] = time.perf_counter() - t0
        await conn.execute("VACUUM ANALYZE kb_chunks")
        await conn.execute("VACUUM ANALYZE knowledge_base")
    finally:
        await conn.close()
    return t


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------

ROWS_SQL = """SELECT k.id, k.title, k.category, c.content FROM knowledge_base k JOIN kb_chunks c ON c.article_id = k.id
               WHERE c.id = ANY($1::bigint[])"""


def pct(xs: list[float]) -> dict[str, float]:
    return {"p50": percentile(xs, 50), "p95": percentile(xs, 95), "n": len(xs)}


async def measure_latency(dsn: str, queries: list[str], qvecs: np.ndarray, rounds: int) -> dict[str, Any]:
    tool: list[float] = []
    sql: list[float] = []
    embq: list[float] = []
    async with open_direct(dsn) as crm, stdio_client(dsn) as (client, _pid):
        await knowledge.check_embedding_space(crm)
        emb = knowledge.get_embedder(crm)
        async with crm.pool.acquire() as conn:
            async def run_sql(q: str, v: np.ndarray) -> None:
                # the tool searches the corrected query: so does the floor (the text arm's work depends on it)
                q, _ = await knowledge.correct_spelling(conn, q)
                rows = await knowledge.search_rows(crm, conn, q, v, None)
                ids = [r["chunk_id"] for r in rows.vector[:5]] + [r["chunk_id"] for r in rows.text[:5]]
                await conn.fetch(ROWS_SQL, ids)

            for q, v in zip(queries[:20], qvecs[:20]):  # warm-up: caches, prepared statements, the server's model
                await client.call_tool("search_knowledge_base", {"query": q})
                await run_sql(q, v)
                await emb.embed_query(q)
            async def run_tool(q: str, v: np.ndarray) -> None:
                res = await client.call_tool("search_knowledge_base", {"query": q})
                if res.is_error:
                    raise RuntimeError(f"search_knowledge_base failed: {res.content}")

            async def run_embed(q: str, v: np.ndarray) -> None:
                await emb.embed_query(q)

            # Whichever of the three runs a query first reads its pages from disk and the others
            # find them cached: the order is shuffled per query so no one of them always pays.
            steps = [(run_tool, tool), (run_sql, sql), (run_embed, embq)]
            order = random.Random(11)
            for _ in range(rounds):
                for q, v in zip(queries, qvecs):
                    order.shuffle(steps)
                    for run, into in steps:
                        t0 = time.perf_counter()
                        await run(q, v)
                        into.append((time.perf_counter() - t0) * 1000)
    out = {"tool": pct(tool), "sql": pct(sql), "embed": pct(embq)}
    for p in ("p50", "p95"):
        out[f"ratio_{p}"] = out["tool"][p] / (out["sql"][p] + out["embed"][p])
    return out


async def measure_recall(dsn: str, vecs: np.ndarray, qvecs: np.ndarray, efs: list[int]) -> dict[int, float]:
    """recall@10 of the HNSW scan (VECTOR_SQL's ORDER BY) against exact nearest neighbours."""
    conn = await asyncpg.connect(dsn)
    await register_vector(conn)
    try:
        ids = [r["id"] for r in await conn.fetch("SELECT c.id FROM kb_chunks c JOIN knowledge_base k ON k.id = c.article_id "
                                                  "ORDER BY substr(k.source_path, 7)::int")]
        exact = np.argsort(-(qvecs @ vecs.T), axis=1)[:, :10]
        out = {}
        for ef in efs:
            hit = 0
            async with conn.transaction():
                await conn.execute(f"SET LOCAL hnsw.ef_search = {ef}")
                for qi, v in enumerate(qvecs):
                    got = {r["chunk_id"] for r in await conn.fetch(knowledge.VECTOR_SQL, v, None, 10)}
                    hit += len(got & {ids[j] for j in exact[qi]})
            out[ef] = hit / (10 * len(qvecs))
        return out
    finally:
        await conn.close()


async def run_size(admin_dsn: str, n: int, emb: LocalEmbedder, queries: list[str], qvecs: np.ndarray, rounds: int) -> dict[str, Any]:
    titles, contents, cats = make_corpus(n)
    t0 = time.perf_counter()
    vecs = embed_cached(emb, [f"{t}\n{short_passage(c)}" for t, c in zip(titles, contents)], "kb-passages")
    embed_s = time.perf_counter() - t0
    dsn = await create_db(admin_dsn)
    try:
        log(f"{n:,}: loading")
        timings = await load(dsn, titles, contents, cats, vecs)
        log(f"{n:,}: loaded in {timings['load_s']:.0f} s, HNSW built in {timings['hnsw_s']:.0f} s; measuring")
        lat = await measure_latency(dsn, queries, qvecs, rounds)
        recall = await measure_recall(dsn, vecs, qvecs, [40, 100, knowledge.EF_SEARCH, 400])
        return {"articles": n, "embed_s": round(embed_s, 1), **{k: round(v, 1) for k, v in timings.items()},
                "latency": lat, "recall_at_10": recall}
    finally:
        await drop_db(admin_dsn, dsn)


def report(results: list[dict[str, Any]]) -> None:
    print(f"{'articles':>9} {'tool p50':>9} {'tool p95':>9} {'SQL p50':>8} {'SQL p95':>8} {'emb p50':>8} {'emb p95':>8} "
          f"{'ratio p50':>9} {'ratio p95':>9}  recall@10 by ef_search")
    for r in results:
        lat = r["latency"]
        rec = "  ".join(f"{ef}{'*' if ef == knowledge.EF_SEARCH else ''}: {v:.3f}" for ef, v in r["recall_at_10"].items())
        print(f"{r['articles']:>9,} {lat['tool']['p50']:9.1f} {lat['tool']['p95']:9.1f} {lat['sql']['p50']:8.1f} "
              f"{lat['sql']['p95']:8.1f} {lat['embed']['p50']:8.1f} {lat['embed']['p95']:8.1f} "
              f"{lat['ratio_p50']:9.2f} {lat['ratio_p95']:9.2f}  {rec}")
    print("ms; ratio = tool / (SQL floor + embedding floor) at the same percentile, measured interleaved "
          "(target <= 1.5); * = the tool's EF_SEARCH (target recall@10 >= 0.95).")


async def main_async(ns: argparse.Namespace) -> list[dict[str, Any]]:
    emb = LocalEmbedder()
    rng = random.Random(7)
    queries = make_queries(rng, ns.queries)
    qvecs = np.vstack([await emb.embed_query(q) for q in queries])
    out = []
    with embedded_postgres() as pg:
        for n in ns.sizes:
            out.append(await run_size(pg.admin_dsn, n, emb, queries, qvecs, ns.rounds))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    ap.add_argument("--queries", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2, help="passes over the queries")
    ap.add_argument("--json", help="write results to this file")
    ns = ap.parse_args(argv)
    res = anyio.run(main_async, ns)
    report(res)
    if ns.json:
        Path(ns.json).write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
