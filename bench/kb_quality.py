"""Retrieval quality of the knowledge base: recall@1, recall@5 and MRR of vector-only,
full-text-only and hybrid search over bench/kb_eval.jsonl (paraphrased customer questions, each
with the article that answers it), on the demo knowledge base with the configured embedder.

    python -m bench.kb_quality [--json out.json]

Uses CRM_DATABASE_URL when set (a scratch database is created and dropped), else an embedded
PostgreSQL in a temporary directory that is stopped at the end. Targets (default embedder,
hybrid): recall@5 >= 0.95, recall@1 >= 0.85."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import anyio
import asyncpg

from bench.common import with_db
from crm_mcp.server.app import open_crm
from crm_mcp.server.config import load_settings
from crm_mcp.server.db import embedded_pgdata, start_embedded, stop_embedded
from crm_mcp.tools import knowledge

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "bench" / "kb_eval.jsonl"
KB = ROOT / "server" / "demo" / "kb"
MODES = ("vector", "text", "hybrid")


async def evaluate(dsn: str) -> dict[str, dict[str, float]]:
    settings = load_settings(database_url=dsn, log_level="WARNING")
    cases = [json.loads(line) for line in EVAL.read_text().splitlines() if line.strip()]
    async with open_crm(settings, background=False) as crm:
        t0 = time.perf_counter()
        counts = await knowledge.import_folder(crm, KB)
        import_s = time.perf_counter() - t0
        async with crm.pool.acquire() as conn:
            paths = {r["id"]: r["source_path"].removesuffix(".md") for r in await conn.fetch("SELECT id, source_path FROM knowledge_base")}
        out: dict[str, dict[str, float]] = {}
        for mode in MODES:
            r1 = r5 = rr = 0.0
            misses = []
            for c in cases:
                hits = await knowledge.hybrid_search(crm, c["question"], category=None, limit=10, mode=mode)  # type: ignore[arg-type]
                ranked = [paths[h.article_id] for h in hits]
                if c["article"] in ranked:
                    pos = ranked.index(c["article"]) + 1
                    r1 += pos == 1
                    r5 += pos <= 5
                    rr += 1 / pos
                if not ranked or ranked[0] != c["article"]:
                    misses.append((c["question"], c["article"], ranked[:3]))
            n = len(cases)
            out[mode] = {"recall@1": r1 / n, "recall@5": r5 / n, "mrr": rr / n, "questions": n}
            out[mode]["_misses"] = misses  # type: ignore[assignment]
    out["_import"] = {"articles": counts["files"], "chunks": counts["chunks"], "seconds": round(import_s, 1)}  # type: ignore[assignment]
    return out


async def main_async(args: argparse.Namespace) -> dict:
    tmp = None
    external = os.environ.get("CRM_DATABASE_URL")
    if external:
        admin_dsn = external
    else:
        tmp = Path(tempfile.mkdtemp(prefix="crm-bench-"))
        admin_dsn = await anyio.to_thread.run_sync(start_embedded, load_settings(data_dir=tmp))
    name = f"crm_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    try:
        return await evaluate(with_db(admin_dsn, name))
    finally:
        admin = await asyncpg.connect(admin_dsn)
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
        if tmp is not None:
            stop_embedded(embedded_pgdata(load_settings(data_dir=tmp)))
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write results to this file")
    ap.add_argument("--show-misses", action="store_true", help="print the questions hybrid search ranked wrong")
    args = ap.parse_args()
    res = anyio.run(main_async, args)
    imp = res.pop("_import")
    print(f"knowledge base: {imp['articles']} articles, {imp['chunks']} chunks, imported and embedded in {imp['seconds']} s")
    print(f"{'mode':8} {'recall@1':>9} {'recall@5':>9} {'MRR':>7}   questions={res['hybrid']['questions']}")
    for mode in MODES:
        r = res[mode]
        print(f"{mode:8} {r['recall@1']:9.3f} {r['recall@5']:9.3f} {r['mrr']:7.3f}")
    h = res["hybrid"]
    ok = h["recall@5"] >= 0.95 and h["recall@1"] >= 0.85
    print(f"target (hybrid): recall@5 >= 0.95, recall@1 >= 0.85 -> {'met' if ok else 'NOT met'}")
    if args.show_misses:
        for q, want, got in h["_misses"]:  # type: ignore[index]
            print(f"  miss: {q!r}\n        want {want}, got {got}")
    if args.json:
        clean = {m: {k: v for k, v in res[m].items() if not k.startswith("_")} for m in MODES}
        Path(args.json).write_text(json.dumps(clean, indent=2))


if __name__ == "__main__":
    main()
