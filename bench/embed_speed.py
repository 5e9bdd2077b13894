"""Local embedder speed: documents/s and query latency (not a test).

    python -m bench.embed_speed [--threads 1 2] [--batch-sizes 4 8 32]

Prints docs/s over 500 support-article-sized texts, and p50/p95 end-to-end
latency of ``embed_query`` over 300 short queries, run inline on the event
loop (the default for short queries) and through a worker thread.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import anyio
import numpy as np

if __package__ in (None, ""):  # python bench/embed_speed.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crm_mcp.tools.engines.embeddings import (  # noqa: E402
    DEFAULT_BATCH_SIZE,
    DEFAULT_INTRA_OP_THREADS,
    LocalEmbedder,
)

SENTENCES = [
    "To reset your password, open the sign-in page and click Forgot password.",
    "We email you a link that stays valid for 30 minutes.",
    "If the email does not arrive, check your spam folder or ask your workspace admin to resend it.",
    "Invoices are generated on the first day of each billing cycle and can be downloaded as PDF from Settings > Billing.",
    "Annual plans can be refunded pro rata within 14 days of renewal.",
    "Webhooks are retried up to five times with exponential backoff; failed deliveries show in the integration log.",
    "Contacts can be exported to CSV, and custom fields are included as extra columns.",
    "Single sign-on with SAML 2.0 is available on the Enterprise plan.",
    "The mobile app syncs conversations every few seconds while it is open.",
    "Agents with the Supervisor role can reassign tickets across teams.",
    "When a customer replies by email, the message is threaded into the open ticket automatically.",
    "Business hours and holidays affect SLA timers, which pause outside working time.",
    "To connect WhatsApp, verify your business phone number and approve the message templates.",
    "API keys are scoped to a workspace and can be rotated without downtime.",
]
QUERIES = [
    "how do I reset my password",
    "refund annual plan",
    "export contacts csv",
    "webhook not firing",
    "change billing email",
    "enable SSO",
    "sla paused on weekends?",
    "connect whatsapp number",
    "reassign ticket to another team",
    "download invoice pdf",
    "rotate api key",
    "mobile app not syncing",
]


def make_documents(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        words_target = rng.randint(60, 180)  # a KB chunk (chunk_text's max is 180 words)
        parts: list[str] = [f"## {rng.choice(SENTENCES).split(',')[0]}"]
        while sum(len(p.split()) for p in parts) < words_target:
            parts.append(rng.choice(SENTENCES))
        docs.append(" ".join(parts))
    return docs


def make_queries(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(QUERIES) + rng.choice(["", "?", " please", " now"]) for _ in range(n)]


async def bench_documents(embedder: LocalEmbedder, docs: list[str]) -> float:
    await embedder.embed_documents(docs[:8])
    start = time.perf_counter()
    out = await embedder.embed_documents(docs)
    elapsed = time.perf_counter() - start
    assert out.shape == (len(docs), embedder.dimension)
    return len(docs) / elapsed


async def bench_queries(embedder: LocalEmbedder, queries: list[str]) -> tuple[float, float]:
    for q in queries[:30]:
        await embedder.embed_query(q)
    times = []
    for q in queries:
        start = time.perf_counter()
        await embedder.embed_query(q)
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 95) * 1e3)


async def main_async(args: argparse.Namespace) -> None:
    docs = make_documents(args.docs)
    queries = make_queries(args.queries)
    words = [len(d.split()) for d in docs]
    print(
        f"{len(docs)} documents ({statistics.mean(words):.0f} words mean, {max(words)} max), "
        f"{len(queries)} queries; defaults: intra_op_threads={DEFAULT_INTRA_OP_THREADS}, "
        f"batch_size={DEFAULT_BATCH_SIZE}"
    )
    for threads in args.threads:
        for batch_size in args.batch_sizes:
            embedder = LocalEmbedder(intra_op_threads=threads, batch_size=batch_size)
            start = time.perf_counter()
            embedder.warm_up()
            load_ms = (time.perf_counter() - start) * 1e3
            dps = await bench_documents(embedder, docs)
            print(f"threads={threads} batch={batch_size:<3} load={load_ms:6.0f} ms  documents: {dps:6.1f} docs/s")
        inline = LocalEmbedder(intra_op_threads=threads)
        inline.warm_up()
        p50, p95 = await bench_queries(inline, queries)
        print(f"threads={threads} query inline:         p50={p50:.2f} ms  p95={p95:.2f} ms")
        threaded = LocalEmbedder(intra_op_threads=threads, inline_query_max_tokens=0)
        threaded.warm_up()
        p50, p95 = await bench_queries(threaded, queries)
        print(f"threads={threads} query worker thread:  p50={p50:.2f} ms  p95={p95:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--threads", type=int, nargs="+", default=[DEFAULT_INTRA_OP_THREADS])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[DEFAULT_BATCH_SIZE])
    anyio.run(main_async, parser.parse_args())


if __name__ == "__main__":
    main()
