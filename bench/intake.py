"""Intake throughput: ingest_message for new and for returning customers, sequential over stdio
and with 10 concurrent clients over Streamable HTTP, against the same work done in-process.

    python -m bench.intake [--messages 1000] [--clients 10] [--customers 1000]

Floors, measured in this run:
  * direct: crm_mcp.tools.intake.ingest_message(crm, IngestInput(...)) in this process with the
    server's own pool (crm_mcp.server.app.open_crm), sequential and with `clients` tasks: the
    same database work without MCP.
  * round-trip floor (for direct): statements per ingest (counted) x `SELECT 1` p50 on one
    connection, i.e. what the round trips alone cost if the SQL did no work.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import anyio

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    SAMPLE_TEXTS, CpuMeter, Postgres, Row, create_db, drop_db, embedded_postgres, http_server, log, machine,
    open_direct, pg_version, print_table, seed_customers, stdio_client, summarize, timed_loop, write_json,
)
from bench.tool_overhead import count_statements  # noqa: E402


class Messages:
    """Unique channel messages: new senders, or senders picked from the seeded customers."""

    def __init__(self, returning_emails: list[str]) -> None:
        self.returning = returning_emails
        self.rng = random.Random(5)
        self.seq = 0

    def make(self, kind: str) -> dict[str, Any]:
        self.seq += 1
        i = self.seq
        email = f"new{i:07d}@example.org" if kind == "new" else self.rng.choice(self.returning)
        return {
            "channel": "email",
            "channel_message_id": f"bench-{kind}-{i}-{time.monotonic_ns()}",
            "sender": {"email": email, "name": f"Bench Sender {i}"},
            "subject": "Question about my account",
            "content": SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)],
        }


async def concurrent(fn: Any, n: int, workers: int) -> dict[str, float]:
    """n calls of `await fn(worker, i)` spread over `workers` sequential loops."""
    lat: list[float] = []
    pc = time.perf_counter
    per = [n // workers + (1 if w < n % workers else 0) for w in range(workers)]

    async def loop(w: int) -> None:
        for i in range(per[w]):
            s = pc()
            await fn(w, i)
            lat.append(pc() - s)

    t0 = pc()
    async with anyio.create_task_group() as tg:
        for w in range(workers):
            tg.start_soon(loop, w)
    return summarize(lat, pc() - t0)


async def run(pg: Postgres, dsn: str, emails: list[str], n: int, clients: int) -> dict[str, Any]:
    import asyncpg
    from mcp import Client

    from crm_mcp.tools.intake import IngestInput, ingest_message

    msgs = Messages(emails)
    out: dict[str, Any] = {"messages": n, "clients": clients, "returning_pool": len(emails)}
    warm = max(50, n // 10)

    def check(r: Any) -> None:
        assert not r.is_error, " ".join(getattr(c, "text", "") for c in r.content)
        assert r.structured_content and not r.structured_content["duplicate"]

    # --- direct (floor) ------------------------------------------------------------------------
    log("intake: direct (in-process handler)")
    async with open_direct(dsn) as crm:
        async def direct(kind: str) -> Any:
            return await ingest_message(crm, IngestInput(**msgs.make(kind)))

        for kind in ("new", "returning"):
            with CpuMeter(pg) as m:
                s = await timed_loop(lambda i, k=kind: direct(k), n, warmup=warm)
            s["cpu_ms_per_msg"] = m.per_op_ms(n)
            out[f"direct_seq_{kind}"] = s
            with CpuMeter(pg) as m:
                s = await concurrent(lambda w, i, k=kind: direct(k), n, clients)
            s["cpu_ms_per_msg"] = m.per_op_ms(n)
            out[f"direct_x{clients}_{kind}"] = s
            cnt, sql = await count_statements(lambda k=kind: direct(k))
            out[f"statements_{kind}"] = cnt
            out[f"statements_{kind}_sql"] = sql
        # round-trip floor
        async with crm.pool.acquire() as conn:
            async def select1(i: int) -> None:
                await conn.fetchval("SELECT 1")
            out["sql_select1"] = await timed_loop(select1, 2000, warmup=200)

    # Diagnostic: the same direct work without waiting for the WAL flush at commit, to show how
    # much of each ingest is the commit fsync (the server keeps synchronous_commit on).
    from urllib.parse import urlsplit

    dbname = urlsplit(dsn).path.lstrip("/")
    admin = await asyncpg.connect(pg.admin_dsn)
    await admin.execute(f"ALTER DATABASE {dbname} SET synchronous_commit = off")
    try:
        async with open_direct(dsn) as crm:
            async def direct_async(kind: str) -> Any:
                return await ingest_message(crm, IngestInput(**msgs.make(kind)))

            for kind in ("new", "returning"):
                out[f"direct_seq_{kind}_sync_commit_off"] = await timed_loop(
                    lambda i, k=kind: direct_async(k), n, warmup=warm)
    finally:
        await admin.execute(f"ALTER DATABASE {dbname} RESET synchronous_commit")
        await admin.close()

    # --- stdio, sequential ------------------------------------------------------------------------
    log("intake: stdio sequential")
    async with stdio_client(dsn) as (client, spid):
        await client.list_tools()
        for kind in ("new", "returning"):
            async def call(i: int, k: str = kind) -> None:
                check(await client.call_tool("ingest_message", msgs.make(k)))

            with CpuMeter(pg, spid) as m:
                s = await timed_loop(call, n, warmup=warm)
            s["cpu_ms_per_msg"] = m.per_op_ms(n)
            out[f"stdio_seq_{kind}"] = s

    # --- HTTP, concurrent clients -----------------------------------------------------------------
    log(f"intake: HTTP x{clients}")
    with http_server(dsn) as (url, hpid):
        async with _clients(Client, url, clients) as cs:
            for c in cs:
                await c.list_tools()
            for kind in ("new", "returning"):
                async def hcall(w: int, i: int, k: str = kind) -> None:
                    check(await cs[w].call_tool("ingest_message", msgs.make(k)))

                await concurrent(hcall, warm, clients)
                with CpuMeter(pg, hpid) as m:
                    s = await concurrent(hcall, n, clients)
                s["cpu_ms_per_msg"] = m.per_op_ms(n)
                out[f"http_x{clients}_{kind}"] = s

    rows: list[Row] = []
    x = f"x{clients}"
    for kind in ("new", "returning"):
        ds, dc = out[f"direct_seq_{kind}"], out[f"direct_{x}_{kind}"]
        st, ht = out[f"stdio_seq_{kind}"], out[f"http_{x}_{kind}"]
        rt_floor = 1000 / (out[f"statements_{kind}"] * out["sql_select1"]["p50_ms"])
        rows += [
            Row(f"ingest {kind}: stdio seq msgs/s", st["ops_per_s"], "/s", ds["ops_per_s"], "direct seq", "rate", 700, ">="),
            Row(f"ingest {kind}: stdio seq p95", st["p95_ms"], "ms", ds["p95_ms"], "direct seq p95", "latency", 5.0),
            Row(f"ingest {kind}: HTTP {x} msgs/s", ht["ops_per_s"], "/s", dc["ops_per_s"], f"direct {x}", "rate", 1000, ">="),
            Row(f"ingest {kind}: HTTP {x} p95", ht["p95_ms"], "ms", dc["p95_ms"], f"direct {x} p95", "latency", 5.0),
            Row(f"ingest {kind}: direct seq msgs/s", ds["ops_per_s"], "/s", round(rt_floor, 1),
                f"{out[f'statements_{kind}']} stmts x SELECT 1", "rate", 5000, ">="),
            Row(f"ingest {kind}: direct {x} msgs/s", dc["ops_per_s"], "/s", ds["ops_per_s"], "direct seq", "rate", 5000, ">="),
            Row(f"ingest {kind}: direct seq, sync_commit off", out[f"direct_seq_{kind}_sync_commit_off"]["ops_per_s"], "/s",
                ds["ops_per_s"], "direct seq", "rate"),
        ]
    out["rows"] = [r.as_dict() for r in rows]
    out["_rows"] = rows
    return out


class _clients:
    """N concurrent mcp.Client sessions to one URL, entered and left together."""

    def __init__(self, client_cls: Any, url: str, n: int) -> None:
        self.cs = [client_cls(url, read_timeout_seconds=60) for _ in range(n)]

    async def __aenter__(self) -> list[Any]:
        for c in self.cs:
            await c.__aenter__()
        return self.cs

    async def __aexit__(self, *exc: Any) -> None:
        for c in reversed(self.cs):
            try:
                await c.__aexit__(None, None, None)
            except Exception:  # noqa: BLE001 - the server is about to stop anyway
                pass


async def main_async(args: argparse.Namespace) -> None:
    with embedded_postgres() as pg:
        dsn = await create_db(pg.admin_dsn)
        try:
            log(f"seeding {args.customers} customers")
            emails = await seed_customers(dsn, args.customers)
            res = await run(pg, dsn, emails, args.messages, args.clients)
            rows = res.pop("_rows")
            print_table(rows, "intake (ingest_message)")
            print(f"statements per ingest: new {res['statements_new']}, returning {res['statements_returning']}")
            if args.json:
                write_json({"machine": machine(await pg_version(pg.admin_dsn)), "intake": res}, Path(args.json))
        finally:
            await drop_db(pg.admin_dsn, dsn)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--customers", type=int, default=1000)
    p.add_argument("--json", help="also write the results to this JSON file")
    anyio.run(main_async, p.parse_args())


if __name__ == "__main__":
    main()
